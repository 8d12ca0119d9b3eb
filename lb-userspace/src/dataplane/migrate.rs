//! Carrying connections over a map layout upgrade.
//!
//! A new agent whose map layout differs from the running one's creates its maps under its own
//! versioned directory. The running datapath's conntrack entries are copied into the new
//! `LB_CT`, converted (`lb_common::legacy`), twice: before the new programs are attached (the
//! connections that exist then) and right after (those the old programs created in between);
//! only then are the old maps removed. Entries the new datapath already wrote are never
//! overwritten (`BPF_NOEXIST`).

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use lb_common::{legacy, CtEntry, CtKey};

use super::{names, pin::PinDir};

/// Copies the flows of the layout-3 datapath pinned beside `pins` (if any) into this
/// layout's `LB_CT`. Returns how many entries were copied (0 when there is no older table).
pub fn carry_over_flows(pins: &PinDir) -> Result<usize> {
    let old_path = pins.root.join("v3").join(names::CT);
    if lb_common::MAP_LAYOUT_VERSION == 3 || !old_path.exists() {
        return Ok(0);
    }
    let old_data = MapData::from_pin(&old_path).with_context(|| format!("opening {}", old_path.display()))?;
    let old: HashMap<MapData, CtKey, legacy::CtEntryV3> =
        HashMap::try_from(aya::maps::Map::LruHashMap(old_data)).context("the layout-3 conntrack table")?;
    let mut new: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(pins.open(names::CT)?)?;
    const BPF_NOEXIST: u64 = 1;
    let mut copied = 0;
    for item in old.iter() {
        // An entry evicted while we iterate is simply skipped.
        let Ok((key, entry)) = item else { continue };
        if new.insert(key, legacy::ct_entry_from_v3(&entry, key.proto), BPF_NOEXIST).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}
