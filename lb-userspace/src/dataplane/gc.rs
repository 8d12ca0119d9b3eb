//! Conntrack garbage collection: removes the `LB_CT` entries whose state's timeout has passed
//! (`lb_common::flow::expired`, the rule the datapath's lookups apply), as netfilter's GC
//! worker does. The datapath never uses an expired entry, but an LRU only drops one when it
//! needs the room: without this pass the table would look full for ever after a burst (a SYN
//! flood: every SYN leaves two SYN_SENT entries), `lb_map_entries{map="LB_CT"}` would never
//! come down, and live flows would compete with dead ones for the LRU's room.
//!
//! A pass reads every entry (`inspect::ct_entries`), then deletes the expired ones after reading each again (a packet
//! may have refreshed it in between; one that arrives after the re-read and before the delete
//! loses that half, which its partner rebuilds at its next refresh: `conntrack::sync_partner`).

use std::borrow::BorrowMut;

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use lb_common::{flow, CtEntry, CtKey, TimeoutIndex};

/// What one pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Entries that are live after the pass.
    pub live: u64,
    /// Expired entries removed.
    pub deleted: u64,
}

/// One pass over `ct` (of `capacity` entries) at `now_ns` with the datapath's `timeouts`.
pub fn collect<T: BorrowMut<MapData>>(
    ct: &mut HashMap<T, CtKey, CtEntry>,
    capacity: u64,
    timeouts: &[u32; TimeoutIndex::COUNT],
    now_ns: u64,
) -> Pass {
    let expired = |e: &CtEntry, k: &CtKey| flow::expired(k.proto, e.state, e.last_seen_ns, now_ns, timeouts);
    let mut dead = Vec::new();
    let mut live = 0;
    for (k, e) in super::inspect::ct_entries(ct, capacity) {
        if expired(&e, &k) {
            dead.push(k);
        } else {
            live += 1;
        }
    }
    let mut deleted = 0;
    for k in dead {
        match ct.get(&k, 0) {
            Ok(e) if expired(&e, &k) => {
                if ct.remove(&k).is_ok() {
                    deleted += 1;
                }
            }
            Ok(_) => live += 1,
            Err(_) => {}
        }
    }
    Pass { live, deleted }
}

/// A pass over the conntrack table pinned under `pins`.
pub fn collect_pinned(pins: &super::pin::PinDir, timeouts: &[u32; TimeoutIndex::COUNT]) -> Result<Pass> {
    let (mut ct, capacity) = super::inspect::open_ct(pins)?;
    Ok(collect(&mut ct, capacity, timeouts, super::inspect::monotonic_ns()))
}
