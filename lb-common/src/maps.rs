//! Map keys, values and constants shared by the datapath and the agent.
//!
//! Byte-order convention: addresses and ports are stored exactly as they appear on the wire
//! (network byte order) inside native integers, i.e. `u32::from_ne_bytes(ip.octets())` and
//! `u16::from_ne_bytes(port.to_be_bytes())`. The datapath then compares and copies them without
//! any swapping. [`ip_to_map`], [`port_to_map`] and their inverses do the conversions.
//!
//! | map | type | key → value | written by |
//! |---|---|---|---|
//! | `LB_SERVICES` | hash (no prealloc) | [`ServiceKey`] (frontend) → [`ServiceValue`] | agent |
//! | `LB_BACKENDS` | hash (no prealloc) | backend id (`u32`) → [`Backend`] | agent |
//! | `LB_MAGLEV` | array of maps | table id → inner array of `[u32; 2]` holding the sequence `[M, slot_0 .. slot_M-1]` of backend ids, two per element | agent |
//! | `LB_CT` | LRU hash | [`CtKey`] → [`CtEntry`] | datapath |
//! | `LB_CONFIG` | array[1] | [`Config`] | agent |
//! | `LB_STATS` | per-CPU array | [`Counter`] index → `u64` | datapath |

use bytemuck::{Pod, Zeroable};

/// Version of the map layout below; part of every pinned map's path, so an agent never adopts
/// maps whose layout it does not understand.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Packs a table's u32 sequence `[M, slots..]` two per element (the inner arrays' layout).
#[cfg(feature = "std")]
pub fn pack_table(words: &[u32]) -> std::vec::Vec<[u32; 2]> {
    words.chunks(2).map(|c| [c[0], c.get(1).copied().unwrap_or(BACKEND_NONE)]).collect()
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Backend id 0 means "no backend" (an empty Maglev slot).
pub const BACKEND_NONE: u32 = 0;

/// `BPF_F_INNER_MAP`: inner Maglev arrays of different sizes may share one outer map.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_NO_PREALLOC`: hash elements are freed after an RCU grace period, so a reader never
/// sees a value half-overwritten by a concurrent update.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Default capacities (the agent can override each at load time).
pub const DEFAULT_MAX_SERVICE_FRONTENDS: u32 = 65_536;
pub const DEFAULT_MAX_BACKENDS: u32 = 262_144;
/// Two tables per service port (cluster and local endpoint sets).
pub const DEFAULT_MAX_TABLES: u32 = 2 * 65_536;
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;

/// Which frontend of a service port a [`ServiceKey`] describes.
pub mod scope {
    /// ClusterIP (internal traffic policy applies).
    pub const CLUSTER_IP: u8 = 0;
    /// NodePort, ExternalIP, LoadBalancer IP (external traffic policy applies).
    pub const EXTERNAL: u8 = 1;
}

/// A frontend: (address, port, protocol, scope). `port == 0 && proto == 0` is the address marker
/// written once per frontend address: it lets the datapath recognise traffic to a service
/// address when it cannot read ports (fragments, truncated L4 headers) and drop it rather
/// than route it un-NATed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// [`ServiceValue::flags`] bits.
pub mod svc_flags {
    /// The service port has no usable endpoint anywhere (SEMANTICS E1): new connections get
    /// the no-endpoint action instead of a backend.
    pub const NO_ENDPOINTS: u32 = 1 << 0;
    /// This frontend uses the local endpoint table (iTP=Local for ClusterIP, eTP=Local for
    /// external frontends).
    pub const LOCAL_TABLE: u32 = 1 << 1;
    /// The address marker entry (see [`super::ServiceKey`]).
    pub const ADDRESS_MARKER: u32 = 1 << 2;
    /// Session affinity ClientIP (reserved for the affinity module).
    pub const AFFINITY: u32 = 1 << 3;
}

/// What a frontend leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceValue {
    /// Service-port id: stable while the service port exists; conntrack entries carry it.
    pub id: u32,
    /// [`svc_flags`] bits.
    pub flags: u32,
    /// Maglev table id in `LB_MAGLEV` used by this frontend (cluster or local set).
    pub table: u32,
    /// Session affinity idle timeout in seconds (0 = none).
    pub affinity_timeout: u32,
}

/// [`Backend::flags`] bits, from the EndpointSlice conditions.
pub mod backend_flags {
    pub const READY: u8 = 1 << 0;
    pub const SERVING: u8 = 1 << 1;
    pub const TERMINATING: u8 = 1 << 2;
    pub const LOCAL: u8 = 1 << 3;
}

/// One endpoint of one service port (ids are never shared between service ports, so removing
/// an endpoint from one service cannot leave flows of another pointing at it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
    /// The service-port id this backend belongs to.
    pub svc_id: u32,
}

/// Conntrack directions.
pub mod ct_dir {
    /// Client → frontend, as the packet arrives (before DNAT).
    pub const FORWARD: u8 = 0;
    /// Backend → client, as the reply arrives (before reverse NAT).
    pub const REPLY: u8 = 1;
}

/// A flow as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

impl CtKey {
    /// A key for one direction of a flow (addresses and ports in map representation).
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey {
        CtKey { saddr, daddr, sport, dport, proto, dir, _pad: [0; 2] }
    }
}

/// [`CtEntry::flags`] bits.
pub mod ct_flags {
    /// A TCP FIN or RST was seen: the short closing timeout applies.
    pub const TCP_CLOSING: u8 = 1 << 0;
    /// The forward packet was source-NATed (reserved for masquerade).
    pub const SNAT: u8 = 1 << 1;
}

/// Conntrack state of one direction of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` of the last packet (refreshed at most once per second).
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub svc_id: u32,
    /// The frontend the client addressed (restored as the source of replies).
    pub frontend_addr: u32,
    pub frontend_port: u16,
    pub flags: u8,
    pub _pad: u8,
    /// Masquerade address/port (reserved; 0 when not source-NATed).
    pub nat_addr: u32,
    pub nat_port: u16,
    pub _pad2: [u8; 2],
}

/// Datapath configuration written by the agent (`LB_CONFIG[0]`). Timeouts in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    pub tcp_established_timeout: u32,
    pub tcp_closing_timeout: u32,
    pub udp_timeout: u32,
    pub flags: u32,
}

impl Config {
    /// Close to what kube-proxy sets or leaves: nf_conntrack_tcp_timeout_established 24h
    /// (SEMANTICS I5), time_wait 120 s, udp_timeout_stream 120 s.
    pub const DEFAULT: Config = Config { tcp_established_timeout: 86_400, tcp_closing_timeout: 120, udp_timeout: 120, flags: 0 };
}

/// Per-CPU counters (`LB_STATS` index).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IPv4 packets the program looked at.
    Packets = 0,
    Bytes = 1,
    /// Packets to a service frontend that were DNATed (new or established).
    ServicePackets = 2,
    ServiceBytes = 3,
    /// Reply packets reverse-NATed.
    ReplyPackets = 4,
    /// New flows (conntrack miss, backend selected).
    NewFlows = 5,
    /// Established flows whose backend vanished and were re-selected.
    Reselected = 6,
    /// Drop: the service port has no endpoint (REJECT comes with the external-traffic work).
    DropNoEndpoint = 7,
    /// Drop: fragment or truncated L4 header addressed to a service address.
    DropUnparsable = 8,
    /// Drop: the Maglev table or backend was missing (a race with a table swap).
    DropNoBackend = 9,
    /// Drop: a packet rewrite helper failed.
    DropRewrite = 10,
    /// Conntrack insert failed (the packet is still forwarded).
    CtInsertFailed = 11,
}

impl Counter {
    pub const COUNT: u32 = 12;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Packets,
        Counter::Bytes,
        Counter::ServicePackets,
        Counter::ServiceBytes,
        Counter::ReplyPackets,
        Counter::NewFlows,
        Counter::Reselected,
        Counter::DropNoEndpoint,
        Counter::DropUnparsable,
        Counter::DropNoBackend,
        Counter::DropRewrite,
        Counter::CtInsertFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Bytes => "bytes",
            Counter::ServicePackets => "service_packets",
            Counter::ServiceBytes => "service_bytes",
            Counter::ReplyPackets => "reply_packets",
            Counter::NewFlows => "new_flows",
            Counter::Reselected => "reselected_flows",
            Counter::DropNoEndpoint => "drop_no_endpoint",
            Counter::DropUnparsable => "drop_unparsable",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropRewrite => "drop_rewrite_failed",
            Counter::CtInsertFailed => "ct_insert_failed",
        }
    }
}

/// An IPv4 address in map representation.
#[inline(always)]
pub const fn ip_to_map(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}
/// The octets of a map-representation address.
#[inline(always)]
pub const fn ip_from_map(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}
/// A port in map representation (network byte order).
#[inline(always)]
pub const fn port_to_map(port: u16) -> u16 {
    port.to_be()
}
/// A host-order port from its map representation.
#[inline(always)]
pub const fn port_from_map(port: u16) -> u16 {
    u16::from_be(port)
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all of these are #[repr(C)], padding-free (checked by the layout tests) and valid
    // for every bit pattern.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for Config {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(offset_of!(ServiceKey, port), 4);
        assert_eq!(offset_of!(ServiceKey, proto), 6);
        assert_eq!(offset_of!(ServiceKey, scope), 7);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(offset_of!(Backend, svc_id), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(offset_of!(CtKey, dir), 13);
        assert_eq!(size_of::<CtEntry>(), 32);
        assert_eq!(offset_of!(CtEntry, backend_id), 8);
        assert_eq!(offset_of!(CtEntry, frontend_addr), 16);
        assert_eq!(offset_of!(CtEntry, nat_addr), 24);
        assert_eq!(align_of::<CtEntry>(), 8);
        assert_eq!(size_of::<Config>(), 16);
    }

    #[test]
    fn byte_order_helpers_round_trip() {
        let a = ip_to_map([10, 96, 0, 10]);
        assert_eq!(a.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(ip_from_map(a), [10, 96, 0, 10]);
        let p = port_to_map(8080);
        assert_eq!(p.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(port_from_map(p), 8080);
    }

    #[test]
    fn counters_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
        }
    }
}
