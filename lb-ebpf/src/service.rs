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

/// Position `pos` of a table's u32 sequence (two per array element).
#[inline(always)]
fn table_word(table: u32, pos: u32) -> Option<u32> {
    let pair = LB_MAGLEV.get_value(table, &(pos / 2))?;
    Some(if pos % 2 == 0 { pair[0] } else { pair[1] })
}

/// The backend id in slot `hash % M` of a Maglev table; M is the table's own first word, so
/// the size and the slots always come from the same (atomically swapped) inner map.
#[inline(always)]
pub fn maglev_select(table: u32, hash: u32) -> Option<u32> {
    let m = table_word(table, 0)?;
    if m == 0 {
        return None;
    }
    let id = table_word(table, 1 + hash % m)?;
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
