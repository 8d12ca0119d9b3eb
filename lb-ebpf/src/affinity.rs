//! sessionAffinity ClientIP (SEMANTICS F1–F3): per (client address, service port) the endpoint
//! the last new connection went to, with an idle timeout refreshed by each new connection.
//! Entries pointing at an endpoint that left the usable set are ignored (and overwritten) by
//! the caller's membership check.

use lb_common::{AffinityKey, AffinityValue};

use crate::maps::LB_AFFINITY;

const NS: u64 = 1_000_000_000;

/// The affine endpoint of `client` for service port `svc_id`, if its timeout has not passed.
#[inline(always)]
pub fn lookup(client: u32, svc_id: u32, timeout_s: u32, now: u64) -> Option<u32> {
    let key = AffinityKey { client, svc_id };
    // SAFETY: the value is copied out at once.
    let v = unsafe { LB_AFFINITY.get(&key).copied() }?;
    if now.saturating_sub(v.last_ns) > timeout_s as u64 * NS {
        return None;
    }
    Some(v.backend_id)
}

/// Records (or refreshes) the endpoint a new connection of `client` went to.
#[inline(always)]
pub fn update(client: u32, svc_id: u32, backend_id: u32, now: u64) {
    let key = AffinityKey { client, svc_id };
    let _ = LB_AFFINITY.insert(&key, &AffinityValue { last_ns: now, backend_id, _pad: 0 }, 0);
}
