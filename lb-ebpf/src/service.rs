//! Frontend lookup and Maglev backend selection.

use lb_common::{Backend, ServiceKey, ServiceValue, BACKEND_NONE};

use crate::maps::{LB_BACKENDS, LB_MAGLEV, LB_SERVICES};

/// The service port behind a frontend (copied out: the value is never read twice).
#[inline(always)]
pub fn lookup(addr: u32, port: u16, proto: u8, scope: u8) -> Option<ServiceValue> {
    let key = ServiceKey { addr, port, proto, scope };
    // SAFETY: the value is copied out at once.
    unsafe { LB_SERVICES.get(&key).copied() }
}

/// Whether `addr` is a frontend address of any service (the address marker entry).
#[inline(always)]
pub fn is_service_addr(addr: u32, scope: u8) -> bool {
    lookup(addr, 0, 0, scope).is_some()
}

/// The backend id in slot `hash % M` of a Maglev table; M is the table's own slot 0, so the
/// size and the slots always come from the same (atomically swapped) inner map.
#[inline(always)]
pub fn maglev_select(table: u32, hash: u32) -> Option<u32> {
    let m = *LB_MAGLEV.get_value(table, &0)?;
    if m == 0 {
        return None;
    }
    let slot = 1 + hash % m;
    let id = *LB_MAGLEV.get_value(table, &slot)?;
    if id == BACKEND_NONE {
        None
    } else {
        Some(id)
    }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: the value is copied out at once.
    unsafe { LB_BACKENDS.get(&id).copied() }
}
