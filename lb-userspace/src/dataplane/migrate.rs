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

/// Copies the flows of an older datapath pinned beside `pins` (layout 4: the same entries in a
/// table with one global LRU list; layout 3: converted, `lb_common::legacy`) into this
/// layout's `LB_CT`. Returns how many entries were copied (0 when there is no older table).
pub fn carry_over_flows(pins: &PinDir) -> Result<usize> {
    let mut copied = 0;
    // (Older than MAP_LAYOUT_VERSION, 5: never this agent's own directory.)
    for version in [4, 3] {
        let old_path = pins.root.join(format!("v{version}")).join(names::CT);
        if !old_path.exists() {
            continue;
        }
        let old_data = MapData::from_pin(&old_path).with_context(|| format!("opening {}", old_path.display()))?;
        let old = aya::maps::Map::LruHashMap(old_data);
        let mut new: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(pins.open(names::CT)?)?;
        copied += if version == 4 {
            let old: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(old).context("the layout-4 conntrack table")?;
            copy(old.iter(), &mut new, |_, e| e)
        } else {
            let old: HashMap<MapData, CtKey, legacy::CtEntryV3> =
                HashMap::try_from(old).context("the layout-3 conntrack table")?;
            copy(old.iter(), &mut new, |k, e| legacy::ct_entry_from_v3(&e, k.proto))
        };
    }
    Ok(copied)
}

/// Inserts every entry `items` yields, converted, where `new` has none yet.
fn copy<V>(
    items: impl Iterator<Item = Result<(CtKey, V), aya::maps::MapError>>,
    new: &mut HashMap<MapData, CtKey, CtEntry>,
    convert: impl Fn(&CtKey, V) -> CtEntry,
) -> usize {
    const BPF_NOEXIST: u64 = 1;
    let mut copied = 0;
    // An entry evicted while we iterate is simply skipped.
    for (key, entry) in items.flatten() {
        if new.insert(key, convert(&key, entry), BPF_NOEXIST).is_ok() {
            copied += 1;
        }
    }
    copied
}
