//! The eBPF object and everything that touches its maps and programs.

pub mod attach;
pub mod gc;
pub mod inspect;
pub mod migrate;
pub mod pin;
pub mod sys;
pub mod sysctl;
pub mod writer;

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::LpmTrie, Array, ArrayOfMaps, HashMap, Map, MapData},
    Ebpf, EbpfLoader,
};
use lb_common::{Backend, Config, ServiceKey, ServiceValue};

/// The compiled eBPF object (built by build.rs with aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Map names in the object.
pub mod names {
    pub const SERVICES: &str = "LB_SERVICES";
    pub const BACKENDS: &str = "LB_BACKENDS";
    pub const MAGLEV: &str = "LB_MAGLEV";
    pub const CT: &str = "LB_CT";
    pub const CONFIG: &str = "LB_CONFIG";
    pub const STATS: &str = "LB_STATS";
    pub const AFFINITY: &str = "LB_AFFINITY";
    pub const SOURCE_RANGES: &str = "LB_SOURCE_RANGES";
    pub const LOCAL_CIDRS: &str = "LB_LOCAL_CIDRS";
    pub const NODE_ADDRS: &str = "LB_NODE_ADDRS";
    pub const IFACES: &str = "LB_IFACES";
    pub const FRAGS: &str = "LB_FRAGS";
    /// Created by the agent (not in the object): service-port id → "ns/name:port/PROTO".
    pub const NAMES: &str = "LB_NAMES";
    pub const ALL_OBJECT_MAPS: [&str; 12] =
        [SERVICES, BACKENDS, MAGLEV, CT, CONFIG, STATS, AFFINITY, SOURCE_RANGES, LOCAL_CIDRS, NODE_ADDRS, IFACES, FRAGS];
    /// The tc program for pod-facing interfaces (ingress).
    pub const PROG_POD_INGRESS: &str = "lb_pod_ingress";
    /// The tc program for the node's own traffic (egress).
    pub const PROG_HOST_EGRESS: &str = "lb_host_egress";
    /// The XDP program for uplinks.
    pub const PROG_UPLINK: &str = "lb_uplink";
    /// The tc program behind it (uplink ingress): delivers what XDP hands over.
    pub const PROG_UPLINK_DELIVER: &str = "lb_uplink_deliver";
}

/// Capacities (map sizes) with their defaults; all are agent flags.
#[derive(Clone, Debug, clap::Args)]
pub struct Capacity {
    /// Maximum number of service frontends (ClusterIP:port entries plus one per address).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICE_FRONTENDS)]
    pub max_frontends: u32,
    /// Maximum number of service ports (each gets a cluster and a local Maglev table).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_TABLES / 2)]
    pub max_service_ports: u32,
    /// Maximum number of backends (endpoints summed over service ports).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    /// Conntrack entries (each load-balanced flow takes two).
    #[arg(long, default_value_t = lb_common::DEFAULT_CT_ENTRIES)]
    pub conntrack_entries: u32,
    /// Largest Maglev table (a prime from the list in lb-common; the table of a service port
    /// is the smallest listed prime > 100 × its backends, capped here).
    #[arg(long, default_value_t = lb_common::maglev::DEFAULT_MAX_TABLE_SIZE)]
    pub max_table_size: u32,
    /// sessionAffinity entries (one per client address and service port).
    #[arg(long, default_value_t = lb_common::DEFAULT_AFFINITY_ENTRIES)]
    pub affinity_entries: u32,
    /// loadBalancerSourceRanges entries (summed over service ports).
    #[arg(long, default_value_t = lb_common::DEFAULT_SOURCE_RANGES)]
    pub source_ranges: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_frontends: lb_common::DEFAULT_MAX_SERVICE_FRONTENDS,
            max_service_ports: lb_common::DEFAULT_MAX_TABLES / 2,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            conntrack_entries: lb_common::DEFAULT_CT_ENTRIES,
            max_table_size: lb_common::maglev::DEFAULT_MAX_TABLE_SIZE,
            affinity_entries: lb_common::DEFAULT_AFFINITY_ENTRIES,
            source_ranges: lb_common::DEFAULT_SOURCE_RANGES,
        }
    }
}

/// Loads the object with the configured map sizes (programs are loaded into the kernel by
/// their users: attach or trace). With `pins`, every map is pinned there, and a map an earlier
/// agent pinned there is reused as it is (with its contents: that is how state survives a
/// restart; changing a capacity therefore needs `lb-agent --cleanup` first).
pub fn load_object(cap: &Capacity, pins: Option<&pin::PinDir>) -> Result<Ebpf> {
    load_object_from(None, cap, pins)
}

/// [`load_object`], from an object file instead of the embedded one when `file` is given
/// (`lb-agent --ebpf-object`: try a new datapath build, or roll back, without a new agent).
pub fn load_object_from(file: Option<&std::path::Path>, cap: &Capacity, pins: Option<&pin::PinDir>) -> Result<Ebpf> {
    if file.is_none() && EBPF_OBJECT.is_empty() {
        anyhow::bail!("this binary was built with AYA_BUILD_SKIP=1: it carries no eBPF object");
    }
    let paths: Vec<(&str, std::path::PathBuf)> =
        pins.map(|p| names::ALL_OBJECT_MAPS.iter().map(|n| (*n, p.map_path(n))).collect()).unwrap_or_default();
    if let Some(p) = pins {
        // Counters of an agent from before `Counters` had room for new ones (a smaller value):
        // not adoptable, they start again from 0 (as kube-proxy's metrics do on a restart).
        let size = std::mem::size_of::<lb_common::Counters>() as u32;
        if p.drop_if_value_size_differs(names::STATS, size)? {
            tracing::warn!("the pinned {} had another value size: counters start from 0", names::STATS);
        }
    }
    let mut loader = EbpfLoader::new();
    // Kernels whose XDP refuses bpf_xdp_adjust_meta: the uplink program leaves what it would
    // hand to its tc program to the stack (counted), and `--xdp-mode auto` prefers tc there.
    let xdp_meta = u8::from(sys::xdp_has_metadata());
    loader.override_global("XDP_META", &xdp_meta, false);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .map_max_entries(names::SERVICES, cap.max_frontends)
        .map_max_entries(names::BACKENDS, cap.max_backends)
        .map_max_entries(names::MAGLEV, cap.max_service_ports.saturating_mul(2).saturating_add(2))
        .map_max_entries(names::CT, cap.conntrack_entries)
        .map_max_entries(names::AFFINITY, cap.affinity_entries)
        .map_max_entries(names::SOURCE_RANGES, cap.source_ranges);
    match file {
        Some(f) => loader.load_file(f).with_context(|| format!("loading the eBPF object {}", f.display())),
        None => loader.load(EBPF_OBJECT).context("loading the eBPF object (are you root, with bpffs and BTF?)"),
    }
}

/// The maps the writer programs.
pub struct MapSet {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub maglev: ArrayOfMaps<MapData, MapData>,
    pub config: Array<MapData, Config>,
    pub names: HashMap<MapData, u32, [u8; NAME_LEN]>,
    pub source_ranges: LpmTrie<MapData, [u8; 8], u8>,
    pub local_cidrs: LpmTrie<MapData, [u8; 4], u8>,
    pub node_addrs: HashMap<MapData, u32, u8>,
    /// Duplicated descriptors of every map of the object and of LB_NAMES, for accounting
    /// (fdinfo memlock) after the typed handles above took the originals.
    pub fds: std::collections::BTreeMap<&'static str, std::os::fd::OwnedFd>,
}

/// A duplicate of a map's descriptor.
fn dup_fd(map: &Map) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let data = match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) | Map::ArrayOfMaps(d) | Map::PerCpuArray(d) | Map::LpmTrie(d) => d,
        _ => return None,
    };
    data.fd().as_fd().try_clone_to_owned().ok()
}

/// Length of a service-port name in `LB_NAMES` (NUL-padded): namespace (63) / name (63) :
/// port name (15) / protocol fits.
pub const NAME_LEN: usize = 160;

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))
}

impl MapSet {
    /// Takes the writer's maps out of a freshly loaded object and creates the names map
    /// (pinned under `pins` when given, or adopted if an earlier agent pinned it there).
    pub fn take(ebpf: &mut Ebpf, cap: &Capacity, pins: Option<&pin::PinDir>) -> Result<MapSet> {
        const BPF_MAP_TYPE_HASH: u32 = 1;
        // No prealloc: memory follows the number of service ports.
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_HASH,
            4,
            NAME_LEN as u32,
            cap.max_service_ports + 1,
            lb_common::BPF_F_NO_PREALLOC,
        );
        let names_data = match pins {
            Some(p) if p.is_pinned(names::NAMES) => MapData::from_pin(p.map_path(names::NAMES)).context("adopting LB_NAMES")?,
            _ => {
                let data = MapData::create(obj, names::NAMES, None).context("creating LB_NAMES")?;
                if let Some(p) = pins {
                    p.pin_data(names::NAMES, &data)?;
                }
                data
            }
        };
        let mut fds = std::collections::BTreeMap::new();
        for name in names::ALL_OBJECT_MAPS.into_iter().chain([names::NAMES]) {
            let map = if name == names::NAMES { None } else { ebpf.map(name) };
            if let Some(fd) = map.and_then(dup_fd) {
                fds.insert(name, fd);
            }
        }
        if let Ok(fd) = std::os::fd::AsFd::as_fd(names_data.fd()).try_clone_to_owned() {
            fds.insert(names::NAMES, fd);
        }
        Ok(MapSet {
            fds,
            services: HashMap::try_from(take(ebpf, names::SERVICES)?)?,
            backends: HashMap::try_from(take(ebpf, names::BACKENDS)?)?,
            maglev: ArrayOfMaps::try_from(take(ebpf, names::MAGLEV)?)?,
            config: Array::try_from(take(ebpf, names::CONFIG)?)?,
            names: HashMap::try_from(Map::from_map_data(names_data)?)?,
            source_ranges: LpmTrie::try_from(take(ebpf, names::SOURCE_RANGES)?)?,
            local_cidrs: LpmTrie::try_from(take(ebpf, names::LOCAL_CIDRS)?)?,
            node_addrs: HashMap::try_from(take(ebpf, names::NODE_ADDRS)?)?,
        })
    }
}

/// Encodes a name for `LB_NAMES`.
pub fn encode_name(name: &str) -> [u8; NAME_LEN] {
    let mut buf = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    buf
}

/// Decodes a name from `LB_NAMES`.
pub fn decode_name(buf: &[u8; NAME_LEN]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
