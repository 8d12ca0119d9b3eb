//! Connection tracking: one LRU entry per direction of a load-balanced flow.
//!
//! Entries expire after an idle timeout (TCP established / closing, UDP; from `LB_CONFIG`),
//! checked on lookup; the LRU evicts the least recently used entries when the map is full.
//! `last_seen` is refreshed at most once a second to keep the hot path read-mostly.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{ct_flags, CtEntry, CtKey, PROTO_TCP};

use crate::{
    maps::LB_CT,
    parse::{TCP_FIN, TCP_RST},
    service::config,
};

const NS: u64 = 1_000_000_000;

/// How often `last_seen` is refreshed (the `variant-b` build differs only here).
#[cfg(not(feature = "variant-b"))]
const REFRESH_NS: u64 = NS;
#[cfg(feature = "variant-b")]
const REFRESH_NS: u64 = 2 * NS;

/// CLOCK_MONOTONIC at tick resolution (a few ms): timeouts are seconds and `last_seen` is
/// refreshed once a second, so the cheaper coarse clock is exact enough.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn timeout_ns(proto: u8, flags: u8) -> u64 {
    let cfg = config();
    let secs = if proto == PROTO_TCP {
        if flags & ct_flags::TCP_CLOSING != 0 {
            cfg.tcp_closing_timeout
        } else {
            cfg.tcp_established_timeout
        }
    } else {
        cfg.udp_timeout
    };
    secs as u64 * NS
}

/// A live (not expired) entry for `key`.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    let e = LB_CT.get_ptr_mut(key)?;
    // SAFETY: a map value pointer, valid for the program's run.
    let entry = unsafe { &*e };
    if now.saturating_sub(entry.last_seen_ns) > timeout_ns(key.proto, entry.flags) {
        return None;
    }
    Some(e)
}

/// Whether `entry`'s `last_seen` is due for its refresh (the once-a-second moment at which
/// the forward path also re-checks the flow's backend).
#[inline(always)]
pub fn refresh_due(entry: &CtEntry, now: u64) -> bool {
    now.saturating_sub(entry.last_seen_ns) > REFRESH_NS
}

/// Records activity on a live entry: marks TCP closing on FIN/RST, refreshes `last_seen`.
#[inline(always)]
pub fn touch(e: *mut CtEntry, now: u64, tcp_flags: u8) {
    // SAFETY: a map value pointer; concurrent writers only store the same kinds of values.
    let entry = unsafe { &mut *e };
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & ct_flags::TCP_CLOSING == 0 {
        entry.flags |= ct_flags::TCP_CLOSING;
    }
    if refresh_due(entry, now) {
        entry.last_seen_ns = now;
    }
}

/// Inserts (or replaces) an entry; false if the map refused it.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry) -> bool {
    LB_CT.insert(key, entry, 0).is_ok()
}

const BPF_NOEXIST: u64 = 1;

/// Inserts an entry only if the key is free (or its entry expired): the atomic reservation of
/// a post-NAT tuple. False if another live flow holds it.
#[inline(always)]
pub fn insert_new(key: &CtKey, entry: &CtEntry, now: u64) -> bool {
    if LB_CT.insert(key, entry, BPF_NOEXIST).is_ok() {
        return true;
    }
    if lookup(key, now).is_some() {
        return false;
    }
    // Expired: delete it and race for the key again (one CPU wins the NOEXIST insert).
    let _ = LB_CT.remove(key);
    LB_CT.insert(key, entry, BPF_NOEXIST).is_ok()
}
