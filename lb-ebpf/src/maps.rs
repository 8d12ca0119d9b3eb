//! Map definitions (see `lb_common::maps` for the table of maps, keys and values).
//! Sizes here are defaults; the agent overrides them at load time from its configuration.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Config, Counters, CtEntry, CtKey, FragKey, FragPorts, IfaceEntry, ServiceKey,
    ServiceValue,
};

/// Frontend → service port. No prealloc: an updated value is never seen half-written.
#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue, 65536, 1> = HashMap::new();

/// Backend id → endpoint of one service port. No prealloc: memory follows the endpoints.
#[btf_map]
pub static LB_BACKENDS: HashMap<u32, Backend, 262144, 1> = HashMap::new();

/// Maglev table id → inner array holding the u32 sequence `[M, slot_0, .., slot_{M-1}]` of
/// backend ids, two per element (array elements are 8-byte aligned: packing halves the
/// memory). The whole inner map is swapped at once (BPF_F_INNER_MAP allows a different size
/// per table), so a packet sees either the old table with its own M or the new one.
#[btf_map]
pub static LB_MAGLEV: ArrayOfMaps<Array<[u32; 2], 1, 4096>, 131072> = ArrayOfMaps::new();

/// Connection tracking, both directions of every load-balanced flow. Per-CPU LRU lists
/// (`BPF_F_NO_COMMON_LRU`, 2; the table itself is shared, every CPU finds every flow): a new
/// flow takes a free entry from its own CPU's list instead of refilling a local cache from a
/// global one under a lock every 128 entries (that refill was the new-flow path's p99: 7 µs).
/// Each CPU's list holds max_entries / CPUs entries and evicts from those.
#[btf_map]
pub static LB_CT: LruHashMap<CtKey, CtEntry, 262144, 2> = LruHashMap::new();

/// The ports of translated datagrams' first fragments, for their later fragments (`frag`).
#[btf_map]
pub static LB_FRAGS: LruHashMap<FragKey, FragPorts, { lb_common::DEFAULT_FRAG_ENTRIES as usize }> = LruHashMap::new();

/// Scratch space for a new flow's two entries (the stack is too small for them).
#[btf_map]
pub static LB_SCRATCH: PerCpuArray<NewFlow, 1> = PerCpuArray::new();

/// [`LB_SCRATCH`]'s value.
#[repr(C)]
pub struct NewFlow {
    pub forward: CtEntry,
    pub reply: CtEntry,
    pub search: crate::lb::PortSearch,
}

/// sessionAffinity ClientIP state: (client, service port) → endpoint and last use.
#[btf_map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue, 65536> = LruHashMap::new();

/// loadBalancerSourceRanges: (service-port id, source prefix) → 1 (`lb_common::source_range_data`).
#[btf_map]
pub static LB_SOURCE_RANGES: LpmTrie<[u8; 8], u8, 16384> = LpmTrie::new();

/// The local traffic detector's CIDRs (`--cluster-cidr`).
#[btf_map]
pub static LB_LOCAL_CIDRS: LpmTrie<[u8; 4], u8, 64> = LpmTrie::new();

/// This node's own addresses (kube-proxy's `fib saddr type local`).
#[btf_map]
pub static LB_NODE_ADDRS: HashMap<u32, u8, 256> = HashMap::new();

/// Datapath configuration (timeouts, masquerade).
#[btf_map]
pub static LB_CONFIG: Array<Config, 1> = Array::new();

/// Per-CPU counters: one block of every `lb_common::Counter` per CPU.
#[btf_map]
pub static LB_STATS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// `lb_common::iface_slot(ifindex)` → the interface's entry: the interfaces the agent manages
/// and how the datapath may deliver to them (the host side of a pod veth: bpf_redirect_peer).
#[btf_map]
pub static LB_IFACES: Array<IfaceEntry, { lb_common::IFACE_SLOTS as usize }> = Array::new();
