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
//! | `LB_AFFINITY` | LRU hash | [`AffinityKey`] → [`AffinityValue`] (sessionAffinity ClientIP) | datapath |
//! | `LB_SOURCE_RANGES` | LPM trie | [`source_range_data`] (32 + prefix bits) → `u8` (loadBalancerSourceRanges per service port) | agent |
//! | `LB_LOCAL_CIDRS` | LPM trie | address octets → `u8` (`--cluster-cidr`: the local traffic detector) | agent |
//! | `LB_NODE_ADDRS` | hash | address → `u8` (this node's own addresses) | agent |
//! | `LB_CONFIG` | array[1] | [`Config`] | agent |
//! | `LB_STATS` | per-CPU array[1] | [`Counters`] (one block: one lookup per packet) | datapath |
//! | `LB_FRAGS` | LRU hash | [`FragKey`] → [`FragPorts`] (the ports of a translated datagram's first fragment) | datapath |
//! | `LB_IFACES` | array | [`iface_slot`]`(ifindex)` → [`IfaceEntry`] (how the datapath may deliver to an interface) | agent |

use bytemuck::{Pod, Zeroable};

/// Version of the map layout below; part of every pinned map's path, so an agent never adopts
/// maps whose layout it does not understand.
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// Packs a table's u32 sequence `[M, slots..]` two per element (the inner arrays' layout).
#[cfg(feature = "std")]
pub fn pack_table(words: &[u32]) -> std::vec::Vec<[u32; 2]> {
    words.chunks(2).map(|c| [c[0], c.get(1).copied().unwrap_or(BACKEND_NONE)]).collect()
}

pub const PROTO_ICMP: u8 = 1;
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
pub const DEFAULT_AFFINITY_ENTRIES: u32 = 65_536;
pub const DEFAULT_SOURCE_RANGES: u32 = 16_384;

/// A frontend: (address, port, protocol). `port == 0 && proto == 0` is the address marker
/// written once per frontend address: it lets the datapath recognise traffic to a service
/// address when it cannot read ports (fragments, truncated L4 headers) and drop it rather
/// than route it un-NATed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    #[inline(always)]
    pub const fn new(addr: u32, port: u16, proto: u8) -> ServiceKey {
        ServiceKey { addr, port, proto, _pad: 0 }
    }
    /// The address marker of this frontend's address.
    #[inline(always)]
    pub const fn marker(addr: u32) -> ServiceKey {
        ServiceKey { addr, port: 0, proto: 0, _pad: 0 }
    }
}

/// [`ServiceValue::flags`] bits.
pub mod svc_flags {
    /// The service port has no usable endpoint anywhere (SEMANTICS E1): new connections are
    /// REJECTed (ICMP port unreachable), after the [`SOURCE_RANGES`] check (a blocked source
    /// is dropped, as kube-proxy's nftables firewall runs first).
    pub const NO_ENDPOINTS: u32 = 1 << 0;
    /// The frontend's traffic policy is Local: iTP=Local for the ClusterIP, eTP=Local for an
    /// external frontend (see [`crate::policy::decide`]).
    pub const POLICY_LOCAL: u32 = 1 << 1;
    /// The address marker entry (see [`super::ServiceKey`]).
    pub const ADDRESS_MARKER: u32 = 1 << 2;
    /// sessionAffinity ClientIP (timeout in [`super::ServiceValue::affinity_timeout`]).
    pub const AFFINITY: u32 = 1 << 3;
    /// An external frontend (NodePort, ExternalIP, LoadBalancer IP); otherwise the ClusterIP.
    pub const EXTERNAL: u32 = 1 << 4;
    /// A LoadBalancer IP with loadBalancerSourceRanges: new connections from sources outside
    /// the service port's ranges in `LB_SOURCE_RANGES` are dropped.
    pub const SOURCE_RANGES: u32 = 1 << 5;
}

/// What a frontend leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceValue {
    /// Service-port id: stable while the service port exists; conntrack entries carry it.
    pub id: u32,
    /// [`svc_flags`] bits.
    pub flags: u32,
    /// Maglev table ids in `LB_MAGLEV` of the cluster and local endpoint sets.
    pub cluster_table: u32,
    pub local_table: u32,
    /// Session affinity idle timeout in seconds (0 = none).
    pub affinity_timeout: u32,
    pub _pad: u32,
}

/// [`Backend::flags`] bits, from the EndpointSlice conditions.
pub mod backend_flags {
    pub const READY: u8 = 1 << 0;
    pub const SERVING: u8 = 1 << 1;
    pub const TERMINATING: u8 = 1 << 2;
    pub const LOCAL: u8 = 1 << 3;
    /// Member of the service port's cluster endpoint set (SEMANTICS C1) right now.
    pub const IN_CLUSTER_SET: u8 = 1 << 4;
    /// Member of the service port's local endpoint set (SEMANTICS C2) right now.
    pub const IN_LOCAL_SET: u8 = 1 << 5;
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
    /// The flow is source-NATed: the forward entry's `nat_addr:nat_port` is the source to
    /// write (the node's address when masqueraded; the client's own address with another port
    /// when its post-NAT tuple clashed with another flow's), the reply entry's is the client
    /// to restore as destination.
    pub const SNAT: u8 = 1 << 1;
}

/// Conntrack state of one direction of a flow.
///
/// Forward entry (key: client → frontend): `backend_id`, the backend's address and port in
/// `peer_addr:peer_port` (established packets are translated from the entry; the backend's
/// `LB_BACKENDS` entry is re-checked on every UDP packet and once a second, with the
/// `last_seen` refresh, for TCP and SCTP), and with [`ct_flags::SNAT`] the source to write in
/// `nat_addr:nat_port`. Reply entry (key: backend → client, or backend → masquerade address):
/// the frontend in `peer_addr:peer_port` becomes the source, and with SNAT `nat_addr:nat_port`
/// (the client) the destination. The reply entry's key is the flow's post-NAT tuple: inserting
/// it with `BPF_NOEXIST` is what reserves it (and a masquerade port).
///
/// The two entries are one connection: they carry the same `state` ([`crate::flow`]), a
/// packet that changes it writes both, and each half refreshes (or, if the LRU evicted it,
/// rebuilds) the other with its own once-a-second refresh, so neither outlives the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// `bpf_ktime_get_coarse_ns()` of the last packet (refreshed at most once per second).
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub svc_id: u32,
    /// Forward entry: the backend (DNAT destination). Reply entry: the frontend the client
    /// addressed (restored as the source).
    pub peer_addr: u32,
    pub peer_port: u16,
    pub flags: u8,
    /// The connection's state ([`crate::flow`]): TCP's netfilter state, or UDP/SCTP
    /// unreplied/replied. It chooses the timeout.
    pub state: u8,
    /// SNAT source (forward) or client to restore (reply); 0 unless SNAT.
    pub nat_addr: u32,
    pub nat_port: u16,
    pub _pad2: [u8; 2],
    /// This direction's next hop as the FIB last gave it (0: none cached): the egress
    /// interface and the MACs to write. Looked up again once a second, with the `last_seen`
    /// refresh, so a route or neighbour change takes effect within a second.
    pub hop_ifindex: u32,
    pub hop_dmac: [u8; 6],
    pub hop_smac: [u8; 6],
    /// TCP: the sequence number an RST of this direction's sender is checked against
    /// ([`crate::flow::rst_believed`]): in SYN_SENT the reply half holds the client's ISN + 1;
    /// otherwise the sender's sequence number as last recorded.
    pub seq: u32,
    pub _pad3: u32,
}

/// Map layouts of earlier versions, for carrying flows over an upgrade.
pub mod legacy {
    use super::*;

    /// `LB_CT`'s value in layout version 3 (the key is unchanged).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
    pub struct CtEntryV3 {
        pub last_seen_ns: u64,
        pub backend_id: u32,
        pub svc_id: u32,
        pub peer_addr: u32,
        pub peer_port: u16,
        pub flags: u8,
        pub _pad: u8,
        pub nat_addr: u32,
        pub nat_port: u16,
        pub _pad2: [u8; 2],
        pub hop_ifindex: u32,
        pub hop_dmac: [u8; 6],
        pub hop_smac: [u8; 6],
    }

    /// Version 3's "a FIN or RST was seen" flag.
    pub const V3_TCP_CLOSING: u8 = 1 << 0;

    /// A version-3 entry in today's layout. Version 3 knew "open" and "closing" only: an open
    /// TCP flow becomes ESTABLISHED, a closing one TIME_WAIT (the 120 s it had left); a UDP or
    /// SCTP flow counts as replied (version 3 gave every datagram flow the stream timeout).
    /// The cached next hop is kept; the RST check starts from 0 (refreshed within a second).
    pub fn ct_entry_from_v3(old: &CtEntryV3, proto: u8) -> CtEntry {
        let state = if proto == PROTO_TCP {
            if old.flags & V3_TCP_CLOSING != 0 {
                crate::flow::tcp::TIME_WAIT
            } else {
                crate::flow::tcp::ESTABLISHED
            }
        } else {
            crate::flow::REPLIED
        };
        CtEntry {
            last_seen_ns: old.last_seen_ns,
            backend_id: old.backend_id,
            svc_id: old.svc_id,
            peer_addr: old.peer_addr,
            peer_port: old.peer_port,
            flags: old.flags & ct_flags::SNAT,
            state,
            nat_addr: old.nat_addr,
            nat_port: old.nat_port,
            _pad2: [0; 2],
            hop_ifindex: old.hop_ifindex,
            hop_dmac: old.hop_dmac,
            hop_smac: old.hop_smac,
            seq: 0,
            _pad3: 0,
        }
    }
}

/// [`Config::flags`] bits.
pub mod config_flags {
    /// `--masquerade-all`.
    pub const MASQUERADE_ALL: u32 = 1 << 0;
    /// A local traffic detector is configured (`--cluster-cidr`): sources in `LB_LOCAL_CIDRS`
    /// are local pods. Without it nothing is "local" (kube-proxy's no-op detector).
    pub const DETECT_LOCAL: u32 = 1 << 1;
}

/// Which of [`Config::timeouts`] applies ([`crate::flow::timeout_index`]).
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutIndex {
    TcpSynSent = 0,
    TcpSynRecv = 1,
    TcpEstablished = 2,
    TcpFinWait = 3,
    TcpCloseWait = 4,
    TcpLastAck = 5,
    TcpTimeWait = 6,
    TcpClose = 7,
    /// UDP / SCTP before a reply was seen.
    Udp = 8,
    /// UDP / SCTP once a reply was seen.
    UdpStream = 9,
}

impl TimeoutIndex {
    pub const COUNT: usize = 10;
}

/// Datapath configuration written by the agent (`LB_CONFIG[0]`). Timeouts in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// [`config_flags`] bits.
    pub flags: u32,
    /// The masquerade (SNAT) address: the node's primary address (map representation).
    pub snat_addr: u32,
    /// The ports a source NAT searches when the client's own port cannot be kept, host
    /// order, inclusive ...
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// ... except the node's ephemeral range (`net.ipv4.ip_local_port_range`), from which
    /// the node's own sockets take their ports at any time: a port we hold there could be
    /// given to a new node connection to the same backend (a kubelet probe) and its replies
    /// would be taken for our flow's. The node's existing sockets are checked at reservation.
    pub local_port_min: u16,
    pub local_port_max: u16,
    /// Idle timeouts by [`TimeoutIndex`].
    pub timeouts: [u32; TimeoutIndex::COUNT],
}

impl Config {
    /// kube-proxy's defaults (`--conntrack-tcp-timeout-established` 24h,
    /// `--conntrack-tcp-timeout-close-wait` 1h) and netfilter's for everything kube-proxy does
    /// not set (SYN_SENT 120 s, SYN_RECV 60 s, FIN_WAIT 120 s, LAST_ACK 30 s, TIME_WAIT 120 s,
    /// CLOSE 10 s, UDP 30 s, UDP stream 120 s). Source NAT searches 1024–65535 outside Linux's
    /// default ephemeral range 32768–60999 (the agent writes the node's).
    pub const DEFAULT: Config = Config {
        flags: 0,
        snat_addr: 0,
        snat_port_min: 1024,
        snat_port_max: 65_535,
        local_port_min: 32_768,
        local_port_max: 60_999,
        timeouts: [120, 60, 86_400, 120, 3_600, 30, 120, 10, 30, 120],
    };
}

/// `LB_AFFINITY` key: client address and service port (SEMANTICS F1: the client IP only, per
/// service port, shared by all of its frontends).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    pub client: u32,
    pub svc_id: u32,
}

/// `LB_AFFINITY` value: the endpoint and when a new connection last went to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AffinityValue {
    pub last_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// `LB_SOURCE_RANGES` key data (LPM trie, after the prefix length): the service-port id
/// (big-endian, so it is matched whole by prefixes of 32 + n bits) then the address.
#[inline(always)]
pub const fn source_range_data(svc_id: u32, addr: u32) -> [u8; 8] {
    let id = svc_id.to_be_bytes();
    let a = addr.to_ne_bytes();
    [id[0], id[1], id[2], id[3], a[0], a[1], a[2], a[3]]
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
    /// The service port has no usable endpoint: new connections REJECTed (ICMP port unreachable).
    RejectNoEndpoint = 7,
    /// Drop: fragment or truncated L4 header addressed to a service address.
    DropUnparsable = 8,
    /// Drop: the Maglev table or backend was missing (a race with a table swap).
    DropNoBackend = 9,
    /// Drop: a packet rewrite helper failed.
    DropRewrite = 10,
    /// Conntrack insert failed (the packet is still forwarded).
    CtInsertFailed = 11,
    /// Drop: the frontend's policy is Local and this node has no local endpoint (E2).
    DropNoLocalEndpoint = 12,
    /// Drop: the source is outside the LoadBalancer's loadBalancerSourceRanges (D7).
    DropSourceRange = 13,
    /// Drop: no free masquerade port for the flow's post-NAT tuple.
    DropNoSnatPort = 14,
    /// New flows that were masqueraded.
    Masqueraded = 15,
    /// New flows sent to an endpoint chosen by session affinity.
    AffinityHits = 16,
    /// Translated packets delivered by redirecting them to an interface (tc: bpf_redirect
    /// with the next hop's MAC from the FIB; XDP: handed to the uplink's tc program).
    FwdRedirect = 17,
    /// Translated packets delivered straight into a pod (bpf_redirect_peer).
    FwdPeer = 18,
    /// Translated packets redirected with the neighbour left to the kernel (bpf_redirect_neigh:
    /// the next hop's MAC was not resolved yet).
    FwdNeigh = 19,
    /// Translated packets sent back out of the uplink they came in on (XDP_TX).
    FwdXdpTx = 20,
    /// Translated packets handed to the kernel's stack: no route (FIB miss, unreachable,
    /// blackhole, prohibited, forwarding disabled).
    StackNoRoute = 21,
    /// ... larger than the egress MTU (the stack fragments or answers "fragmentation needed").
    StackMtu = 22,
    /// ... addressed to this node (local delivery).
    StackLocal = 23,
    /// ... whose TTL expires here (the stack answers "time exceeded").
    StackTtl = 24,
    /// Drop: a TCP RST that belongs to no flow, or whose sequence number does not fit its
    /// flow (netfilter: INVALID, dropped by kube-proxy's `--ctstate INVALID -j DROP`).
    DropTcpInvalid = 25,
    /// New flows whose post-NAT tuple was taken by another flow (one backend behind two
    /// frontends, the same client port to both): the source port was remapped.
    PortRemapped = 26,
    /// A SYN on a closed tuple (TIME_WAIT, CLOSE) started a new connection.
    Reopened = 27,
    /// One half of a connection was missing (evicted) and rebuilt from the other.
    HalfRestored = 28,
    /// Translated packets the uplink's XDP program had to leave to the kernel's stack because
    /// this kernel's XDP has no metadata (`bpf_xdp_adjust_meta`) to hand them to its tc program.
    StackNoXdpMeta = 29,
    /// ICMP errors (destination unreachable, fragmentation needed, time exceeded, parameter
    /// problem) about a translated flow, translated: outer addresses and the quoted packet.
    IcmpRelated = 30,
    /// Fragments after the first of a translated datagram, translated with the ports its
    /// first fragment carried (`LB_FRAGS`).
    FragmentsTranslated = 31,
    /// Fragments to a service address whose first fragment was not seen (lost, reordered
    /// behind them, or of a flow that is not tracked): dropped, never delivered un-NATed.
    DropFragment = 32,
}

impl Counter {
    pub const COUNT: u32 = 33;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Packets,
        Counter::Bytes,
        Counter::ServicePackets,
        Counter::ServiceBytes,
        Counter::ReplyPackets,
        Counter::NewFlows,
        Counter::Reselected,
        Counter::RejectNoEndpoint,
        Counter::DropUnparsable,
        Counter::DropNoBackend,
        Counter::DropRewrite,
        Counter::CtInsertFailed,
        Counter::DropNoLocalEndpoint,
        Counter::DropSourceRange,
        Counter::DropNoSnatPort,
        Counter::Masqueraded,
        Counter::AffinityHits,
        Counter::FwdRedirect,
        Counter::FwdPeer,
        Counter::FwdNeigh,
        Counter::FwdXdpTx,
        Counter::StackNoRoute,
        Counter::StackMtu,
        Counter::StackLocal,
        Counter::StackTtl,
        Counter::DropTcpInvalid,
        Counter::PortRemapped,
        Counter::Reopened,
        Counter::HalfRestored,
        Counter::StackNoXdpMeta,
        Counter::IcmpRelated,
        Counter::FragmentsTranslated,
        Counter::DropFragment,
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
            Counter::RejectNoEndpoint => "reject_no_endpoint",
            Counter::DropUnparsable => "drop_unparsable",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropRewrite => "drop_rewrite_failed",
            Counter::CtInsertFailed => "ct_insert_failed",
            Counter::DropNoLocalEndpoint => "drop_no_local_endpoint",
            Counter::DropSourceRange => "drop_source_range",
            Counter::DropNoSnatPort => "drop_no_snat_port",
            Counter::Masqueraded => "masqueraded_flows",
            Counter::AffinityHits => "affinity_hits",
            Counter::FwdRedirect => "fwd_redirect",
            Counter::FwdPeer => "fwd_redirect_peer",
            Counter::FwdNeigh => "fwd_redirect_neigh",
            Counter::FwdXdpTx => "fwd_xdp_tx",
            Counter::StackNoRoute => "stack_no_route",
            Counter::StackMtu => "stack_over_mtu",
            Counter::StackLocal => "stack_local_destination",
            Counter::StackTtl => "stack_ttl_expired",
            Counter::DropTcpInvalid => "drop_tcp_invalid",
            Counter::PortRemapped => "port_remapped_flows",
            Counter::Reopened => "reopened_flows",
            Counter::HalfRestored => "ct_half_restored",
            Counter::StackNoXdpMeta => "stack_no_xdp_metadata",
            Counter::IcmpRelated => "icmp_errors_translated",
            Counter::FragmentsTranslated => "fragments_translated",
            Counter::DropFragment => "drop_fragment_without_first",
        }
    }
}

/// Every counter of one CPU (`LB_STATS[0]`): a packet looks its CPU's block up once and
/// increments fields of it. The block has room for [`COUNTER_SLOTS`] counters, more than
/// exist: a new counter keeps the map's value size, so an agent that adds one still adopts
/// the pinned map of the agent before it (slots past [`Counter::COUNT`] stay 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    pub v: [u64; COUNTER_SLOTS],
}

/// Slots of [`Counters`].
pub const COUNTER_SLOTS: usize = 64;
const _: () = assert!(Counter::COUNT as usize <= COUNTER_SLOTS);

/// A fragmented datagram as it arrived (`LB_FRAGS`): addresses in map representation, the
/// IPv4 identification as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The ports of a fragmented datagram's first fragment (map representation), and when it was
/// seen: a later fragment is translated with them, as its first fragment was. Entries older
/// than [`FRAG_TIMEOUT_NS`] (the kernel's `ipfrag_time`) belong to an earlier datagram that
/// reused the identification and are ignored.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FragPorts {
    pub seen_ns: u64,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}

/// How long a first fragment's ports serve its later fragments (the kernel's default
/// `net.ipv4.ipfrag_time`: a receiver gives up reassembling after that).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;
/// Default `LB_FRAGS` capacity (datagrams in flight at once).
pub const DEFAULT_FRAG_ENTRIES: u32 = 8192;

/// `skb->mark` a tc program sets on a packet it redirects to an interface's egress: our egress
/// program there clears it and lets the packet go without parsing and looking it up again.
pub const MARK_DELIVERED: u32 = 0x4c42_d311;

/// The 4-byte XDP metadata the uplink's XDP program leaves on a packet it passes to the kernel
/// for the uplink's tc ingress program to deliver (a pod on this node cannot be reached with
/// XDP_TX / XDP_REDIRECT: its veth has no XDP receive queue).
pub mod xdp_meta {
    /// A forwarded packet, translated: deliver it, decrementing the TTL.
    pub const FORWARDED: u32 = 0x4c42_f0d1;
    /// A packet the datapath built (a REJECT reply): deliver it as it is.
    pub const ORIGINATED: u32 = 0x4c42_f0d2;
}

/// Slots of `LB_IFACES`: an array (its lookups are inlined) indexed by [`iface_slot`].
pub const IFACE_SLOTS: u32 = 65_536;

/// The `LB_IFACES` slot of an interface. Two interfaces sharing a slot (ifindexes 65 536
/// apart) cannot both be described: the entry names its ifindex, and an interface without its
/// own entry is delivered to with a plain redirect (correct, one backlog trip slower).
#[inline(always)]
pub const fn iface_slot(ifindex: u32) -> u32 {
    ifindex % IFACE_SLOTS
}

/// `LB_IFACES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IfaceEntry {
    pub ifindex: u32,
    /// [`iface_flags`] bits.
    pub flags: u32,
}

/// `LB_IFACES` flags: what the agent knows about an interface the FIB may send a packet to.
pub mod iface_flags {
    /// The host side of a pod's veth: tc ingress programs deliver to the pod with
    /// bpf_redirect_peer (straight into the pod's namespace, no second trip through the
    /// backlog).
    pub const POD_VETH: u32 = 1 << 0;
    /// Our egress program runs on it: a packet redirected there carries `MARK_DELIVERED` so
    /// that the program lets it pass (and clears the mark). Other interfaces never see the mark
    /// (a tunnel device's routing may use marks).
    pub const MANAGED: u32 = 1 << 1;
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
    unsafe impl aya::Pod for legacy::CtEntryV3 {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for IfaceEntry {}
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
        assert_eq!(size_of::<ServiceValue>(), 24);
        assert_eq!(offset_of!(ServiceValue, local_table), 12);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(offset_of!(Backend, svc_id), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(offset_of!(CtKey, dir), 13);
        assert_eq!(size_of::<CtEntry>(), 56);
        assert_eq!(offset_of!(CtEntry, state), 23);
        assert_eq!(offset_of!(CtEntry, seq), 48);
        assert_eq!(size_of::<legacy::CtEntryV3>(), 48);
        assert_eq!(offset_of!(CtEntry, hop_ifindex), 32);
        assert_eq!(offset_of!(CtEntry, backend_id), 8);
        assert_eq!(offset_of!(CtEntry, peer_addr), 16);
        assert_eq!(offset_of!(CtEntry, nat_addr), 24);
        assert_eq!(align_of::<CtEntry>(), 8);
        assert_eq!(size_of::<Config>(), 56);
        assert_eq!(offset_of!(Config, timeouts), 16);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<Counters>(), 8 * 64, "the value size of a pinned map: never changes");
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragPorts>(), 16);
        assert_eq!(source_range_data(0x0102_0304, ip_to_map([10, 0, 0, 9])), [1, 2, 3, 4, 10, 0, 0, 9]);
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
    fn v3_entries_carry_over() {
        let old = legacy::CtEntryV3 {
            last_seen_ns: 7,
            backend_id: 3,
            svc_id: 9,
            peer_addr: 1,
            peer_port: 2,
            flags: legacy::V3_TCP_CLOSING | ct_flags::SNAT,
            _pad: 0,
            nat_addr: 5,
            nat_port: 6,
            _pad2: [0; 2],
            hop_ifindex: 4,
            hop_dmac: [1; 6],
            hop_smac: [2; 6],
        };
        let new = legacy::ct_entry_from_v3(&old, PROTO_TCP);
        assert_eq!((new.last_seen_ns, new.backend_id, new.svc_id, new.peer_addr, new.peer_port), (7, 3, 9, 1, 2));
        assert_eq!((new.flags, new.state, new.nat_addr, new.nat_port), (ct_flags::SNAT, crate::flow::tcp::TIME_WAIT, 5, 6));
        assert_eq!((new.hop_ifindex, new.hop_dmac, new.hop_smac), (4, [1; 6], [2; 6]));
        let open = legacy::ct_entry_from_v3(&legacy::CtEntryV3 { flags: 0, ..old }, PROTO_TCP);
        assert_eq!(open.state, crate::flow::tcp::ESTABLISHED);
        assert_eq!(legacy::ct_entry_from_v3(&old, PROTO_UDP).state, crate::flow::REPLIED);
    }

    #[test]
    fn counters_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
        }
    }
}
