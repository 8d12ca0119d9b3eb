//! The single writer: diffs the desired state against what it has programmed and updates the
//! maps so that a packet never sees a half-done change.
//!
//! Order of a service port's update: backends first (new ids), then its Maglev tables (a new
//! inner array, filled, then swapped into `LB_MAGLEV` in one update), then its frontends
//! (`LB_SERVICES` values replaced whole), and only then the backends nobody selects any more
//! are deleted. A service port that disappears loses its frontends first, then its tables and
//! backends.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use lb_common::{
    backend_flags,
    maglev::{build_table, table_size, MaglevBackend},
    port_to_map, scope, svc_flags, Backend, Config, ServiceKey, ServiceValue, BPF_F_INNER_MAP,
};
use tracing::{debug, warn};

use super::{encode_name, sys, MapSet};
use crate::model::{DesiredState, Endpoint, EndpointAddr, ServicePortName, ServicePortState};

const BPF_MAP_TYPE_ARRAY: u32 = 2;

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

#[derive(Default)]
struct Table {
    endpoints: Vec<EndpointAddr>,
    size: u32,
    installed: bool,
}

struct Programmed {
    id: u32,
    frontends: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<EndpointAddr, (u32, u8)>,
    cluster: Table,
    local: Table,
}

/// Table ids of a service port in `LB_MAGLEV`.
pub fn cluster_table(id: u32) -> u32 {
    2 * id
}
pub fn local_table(id: u32) -> u32 {
    2 * id + 1
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
    empty_table: MapData,
}

fn endpoint_flags(ep: &Endpoint) -> u8 {
    let mut f = 0;
    if ep.ready {
        f |= backend_flags::READY;
    }
    if ep.serving {
        f |= backend_flags::SERVING;
    }
    if ep.terminating {
        f |= backend_flags::TERMINATING;
    }
    if ep.local {
        f |= backend_flags::LOCAL;
    }
    f
}

fn create_table(slots: &[u32]) -> Result<MapData> {
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, slots.len() as u32, BPF_F_INNER_MAP);
    let map = MapData::create(obj, "lb_maglev_tbl", None).context("creating a Maglev table")?;
    sys::array_update_all(map.fd(), slots).context("filling a Maglev table")?;
    Ok(map)
}

/// The frontends of a service port (issue scope: the ClusterIP) with their values.
fn frontends(id: u32, st: &ServicePortState) -> BTreeMap<ServiceKey, ServiceValue> {
    let mut flags = 0;
    if !st.has_any_endpoints {
        flags |= svc_flags::NO_ENDPOINTS;
    }
    let table = if st.internal_policy_local {
        flags |= svc_flags::LOCAL_TABLE;
        local_table(id)
    } else {
        cluster_table(id)
    };
    let key = ServiceKey {
        addr: lb_common::ip_to_map(st.cluster_ip.octets()),
        port: port_to_map(st.port),
        proto: st.protocol.number(),
        scope: scope::CLUSTER_IP,
    };
    BTreeMap::from([(key, ServiceValue { id, flags, table, affinity_timeout: 0 })])
}

fn marker_of(key: &ServiceKey) -> ServiceKey {
    ServiceKey { addr: key.addr, port: 0, proto: 0, scope: key.scope }
}

impl Writer {
    /// A writer over freshly created (empty) maps; writes the datapath configuration.
    pub fn new(mut maps: MapSet, max_table_size: u32, max_service_ports: u32, config: Config) -> Result<Writer> {
        maps.config.set(0, config, 0).context("writing LB_CONFIG")?;
        let empty_table = create_table(&[1, lb_common::BACKEND_NONE])?;
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
            empty_table,
        })
    }

    /// The id of a programmed service port.
    pub fn service_port_id(&self, name: &ServicePortName) -> Option<u32> {
        self.programmed.get(name).map(|p| p.id)
    }

    /// The backend id of an endpoint of a programmed service port.
    pub fn backend_id(&self, name: &ServicePortName, ep: &EndpointAddr) -> Option<u32> {
        self.programmed.get(name)?.backends.get(ep).map(|b| b.0)
    }

    /// Brings the maps to `desired`. Failures are per service port and reported; every other
    /// service port is still applied.
    pub fn apply(&mut self, desired: &DesiredState) -> SyncReport {
        let mut report = SyncReport { service_ports: desired.services.len(), ..Default::default() };

        let gone: Vec<ServicePortName> = self.programmed.keys().filter(|n| !desired.services.contains_key(*n)).cloned().collect();
        for name in gone {
            if let Err(e) = self.remove(&name, &mut report) {
                report.errors.push(format!("{name}: removing: {e:#}"));
            }
        }

        // A frontend belongs to the first service port (in name order) that claims it.
        let mut owners: BTreeMap<ServiceKey, &ServicePortName> = BTreeMap::new();
        for (name, st) in &desired.services {
            let id = self.programmed.get(name).map(|p| p.id).unwrap_or(0);
            let mut mine = frontends(id, st);
            mine.retain(|k, _| match owners.get(k) {
                Some(other) => {
                    report.errors.push(format!(
                        "{name}: frontend {}:{}/{} is already used by {other}; skipped",
                        st.cluster_ip, st.port, st.protocol
                    ));
                    false
                }
                None => true,
            });
            for k in mine.keys() {
                owners.insert(*k, name);
            }
            match self.upsert(name, st, &mine.keys().copied().collect(), &mut report) {
                Ok(true) => report.service_ports_changed += 1,
                Ok(false) => {}
                Err(e) => report.errors.push(format!("{name}: {e:#}")),
            }
        }

        let markers: BTreeSet<ServiceKey> = self.programmed.values().flat_map(|p| p.frontends.keys().map(marker_of)).collect();
        let marker_value = ServiceValue { id: 0, flags: svc_flags::ADDRESS_MARKER, table: 0, affinity_timeout: 0 };
        for m in markers.difference(&self.markers) {
            if let Err(e) = self.maps.services.insert(m, marker_value, 0) {
                report.errors.push(format!("address marker {:?}: {e}", lb_common::ip_from_map(m.addr)));
            }
        }
        for m in self.markers.difference(&markers) {
            let _ = self.maps.services.remove(m);
        }
        self.markers = markers;
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
            if !self.backend_ids.contains(&id) {
                self.backend_ids.insert(id);
                return id;
            }
        }
    }

    fn install_table(
        &mut self,
        table_id: u32,
        eps: &[EndpointAddr],
        backends: &BTreeMap<EndpointAddr, (u32, u8)>,
    ) -> Result<u32> {
        let members: Vec<MaglevBackend> =
            eps.iter().filter_map(|ep| backends.get(ep).map(|(id, _)| MaglevBackend { name: ep.to_string(), id: *id })).collect();
        let m = table_size(members.len(), self.max_table_size);
        let mut slots = Vec::with_capacity(m as usize + 1);
        slots.push(m);
        slots.extend(build_table(&members, m));
        let inner = create_table(&slots)?;
        self.maps.maglev.set(table_id, &inner, 0).with_context(|| format!("installing Maglev table {table_id}"))?;
        Ok(m)
    }

    /// Returns whether anything changed.
    fn upsert(
        &mut self,
        name: &ServicePortName,
        st: &ServicePortState,
        owned: &BTreeSet<ServiceKey>,
        report: &mut SyncReport,
    ) -> Result<bool> {
        if !self.programmed.contains_key(name) {
            let id = self.alloc_id()?;
            self.programmed.insert(
                name.clone(),
                Programmed {
                    id,
                    frontends: BTreeMap::new(),
                    backends: BTreeMap::new(),
                    cluster: Table::default(),
                    local: Table::default(),
                },
            );
            if let Err(e) = self.maps.names.insert(id, encode_name(&name.to_string()), 0) {
                debug!("LB_NAMES {id}: {e}");
            }
        }
        let mut p = self.programmed.remove(name).expect("just inserted");
        let result = self.upsert_programmed(&mut p, st, owned, report);
        self.programmed.insert(name.clone(), p);
        result
    }

    fn upsert_programmed(
        &mut self,
        p: &mut Programmed,
        st: &ServicePortState,
        owned: &BTreeSet<ServiceKey>,
        report: &mut SyncReport,
    ) -> Result<bool> {
        let mut changed = false;
        let proto = st.protocol.number();

        // 1. Backends (every endpoint the slices list, whatever its conditions: established
        //    flows keep a terminating backend).
        let desired: BTreeMap<EndpointAddr, u8> =
            st.endpoints.iter().map(|ep| (EndpointAddr { ip: ep.ip, port: ep.port }, endpoint_flags(ep))).collect();
        for (addr, flags) in &desired {
            let id = match p.backends.get(addr) {
                Some((_, f)) if f == flags => continue,
                Some((id, _)) => *id,
                None => {
                    report.backends_added += 1;
                    self.alloc_backend_id()
                }
            };
            let b = Backend {
                addr: lb_common::ip_to_map(addr.ip.octets()),
                port: port_to_map(addr.port),
                proto,
                flags: *flags,
                svc_id: p.id,
            };
            if let Err(e) = self.maps.backends.insert(id, b, 0) {
                if !p.backends.contains_key(addr) {
                    self.backend_ids.remove(&id);
                }
                bail!("backend {addr}: {e}");
            }
            p.backends.insert(*addr, (id, *flags));
            changed = true;
        }

        // 2. Maglev tables, swapped whole.
        if !p.cluster.installed || p.cluster.endpoints != st.cluster_endpoints {
            p.cluster.size = self.install_table(cluster_table(p.id), &st.cluster_endpoints, &p.backends)?;
            p.cluster.endpoints = st.cluster_endpoints.clone();
            p.cluster.installed = true;
            report.tables_written += 1;
            changed = true;
        }
        let needs_local = st.internal_policy_local || st.external_policy_local;
        if needs_local && (!p.local.installed || p.local.endpoints != st.local_endpoints) {
            p.local.size = self.install_table(local_table(p.id), &st.local_endpoints, &p.backends)?;
            p.local.endpoints = st.local_endpoints.clone();
            p.local.installed = true;
            report.tables_written += 1;
            changed = true;
        } else if !needs_local && p.local.installed {
            self.maps.maglev.set(local_table(p.id), &self.empty_table, 0)?;
            p.local = Table::default();
            changed = true;
        }

        // 3. Frontends.
        let mut want = frontends(p.id, st);
        want.retain(|k, _| owned.contains(k));
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

        // 4. Backends no longer listed.
        let gone: Vec<EndpointAddr> = p.backends.keys().filter(|a| !desired.contains_key(*a)).copied().collect();
        for addr in gone {
            if let Some((id, _)) = p.backends.remove(&addr) {
                let _ = self.maps.backends.remove(&id);
                self.backend_ids.remove(&id);
                report.backends_removed += 1;
                changed = true;
            }
        }
        Ok(changed)
    }

    fn remove(&mut self, name: &ServicePortName, report: &mut SyncReport) -> Result<()> {
        let Some(p) = self.programmed.remove(name) else { return Ok(()) };
        for k in p.frontends.keys() {
            let _ = self.maps.services.remove(k);
        }
        self.maps.maglev.set(cluster_table(p.id), &self.empty_table, 0)?;
        self.maps.maglev.set(local_table(p.id), &self.empty_table, 0)?;
        for (id, _) in p.backends.values() {
            let _ = self.maps.backends.remove(id);
            self.backend_ids.remove(id);
            report.backends_removed += 1;
        }
        let _ = self.maps.names.remove(&p.id);
        self.free_ids.insert(p.id);
        report.service_ports_removed += 1;
        Ok(())
    }

    /// The maps (for pinning and inspection).
    pub fn maps(&self) -> &MapSet {
        &self.maps
    }
}
