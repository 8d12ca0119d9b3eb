//! Connection tracking: two LRU entries per load-balanced connection (forward, keyed by what
//! the client sends; reply, keyed by the post-NAT tuple the backend answers to), which behave
//! as one: they carry the same state (`lb_common::flow`), a packet that changes the state
//! writes both, and each half's once-a-second refresh refreshes the other (rebuilding it if
//! the LRU evicted it), so a one-way flow keeps both alive and neither outlives the other.
//!
//! Entries expire after the timeout of their state (from `LB_CONFIG`), checked on lookup; the
//! LRU evicts the least recently used entries when the map is full. `last_seen` is refreshed
//! at most once a second to keep the hot path read-mostly.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    flow::{self, Dir},
    CtEntry, CtKey, PROTO_TCP,
};

use crate::{
    maps::{LB_CONFIG, LB_CT},
    parse::L4,
    stats::Stats,
};

const NS: u64 = 1_000_000_000;

/// How often `last_seen` is refreshed (the `variant-b` build differs only here).
#[cfg(not(feature = "variant-b"))]
const REFRESH_NS: u64 = NS;
#[cfg(feature = "variant-b")]
const REFRESH_NS: u64 = 2 * NS;

const BPF_NOEXIST: u64 = 1;

/// CLOCK_MONOTONIC at tick resolution (a few ms): timeouts are seconds and `last_seen` is
/// refreshed once a second, so the cheaper coarse clock is exact enough.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Not expired under the configured timeouts (`lb_common::flow::expired`, the rule the
/// agent's garbage collector applies too).
#[inline(always)]
fn live(entry: &CtEntry, proto: u8, now: u64) -> bool {
    // (Element 0 of an array always exists.)
    let Some(c) = LB_CONFIG.get(0) else { return false };
    !flow::expired(proto, entry.state, entry.last_seen_ns, now, &c.timeouts)
}

/// A live (not expired) entry for `key`.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    let e = LB_CT.get_ptr_mut(key)?;
    // SAFETY: a map value pointer, valid for the program's run.
    if !live(unsafe { &*e }, key.proto, now) {
        return None;
    }
    Some(e)
}

/// Whether `entry`'s `last_seen` is due for its refresh (the once-a-second moment at which
/// the forward path also re-checks the flow's backend and next hop).
#[inline(always)]
pub fn refresh_due(entry: &CtEntry, now: u64) -> bool {
    now.saturating_sub(entry.last_seen_ns) > REFRESH_NS
}

/// Whether an RST on the flow whose half is `entry` belongs to it (else it is dropped).
#[inline(always)]
pub fn rst_believed(entry: &CtEntry, dir: Dir, l4: &L4) -> bool {
    flow::rst_believed(entry.state, dir, l4.tcp_flags, l4.seq, l4.ack, entry.seq)
}

/// Records a packet of `dir` on the live half `e` (stored under `key`): the state transition
/// and, when the state changed or the refresh is due, `last_seen`, the sender's sequence
/// number and the other half (its state and `last_seen`; rebuilt if it is gone).
#[inline(always)]
pub fn on_packet(st: &Stats, e: *mut CtEntry, key: &CtKey, dir: Dir, l4: &L4, now: u64) {
    // SAFETY: a map value pointer; concurrent writers on other CPUs store values of the same
    // kind (the last one wins, as for any racing update of one field).
    let entry = unsafe { &mut *e };
    let old = entry.state;
    let state = if key.proto == PROTO_TCP { flow::tcp_next(old, dir, l4.tcp_flags) } else { flow::dgram_next(old, dir) };
    if state == old && !refresh_due(entry, now) {
        return;
    }
    entry.state = state;
    entry.last_seen_ns = now;
    if key.proto == PROTO_TCP {
        entry.seq = l4.seq;
    }
    sync_partner(st, key, entry);
}

/// Brings the other half of `entry`'s connection to `entry`'s state and `last_seen`,
/// rebuilding it if it is gone (an LRU eviction): a half never outlives the other.
#[inline(always)]
fn sync_partner(st: &Stats, key: &CtKey, entry: &CtEntry) {
    let pkey = flow::partner_key(key, entry);
    if let Some(p) = LB_CT.get_ptr_mut(&pkey) {
        // SAFETY: a map value pointer.
        let partner = unsafe { &mut *p };
        if partner.backend_id == entry.backend_id && partner.svc_id == entry.svc_id {
            partner.state = entry.state;
            partner.last_seen_ns = entry.last_seen_ns;
        }
        return;
    }
    // Built in the per-CPU scratch space (an established packet never uses it otherwise):
    // the stack is short.
    let Some(sc) = crate::maps::LB_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch value; nothing else uses it during this packet.
    let rebuilt = unsafe { &mut (*sc).reply };
    *rebuilt = flow::partner_entry(key, entry);
    if LB_CT.insert(&pkey, rebuilt, BPF_NOEXIST).is_ok() {
        st.inc(lb_common::Counter::HalfRestored);
    }
}

/// Removes the other half of the connection whose half is `entry` (before the flow is
/// replaced by a new one: a SYN on a closed tuple, a backend that left).
#[inline(always)]
pub fn remove_partner(key: &CtKey, entry: &CtEntry) {
    let _ = LB_CT.remove(&flow::partner_key(key, entry));
}

/// Removes both halves of a connection (before it is replaced by a new one on the same
/// tuple: a SYN on a closed tuple, a backend that left).
#[inline(always)]
pub fn remove_flow(key: &CtKey, entry: &CtEntry) {
    remove_partner(key, entry);
    let _ = LB_CT.remove(key);
}

/// Inserts `entry` under `key` if the key is free.
#[inline(always)]
pub fn insert_new(key: &CtKey, entry: &CtEntry) -> bool {
    LB_CT.insert(key, entry, BPF_NOEXIST).is_ok()
}

/// Whether the holder of `key` keeps it from a new connection whose forward key is `own`: a
/// live entry of another connection that is not closed (or closed, when the new connection
/// may not take a closed tuple over). See [`claim`].
#[inline(always)]
pub fn holder_keeps(key: &CtKey, own: &CtKey, may_reuse: bool, now: u64) -> bool {
    let Some(h) = LB_CT.get_ptr(key) else { return false };
    // SAFETY: a map value pointer, read in place.
    let holder = unsafe { &*h };
    live(holder, key.proto, now)
        && flow::partner_key(key, holder) != *own
        && !(may_reuse && flow::tuple_reusable(key.proto, holder.state))
}

/// Who holds a key a new flow wants.
pub enum Claim {
    /// The key is ours now.
    Won,
    /// A live entry of another connection holds it.
    Taken,
    /// A live entry of this very connection holds it (created by another CPU at the same
    /// time): use it.
    Same(*mut CtEntry),
}

/// Inserts `entry` under `key` only if no live connection holds the key: the atomic
/// reservation of a post-NAT tuple (and of a new forward key). An expired holder is replaced;
/// a closed TCP connection's (TIME_WAIT, CLOSE) is taken over by a SYN (`may_reuse`), with its
/// other half. `own` is the key of the new connection's forward half: a holder whose forward
/// half is `own` is this connection.
#[inline(always)]
pub fn claim(key: &CtKey, entry: &CtEntry, own: &CtKey, may_reuse: bool, now: u64) -> Claim {
    if LB_CT.insert(key, entry, BPF_NOEXIST).is_ok() {
        return Claim::Won;
    }
    if let Some(h) = LB_CT.get_ptr_mut(key) {
        // SAFETY: a map value pointer, read in place.
        let holder = unsafe { &*h };
        if live(holder, key.proto, now) {
            if key.dir == lb_common::ct_dir::FORWARD || flow::partner_key(key, holder) == *own {
                return Claim::Same(h);
            }
            if !(may_reuse && flow::tuple_reusable(key.proto, holder.state)) {
                return Claim::Taken;
            }
            // A closed connection's tuple: its other half goes with it.
            remove_partner(key, holder);
        }
    }
    // Expired or closed: remove it and race for the key again (one CPU wins the NOEXIST
    // insert).
    let _ = LB_CT.remove(key);
    if LB_CT.insert(key, entry, BPF_NOEXIST).is_ok() {
        Claim::Won
    } else {
        Claim::Taken
    }
}
