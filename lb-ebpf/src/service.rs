//! Frontend lookup and Maglev backend selection.

use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{config_flags, policy::Source, source_range_data, Backend, Config, ServiceKey, ServiceValue, BACKEND_NONE};

use crate::maps::{LB_BACKENDS, LB_CONFIG, LB_LOCAL_CIDRS, LB_MAGLEV, LB_NODE_ADDRS, LB_SERVICES, LB_SOURCE_RANGES};

/// The service port behind a frontend (copied out: the value is never read twice).
#[inline(always)]
pub fn lookup(addr: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    // SAFETY: the value is copied out at once.
    unsafe { LB_SERVICES.get(&ServiceKey::new(addr, port, proto)).copied() }
}

/// Whether `addr` is a frontend address of any service (the address marker entry).
#[inline(always)]
pub fn is_service_addr(addr: u32) -> bool {
    // SAFETY: only presence is read.
    unsafe { LB_SERVICES.get(&ServiceKey::marker(addr)).is_some() }
}

/// The agent's configuration, read in place (an array's element 0 always exists; `None` is
/// only a type-level possibility).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    LB_CONFIG.get(0)
}

/// What the source of a new connection is, for the policy decision: a pod (inside the
/// detector's CIDRs, when a detector is configured), this node, or an external client.
#[inline(always)]
pub fn classify(saddr: u32, cfg: &Config) -> Source {
    if cfg.flags & config_flags::DETECT_LOCAL != 0 && LB_LOCAL_CIDRS.get(&Key::new(32, saddr.to_ne_bytes())).is_some() {
        return Source::Pod;
    }
    if is_node_addr(saddr) {
        return Source::Host;
    }
    Source::External
}

/// Whether `addr` is one of this node's own addresses.
#[inline(always)]
pub fn is_node_addr(addr: u32) -> bool {
    // SAFETY: only presence is read.
    unsafe { LB_NODE_ADDRS.get(&addr).is_some() }
}

/// loadBalancerSourceRanges: whether `saddr` may open connections to service port `svc_id`.
#[inline(always)]
pub fn source_allowed(svc_id: u32, saddr: u32) -> bool {
    LB_SOURCE_RANGES.get(&Key::new(64, source_range_data(svc_id, saddr))).is_some()
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
