//! The single writer: diffs the desired state against what it has programmed and updates the
//! maps so that a packet never sees a half-done change.
//!
//! One sync runs in phases, each finished for every service port before the next starts:
//! 1. service ports that disappeared lose their frontends (`LB_SERVICES`);
//! 2. backends are written (new ids for new endpoints, flags for changed conditions);
//! 3. every changed Maglev table is built into a new inner array, then they are swapped into
//!    `LB_MAGLEV` with `BPF_MAP_UPDATE_BATCH`, 1024 at a time (a map-in-map update from user
//!    space waits for an RCU grace period: one per batch instead of one per table);
//! 4. frontends are written (values replaced whole) — only for service ports whose tables are
//!    in place;
//! 5. backends nobody lists any more are deleted, and ids of removed service ports are freed.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use lb_common::{
    backend_flags, config_flags, ip_to_map,
    maglev::{build_table, table_size, MaglevBackend},
    port_to_map, source_range_data, svc_flags, Backend, Config, ServiceKey, ServiceValue, BPF_F_INNER_MAP,
};
use tracing::{debug, warn};

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{encode_name, sys, MapSet};
use crate::model::{DesiredState, Endpoint, EndpointAddr, ServicePortName, ServicePortState};

const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// Tables swapped in per BPF_MAP_UPDATE_BATCH (each waits for one RCU grace period; each
/// pending table holds a file descriptor).
const TABLE_BATCH: usize = 1024;

/// What one sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub service_ports: usize,
    pub service_ports_changed: usize,
    pub service_ports_removed: usize,
    pub tables_written: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Per-service-port failures ("ns/name:port/PROTO: reason"); every other one was applied.
    pub errors: Vec<String>,
}

#[derive(Default, Clone)]
struct Table {
    /// The endpoints the table holds (Maglev does not depend on their order).
    endpoints: BTreeSet<EndpointAddr>,
    installed: bool,
    /// Kernel-accounted memory of the installed inner map.
    bytes: u64,
}

struct Programmed {
    id: u32,
    frontends: BTreeMap<ServiceKey, ServiceValue>,
    /// `LB_SOURCE_RANGES` entries: (prefix length incl. the 32 id bits, key data).
    source_ranges: BTreeSet<(u32, [u8; 8])>,
    backends: BTreeMap<EndpointAddr, (u32, u8)>,
    cluster: Table,
    local: Table,
}

impl Programmed {
    /// A service port with nothing programmed yet.
    fn new(id: u32) -> Programmed {
        Programmed {
            id,
            frontends: BTreeMap::new(),
            source_ranges: BTreeSet::new(),
            backends: BTreeMap::new(),
            cluster: Table::default(),
            local: Table::default(),
        }
    }
}

/// Table ids of a service port in `LB_MAGLEV`.
pub fn cluster_table(id: u32) -> u32 {
    2 * id
}
pub fn local_table(id: u32) -> u32 {
    2 * id + 1
}

/// A table built in phase 3, waiting to be swapped in.
struct NewTable {
    owner: ServicePortName,
    table_id: u32,
    local: bool,
    /// `None`: reset to the shared empty table.
    map: Option<MapData>,
    state: Table,
}

pub struct Writer {
    maps: MapSet,
    max_table_size: u32,
    max_service_ports: u32,
    programmed: BTreeMap<ServicePortName, Programmed>,
    free_ids: BTreeSet<u32>,
    next_id: u32,
    backend_ids: BTreeSet<u32>,
    next_backend_id: u32,
    markers: BTreeSet<ServiceKey>,
    /// Rewrite every address marker at the next apply (after [`Writer::invalidate`]).
    rewrite_markers: bool,
    /// The desired state of each service port as last applied successfully: an unchanged
    /// service port costs one comparison per sync.
    applied: BTreeMap<ServicePortName, ServicePortState>,
    empty_table: MapData,
    /// Kernel-accounted memory of every installed Maglev table.
    table_bytes: u64,
    node: NodeNet,
    /// False until [`Writer::set_node`] wrote `node` (and again after an invalidate).
    node_written: bool,
    config: Config,
}

fn endpoint_flags(ep: &Endpoint, in_cluster: bool, in_local: bool) -> u8 {
    let mut f = 0;
    for (on, bit) in [
        (ep.ready, backend_flags::READY),
        (ep.serving, backend_flags::SERVING),
        (ep.terminating, backend_flags::TERMINATING),
        (ep.local, backend_flags::LOCAL),
        (in_cluster, backend_flags::IN_CLUSTER_SET),
        (in_local, backend_flags::IN_LOCAL_SET),
    ] {
        if on {
            f |= bit;
        }
    }
    f
}

/// A new inner table holding `words` (`[M, slots..]`), packed two per element.
fn create_table(words: &[u32]) -> Result<(MapData, u64)> {
    let packed = lb_common::pack_table(words);
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 8, packed.len() as u32, BPF_F_INNER_MAP);
    let map = MapData::create(obj, "lb_maglev_tbl", None).context("creating a Maglev table")?;
    sys::array_update_all(map.fd(), &packed).context("filling a Maglev table")?;
    let bytes = sys::memlock_bytes(map.fd()).unwrap_or(0);
    Ok((map, bytes))
}

/// This node's network facts the datapath needs besides the services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeNet {
    /// Addresses NodePorts are served on (`--nodeport-addresses`, resolved).
    pub nodeport_ips: Vec<Ipv4Addr>,
    /// Every address of this node (sources from them are "the host", H3).
    pub local_ips: Vec<Ipv4Addr>,
    /// The local traffic detector's CIDRs (`--cluster-cidr`); empty: no detector.
    pub cluster_cidrs: Vec<Ipv4Net>,
    pub masquerade_all: bool,
    /// The node's primary address: the masquerade source, and the address kube-proxy tests
    /// for the loadBalancerSourceRanges exception of traffic from an LB IP ([`source_ranges`]).
    pub snat_ip: Option<Ipv4Addr>,
}

/// The frontends of a service port with their values: the ClusterIP, a NodePort on every
/// node-port address, every ExternalIP and every LoadBalancer ingress IP (SEMANTICS D1–D6).
pub fn frontends(id: u32, st: &ServicePortState, node: &NodeNet) -> BTreeMap<ServiceKey, ServiceValue> {
    let mut common = 0;
    if !st.has_any_endpoints {
        common |= svc_flags::NO_ENDPOINTS;
    }
    let affinity_timeout = st.affinity_timeout_seconds.unwrap_or(0);
    if st.affinity_timeout_seconds.is_some() {
        common |= svc_flags::AFFINITY;
    }
    let value = |flags: u32| ServiceValue {
        id,
        flags: common | flags,
        cluster_table: cluster_table(id),
        local_table: local_table(id),
        affinity_timeout,
        _pad: 0,
    };
    let proto = st.protocol.number();
    let key = |ip: Ipv4Addr, port: u16| ServiceKey::new(ip_to_map(ip.octets()), port_to_map(port), proto);
    let internal = if st.internal_policy_local { svc_flags::POLICY_LOCAL } else { 0 };
    let external = svc_flags::EXTERNAL | if st.external_policy_local { svc_flags::POLICY_LOCAL } else { 0 };
    let mut out = BTreeMap::new();
    if let Some(np) = st.node_port {
        for ip in &node.nodeport_ips {
            out.insert(key(*ip, np), value(external));
        }
    }
    for ip in &st.external_ips {
        out.insert(key(*ip, st.port), value(external));
    }
    let ranges = if st.load_balancer_source_ranges.is_empty() { 0 } else { svc_flags::SOURCE_RANGES };
    for ip in &st.load_balancer_ips {
        out.insert(key(*ip, st.port), value(external | ranges));
    }
    // The ClusterIP last: it wins over an external frontend on the same address and port.
    out.insert(key(st.cluster_ip, st.port), value(internal));
    out
}

/// `LB_SOURCE_RANGES` entries of a service port (D7): its ranges, plus its LB IPs themselves
/// when a range contains this node's primary address (kube-proxy's `cidr.Contains(nodeIP)`:
/// a node reaching an LB IP it holds; another node address inside a range does not count).
/// Written whether or not the service port has endpoints: the range check comes first.
pub fn source_ranges(id: u32, st: &ServicePortState, node: &NodeNet) -> BTreeSet<(u32, [u8; 8])> {
    if st.load_balancer_source_ranges.is_empty() || st.load_balancer_ips.is_empty() {
        return BTreeSet::new();
    }
    let mut out: BTreeSet<(u32, [u8; 8])> = st
        .load_balancer_source_ranges
        .iter()
        .map(|net| (32 + net.prefix_len() as u32, source_range_data(id, ip_to_map(net.network().octets()))))
        .collect();
    let primary_inside = node.snat_ip.is_some_and(|ip| st.load_balancer_source_ranges.iter().any(|net| net.contains(&ip)));
    if primary_inside {
        out.extend(st.load_balancer_ips.iter().map(|ip| (64, source_range_data(id, ip_to_map(ip.octets())))));
    }
    out
}

/// Reads back [`ServicePortName`]'s display form: `ns/name:port/PROTO` (or `ns/name/PROTO`).
pub fn parse_service_port_name(text: &str) -> Option<ServicePortName> {
    let (rest, proto) = text.rsplit_once('/')?;
    let protocol = crate::model::Protocol::parse(proto)?;
    let (namespace, rest) = rest.split_once('/')?;
    let (name, port_name) = rest.split_once(':').unwrap_or((rest, ""));
    Some(ServicePortName { namespace: namespace.into(), name: name.into(), port_name: port_name.into(), protocol })
}

impl Writer {
    /// A writer over freshly created (empty) maps; writes the datapath configuration.
    pub fn new(mut maps: MapSet, max_table_size: u32, max_service_ports: u32, config: Config) -> Result<Writer> {
        maps.config.set(0, config, 0).context("writing LB_CONFIG")?;
        let (empty_table, _) = create_table(&[1, lb_common::BACKEND_NONE])?;
        Ok(Writer {
            maps,
            max_table_size,
            max_service_ports,
            programmed: BTreeMap::new(),
            free_ids: BTreeSet::new(),
            next_id: 1,
            backend_ids: BTreeSet::new(),
            next_backend_id: 1,
            markers: BTreeSet::new(),
            rewrite_markers: false,
            applied: BTreeMap::new(),
            empty_table,
            table_bytes: 0,
            node: NodeNet::default(),
            node_written: false,
            config,
        })
    }

    /// A writer over maps an earlier agent programmed (pinned and reused): what they hold is
    /// read back — service-port ids, backend ids, frontends, the endpoints of every Maglev
    /// table — so ids stay stable and the first apply changes only what differs. Entries the
    /// earlier agent could not have meant (unknown ids) are deleted.
    pub fn adopt(maps: MapSet, max_table_size: u32, max_service_ports: u32, config: Config) -> Result<(Writer, String)> {
        let mut w = Writer::new(maps, max_table_size, max_service_ports, config)?;
        let mut by_id: BTreeMap<u32, ServicePortName> = BTreeMap::new();
        let names: Vec<(u32, String)> =
            w.maps.names.iter().filter_map(|r| r.ok()).map(|(id, n)| (id, super::decode_name(&n))).collect();
        for (id, text) in names {
            match parse_service_port_name(&text) {
                Some(name) if id != 0 => {
                    w.programmed.insert(name.clone(), Programmed::new(id));
                    by_id.insert(id, name);
                }
                _ => {
                    warn!("adopting: unreadable service-port name {text:?} (id {id}); dropped");
                    let _ = w.maps.names.remove(&id);
                }
            }
        }
        let backends: Vec<(u32, Backend)> = w.maps.backends.iter().filter_map(|r| r.ok()).collect();
        let mut addr_by_backend: BTreeMap<u32, EndpointAddr> = BTreeMap::new();
        for (id, b) in &backends {
            let addr = EndpointAddr {
                ip: std::net::Ipv4Addr::from(lb_common::ip_from_map(b.addr)),
                port: lb_common::port_from_map(b.port),
            };
            match by_id.get(&b.svc_id).and_then(|n| w.programmed.get_mut(n)) {
                Some(p) => {
                    p.backends.insert(addr, (*id, b.flags));
                    w.backend_ids.insert(*id);
                    addr_by_backend.insert(*id, addr);
                }
                None => {
                    let _ = w.maps.backends.remove(id);
                }
            }
        }
        let frontends: Vec<(ServiceKey, ServiceValue)> = w.maps.services.iter().filter_map(|r| r.ok()).collect();
        for (k, v) in frontends {
            if v.flags & svc_flags::ADDRESS_MARKER != 0 {
                w.markers.insert(k);
            } else if let Some(p) = by_id.get(&v.id).and_then(|n| w.programmed.get_mut(n)) {
                p.frontends.insert(k, v);
            } else {
                let _ = w.maps.services.remove(&k);
            }
        }
        let ranges: Vec<aya::maps::lpm_trie::Key<[u8; 8]>> = w.maps.source_ranges.keys().filter_map(|r| r.ok()).collect();
        for k in ranges {
            let data = k.data();
            let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            match by_id.get(&id).and_then(|n| w.programmed.get_mut(n)) {
                Some(p) => {
                    p.source_ranges.insert((k.prefix_len(), data));
                }
                None => {
                    let _ = w.maps.source_ranges.remove(&k);
                }
            }
        }
        let mut tables = 0;
        for p in w.programmed.values_mut() {
            for (table_id, local) in [(cluster_table(p.id), false), (local_table(p.id), true)] {
                let Ok(inner) = w.maps.maglev.get(&table_id, 0) else { continue };
                let bytes = sys::memlock_bytes(inner.fd()).unwrap_or(0);
                let Ok(array) = aya::maps::Array::<MapData, [u32; 2]>::try_from(aya::maps::Map::from_map_data(inner)?) else {
                    continue;
                };
                let words: Vec<u32> = array.iter().filter_map(|r| r.ok()).flatten().collect();
                let Some((&m, slots)) = words.split_first() else { continue };
                if m <= 1 {
                    continue; // the shared empty table: nothing installed
                }
                let endpoints = slots.iter().take(m as usize).filter_map(|id| addr_by_backend.get(id).copied()).collect();
                let slot = if local { &mut p.local } else { &mut p.cluster };
                *slot = Table { endpoints, installed: true, bytes };
                w.table_bytes += bytes;
                tables += 1;
            }
        }
        let used: BTreeSet<u32> = w.programmed.values().map(|p| p.id).collect();
        w.next_id = used.last().map_or(1, |m| m + 1);
        w.free_ids = (1..w.next_id).filter(|id| !used.contains(id)).collect();
        w.next_backend_id = w.backend_ids.last().map_or(1, |m| m.wrapping_add(1).max(1));
        let summary = format!("{} service ports, {} backends, {} Maglev tables", w.programmed.len(), w.backend_ids.len(), tables);
        Ok((w, summary))
    }

    /// Forgets what the writer believes the maps hold (keeping every id), so the next apply
    /// rewrites every frontend, backend and table: the periodic full resync, which also
    /// repairs maps changed behind the agent's back.
    pub fn invalidate(&mut self) {
        for p in self.programmed.values_mut() {
            for v in p.frontends.values_mut() {
                v.flags = u32::MAX; // never a real value: rewritten
            }
            for b in p.backends.values_mut() {
                b.1 = u8::MAX;
            }
            // Rewritten whole at the next apply.
            p.source_ranges.insert((0, [0; 8]));
            // An endpoint list no service port can have: every installed table is rebuilt (or
            // cleared, for a local table no longer needed).
            let never = BTreeSet::from([EndpointAddr { ip: std::net::Ipv4Addr::UNSPECIFIED, port: 0 }]);
            p.cluster.endpoints.clone_from(&never);
            if p.local.installed {
                p.local.endpoints = never;
            }
        }
        self.rewrite_markers = true;
        self.node_written = false;
        self.applied.clear();
    }

    /// The backend id of an endpoint of a programmed service port.
    pub fn backend_id(&self, name: &ServicePortName, ep: &EndpointAddr) -> Option<u32> {
        self.programmed.get(name)?.backends.get(ep).map(|b| b.0)
    }

    /// Brings the maps to `desired`. Failures are per service port and reported; every other
    /// service port is still applied.
    pub fn apply(&mut self, desired: &DesiredState) -> SyncReport {
        let mut report = SyncReport { service_ports: desired.services.len(), ..Default::default() };
        let mut failed: BTreeSet<ServicePortName> = BTreeSet::new();
        let mut changed: BTreeSet<ServicePortName> = BTreeSet::new();

        // 1. Gone service ports stop receiving traffic first.
        let gone: Vec<ServicePortName> = self.programmed.keys().filter(|n| !desired.services.contains_key(*n)).cloned().collect();
        for name in &gone {
            if let Some(p) = self.programmed.get_mut(name) {
                for k in std::mem::take(&mut p.frontends).keys() {
                    let _ = self.maps.services.remove(k);
                }
            }
        }

        // Only service ports whose desired state changed since the last successful apply are
        // worked on (frontend ownership below still looks at all of them).
        let dirty: Vec<(&ServicePortName, &ServicePortState)> =
            desired.services.iter().filter(|(n, st)| self.applied.get(*n) != Some(*st)).collect();

        // 2. Ids and backends.
        for &(name, st) in &dirty {
            match self.write_backends(name, st, &mut report) {
                Ok(true) => {
                    changed.insert(name.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    report.errors.push(format!("{name}: {e:#}"));
                    failed.insert(name.clone());
                }
            }
        }

        // 3. Tables: build every changed one, then swap them all in at once.
        let mut pending = Vec::new();
        for &(name, st) in &dirty {
            if failed.contains(name) {
                continue;
            }
            if let Err(e) = self.build_tables(name, st, &mut pending) {
                report.errors.push(format!("{name}: {e:#}"));
                failed.insert(name.clone());
            }
            // Each built table holds a descriptor until it is swapped in: bound how many.
            if pending.len() >= TABLE_BATCH {
                self.install_tables(std::mem::take(&mut pending), &mut report, &mut failed, &mut changed);
            }
        }
        for name in &gone {
            if let Some(p) = self.programmed.get(name) {
                for (table_id, local) in [(cluster_table(p.id), false), (local_table(p.id), true)] {
                    pending.push(NewTable { owner: name.clone(), table_id, local, map: None, state: Table::default() });
                }
            }
        }
        self.install_tables(pending, &mut report, &mut failed, &mut changed);

        // 4. Frontends. A frontend belongs to the first service port (in name order) that
        //    claims it.
        let mut owners: BTreeMap<ServiceKey, &ServicePortName> = BTreeMap::new();
        for (name, st) in &desired.services {
            if failed.contains(name) {
                continue;
            }
            let p = self.programmed.get(name).expect("phase 2 programmed it");
            let mut want = frontends(p.id, st, &self.node);
            want.retain(|k, _| match owners.get(k) {
                Some(other) => {
                    report.errors.push(format!(
                        "{name}: frontend {}:{}/{} is already used by {other}; skipped",
                        std::net::Ipv4Addr::from(lb_common::ip_from_map(k.addr)),
                        lb_common::port_from_map(k.port),
                        st.protocol
                    ));
                    false
                }
                None => {
                    owners.insert(*k, name);
                    true
                }
            });
            match self.write_frontends(name, want) {
                Ok(true) => {
                    changed.insert(name.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    report.errors.push(format!("{name}: {e:#}"));
                    failed.insert(name.clone()); // retried at the next sync
                }
            }
        }
        self.write_markers(&mut report);
        for &(name, st) in &dirty {
            if !failed.contains(name) {
                if let Err(e) = self.write_source_ranges(name, st) {
                    report.errors.push(format!("{name}: {e:#}"));
                    failed.insert(name.clone());
                }
            }
        }

        // 5. Backends no longer listed; removed service ports released.
        for &(name, st) in &dirty {
            if !failed.contains(name) && self.delete_stale_backends(name, st, &mut report) {
                changed.insert(name.clone());
            }
        }
        for name in gone {
            self.release(&name, &mut report);
            self.applied.remove(&name);
        }
        for &(name, st) in &dirty {
            if failed.contains(name) {
                self.applied.remove(name);
            } else {
                self.applied.insert(name.clone(), st.clone());
            }
        }

        report.service_ports_changed = changed.len();
        for e in &report.errors {
            warn!("{e}");
        }
        report
    }

    fn alloc_id(&mut self) -> Result<u32> {
        if let Some(id) = self.free_ids.pop_first() {
            return Ok(id);
        }
        if self.next_id > self.max_service_ports {
            bail!("too many service ports (--max-service-ports {})", self.max_service_ports);
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }

    fn alloc_backend_id(&mut self) -> u32 {
        loop {
            let id = self.next_backend_id;
            self.next_backend_id = self.next_backend_id.wrapping_add(1).max(1);
            if self.backend_ids.insert(id) {
                return id;
            }
        }
    }

    /// Phase 2 for one service port. Returns whether anything changed.
    fn write_backends(&mut self, name: &ServicePortName, st: &ServicePortState, report: &mut SyncReport) -> Result<bool> {
        if !self.programmed.contains_key(name) {
            let id = self.alloc_id()?;
            let p = Programmed::new(id);
            self.programmed.insert(name.clone(), p);
            if let Err(e) = self.maps.names.insert(id, encode_name(&name.to_string()), 0) {
                debug!("LB_NAMES {id}: {e}");
            }
        }
        let svc_id = self.programmed[name].id;
        let proto = st.protocol.number();
        let mut changed = false;
        let cluster: BTreeSet<EndpointAddr> = st.cluster_endpoints.iter().copied().collect();
        let local: BTreeSet<EndpointAddr> = st.local_endpoints.iter().copied().collect();
        for ep in &st.endpoints {
            let addr = ep.addr();
            let flags = endpoint_flags(ep, cluster.contains(&addr), local.contains(&addr));
            let existing = self.programmed[name].backends.get(&addr).copied();
            let id = match existing {
                Some((_, f)) if f == flags => continue,
                Some((id, _)) => id,
                None => self.alloc_backend_id(),
            };
            let b = Backend { addr: lb_common::ip_to_map(addr.ip.octets()), port: port_to_map(addr.port), proto, flags, svc_id };
            if let Err(e) = self.maps.backends.insert(id, b, 0) {
                if existing.is_none() {
                    self.backend_ids.remove(&id);
                }
                bail!("backend {addr}: {e}");
            }
            if existing.is_none() {
                report.backends_added += 1;
            }
            self.programmed.get_mut(name).expect("present").backends.insert(addr, (id, flags));
            changed = true;
        }
        Ok(changed)
    }

    /// Phase 3a for one service port: builds the tables whose endpoint set changed.
    fn build_tables(&mut self, name: &ServicePortName, st: &ServicePortState, pending: &mut Vec<NewTable>) -> Result<()> {
        let p = &self.programmed[name];
        let needs_local = st.internal_policy_local || st.external_policy_local;
        let cluster: BTreeSet<EndpointAddr> = st.cluster_endpoints.iter().copied().collect();
        let local: BTreeSet<EndpointAddr> = st.local_endpoints.iter().copied().collect();
        let mut wanted = Vec::new();
        if !p.cluster.installed || p.cluster.endpoints != cluster {
            wanted.push((cluster_table(p.id), false, cluster));
        }
        if needs_local && (!p.local.installed || p.local.endpoints != local) {
            wanted.push((local_table(p.id), true, local));
        }
        if !needs_local && p.local.installed {
            pending.push(NewTable {
                owner: name.clone(),
                table_id: local_table(p.id),
                local: true,
                map: None,
                state: Table::default(),
            });
        }
        for (table_id, local, eps) in wanted {
            let members: Vec<MaglevBackend> = eps
                .iter()
                .filter_map(|ep| p.backends.get(ep).map(|(id, _)| MaglevBackend { name: ep.to_string(), id: *id }))
                .collect();
            let m = table_size(members.len(), self.max_table_size);
            let mut words = Vec::with_capacity(m as usize + 1);
            words.push(m);
            words.extend(build_table(&members, m));
            let (map, bytes) = create_table(&words)?;
            let state = Table { endpoints: eps, installed: true, bytes };
            pending.push(NewTable { owner: name.clone(), table_id, local, map: Some(map), state });
        }
        Ok(())
    }

    /// Phase 3b: swaps every pending table in (one batch; one by one if the batch fails).
    fn install_tables(
        &mut self,
        pending: Vec<NewTable>,
        report: &mut SyncReport,
        failed: &mut BTreeSet<ServicePortName>,
        changed: &mut BTreeSet<ServicePortName>,
    ) {
        if pending.is_empty() {
            return;
        }
        let entries: Vec<(u32, std::os::fd::BorrowedFd<'_>)> = pending
            .iter()
            .map(|t| (t.table_id, std::os::fd::AsFd::as_fd(t.map.as_ref().unwrap_or(&self.empty_table).fd())))
            .collect();
        let batch = sys::map_of_maps_update_batch(self.maps.fds.get(super::names::MAGLEV), &entries);
        drop(entries);
        for t in pending {
            if batch.is_err() {
                let inner = t.map.as_ref().unwrap_or(&self.empty_table);
                if let Err(e) = self.maps.maglev.set(t.table_id, inner, 0) {
                    report.errors.push(format!("{}: installing Maglev table {}: {e}", t.owner, t.table_id));
                    failed.insert(t.owner);
                    continue;
                }
            }
            let Some(p) = self.programmed.get_mut(&t.owner) else { continue };
            let slot = if t.local { &mut p.local } else { &mut p.cluster };
            self.table_bytes = self.table_bytes - slot.bytes + t.state.bytes;
            *slot = t.state;
            if t.map.is_some() {
                report.tables_written += 1;
            }
            changed.insert(t.owner);
        }
        if let Err(e) = batch {
            debug!("batch install failed ({e:#}); installed one by one");
        }
    }

    /// Phase 4 for one service port. Returns whether anything changed.
    fn write_frontends(&mut self, name: &ServicePortName, want: BTreeMap<ServiceKey, ServiceValue>) -> Result<bool> {
        let p = self.programmed.get_mut(name).expect("programmed");
        let mut changed = false;
        for (k, v) in &want {
            if p.frontends.get(k) != Some(v) {
                self.maps.services.insert(k, v, 0).context("writing a frontend")?;
                p.frontends.insert(*k, *v);
                changed = true;
            }
        }
        let stale: Vec<ServiceKey> = p.frontends.keys().filter(|k| !want.contains_key(*k)).copied().collect();
        for k in stale {
            let _ = self.maps.services.remove(&k);
            p.frontends.remove(&k);
            changed = true;
        }
        Ok(changed)
    }

    /// One address marker per frontend address in use.
    fn write_markers(&mut self, report: &mut SyncReport) {
        let markers: BTreeSet<ServiceKey> =
            self.programmed.values().flat_map(|p| p.frontends.keys().map(|k| ServiceKey::marker(k.addr))).collect();
        let value = ServiceValue {
            id: 0,
            flags: svc_flags::ADDRESS_MARKER,
            cluster_table: 0,
            local_table: 0,
            affinity_timeout: 0,
            _pad: 0,
        };
        let missing: Vec<ServiceKey> = if std::mem::take(&mut self.rewrite_markers) {
            markers.iter().copied().collect()
        } else {
            markers.difference(&self.markers).copied().collect()
        };
        for m in &missing {
            if let Err(e) = self.maps.services.insert(m, value, 0) {
                report.errors.push(format!("address marker {:?}: {e}", lb_common::ip_from_map(m.addr)));
            }
        }
        for m in self.markers.difference(&markers) {
            let _ = self.maps.services.remove(m);
        }
        self.markers = markers;
    }

    /// The source ranges of one service port.
    fn write_source_ranges(&mut self, name: &ServicePortName, st: &ServicePortState) -> Result<()> {
        let p = self.programmed.get_mut(name).expect("programmed");
        let want = source_ranges(p.id, st, &self.node);
        for (len, data) in want.difference(&p.source_ranges) {
            let key = aya::maps::lpm_trie::Key::new(*len, *data);
            self.maps.source_ranges.insert(&key, 1, 0).context("writing a loadBalancerSourceRanges entry")?;
        }
        for (len, data) in p.source_ranges.difference(&want) {
            let _ = self.maps.source_ranges.remove(&aya::maps::lpm_trie::Key::new(*len, *data));
        }
        p.source_ranges = want;
        Ok(())
    }

    /// Programs this node's addresses, detector CIDRs and masquerade settings. A change of
    /// node-port addresses or node addresses re-derives every service port at the next apply.
    pub fn set_node(&mut self, node: &NodeNet) -> Result<()> {
        if *node == self.node && self.node_written {
            return Ok(());
        }
        let mut config = self.config;
        config.flags &= !(config_flags::MASQUERADE_ALL | config_flags::DETECT_LOCAL);
        if node.masquerade_all {
            config.flags |= config_flags::MASQUERADE_ALL;
        }
        if !node.cluster_cidrs.is_empty() {
            config.flags |= config_flags::DETECT_LOCAL;
        }
        config.snat_addr = node.snat_ip.map_or(0, |ip| ip_to_map(ip.octets()));
        let want_addrs: BTreeSet<u32> = node.local_ips.iter().map(|ip| ip_to_map(ip.octets())).collect();
        let have_addrs: BTreeSet<u32> = self.maps.node_addrs.keys().filter_map(|r| r.ok()).collect();
        for a in want_addrs.difference(&have_addrs) {
            self.maps.node_addrs.insert(a, 1, 0).context("writing LB_NODE_ADDRS")?;
        }
        for a in have_addrs.difference(&want_addrs) {
            let _ = self.maps.node_addrs.remove(a);
        }
        let want_cidrs: BTreeSet<(u32, [u8; 4])> =
            node.cluster_cidrs.iter().map(|n| (n.prefix_len() as u32, n.network().octets())).collect();
        let have_cidrs: BTreeSet<(u32, [u8; 4])> =
            self.maps.local_cidrs.keys().filter_map(|r| r.ok()).map(|k| (k.prefix_len(), k.data())).collect();
        for (len, data) in want_cidrs.difference(&have_cidrs) {
            self.maps.local_cidrs.insert(&aya::maps::lpm_trie::Key::new(*len, *data), 1, 0).context("writing LB_LOCAL_CIDRS")?;
        }
        for (len, data) in have_cidrs.difference(&want_cidrs) {
            let _ = self.maps.local_cidrs.remove(&aya::maps::lpm_trie::Key::new(*len, *data));
        }
        self.maps.config.set(0, config, 0).context("writing LB_CONFIG")?;
        self.config = config;
        if node.nodeport_ips != self.node.nodeport_ips
            || node.local_ips != self.node.local_ips
            || node.snat_ip != self.node.snat_ip
        {
            self.applied.clear();
        }
        self.node = node.clone();
        self.node_written = true;
        Ok(())
    }

    /// Phase 5 for one service port. Returns whether anything was deleted.
    fn delete_stale_backends(&mut self, name: &ServicePortName, st: &ServicePortState, report: &mut SyncReport) -> bool {
        let Some(p) = self.programmed.get_mut(name) else { return false };
        let listed: BTreeSet<EndpointAddr> = st.endpoints.iter().map(Endpoint::addr).collect();
        let gone: Vec<EndpointAddr> = p.backends.keys().filter(|a| !listed.contains(*a)).copied().collect();
        for addr in &gone {
            if let Some((id, _)) = p.backends.remove(addr) {
                let _ = self.maps.backends.remove(&id);
                self.backend_ids.remove(&id);
                report.backends_removed += 1;
            }
        }
        !gone.is_empty()
    }

    /// Phase 5 for a removed service port: its backends and id.
    fn release(&mut self, name: &ServicePortName, report: &mut SyncReport) {
        let Some(p) = self.programmed.remove(name) else { return };
        self.table_bytes -= p.cluster.bytes + p.local.bytes;
        for (len, data) in &p.source_ranges {
            let _ = self.maps.source_ranges.remove(&aya::maps::lpm_trie::Key::new(*len, *data));
        }
        for (id, _) in p.backends.values() {
            let _ = self.maps.backends.remove(id);
            self.backend_ids.remove(id);
            report.backends_removed += 1;
        }
        let _ = self.maps.names.remove(&p.id);
        self.free_ids.insert(p.id);
        report.service_ports_removed += 1;
    }

    /// Kernel-accounted memory of the maps: every map the writer programs (by its fdinfo
    /// `memlock`) plus every installed Maglev table.
    pub fn map_memory(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> =
            self.maps.fds.iter().map(|(name, fd)| (name.to_string(), sys::memlock_bytes(fd).unwrap_or(0))).collect();
        out.insert("LB_MAGLEV tables".into(), self.table_bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::ProxyFlags,
        manifests,
        model::{translate, NodeInfo, Protocol, TranslateOptions},
    };

    /// One LoadBalancer service (1.2.3.4 and 5.6.7.8, port 80, NodePort 3001) with
    /// `loadBalancerSourceRanges` `ranges`, with one endpoint or none; its only service port.
    fn lb_service(ranges: &str, endpoints: bool) -> ServicePortState {
        let mut yaml = format!(
            r#"apiVersion: v1
kind: Service
metadata: {{namespace: ns1, name: svc1}}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  loadBalancerSourceRanges: {ranges}
  ports: [{{name: p80, port: 80, protocol: TCP, nodePort: 3001}}]
status:
  loadBalancer:
    ingress: [{{ip: 1.2.3.4}}, {{ip: 5.6.7.8}}]
"#
        );
        if endpoints {
            yaml.push_str(
                r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns1, name: svc1-1, labels: {kubernetes.io/service-name: svc1}}
addressType: IPv4
endpoints: [{addresses: [10.180.0.1]}]
ports: [{name: p80, port: 80, protocol: TCP}]
"#,
            );
        }
        let report = manifests::parse_str(&yaml, "test.yaml");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let node = NodeInfo { name: "test-node".into(), labels: Default::default() };
        let (desired, errors) = translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(desired.services.len(), 1);
        desired.services.into_values().next().expect("one service port")
    }

    /// The node's network facts from `--node-ip` (the first is the primary address).
    fn node_net(node_ips: &[&str]) -> NodeNet {
        let ips: Vec<Ipv4Addr> = node_ips.iter().map(|s| s.parse().expect("ip")).collect();
        ProxyFlags { node_ip: ips.clone(), ..Default::default() }.node_net(None, &ips).expect("node net")
    }

    fn range_entry(id: u32, net: &str) -> (u32, [u8; 8]) {
        let net: Ipv4Net = net.parse().expect("net");
        (32 + net.prefix_len() as u32, source_range_data(id, ip_to_map(net.network().octets())))
    }

    /// D7 with E1: a service port without endpoints keeps its source-range flag and entries on
    /// its LB IPs (the datapath drops a source outside the ranges before it rejects), next to
    /// the no-endpoints flag.
    #[test]
    fn source_ranges_are_programmed_without_endpoints() {
        let node = node_net(&["192.168.0.2"]);
        for endpoints in [true, false] {
            let st = lb_service("[203.0.113.0/25]", endpoints);
            assert_eq!(st.has_any_endpoints, endpoints);
            let fe = frontends(7, &st, &node);
            for lb in ["1.2.3.4", "5.6.7.8"] {
                let ip: Ipv4Addr = lb.parse().unwrap();
                let v = fe[&ServiceKey::new(ip_to_map(ip.octets()), port_to_map(80), 6)];
                assert!(v.flags & svc_flags::SOURCE_RANGES != 0, "{lb} endpoints={endpoints}: SOURCE_RANGES");
                assert_eq!(v.flags & svc_flags::NO_ENDPOINTS != 0, !endpoints, "{lb}: NO_ENDPOINTS");
            }
            // Neither the NodePort nor the ClusterIP is filtered.
            let np = fe[&ServiceKey::new(ip_to_map([192, 168, 0, 2]), port_to_map(3001), 6)];
            let cip = fe[&ServiceKey::new(ip_to_map([172, 30, 0, 41]), port_to_map(80), 6)];
            assert_eq!((np.flags | cip.flags) & svc_flags::SOURCE_RANGES, 0);
            assert_eq!(source_ranges(7, &st, &node), BTreeSet::from([range_entry(7, "203.0.113.0/25")]), "{endpoints}");
        }
    }

    /// D7: packets sourced from an LB IP itself are let through when a range contains the
    /// node's primary address (kube-proxy: `cidr.Contains(nodeIP)`); another node address
    /// inside a range does not count.
    #[test]
    fn lb_ip_source_exception_needs_the_primary_address_in_a_range() {
        // (--node-ip list, the first primary; the ranges; whether the LB IPs are allowed sources)
        let cases: [(&[&str], &str, bool); 6] = [
            (&["192.168.0.2"], "[192.168.0.0/24, 203.0.113.0/25]", true),
            (&["192.168.0.2", "192.168.1.2"], "[192.168.1.0/24]", false),
            (&["192.168.1.2", "192.168.0.2"], "[192.168.1.0/24]", true),
            (&["192.168.0.2", "192.168.1.2"], "[203.0.113.0/25]", false),
            (&["192.168.0.2"], "[192.168.0.2/32]", true),
            (&["192.168.0.2"], "[0.0.0.0/0]", true),
        ];
        for (node_ips, ranges, allowed) in cases {
            let st = lb_service(ranges, true);
            let got = source_ranges(3, &st, &node_net(node_ips));
            let mut want: BTreeSet<(u32, [u8; 8])> =
                st.load_balancer_source_ranges.iter().map(|n| range_entry(3, &n.to_string())).collect();
            if allowed {
                want.insert(range_entry(3, "1.2.3.4/32"));
                want.insert(range_entry(3, "5.6.7.8/32"));
            }
            assert_eq!(got, want, "node {node_ips:?} ranges {ranges}");
        }
    }

    #[test]
    fn service_port_names_round_trip() {
        for (ns, name, port, protocol) in [
            ("default", "web", "http", Protocol::Tcp),
            ("kube-system", "kube-dns", "", Protocol::Udp),
            ("a", "b", "p-1", Protocol::Sctp),
        ] {
            let n = ServicePortName { namespace: ns.into(), name: name.into(), port_name: port.into(), protocol };
            assert_eq!(parse_service_port_name(&n.to_string()), Some(n));
        }
        assert_eq!(parse_service_port_name("garbage"), None);
        assert_eq!(parse_service_port_name("ns/name/ICMP"), None);
    }
}
