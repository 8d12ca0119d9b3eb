//! Pure translation of Services and EndpointSlices into the desired datapath state.
//!
//! This is the IPv4 "family proxier" of kube-proxy: everything that is not IPv4 is filtered out
//! (SEMANTICS.md G1). The row ids cited below (A1, B5, C3, …) refer to `/work/shared/SEMANTICS.md`,
//! which in turn cites the kube-proxy sources this module ports:
//!
//! * `pkg/proxy/servicechangetracker.go`, `serviceport.go`, `util/utils.go` — which Services are
//!   proxied and with which frontends (1.A, 1.D);
//! * `pkg/proxy/endpointslicecache.go` — how EndpointSlices become per-service-port endpoints (1.B);
//! * `pkg/proxy/topology.go` `CategorizeEndpoints` — which endpoints serve which traffic (1.C).
//!
//! No I/O happens here (apart from `tracing` debug logs). Invalid input never panics: it is
//! reported as an [`ObjectError`] and only the offending object (or endpoint / port, where
//! kube-proxy itself skips just that part) is left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::Ipv4Net;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use tracing::debug;

/// A1: a Service or EndpointSlice carrying this label (any value) is invisible to kube-proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// A1/A2: a Service or EndpointSlice carrying this label (any value) is invisible to kube-proxy.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// A6/B1: the label joining an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// B9/C3: the node label giving this node's zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// F2: the apiserver's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// F2: the largest timeout the apiserver accepts.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

// ------------------------------------------------------------------------------------------------
// Public types
// ------------------------------------------------------------------------------------------------

/// L4 protocol of a service port (D2, G2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`; case-sensitive like the apiserver).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key of a service port ("SP"): `{namespace, name, port name, protocol}` (1 notation, B2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `ns/name:port_name/TCP`; like kube-proxy, the `:port_name` part is left out for the
    /// unnamed port (`ns/name/TCP`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

/// One endpoint of a service port after B1–B8, whatever its conditions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The port from the EndpointSlice port that matched the service port (B2).
    pub port: u16,
    /// B6: `conditions.ready` (nil means true).
    pub ready: bool,
    /// B6: `conditions.serving` (nil means true).
    pub serving: bool,
    /// B6: `conditions.terminating` (nil means false).
    pub terminating: bool,
    /// B7: `nodeName` equals this node's name.
    pub local: bool,
    /// B8: `hints.forZones[].name`.
    pub zone_hints: BTreeSet<String>,
    /// B8: `hints.forNodes[].name` (only with PreferSameTrafficDistribution).
    pub node_hints: BTreeSet<String>,
}

impl Endpoint {
    /// The `IP:port` identity of this endpoint (B4).
    pub fn addr(&self) -> EndpointAddr {
        EndpointAddr { ip: self.ip, port: self.port }
    }
}

/// An endpoint's identity, `IP:port` (B4, D9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct EndpointAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// Everything the datapath needs for one service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServicePortState {
    /// A4: the IPv4 ClusterIP.
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// D4: `nodePort` (0 or absent → `None`).
    pub node_port: Option<u16>,
    /// D5: `spec.externalIPs` that are valid IPv4 addresses.
    pub external_ips: Vec<Ipv4Addr>,
    /// D6: `status.loadBalancer.ingress[].ip`, IPv4, `ipMode` nil or `VIP`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// D7: `spec.loadBalancerSourceRanges`, trimmed, IPv4 only, host bits cleared.
    #[serde(serialize_with = "serialize_nets")]
    pub load_balancer_source_ranges: Vec<Ipv4Net>,
    /// J1: `spec.healthCheckNodePort`, only for `type: LoadBalancer` with eTP=Local.
    pub health_check_node_port: Option<u16>,
    /// 1.C `ExternalPolicyLocal`.
    pub external_policy_local: bool,
    /// 1.C `InternalPolicyLocal`.
    pub internal_policy_local: bool,
    /// F2: `Some(T)` iff `sessionAffinity == ClientIP` (T defaults to 10800).
    pub affinity_timeout_seconds: Option<u32>,
    /// Every endpoint of this SP after B1–B6 (deduplicated, sorted by the `ip:port` string as
    /// kube-proxy does), whatever its conditions.
    pub endpoints: Vec<Endpoint>,
    /// C1 (with topology C3/C4). Empty when the SP never uses Cluster endpoints.
    pub cluster_endpoints: Vec<EndpointAddr>,
    /// C2. Empty when the SP never uses Local endpoints.
    pub local_endpoints: Vec<EndpointAddr>,
    /// C1/C2 `hasAnyEndpoints` (false → E1 REJECT).
    pub has_any_endpoints: bool,
    /// C3: `""`, `"PreferSameZone"` or `"PreferSameNode"`.
    pub topology_mode: String,
}

impl ServicePortState {
    /// 1.C `ExternallyAccessible(SP)`: a NodePort, an LB VIP or an ExternalIP (of this family).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.load_balancer_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// The traffic-policy view of this SP used by [`categorize_endpoints`].
    pub fn categorize_input(&self) -> CategorizeInput {
        CategorizeInput {
            internal_policy_local: self.internal_policy_local,
            external_policy_local: self.external_policy_local,
            externally_accessible: self.externally_accessible(),
        }
    }
}

fn serialize_nets<S: serde::Serializer>(nets: &[Ipv4Net], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|n| n.to_string()))
}

/// The whole desired state of the IPv4 proxier.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DesiredState {
    /// Serialized as a map keyed by the SP's display form (`ns/name:port/TCP`), because JSON
    /// object keys must be strings.
    #[serde(serialize_with = "serialize_services")]
    pub services: BTreeMap<ServicePortName, ServicePortState>,
}

fn serialize_services<S: serde::Serializer>(
    services: &BTreeMap<ServicePortName, ServicePortState>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(services.iter().map(|(k, v)| (k.to_string(), v)))
}

/// A problem with one object. The object (or the named part of it) was not programmed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectError {
    /// `Service` or `EndpointSlice`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

impl ObjectError {
    fn new(kind: &str, namespace: &str, name: &str, message: impl Into<String>) -> ObjectError {
        ObjectError { kind: kind.to_string(), namespace: namespace.to_string(), name: name.to_string(), message: message.into() }
    }
}

impl fmt::Display for ObjectError {
    /// `Service ns/name: message` (`Kind name: message` for an object without namespace,
    /// `<unnamed>` for an object without name).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() { "<unnamed>" } else { self.name.as_str() };
        if self.namespace.is_empty() {
            write!(f, "{} {}: {}", self.kind, name, self.message)
        } else {
            write!(f, "{} {}/{}: {}", self.kind, self.namespace, name, self.message)
        }
    }
}

impl std::error::Error for ObjectError {}

/// This node, as kube-proxy sees it (B7, B9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node name (hostname override); endpoints with this `nodeName` are local (B7).
    pub name: String,
    /// The labels of this node's Node object (`topology.kubernetes.io/zone` is used, C3).
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// The `topology.kubernetes.io/zone` label, `""` when missing.
    pub fn zone(&self) -> &str {
        self.labels.get(LABEL_TOPOLOGY_ZONE).map(String::as_str).unwrap_or("")
    }
}

/// Feature switches of the translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslateOptions {
    /// The `PreferSameTrafficDistribution` feature gate (B8, C3): node hints are read and the
    /// `PreferSameNode` topology mode is possible. Default true (on by default since 1.33).
    pub prefer_same_traffic_distribution: bool,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions { prefer_same_traffic_distribution: true }
    }
}

/// C3 topology mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum TopologyMode {
    /// No topology filtering.
    #[default]
    #[serde(rename = "")]
    None,
    PreferSameZone,
    PreferSameNode,
}

impl TopologyMode {
    /// `""`, `"PreferSameZone"` or `"PreferSameNode"` (the `trafficDistribution` spellings).
    pub fn as_str(self) -> &'static str {
        match self {
            TopologyMode::None => "",
            TopologyMode::PreferSameZone => "PreferSameZone",
            TopologyMode::PreferSameNode => "PreferSameNode",
        }
    }
}

impl fmt::Display for TopologyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`categorize_endpoints`] needs to know about a service port (1.C definitions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CategorizeInput {
    /// `InternalPolicyLocal`.
    pub internal_policy_local: bool,
    /// `ExternalPolicyLocal`.
    pub external_policy_local: bool,
    /// `ExternallyAccessible(SP)`.
    pub externally_accessible: bool,
}

impl CategorizeInput {
    /// `UsesClusterEndpoints = !InternalPolicyLocal || ExternallyAccessible`.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible
    }

    /// `UsesLocalEndpoints = InternalPolicyLocal || (ExternalPolicyLocal && ExternallyAccessible)`.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible)
    }
}

/// The result of [`categorize_endpoints`]. `None` means "this SP never uses that kind of
/// endpoint" (kube-proxy's `nil`); `Some(vec![])` means "uses it, but there are none".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// C1: usable Cluster-policy endpoints (topology applied).
    pub cluster: Option<Vec<EndpointAddr>>,
    /// C2: usable Local-policy endpoints (topology ignored).
    pub local: Option<Vec<EndpointAddr>>,
    /// C8: union of `cluster` and `local`, sorted by the `ip:port` string.
    pub all_reachable: Vec<EndpointAddr>,
    /// C1/C2: some endpoint anywhere is ready, or serving and terminating.
    pub has_any_endpoints: bool,
    /// C3: the topology mode chosen for the cluster endpoints.
    pub topology_mode: TopologyMode,
}

// ------------------------------------------------------------------------------------------------
// 1.C: CategorizeEndpoints
// ------------------------------------------------------------------------------------------------

/// Port of kube-proxy's `CategorizeEndpoints` (`pkg/proxy/topology.go`), SEMANTICS C1–C4, C8.
///
/// `endpoints` are all endpoints of the SP (any conditions). The order of `cluster` and `local`
/// follows `endpoints`; `all_reachable` is sorted by the `ip:port` string.
pub fn categorize_endpoints(
    endpoints: &[Endpoint],
    node: &NodeInfo,
    svc: &CategorizeInput,
    opts: &TranslateOptions,
) -> Categorized {
    let mut out = Categorized::default();
    let zone = node.zone();
    let mut use_serving_terminating = false;

    if svc.uses_cluster_endpoints() {
        // C3 + C4: ready endpoints available for the chosen topology.
        let mode = topology_mode_from_hints(endpoints, &node.name, zone, opts);
        out.topology_mode = mode;
        let mut cluster: Vec<EndpointAddr> = endpoints
            .iter()
            .filter(|ep| ep.ready && available_for_topology(ep, mode, &node.name, zone))
            .map(Endpoint::addr)
            .collect();
        // C1 fallback: serving+terminating endpoints, ignoring topology. (The mode is already ""
        // when no ready endpoint matches the topology, so this only happens with no ready
        // endpoint anywhere.) Not-serving endpoints are never used.
        if cluster.is_empty() {
            cluster = endpoints.iter().filter(|ep| ep.serving && ep.terminating).map(Endpoint::addr).collect();
        }
        out.has_any_endpoints = !cluster.is_empty();
        out.cluster = Some(cluster);
    }

    if !svc.uses_local_endpoints() {
        out.all_reachable = sorted_by_string(out.cluster.clone().unwrap_or_default());
        return out;
    }

    // C2: pre-scan to choose between local ready and local serving+terminating endpoints.
    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any_endpoints = true;
            has_local_ready |= ep.local;
        } else if ep.serving && ep.terminating {
            out.has_any_endpoints = true;
            has_local_serving_terminating |= ep.local;
        }
    }
    let local: Vec<EndpointAddr> = if has_local_ready {
        endpoints.iter().filter(|ep| ep.local && ep.ready).map(Endpoint::addr).collect()
    } else if has_local_serving_terminating {
        use_serving_terminating = true;
        endpoints.iter().filter(|ep| ep.local && ep.serving && ep.terminating).map(Endpoint::addr).collect()
    } else {
        Vec::new()
    };

    // C8: the union of both sets.
    out.all_reachable = match &out.cluster {
        None => sorted_by_string(local.clone()),
        // Without topology and without the terminating fallback, every local endpoint is a
        // ready endpoint and therefore already in `cluster`.
        Some(cluster) if out.topology_mode == TopologyMode::None && !use_serving_terminating => sorted_by_string(cluster.clone()),
        Some(cluster) => {
            let merged: BTreeSet<EndpointAddr> = cluster.iter().chain(local.iter()).copied().collect();
            sorted_by_string(merged.into_iter().collect())
        }
    };
    out.local = Some(local);
    out
}

/// C3: kube-proxy's `topologyModeFromHints`. Only ready endpoints are considered.
fn topology_mode_from_hints(endpoints: &[Endpoint], node_name: &str, zone: &str, opts: &TranslateOptions) -> TopologyMode {
    let mut has_endpoint_for_node = false;
    let mut all_have_node_hints = true;
    let mut has_endpoint_for_zone = false;
    let mut all_have_zone_hints = true;
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        if ep.node_hints.is_empty() {
            all_have_node_hints = false;
        } else if ep.node_hints.contains(node_name) {
            has_endpoint_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_have_zone_hints = false;
        } else if ep.zone_hints.contains(zone) {
            has_endpoint_for_zone = true;
        }
    }
    // With no ready endpoint, the "has endpoint for" flags stay false: no topology.
    if opts.prefer_same_traffic_distribution && all_have_node_hints && has_endpoint_for_node {
        return TopologyMode::PreferSameNode;
    }
    if all_have_zone_hints && has_endpoint_for_zone {
        return TopologyMode::PreferSameZone;
    }
    TopologyMode::None
}

/// C4: kube-proxy's `availableForTopology`.
fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}

/// B4: kube-proxy orders endpoint lists by their `ip:port` string.
fn sorted_by_string(mut addrs: Vec<EndpointAddr>) -> Vec<EndpointAddr> {
    addrs.sort_by_cached_key(|a| a.to_string());
    addrs
}

// ------------------------------------------------------------------------------------------------
// translate
// ------------------------------------------------------------------------------------------------

/// Translates Services and EndpointSlices into the desired state of the IPv4 proxier.
///
/// Returns the state and the problems found. A Service with an invalid spec is left out as a
/// whole (the apiserver would have rejected it); an endpoint or slice port kube-proxy would
/// ignore is left out on its own; ignored-but-harmless values (an invalid externalIP, an
/// unparsable source range) are reported while the service is still programmed.
pub fn translate(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeInfo,
    opts: &TranslateOptions,
) -> (DesiredState, Vec<ObjectError>) {
    let mut errors = Vec::new();
    let slices_by_service = index_slices(slices, node, opts, &mut errors);

    // Services keyed by namespace/name; a later duplicate replaces an earlier one (like apply).
    let mut by_name: BTreeMap<(String, String), &Service> = BTreeMap::new();
    for svc in services {
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        if name.is_empty() || namespace.is_empty() {
            errors.push(ObjectError::new("Service", &namespace, &name, "metadata.name and metadata.namespace must be set"));
            continue;
        }
        if has_opt_out_label(svc.metadata.labels.as_ref()) {
            debug!(service = %format!("{namespace}/{name}"), "skipping service: service-proxy-name/headless label (A1)");
            continue;
        }
        if by_name.insert((namespace.clone(), name.clone()), svc).is_some() {
            errors.push(ObjectError::new("Service", &namespace, &name, "defined more than once; the last definition is used"));
        }
    }

    let mut state = DesiredState::default();
    for ((namespace, name), svc) in by_name {
        let slices = slices_by_service.get(&(namespace.clone(), name.clone()));
        let mut warnings = Vec::new();
        match translate_service(svc, &namespace, &name, slices, node, opts, &mut warnings) {
            Ok(ports) => {
                errors.extend(warnings.into_iter().map(|w| ObjectError::new("Service", &namespace, &name, w)));
                state.services.extend(ports);
            }
            Err(e) => errors.push(ObjectError::new("Service", &namespace, &name, format!("not proxied: {e}"))),
        }
    }
    (state, errors)
}

/// One EndpointSlice port that kube-proxy uses (B2, B3).
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// The parts of an EndpointSlice kube-proxy uses.
struct ParsedSlice {
    ports: Vec<SlicePort>,
    endpoints: Vec<Endpoint>,
}

/// Slices by `(namespace, service name)`, then by slice name (B1).
type SliceIndex = BTreeMap<(String, String), BTreeMap<String, ParsedSlice>>;

/// A1, A5, A6, B1, B3, B4, B6–B8: the usable EndpointSlices, parsed, grouped by service.
fn index_slices(slices: &[EndpointSlice], node: &NodeInfo, opts: &TranslateOptions, errors: &mut Vec<ObjectError>) -> SliceIndex {
    let mut index = SliceIndex::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let name = slice.metadata.name.clone().unwrap_or_default();
        let err = |msg: String| ObjectError::new("EndpointSlice", &namespace, &name, msg);
        let labels = slice.metadata.labels.as_ref();
        // A1: the informer's label selector hides these slices.
        if has_opt_out_label(labels) {
            debug!(slice = %format!("{namespace}/{name}"), "skipping EndpointSlice: service-proxy-name/headless label (A1)");
            continue;
        }
        // A6: the service-name label, name and namespace are required.
        let service = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)).cloned().unwrap_or_default();
        if service.is_empty() {
            errors.push(err(format!("ignored: no {LABEL_SERVICE_NAME} label")));
            continue;
        }
        if namespace.is_empty() || name.is_empty() {
            errors.push(err("ignored: metadata.name and metadata.namespace must be set".to_string()));
            continue;
        }
        // A5/G1: only IPv4 slices belong to this proxier.
        match slice.address_type.as_str() {
            "IPv4" => {}
            "IPv6" | "FQDN" => {
                debug!(slice = %format!("{namespace}/{name}"), address_type = %slice.address_type, "skipping non-IPv4 EndpointSlice (A5)");
                continue;
            }
            other => {
                errors.push(err(format!("ignored: unsupported addressType {other:?}")));
                continue;
            }
        }
        let parsed = parse_slice(slice, node, opts, &mut |m| errors.push(err(m)));
        let slot = index.entry((namespace.clone(), service)).or_default();
        if slot.insert(name.clone(), parsed).is_some() {
            errors.push(err("defined more than once; the last definition is used".to_string()));
        }
    }
    index
}

/// B3/B4/B6–B8 for one IPv4 slice; `report` receives what is skipped.
fn parse_slice(slice: &EndpointSlice, node: &NodeInfo, opts: &TranslateOptions, report: &mut dyn FnMut(String)) -> ParsedSlice {
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // B3: a port without a name is ignored (the unnamed port is "", not nil).
        let Some(name) = p.name.clone() else {
            report(format!("ports[{i}] ignored: no name (the unnamed port must be name: \"\")"));
            continue;
        };
        // B3: nil or 0 ports are ignored ("TODO: nil ports mean all").
        let port = match p.port {
            None | Some(0) => {
                report(format!("ports[{i}] ({name:?}) ignored: no port number"));
                continue;
            }
            Some(n) => match u16::try_from(n) {
                Ok(n) => n,
                Err(_) => {
                    report(format!("ports[{i}] ({name:?}) ignored: port {n} out of range"));
                    continue;
                }
            },
        };
        // The apiserver defaults the protocol to TCP.
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => match Protocol::parse(s) {
                Some(proto) => proto,
                None => {
                    report(format!("ports[{i}] ({name:?}) ignored: unknown protocol {s:?}"));
                    continue;
                }
            },
        };
        ports.push(SlicePort { name, protocol, port });
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // B4: only addresses[0] counts, parsed sloppily (leading zeros) and canonicalised.
        let Some(first) = ep.addresses.first() else {
            report(format!("endpoints[{i}] ignored: no addresses"));
            continue;
        };
        let ip = match parse_ip_sloppy(first) {
            Some(IpAddr::V4(ip)) => ip,
            Some(IpAddr::V6(_)) => {
                report(format!("endpoints[{i}] ignored: {first:?} is not an IPv4 address"));
                continue;
            }
            None => {
                report(format!("endpoints[{i}] ignored: invalid address {first:?}"));
                continue;
            }
        };
        // B6: condition defaults.
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        // B7: local iff nodeName is this node's name.
        let local = !node.name.is_empty() && ep.node_name.as_deref() == Some(node.name.as_str());
        // B8: hints (node hints only behind PreferSameTrafficDistribution).
        let hints = ep.hints.as_ref();
        let zone_hints: BTreeSet<String> =
            hints.and_then(|h| h.for_zones.as_ref()).into_iter().flatten().map(|z| z.name.clone()).collect();
        let node_hints: BTreeSet<String> = if opts.prefer_same_traffic_distribution {
            hints.and_then(|h| h.for_nodes.as_ref()).into_iter().flatten().map(|n| n.name.clone()).collect()
        } else {
            BTreeSet::new()
        };
        endpoints.push(Endpoint { ip, port: 0, ready, serving, terminating, local, zone_hints, node_hints });
    }
    ParsedSlice { ports, endpoints }
}

/// B1, B2, B5: merges the slices of one service into endpoints per `(port name, protocol)`.
fn endpoints_by_port(slices: Option<&BTreeMap<String, ParsedSlice>>) -> BTreeMap<(String, Protocol), Vec<Endpoint>> {
    let mut sets: BTreeMap<(String, Protocol), BTreeMap<EndpointAddr, Endpoint>> = BTreeMap::new();
    // Slices are visited in name order so that the result is deterministic (kube-proxy visits
    // them in map order).
    for slice in slices.into_iter().flat_map(|s| s.values()) {
        for p in &slice.ports {
            let set = sets.entry((p.name.clone(), p.protocol)).or_default();
            for ep in &slice.endpoints {
                let ep = Endpoint { port: p.port, ..ep.clone() };
                // B5: the same IP:port twice → a non-terminating one replaces what is there; a
                // terminating one never replaces.
                let addr = ep.addr();
                if !set.contains_key(&addr) || !ep.terminating {
                    set.insert(addr, ep);
                }
            }
        }
    }
    sets.into_iter()
        .map(|(k, set)| {
            let mut eps: Vec<Endpoint> = set.into_values().collect();
            eps.sort_by_cached_key(|e| e.addr().to_string());
            (k, eps)
        })
        .collect()
}

/// A1: the informers' `!service-proxy-name,!headless` label selector.
fn has_opt_out_label(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}

/// One validated `spec.ports[]` entry.
struct SpecPort {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
}

/// Translates one Service (A2–A4, D3–D7, 1.C flags, F2, J1). `Err` means the Service is not
/// proxied at all; `warnings` are harmless ignored values.
fn translate_service(
    svc: &Service,
    namespace: &str,
    name: &str,
    slices: Option<&BTreeMap<String, ParsedSlice>>,
    node: &NodeInfo,
    opts: &TranslateOptions,
    warnings: &mut Vec<String>,
) -> Result<Vec<(ServicePortName, ServicePortState)>, String> {
    let Some(spec) = svc.spec.as_ref() else {
        debug!(service = %format!("{namespace}/{name}"), "skipping service without spec");
        return Ok(Vec::new());
    };
    // A2 (b): ShouldSkipService when the ClusterIP is "" or "None".
    let cluster_ip_field = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip_field.is_empty() || cluster_ip_field == "None" {
        debug!(service = %format!("{namespace}/{name}"), "skipping headless service (A2)");
        return Ok(Vec::new());
    }
    // A3: ExternalName is never proxied. The apiserver defaults the type to ClusterIP.
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    match svc_type {
        "ExternalName" => {
            debug!(service = %format!("{namespace}/{name}"), "skipping ExternalName service (A3)");
            return Ok(Vec::new());
        }
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => return Err(format!("unknown type {other:?}")),
    }
    // A4/G1: the IPv4 ClusterIP.
    let Some(cluster_ip) = ipv4_cluster_ip(spec)? else {
        debug!(service = %format!("{namespace}/{name}"), "skipping service without an IPv4 ClusterIP (A4/G1)");
        return Ok(Vec::new());
    };

    let ports = validate_ports(spec.ports.as_deref().unwrap_or_default())?;

    // 1.C definitions (`pkg/api/v1/service/util.go`).
    let external_policy = spec.external_traffic_policy.as_deref();
    if !matches!(external_policy, None | Some("Cluster") | Some("Local")) {
        return Err(format!("unknown externalTrafficPolicy {:?}", external_policy.unwrap_or_default()));
    }
    let internal_policy = spec.internal_traffic_policy.as_deref();
    if !matches!(internal_policy, None | Some("Cluster") | Some("Local")) {
        return Err(format!("unknown internalTrafficPolicy {:?}", internal_policy.unwrap_or_default()));
    }
    let service_externally_accessible = svc_type == "LoadBalancer"
        || svc_type == "NodePort"
        || (svc_type == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|ips| !ips.is_empty()));
    let external_policy_local = service_externally_accessible && external_policy == Some("Local");
    let internal_policy_local = internal_policy == Some("Local");

    // F2: session affinity.
    let affinity_timeout_seconds = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(Ok(DEFAULT_AFFINITY_TIMEOUT_SECONDS), u32::try_from);
            match t {
                Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => Some(t),
                _ => {
                    return Err(format!(
                        "sessionAffinityConfig.clientIP.timeoutSeconds must be in 1..={MAX_AFFINITY_TIMEOUT_SECONDS}"
                    ))
                }
            }
        }
        Some(other) => return Err(format!("unknown sessionAffinity {other:?}")),
    };

    // J1: NeedsHealthCheck = type LoadBalancer && ExternalPolicyLocal.
    let health_check_node_port = if svc_type == "LoadBalancer" && external_policy_local {
        match spec.health_check_node_port {
            None | Some(0) => {
                debug!(service = %format!("{namespace}/{name}"), "LoadBalancer service with eTP=Local has no healthCheckNodePort");
                None
            }
            Some(p) => Some(u16::try_from(p).map_err(|_| format!("healthCheckNodePort {p} out of range"))?),
        }
    } else {
        None
    };

    // D5/G1: externalIPs of this family; invalid entries are skipped (MapIPsByIPFamily).
    let mut external_ips = Vec::new();
    for s in spec.external_ips.iter().flatten() {
        match parse_ip_sloppy(s) {
            Some(IpAddr::V4(ip)) => external_ips.push(ip),
            Some(IpAddr::V6(_)) => {}
            None => warnings.push(format!("ignoring invalid externalIPs entry {s:?}")),
        }
    }

    // D6/G1: LB ingress IPs, VIP mode only.
    let mut load_balancer_ips = Vec::new();
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    for ing in ingress.into_iter().flatten() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else { continue };
        if !matches!(ing.ip_mode.as_deref(), None | Some("VIP")) {
            debug!(service = %format!("{namespace}/{name}"), ip, "ignoring LB ingress IP with ipMode != VIP (D6)");
            continue;
        }
        match parse_ip_sloppy(ip) {
            Some(IpAddr::V4(ip)) => load_balancer_ips.push(ip),
            Some(IpAddr::V6(_)) => {}
            None => warnings.push(format!("ignoring invalid status.loadBalancer.ingress ip {ip:?}")),
        }
    }

    // D7/G1: source ranges, whitespace-trimmed, this family only.
    let mut load_balancer_source_ranges = Vec::new();
    for s in spec.load_balancer_source_ranges.iter().flatten() {
        match parse_cidr_sloppy(s.trim()) {
            Some(Cidr::V4(net)) => load_balancer_source_ranges.push(net),
            Some(Cidr::V6) => {}
            None => warnings.push(format!("ignoring invalid loadBalancerSourceRanges entry {s:?}")),
        }
    }

    let mut by_port = endpoints_by_port(slices);
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        // B2: the endpoints of the slice ports with the same (name, protocol).
        let endpoints = by_port.remove(&(p.name.clone(), p.protocol)).unwrap_or_default();
        let mut st = ServicePortState {
            cluster_ip,
            port: p.port,
            protocol: p.protocol,
            node_port: p.node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            health_check_node_port,
            external_policy_local,
            internal_policy_local,
            affinity_timeout_seconds,
            endpoints,
            cluster_endpoints: Vec::new(),
            local_endpoints: Vec::new(),
            has_any_endpoints: false,
            topology_mode: String::new(),
        };
        let cat = categorize_endpoints(&st.endpoints, node, &st.categorize_input(), opts);
        st.cluster_endpoints = cat.cluster.unwrap_or_default();
        st.local_endpoints = cat.local.unwrap_or_default();
        st.has_any_endpoints = cat.has_any_endpoints;
        st.topology_mode = cat.topology_mode.as_str().to_string();
        let key =
            ServicePortName { namespace: namespace.to_string(), name: name.to_string(), port_name: p.name, protocol: p.protocol };
        out.push((key, st));
    }
    Ok(out)
}

/// A4: kube-proxy's `GetClusterIPByFamily` for IPv4, with the apiserver's defaulting of
/// `clusterIPs` from `clusterIP`. `Ok(None)`: the service has no IPv4 ClusterIP (G1).
fn ipv4_cluster_ip(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Option<Ipv4Addr>, String> {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if families.is_empty() {
        // Version skew: no ipFamilies, use clusterIP when it is of this family.
        return match parse_ip_sloppy(cluster_ip) {
            Some(IpAddr::V4(ip)) => Ok(Some(ip)),
            Some(IpAddr::V6(_)) => Ok(None),
            None => Err(format!("invalid clusterIP {cluster_ip:?}")),
        };
    }
    let Some(idx) = families.iter().position(|f| f == "IPv4") else { return Ok(None) };
    let candidate = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.get(idx).map(String::as_str),
        _ => (idx == 0).then_some(cluster_ip),
    };
    let Some(candidate) = candidate else {
        return Err(format!("ipFamilies[{idx}] is IPv4 but clusterIPs has no entry {idx}"));
    };
    match parse_ip_sloppy(candidate) {
        Some(IpAddr::V4(ip)) => Ok(Some(ip)),
        Some(IpAddr::V6(_)) => Err(format!("clusterIPs[{idx}] {candidate:?} is not IPv4 although ipFamilies[{idx}] is")),
        None => Err(format!("invalid clusterIPs[{idx}] {candidate:?}")),
    }
}

/// Validates `spec.ports` the way the apiserver would (port and nodePort ranges, protocol,
/// unique `(name, protocol)` and `(port, protocol)`); protocol defaults to TCP.
fn validate_ports(ports: &[k8s_openapi::api::core::v1::ServicePort]) -> Result<Vec<SpecPort>, String> {
    let mut out: Vec<SpecPort> = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let name = p.name.clone().unwrap_or_default();
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s).ok_or_else(|| format!("ports[{i}]: unknown protocol {s:?}"))?,
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| format!("ports[{i}]: port {} out of range 1..=65535", p.port))?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(u16::try_from(n).map_err(|_| format!("ports[{i}]: nodePort {n} out of range"))?),
        };
        if out.iter().any(|o| o.name == name && o.protocol == protocol) {
            return Err(format!("ports[{i}]: duplicate port name {name:?} for {protocol}"));
        }
        if out.iter().any(|o| o.port == port && o.protocol == protocol) {
            return Err(format!("ports[{i}]: duplicate port {port}/{protocol}"));
        }
        out.push(SpecPort { name, protocol, port, node_port });
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Sloppy IP parsing (k8s.io/utils/net ParseIPSloppy / ParseCIDRSloppy)
// ------------------------------------------------------------------------------------------------

/// Parses an IP address like Go's pre-1.17 `net.ParseIP` (`ParseIPSloppy`): IPv4 octets may have
/// leading zeros and are decimal ("010.0.0.1" is 10.0.0.1). An IPv4-mapped IPv6 address is IPv4,
/// as in Go.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        let v6: Ipv6Addr = s.parse().ok()?;
        return Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        });
    }
    parse_ipv4_sloppy(s).map(IpAddr::V4)
}

/// Four dot-separated decimal octets, each any number of digits with value ≤ 255.
fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut n: u32 = 0;
        for b in part.bytes() {
            n = n * 10 + u32::from(b - b'0');
            if n > 255 {
                return None;
            }
        }
        *octet = u8::try_from(n).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// A parsed CIDR: IPv4 (host bits cleared, like Go's `ParseCIDR`) or some IPv6 range.
enum Cidr {
    V4(Ipv4Net),
    V6,
}

/// `ParseCIDRSloppy`: `addr/len` with a sloppy address and a decimal prefix length.
fn parse_cidr_sloppy(s: &str) -> Option<Cidr> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    match parse_ip_sloppy(addr)? {
        // An IPv4-mapped IPv6 address with an IPv6 prefix length is left alone (not IPv4).
        IpAddr::V4(ip) if !addr.contains(':') => Ipv4Net::new(ip, len).ok().map(|n| Cidr::V4(n.trunc())),
        IpAddr::V4(_) | IpAddr::V6(_) => (len <= 128).then_some(Cidr::V6),
    }
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    // ---- builders ------------------------------------------------------------------------------

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("test Service YAML")
    }

    /// A Service `ns1/<name>` with the given `spec` (YAML flow mapping).
    fn sv(name: &str, spec: &str) -> Service {
        service(&format!("{{metadata: {{namespace: ns1, name: {name}}}, spec: {spec}}}"))
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).expect("test EndpointSlice YAML")
    }

    /// An IPv4 EndpointSlice `ns1/<name>` of service `svc` with `ports` and `endpoints` (YAML).
    fn sl(name: &str, svc: &str, ports: &str, endpoints: &str) -> EndpointSlice {
        slice(&format!(
            "{{metadata: {{namespace: ns1, name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}, \
             addressType: IPv4, ports: {ports}, endpoints: {endpoints}}}"
        ))
    }

    fn node(name: &str, zone: Option<&str>) -> NodeInfo {
        let mut labels = BTreeMap::new();
        if let Some(z) = zone {
            labels.insert(LABEL_TOPOLOGY_ZONE.to_string(), z.to_string());
        }
        NodeInfo { name: name.to_string(), labels }
    }

    fn run_on(
        node: &NodeInfo,
        opts: &TranslateOptions,
        svcs: &[Service],
        slices: &[EndpointSlice],
    ) -> (DesiredState, Vec<ObjectError>) {
        translate(svcs, slices, node, opts)
    }

    /// Translates on node `node-a` in `zone-a` with default options.
    fn run(svcs: &[Service], slices: &[EndpointSlice]) -> (DesiredState, Vec<ObjectError>) {
        run_on(&node("node-a", Some("zone-a")), &TranslateOptions::default(), svcs, slices)
    }

    /// Like [`run`] but asserts that nothing was reported.
    fn run_ok(svcs: &[Service], slices: &[EndpointSlice]) -> DesiredState {
        let (state, errors) = run(svcs, slices);
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        state
    }

    fn spn(name: &str, port: &str, proto: Protocol) -> ServicePortName {
        ServicePortName { namespace: "ns1".into(), name: name.into(), port_name: port.into(), protocol: proto }
    }

    fn sp<'a>(state: &'a DesiredState, name: &str, port: &str, proto: Protocol) -> &'a ServicePortState {
        state
            .services
            .get(&spn(name, port, proto))
            .unwrap_or_else(|| panic!("no SP {name}:{port}/{proto} in {:?}", state.services.keys()))
    }

    fn strs(addrs: &[EndpointAddr]) -> Vec<String> {
        addrs.iter().map(ToString::to_string).collect()
    }

    fn ep_strs(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(|e| e.addr().to_string()).collect()
    }

    fn addr(s: &str) -> EndpointAddr {
        let (ip, port) = s.rsplit_once(':').expect("ip:port");
        EndpointAddr { ip: ip.parse().expect("ip"), port: port.parse().expect("port") }
    }

    /// An endpoint for the categorize table. `flags`: R ready, S serving, T terminating, L local.
    fn ep(a: &str, flags: &str, zones: &[&str], nodes: &[&str]) -> Endpoint {
        let a = addr(a);
        Endpoint {
            ip: a.ip,
            port: a.port,
            ready: flags.contains('R'),
            serving: flags.contains('S'),
            terminating: flags.contains('T'),
            local: flags.contains('L'),
            zone_hints: zones.iter().map(|s| s.to_string()).collect(),
            node_hints: nodes.iter().map(|s| s.to_string()).collect(),
        }
    }

    // ---- C1–C4, C8: categorize_endpoints (ported from topology_test.go TestCategorizeEndpoints) --

    struct Case {
        name: &'static str,
        zone: Option<&'static str>,
        pte: bool,
        svc: CategorizeInput,
        endpoints: Vec<Endpoint>,
        cluster: Option<&'static [&'static str]>,
        local: Option<&'static [&'static str]>,
        all: Option<&'static [&'static str]>,
        only_remote: bool,
        mode: TopologyMode,
    }

    const CLUSTER: CategorizeInput =
        CategorizeInput { internal_policy_local: false, external_policy_local: false, externally_accessible: false };
    const ETP_LOCAL_NP: CategorizeInput =
        CategorizeInput { internal_policy_local: false, external_policy_local: true, externally_accessible: true };
    const ITP_LOCAL: CategorizeInput =
        CategorizeInput { internal_policy_local: true, external_policy_local: false, externally_accessible: false };
    const ITP_LOCAL_NP: CategorizeInput =
        CategorizeInput { internal_policy_local: true, external_policy_local: false, externally_accessible: true };
    const BOTH_LOCAL_NP: CategorizeInput =
        CategorizeInput { internal_policy_local: true, external_policy_local: true, externally_accessible: true };
    const ETP_LOCAL_INTERNAL: CategorizeInput =
        CategorizeInput { internal_policy_local: false, external_policy_local: true, externally_accessible: false };

    fn case(name: &'static str, svc: CategorizeInput, endpoints: Vec<Endpoint>) -> Case {
        Case {
            name,
            zone: None,
            pte: true,
            svc,
            endpoints,
            cluster: None,
            local: None,
            all: None,
            only_remote: false,
            mode: TopologyMode::None,
        }
    }

    fn zone_abcd() -> Vec<Endpoint> {
        vec![
            ep("10.1.2.3:80", "R", &["zone-a"], &[]),
            ep("10.1.2.4:80", "R", &["zone-b"], &[]),
            ep("10.1.2.5:80", "R", &["zone-c"], &[]),
            ep("10.1.2.6:80", "R", &["zone-a"], &[]),
        ]
    }

    fn categorize_cases() -> Vec<Case> {
        vec![
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "should use topology: all endpoints have hints, node zone set, endpoints for the zone",
                    CLUSTER,
                    zone_abcd(),
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                    ETP_LOCAL_NP,
                    vec![
                        ep("10.1.2.3:80", "RL", &["zone-a"], &[]),
                        ep("10.1.2.4:80", "RL", &["zone-b"], &[]),
                        ep("10.1.2.5:80", "R", &["zone-c"], &[]),
                        ep("10.1.2.6:80", "R", &["zone-a"], &[]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                    ITP_LOCAL_NP,
                    vec![
                        ep("10.1.2.3:80", "RL", &["zone-a"], &[]),
                        ep("10.1.2.4:80", "RL", &["zone-b"], &[]),
                        ep("10.1.2.5:80", "R", &["zone-c"], &[]),
                        ep("10.1.2.6:80", "R", &["zone-a"], &[]),
                    ],
                )
            },
            Case {
                cluster: Some(&["10.1.2.3:80"]),
                ..case("empty node labels", CLUSTER, vec![ep("10.1.2.3:80", "R", &["zone-a"], &[])])
            },
            Case {
                zone: Some(""),
                cluster: Some(&["10.1.2.3:80"]),
                ..case("empty zone label", CLUSTER, vec![ep("10.1.2.3:80", "R", &["zone-a"], &[])])
            },
            Case {
                zone: Some("zone-b"),
                cluster: Some(&["10.1.2.3:80"]),
                ..case("node in different zone, no endpoint filtering", CLUSTER, vec![ep("10.1.2.3:80", "R", &["zone-a"], &[])])
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.1.2.3:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "unready endpoint",
                    CLUSTER,
                    vec![
                        ep("10.1.2.3:80", "R", &["zone-a"], &[]),
                        ep("10.1.2.4:80", "R", &["zone-b"], &[]),
                        ep("10.1.2.5:80", "R", &["zone-c"], &[]),
                        ep("10.1.2.6:80", "", &["zone-a"], &[]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
                ..case(
                    "only unready endpoints in same zone (should not filter)",
                    CLUSTER,
                    vec![
                        ep("10.1.2.3:80", "", &["zone-a"], &[]),
                        ep("10.1.2.4:80", "R", &["zone-b"], &[]),
                        ep("10.1.2.5:80", "R", &["zone-c"], &[]),
                        ep("10.1.2.6:80", "", &["zone-a"], &[]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
                ..case(
                    "missing hints, no filtering applied",
                    CLUSTER,
                    vec![
                        ep("10.1.2.3:80", "R", &["zone-a"], &[]),
                        ep("10.1.2.4:80", "R", &["zone-b"], &[]),
                        ep("10.1.2.5:80", "R", &[], &[]),
                        ep("10.1.2.6:80", "R", &["zone-a"], &[]),
                    ],
                )
            },
            Case {
                zone: Some("zone-c"),
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "multiple hints per endpoint, filtering includes any endpoint with zone included",
                    CLUSTER,
                    vec![
                        ep("10.1.2.3:80", "R", &["zone-a", "zone-b", "zone-c"], &[]),
                        ep("10.1.2.4:80", "R", &["zone-b", "zone-c"], &[]),
                        ep("10.1.2.5:80", "R", &["zone-b", "zone-d"], &[]),
                        ep("10.1.2.6:80", "R", &["zone-c"], &[]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "conflicting topology and localness require merging allEndpoints",
                    ETP_LOCAL_NP,
                    vec![
                        ep("10.0.0.0:80", "RL", &["zone-a"], &[]),
                        ep("10.0.0.1:80", "RL", &["zone-b"], &[]),
                        ep("10.0.0.2:80", "R", &["zone-a"], &[]),
                        ep("10.0.0.3:80", "R", &["zone-b"], &[]),
                    ],
                )
            },
            Case { local: Some(&[]), ..case("internalTrafficPolicy: Local, with empty endpoints", ITP_LOCAL, vec![]) },
            Case {
                local: Some(&[]),
                only_remote: true,
                ..case(
                    "internalTrafficPolicy: Local, but all endpoints are remote",
                    ITP_LOCAL,
                    vec![ep("10.0.0.0:80", "R", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "internalTrafficPolicy: Local, all endpoints are local",
                    ITP_LOCAL,
                    vec![ep("10.0.0.0:80", "RL", &[], &[]), ep("10.0.0.1:80", "RL", &[], &[])],
                )
            },
            Case {
                local: Some(&["10.0.0.0:80"]),
                ..case(
                    "internalTrafficPolicy: Local, some endpoints are local",
                    ITP_LOCAL,
                    vec![ep("10.0.0.0:80", "RL", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                cluster: Some(&[]),
                ..case(
                    "Cluster traffic policy, endpoints not Ready",
                    CLUSTER,
                    vec![ep("10.0.0.0:80", "", &[], &[]), ep("10.0.0.1:80", "", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.1:80"]),
                ..case(
                    "Cluster traffic policy, some endpoints are Ready",
                    CLUSTER,
                    vec![ep("10.0.0.0:80", "", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "Cluster traffic policy, all endpoints are terminating",
                    CLUSTER,
                    vec![ep("10.0.0.0:80", "STL", &[], &[]), ep("10.0.0.1:80", "ST", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "iTP: Local, eTP: Cluster, some endpoints local",
                    ITP_LOCAL_NP,
                    vec![ep("10.0.0.0:80", "RL", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "iTP: Cluster, eTP: Local, some endpoints local",
                    ETP_LOCAL_NP,
                    vec![ep("10.0.0.0:80", "RL", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "iTP: Local, eTP: Local, some endpoints local",
                    BOTH_LOCAL_NP,
                    vec![ep("10.0.0.0:80", "RL", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&[]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "iTP: Local, eTP: Local, all endpoints remote",
                    BOTH_LOCAL_NP,
                    vec![ep("10.0.0.0:80", "R", &[], &[]), ep("10.0.0.1:80", "R", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&[]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: true,
                ..case(
                    "iTP: Local, eTP: Local, all endpoints remote and terminating",
                    BOTH_LOCAL_NP,
                    vec![ep("10.0.0.0:80", "ST", &[], &[]), ep("10.0.0.1:80", "ST", &[], &[])],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80"]),
                local: Some(&["10.0.0.2:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                ..case(
                    "iTP: Cluster, eTP: Local, with terminating endpoints",
                    ETP_LOCAL_NP,
                    vec![
                        ep("10.0.0.0:80", "R", &[], &[]),
                        ep("10.0.0.1:80", "L", &[], &[]),
                        ep("10.0.0.2:80", "STL", &[], &[]),
                        ep("10.0.0.3:80", "ST", &[], &[]),
                    ],
                )
            },
            Case {
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "externalTrafficPolicy ignored if not externally accessible",
                    ETP_LOCAL_INTERNAL,
                    vec![ep("10.0.0.0:80", "R", &[], &[]), ep("10.0.0.1:80", "RL", &[], &[])],
                )
            },
            Case {
                local: Some(&["10.0.0.1:80"]),
                ..case(
                    "no cluster endpoints for iTP:Local internal-only service",
                    ITP_LOCAL,
                    vec![ep("10.0.0.0:80", "R", &[], &[]), ep("10.0.0.1:80", "RL", &[], &[])],
                )
            },
            // Not-serving endpoints are never used, even terminating ones (C1).
            Case {
                cluster: Some(&[]),
                ..case(
                    "terminating but not serving endpoints are never used",
                    CLUSTER,
                    vec![ep("10.0.0.0:80", "T", &[], &[]), ep("10.0.0.1:80", "TL", &[], &[])],
                )
            },
            // The terminating fallback ignores topology (C1).
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "terminating fallback ignores zone hints",
                    CLUSTER,
                    vec![ep("10.0.0.0:80", "ST", &["zone-a"], &[]), ep("10.0.0.1:80", "ST", &["zone-b"], &[])],
                )
            },
            // PreferSameNode (C3, PreferSameTrafficDistribution).
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.0.0.1:80"]),
                mode: TopologyMode::PreferSameNode,
                ..case(
                    "PreferSameNode: every ready endpoint has a node hint, one for this node",
                    CLUSTER,
                    vec![
                        ep("10.0.0.0:80", "R", &["zone-a"], &["node-b"]),
                        ep("10.0.0.1:80", "R", &["zone-a"], &["node-a"]),
                        ep("10.0.0.2:80", "R", &["zone-b"], &["node-c"]),
                        ep("10.0.0.3:80", "", &[], &[]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                pte: false,
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "node hints ignored without PreferSameTrafficDistribution",
                    CLUSTER,
                    vec![
                        ep("10.0.0.0:80", "R", &["zone-a"], &["node-b"]),
                        ep("10.0.0.1:80", "R", &["zone-a"], &["node-a"]),
                        ep("10.0.0.2:80", "R", &["zone-b"], &["node-c"]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "no node hint for this node: falls back to zone hints",
                    CLUSTER,
                    vec![
                        ep("10.0.0.0:80", "R", &["zone-a"], &["node-b"]),
                        ep("10.0.0.1:80", "R", &["zone-a"], &["node-b"]),
                        ep("10.0.0.2:80", "R", &["zone-b"], &["node-c"]),
                    ],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.0.0.1:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "an endpoint without node hint: zone hints used",
                    CLUSTER,
                    vec![ep("10.0.0.0:80", "R", &["zone-b"], &["node-a"]), ep("10.0.0.1:80", "R", &["zone-a"], &[])],
                )
            },
            Case {
                zone: Some("zone-a"),
                cluster: Some(&["10.0.0.0:80", "10.0.0.3:80"]),
                local: Some(&["10.0.0.1:80", "10.0.0.2:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
                mode: TopologyMode::PreferSameZone,
                ..case(
                    "eTP Local with serving-terminating local endpoints merges the lists",
                    ETP_LOCAL_NP,
                    vec![
                        ep("10.0.0.0:80", "R", &["zone-a"], &[]),
                        ep("10.0.0.1:80", "STL", &["zone-a"], &[]),
                        ep("10.0.0.2:80", "STL", &["zone-b"], &[]),
                        ep("10.0.0.3:80", "R", &["zone-a"], &[]),
                    ],
                )
            },
        ]
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set_of(v: &[EndpointAddr]) -> BTreeSet<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn categorize_endpoints_table() {
        for c in categorize_cases() {
            let node = node("node-a", c.zone);
            let opts = TranslateOptions { prefer_same_traffic_distribution: c.pte };
            let got = categorize_endpoints(&c.endpoints, &node, &c.svc, &opts);
            assert_eq!(got.cluster.as_deref().map(set_of), c.cluster.map(set), "{}: cluster", c.name);
            assert_eq!(got.local.as_deref().map(set_of), c.local.map(set), "{}: local", c.name);
            let expected_all = match (c.cluster, c.local) {
                (Some(cl), None) => set(cl),
                (None, Some(l)) => set(l),
                _ => set(c.all.unwrap_or_else(|| panic!("{}: `all` must be given", c.name))),
            };
            assert_eq!(set_of(&got.all_reachable), expected_all, "{}: all", c.name);
            assert_eq!(got.has_any_endpoints, !expected_all.is_empty() || c.only_remote, "{}: hasAnyEndpoints", c.name);
            assert_eq!(got.topology_mode, c.mode, "{}: topology mode", c.name);
            // all_reachable is sorted by the ip:port string.
            let all = strs(&got.all_reachable);
            let mut sorted = all.clone();
            sorted.sort();
            assert_eq!(all, sorted, "{}: all_reachable order", c.name);
        }
    }

    // ---- B1–B8: endpoints from slices (ported from endpointslicecache_test.go) -----------------

    const SVC1: &str = "{clusterIP: 172.30.0.41, ports: [{name: port-0, port: 80}]}";

    #[test]
    fn merges_several_slices() {
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[
                sl(
                    "svc1-1",
                    "svc1",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2]}, {addresses: [10.0.1.3]}]",
                ),
                sl(
                    "svc1-2",
                    "svc1",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.2.1]}, {addresses: [10.0.2.2]}, {addresses: [10.0.2.3]}]",
                ),
            ],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(
            ep_strs(&st.endpoints),
            ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.2.1:80", "10.0.2.2:80", "10.0.2.3:80"]
        );
        assert_eq!(strs(&st.cluster_endpoints), ep_strs(&st.endpoints));
        assert!(st.local_endpoints.is_empty());
        assert!(st.has_any_endpoints);
        assert_eq!(st.cluster_ip, Ipv4Addr::new(172, 30, 0, 41));
    }

    #[test]
    fn overlapping_slices_are_a_union() {
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[
                sl(
                    "svc1-1",
                    "svc1",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2]}, {addresses: [10.0.1.3]}]",
                ),
                sl(
                    "svc1-2",
                    "svc1",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2]}, {addresses: [10.0.1.3]}, {addresses: [10.0.1.4]}]",
                ),
            ],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(ep_strs(&st.endpoints), ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80"]);
    }

    #[test]
    fn slices_of_other_services_and_namespaces_are_not_joined() {
        let other_ns = slice(
            "{metadata: {namespace: ns2, name: svc1-3, labels: {kubernetes.io/service-name: svc1}}, addressType: IPv4, \
             ports: [{name: port-0, port: 80}], endpoints: [{addresses: [10.0.3.1]}]}",
        );
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[
                sl("svc1-1", "svc1", "[{name: port-0, port: 80}]", "[{addresses: [10.0.1.1]}]"),
                sl("svc2-1", "svc2", "[{name: port-0, port: 80}]", "[{addresses: [10.0.2.1]}]"),
                other_ns,
            ],
        );
        assert_eq!(state.services.len(), 1);
        assert_eq!(ep_strs(&sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints), ["10.0.1.1:80"]);
    }

    #[test]
    fn ports_match_by_name_and_protocol() {
        let svc = sv(
            "dns",
            "{clusterIP: 172.30.0.10, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, \
             {name: dns-tcp, port: 53, protocol: TCP}]}",
        );
        let state = run_ok(
            &[svc],
            &[sl(
                "dns-1",
                "dns",
                "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}, \
             {name: dns, port: 5354, protocol: TCP}, {name: dns-tcp, port: 5355, protocol: TCP}, {name: metrics, port: 9153}]",
                "[{addresses: [10.0.0.1]}]",
            )],
        );
        assert_eq!(state.services.len(), 3, "{:?}", state.services.keys());
        assert_eq!(ep_strs(&sp(&state, "dns", "http", Protocol::Tcp).endpoints), ["10.0.0.1:8080"]);
        let udp = sp(&state, "dns", "dns", Protocol::Udp);
        assert_eq!(ep_strs(&udp.endpoints), ["10.0.0.1:5353"]);
        assert_eq!((udp.port, udp.protocol), (53, Protocol::Udp));
        assert_eq!(ep_strs(&sp(&state, "dns", "dns-tcp", Protocol::Tcp).endpoints), ["10.0.0.1:5355"]);
        assert!(!state.services.contains_key(&spn("dns", "dns", Protocol::Tcp)));
    }

    #[test]
    fn named_port_with_different_numbers_per_slice() {
        let svc = sv("web", "{clusterIP: 172.30.0.42, ports: [{name: http, port: 80, targetPort: http}]}");
        let state = run_ok(
            &[svc],
            &[
                sl("web-a", "web", "[{name: http, port: 8080}]", "[{addresses: [10.0.0.1]}]"),
                sl("web-b", "web", "[{name: http, port: 9090}]", "[{addresses: [10.0.0.2]}]"),
            ],
        );
        assert_eq!(ep_strs(&sp(&state, "web", "http", Protocol::Tcp).endpoints), ["10.0.0.1:8080", "10.0.0.2:9090"]);
    }

    #[test]
    fn same_ip_with_different_ports_is_not_deduplicated() {
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[
                sl(
                    "svc1-1",
                    "svc1",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2], nodeName: node-a}]",
                ),
                sl(
                    "svc1-2",
                    "svc1",
                    "[{name: port-0, port: 8080}]",
                    "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2], nodeName: node-a}]",
                ),
            ],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(ep_strs(&st.endpoints), ["10.0.1.1:80", "10.0.1.1:8080", "10.0.1.2:80", "10.0.1.2:8080"]);
        assert_eq!(st.endpoints.iter().filter(|e| e.local).count(), 2);
    }

    #[test]
    fn unnamed_port_matches_empty_name_and_nil_name_is_ignored() {
        let svc = sv("svc1", "{clusterIP: 172.30.0.41, ports: [{port: 80}]}");
        let (state, errors) = run(
            &[svc],
            &[
                sl("svc1-1", "svc1", "[{name: '', port: 8080}]", "[{addresses: [10.0.1.1]}]"),
                sl("svc1-2", "svc1", "[{port: 9090}]", "[{addresses: [10.0.1.2]}]"),
            ],
        );
        assert_eq!(ep_strs(&sp(&state, "svc1", "", Protocol::Tcp).endpoints), ["10.0.1.1:8080"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].kind.as_str(), errors[0].name.as_str()), ("EndpointSlice", "svc1-2"));
        assert!(errors[0].message.contains("no name"), "{}", errors[0]);
    }

    #[test]
    fn nil_and_zero_ports_are_ignored() {
        let (state, errors) = run(
            &[sv("svc1", SVC1)],
            &[
                sl("svc1-1", "svc1", "[{name: port-0}]", "[{addresses: [10.0.1.1]}]"),
                sl("svc1-2", "svc1", "[{name: port-0, port: 0}]", "[{addresses: [10.0.1.2]}]"),
            ],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert!(st.endpoints.is_empty());
        assert!(!st.has_any_endpoints);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn fqdn_and_ipv6_slices_are_ignored() {
        let fqdn = slice(
            "{metadata: {namespace: ns1, name: svc1-fqdn, labels: {kubernetes.io/service-name: svc1}}, addressType: FQDN, \
             ports: [{name: port-0, port: 80}], endpoints: [{addresses: [example.com]}]}",
        );
        let v6 = slice(
            "{metadata: {namespace: ns1, name: svc1-v6, labels: {kubernetes.io/service-name: svc1}}, addressType: IPv6, \
             ports: [{name: port-0, port: 80}], endpoints: [{addresses: ['fd00::1']}]}",
        );
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[fqdn, v6, sl("svc1-1", "svc1", "[{name: port-0, port: 80}]", "[{addresses: [10.0.1.1]}]")],
        );
        assert_eq!(ep_strs(&sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints), ["10.0.1.1:80"]);
    }

    #[test]
    fn slice_without_service_name_label_is_ignored_and_reported() {
        let unlabelled = slice(
            "{metadata: {namespace: ns1, name: orphan}, addressType: IPv4, ports: [{name: port-0, port: 80}], \
             endpoints: [{addresses: [10.0.1.9]}]}",
        );
        let (state, errors) = run(&[sv("svc1", SVC1)], &[unlabelled]);
        assert!(sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), "EndpointSlice ns1/orphan: ignored: no kubernetes.io/service-name label");
    }

    #[test]
    fn slices_with_opt_out_labels_are_invisible() {
        for label in [LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS] {
            let s = slice(&format!(
                "{{metadata: {{namespace: ns1, name: svc1-x, labels: {{kubernetes.io/service-name: svc1, {label}: x}}}}, \
                 addressType: IPv4, ports: [{{name: port-0, port: 80}}], endpoints: [{{addresses: [10.0.1.1]}}]}}"
            ));
            let state = run_ok(&[sv("svc1", SVC1)], &[s]);
            assert!(sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints.is_empty(), "{label}");
        }
    }

    #[test]
    fn duplicate_ip_port_non_terminating_wins() {
        let term = "[{addresses: [10.0.1.1], conditions: {ready: false, serving: true, terminating: true}}]";
        let live = "[{addresses: [10.0.1.1], conditions: {ready: true}}]";
        // Whatever the slice order, the non-terminating endpoint wins (B5).
        for (a, b) in [(term, live), (live, term)] {
            let state = run_ok(
                &[sv("svc1", SVC1)],
                &[sl("svc1-a", "svc1", "[{name: port-0, port: 80}]", a), sl("svc1-b", "svc1", "[{name: port-0, port: 80}]", b)],
            );
            let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
            assert_eq!(st.endpoints.len(), 1);
            assert!(st.endpoints[0].ready && !st.endpoints[0].terminating, "{:?}", st.endpoints);
        }
        // Two terminating copies stay terminating.
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[sl("svc1-a", "svc1", "[{name: port-0, port: 80}]", term), sl("svc1-b", "svc1", "[{name: port-0, port: 80}]", term)],
        );
        assert!(sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints[0].terminating);
    }

    #[test]
    fn condition_defaults_and_locality() {
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[sl(
                "svc1-1",
                "svc1",
                "[{name: port-0, port: 80}]",
                "[{addresses: [10.0.1.1], nodeName: node-a}, \
              {addresses: [10.0.1.2], nodeName: node-b, conditions: {ready: false}}, \
              {addresses: [10.0.1.3], conditions: {ready: false, serving: true, terminating: true}}]",
            )],
        );
        let eps = &sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints;
        let flags: Vec<_> = eps.iter().map(|e| (e.ready, e.serving, e.terminating, e.local)).collect();
        assert_eq!(flags, [(true, true, false, true), (false, true, false, false), (false, true, true, false)]);
    }

    #[test]
    fn endpoint_lists_are_sorted_by_string() {
        let state = run_ok(
            &[sv("svc1", SVC1)],
            &[sl(
                "svc1-1",
                "svc1",
                "[{name: port-0, port: 80}]",
                "[{addresses: [10.0.1.2]}, {addresses: [10.0.1.1]}, {addresses: [10.0.1.10]}]",
            )],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(ep_strs(&st.endpoints), ["10.0.1.10:80", "10.0.1.1:80", "10.0.1.2:80"]);
        assert_eq!(strs(&st.cluster_endpoints), ["10.0.1.10:80", "10.0.1.1:80", "10.0.1.2:80"]);
    }

    #[test]
    fn invalid_endpoint_addresses_are_skipped_and_reported() {
        let (state, errors) = run(
            &[sv("svc1", SVC1)],
            &[sl(
                "svc1-1",
                "svc1",
                "[{name: port-0, port: 80}]",
                "[{addresses: [not-an-ip]}, {addresses: []}, {addresses: ['fd00::1']}, {addresses: [10.180.00.1, 10.0.0.99]}]",
            )],
        );
        // Sloppy parsing accepts leading zeros and canonicalises (B4); only addresses[0] counts.
        assert_eq!(ep_strs(&sp(&state, "svc1", "port-0", Protocol::Tcp).endpoints), ["10.180.0.1:80"]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().all(|e| e.kind == "EndpointSlice" && e.namespace == "ns1" && e.name == "svc1-1"));
    }

    #[test]
    fn zone_and_node_hints() {
        let slices = [sl(
            "svc1-1",
            "svc1",
            "[{name: port-0, port: 80}]",
            "[{addresses: [10.0.0.1], hints: {forZones: [{name: zone-a}], forNodes: [{name: node-a}]}}, \
              {addresses: [10.0.0.2], hints: {forZones: [{name: zone-a}], forNodes: [{name: node-b}]}}, \
              {addresses: [10.0.0.3], hints: {forZones: [{name: zone-b}], forNodes: [{name: node-c}]}}]",
        )];
        let n = node("node-a", Some("zone-a"));
        let (state, _) = run_on(&n, &TranslateOptions::default(), &[sv("svc1", SVC1)], &slices);
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(st.topology_mode, "PreferSameNode");
        assert_eq!(strs(&st.cluster_endpoints), ["10.0.0.1:80"]);
        assert_eq!(st.endpoints[0].node_hints, set(&["node-a"]));

        let off = TranslateOptions { prefer_same_traffic_distribution: false };
        let (state, _) = run_on(&n, &off, &[sv("svc1", SVC1)], &slices);
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(st.topology_mode, "PreferSameZone");
        assert_eq!(strs(&st.cluster_endpoints), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert!(st.endpoints.iter().all(|e| e.node_hints.is_empty()), "B8: node hints only with the gate");

        // A node without zone label and without node hints for it: no topology (C3).
        let (state, _) = run_on(&node("node-x", None), &TranslateOptions::default(), &[sv("svc1", SVC1)], &slices);
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(st.topology_mode, "");
        assert_eq!(st.cluster_endpoints.len(), 3);
    }

    // ---- C1/C2 through translate ------------------------------------------------------------------

    #[test]
    fn terminating_fallback_and_not_serving() {
        let state = run_ok(
            &[sv("svc1", SVC1), sv("svc2", "{clusterIP: 172.30.0.42, ports: [{name: port-0, port: 80}]}")],
            &[
                sl(
                    "svc1-1",
                    "svc1",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.1.1], conditions: {ready: false, serving: true, terminating: true}}, \
                  {addresses: [10.0.1.2], conditions: {ready: false, serving: false, terminating: true}}]",
                ),
                sl(
                    "svc2-1",
                    "svc2",
                    "[{name: port-0, port: 80}]",
                    "[{addresses: [10.0.2.1], conditions: {ready: false, serving: false, terminating: true}}]",
                ),
            ],
        );
        let st1 = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert_eq!(strs(&st1.cluster_endpoints), ["10.0.1.1:80"]);
        assert!(st1.has_any_endpoints);
        let st2 = sp(&state, "svc2", "port-0", Protocol::Tcp);
        assert!(st2.cluster_endpoints.is_empty());
        assert!(!st2.has_any_endpoints, "E1: not-serving endpoints do not count");
        assert_eq!(st2.endpoints.len(), 1, "the endpoint is still listed");
    }

    #[test]
    fn local_endpoints_for_etp_local() {
        let svc = sv(
            "svc1",
            "{type: NodePort, externalTrafficPolicy: Local, clusterIP: 172.30.0.41, ports: [{name: port-0, port: 80, nodePort: 3001}]}",
        );
        let state = run_ok(
            &[svc],
            &[sl(
                "svc1-1",
                "svc1",
                "[{name: port-0, port: 80}]",
                "[{addresses: [10.0.1.1], nodeName: node-a}, {addresses: [10.0.1.2], nodeName: node-b}, {addresses: [10.0.1.3]}]",
            )],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert!(st.external_policy_local && !st.internal_policy_local);
        assert_eq!(st.node_port, Some(3001));
        assert_eq!(strs(&st.local_endpoints), ["10.0.1.1:80"]);
        assert_eq!(st.cluster_endpoints.len(), 3, "cluster endpoints are kept for short-circuiting");
        assert_eq!(st.health_check_node_port, None, "J1: only type LoadBalancer");
    }

    #[test]
    fn internal_traffic_policy_local() {
        let svc = sv("svc1", "{internalTrafficPolicy: Local, clusterIP: 172.30.0.41, ports: [{name: port-0, port: 80}]}");
        let state = run_ok(
            &[svc],
            &[sl(
                "svc1-1",
                "svc1",
                "[{name: port-0, port: 80}]",
                "[{addresses: [10.0.1.1], nodeName: node-b}, {addresses: [10.0.1.2], nodeName: node-b}]",
            )],
        );
        let st = sp(&state, "svc1", "port-0", Protocol::Tcp);
        assert!(st.internal_policy_local);
        assert!(st.cluster_endpoints.is_empty(), "internal-only iTP=Local never uses cluster endpoints");
        assert!(st.local_endpoints.is_empty());
        assert!(st.has_any_endpoints, "endpoints elsewhere: DROP, not REJECT");
    }

    #[test]
    fn traffic_policy_flags() {
        let cases = [
            ("{clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{port: 80}]}", false),
            ("{clusterIP: 10.96.0.1, externalTrafficPolicy: Local, externalIPs: [1.2.3.4], ports: [{port: 80}]}", true),
            ("{clusterIP: 10.96.0.1, externalTrafficPolicy: Local, externalIPs: ['2001:db8::1'], ports: [{port: 80}]}", true),
            ("{type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30000}]}", true),
            (
                "{type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Cluster, ports: [{port: 80, nodePort: 30000}]}",
                false,
            ),
            (
                "{type: LoadBalancer, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30000}]}",
                true,
            ),
        ];
        for (spec, etp_local) in cases {
            let state = run_ok(&[sv("s", spec)], &[]);
            let st = sp(&state, "s", "", Protocol::Tcp);
            assert_eq!(st.external_policy_local, etp_local, "{spec}");
            assert!(!st.internal_policy_local, "{spec}");
        }
    }

    #[test]
    fn health_check_node_port_only_for_lb_with_etp_local() {
        let lb_local = "{type: LoadBalancer, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, healthCheckNodePort: 32000, \
                        ports: [{port: 80, nodePort: 30000}]}";
        let lb_cluster =
            "{type: LoadBalancer, clusterIP: 10.96.0.2, healthCheckNodePort: 32001, ports: [{port: 80, nodePort: 30001}]}";
        let np_local = "{type: NodePort, clusterIP: 10.96.0.3, externalTrafficPolicy: Local, healthCheckNodePort: 32002, \
                        ports: [{port: 80, nodePort: 30002}]}";
        let state = run_ok(&[sv("a", lb_local), sv("b", lb_cluster), sv("c", np_local)], &[]);
        assert_eq!(sp(&state, "a", "", Protocol::Tcp).health_check_node_port, Some(32000));
        assert_eq!(sp(&state, "b", "", Protocol::Tcp).health_check_node_port, None);
        assert_eq!(sp(&state, "c", "", Protocol::Tcp).health_check_node_port, None);
    }

    // ---- A1–A4, G1: which services are proxied ----------------------------------------------------

    #[test]
    fn skipped_services() {
        let svcs = [
            sv("headless", "{clusterIP: None, ports: [{port: 80}]}"),
            sv("no-ip", "{ports: [{port: 80}]}"),
            sv("empty-ip", "{clusterIP: '', ports: [{port: 80}]}"),
            sv("extname", "{type: ExternalName, externalName: example.com, clusterIP: 10.96.0.9, ports: [{port: 80}]}"),
            service(
                "{metadata: {namespace: ns1, name: opted-out, labels: {service.kubernetes.io/service-proxy-name: other}}, \
                 spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}}",
            ),
            service(
                "{metadata: {namespace: ns1, name: headless-label, labels: {service.kubernetes.io/headless: ''}}, \
                 spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}}",
            ),
            sv("v6-only", "{clusterIP: 'fd00::10', clusterIPs: ['fd00::10'], ipFamilies: [IPv6], ports: [{port: 80}]}"),
            sv("v6-skew", "{clusterIP: 'fd00::11', ports: [{port: 80}]}"),
            sv("kept", "{clusterIP: 10.96.0.12, ports: [{port: 80}]}"),
        ];
        let state = run_ok(&svcs, &[]);
        let names: Vec<&str> = state.services.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn dual_stack_picks_the_ipv4_cluster_ip() {
        let state = run_ok(
            &[sv(
                "ds",
                "{clusterIP: 'fd00::5', clusterIPs: ['fd00::5', 10.96.0.5], ipFamilies: [IPv6, IPv4], \
                  externalIPs: ['2001:db8::1', 1.2.3.4], loadBalancerSourceRanges: ['2001:db8::/64', 10.0.0.0/8], ports: [{port: 80}]}",
            )],
            &[],
        );
        let st = sp(&state, "ds", "", Protocol::Tcp);
        assert_eq!(st.cluster_ip, Ipv4Addr::new(10, 96, 0, 5));
        assert_eq!(st.external_ips, [Ipv4Addr::new(1, 2, 3, 4)]);
        assert_eq!(st.load_balancer_source_ranges, ["10.0.0.0/8".parse::<Ipv4Net>().expect("net")]);
    }

    #[test]
    fn malformed_service_is_skipped_while_another_works() {
        let (state, errors) = run(
            &[
                sv("bad", "{clusterIP: not-an-ip, ports: [{port: 80}]}"),
                sv("good", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
            ],
            &[],
        );
        assert_eq!(state.services.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].kind.as_str(), errors[0].namespace.as_str(), errors[0].name.as_str()), ("Service", "ns1", "bad"));
        assert!(errors[0].to_string().starts_with("Service ns1/bad: not proxied: invalid clusterIP"), "{}", errors[0]);
    }

    #[test]
    fn invalid_service_specs() {
        let bad = [
            ("port-range", "{clusterIP: 10.96.0.1, ports: [{port: 70000}]}", "out of range"),
            ("port-zero", "{clusterIP: 10.96.0.1, ports: [{port: 0}]}", "out of range"),
            ("proto", "{clusterIP: 10.96.0.1, ports: [{port: 80, protocol: ICMP}]}", "unknown protocol"),
            ("proto-case", "{clusterIP: 10.96.0.1, ports: [{port: 80, protocol: tcp}]}", "unknown protocol"),
            ("dup-name", "{clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: a, port: 81}]}", "duplicate port name"),
            ("dup-port", "{clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}", "duplicate port 80/TCP"),
            ("nodeport", "{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: -1}]}", "nodePort"),
            ("type", "{type: Magic, clusterIP: 10.96.0.1, ports: [{port: 80}]}", "unknown type"),
            ("affinity", "{clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}", "timeoutSeconds"),
            ("etp", "{clusterIP: 10.96.0.1, externalTrafficPolicy: Nearby, ports: [{port: 80}]}", "externalTrafficPolicy"),
            ("ipfam", "{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1], ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}", "clusterIPs has no entry"),
            ("v6-as-v4", "{clusterIP: 'fd00::1', ipFamilies: [IPv4], ports: [{port: 80}]}", "not IPv4"),
        ];
        for (name, spec, msg) in bad {
            let (state, errors) = run(&[sv(name, spec)], &[]);
            assert!(state.services.is_empty(), "{name}");
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            assert!(errors[0].message.contains(msg), "{name}: {}", errors[0]);
        }
        // The same port number with two protocols is fine (D2).
        let state = run_ok(
            &[sv(
                "dns",
                "{clusterIP: 10.96.0.10, ports: [{name: a, port: 53, protocol: UDP}, {name: a, port: 53, protocol: TCP}]}",
            )],
            &[],
        );
        assert_eq!(state.services.len(), 2);
    }

    #[test]
    fn duplicate_service_definitions_last_wins() {
        let (state, errors) = run(
            &[sv("s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"), sv("s", "{clusterIP: 10.96.0.2, ports: [{port: 80}]}")],
            &[],
        );
        assert_eq!(sp(&state, "s", "", Protocol::Tcp).cluster_ip, Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(errors.len(), 1);
    }

    // ---- D3–D7, F2 -------------------------------------------------------------------------------

    #[test]
    fn load_balancer_ingress_ip_mode() {
        let svc = service(
            "{metadata: {namespace: ns1, name: lb}, spec: {type: LoadBalancer, clusterIP: 172.30.0.41, \
               ports: [{name: p80, port: 80, nodePort: 3001}]}, \
             status: {loadBalancer: {ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8, ipMode: VIP}, {ip: 9.9.9.9, ipMode: Proxy}, \
               {hostname: lb.example.com}, {ip: '2001:db8::9'}, {ip: 1.2.3.004}]}}}",
        );
        let state = run_ok(&[svc], &[]);
        let st = sp(&state, "lb", "p80", Protocol::Tcp);
        assert_eq!(st.load_balancer_ips, [Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), Ipv4Addr::new(1, 2, 3, 4)]);
        assert!(st.externally_accessible());
    }

    #[test]
    fn load_balancer_source_ranges_are_trimmed_and_filtered() {
        let svc = sv(
            "lb",
            "{type: LoadBalancer, clusterIP: 172.30.0.41, ports: [{port: 80, nodePort: 3001}], \
              loadBalancerSourceRanges: [192.168.0.0/24, ' 203.0.113.0/25', '2001:db8::/32', 10.1.2.3/16, garbage]}",
        );
        let (state, errors) = run(&[svc], &[]);
        let st = sp(&state, "lb", "", Protocol::Tcp);
        let got: Vec<String> = st.load_balancer_source_ranges.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["192.168.0.0/24", "203.0.113.0/25", "10.1.0.0/16"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("garbage"));
    }

    #[test]
    fn external_ips_are_filtered_to_valid_ipv4() {
        let (state, errors) = run(
            &[sv(
                "s",
                "{clusterIP: 10.96.0.1, externalIPs: [1.2.3.4, '2001:db8::1', bogus, 192.168.099.22], ports: [{port: 80}]}",
            )],
            &[],
        );
        let st = sp(&state, "s", "", Protocol::Tcp);
        assert_eq!(st.external_ips, [Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(192, 168, 99, 22)]);
        assert!(st.externally_accessible());
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn session_affinity() {
        let state = run_ok(
            &[
                sv("none", "{clusterIP: 10.96.0.1, sessionAffinity: None, ports: [{port: 80}]}"),
                sv("default", "{clusterIP: 10.96.0.2, sessionAffinity: ClientIP, ports: [{port: 80}]}"),
                sv("custom", "{clusterIP: 10.96.0.3, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 125}}, ports: [{port: 80}]}"),
            ],
            &[],
        );
        assert_eq!(sp(&state, "none", "", Protocol::Tcp).affinity_timeout_seconds, None);
        assert_eq!(sp(&state, "default", "", Protocol::Tcp).affinity_timeout_seconds, Some(10_800));
        assert_eq!(sp(&state, "custom", "", Protocol::Tcp).affinity_timeout_seconds, Some(125));
    }

    #[test]
    fn sloppy_ip_parsing_canonicalises() {
        let state = run_ok(
            &[sv("s", "{clusterIP: 172.30.0.041, ports: [{name: p80, port: 80, nodePort: 0}]}")],
            &[sl("s-1", "s", "[{name: p80, port: 80}]", "[{addresses: [10.180.00.1]}]")],
        );
        let st = sp(&state, "s", "p80", Protocol::Tcp);
        assert_eq!(st.cluster_ip, Ipv4Addr::new(172, 30, 0, 41));
        assert_eq!(ep_strs(&st.endpoints), ["10.180.0.1:80"]);
        assert_eq!(st.node_port, None);
    }

    #[test]
    fn service_port_without_slice_port_has_no_endpoints() {
        let state = run_ok(
            &[sv("s", "{clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 81}]}")],
            &[sl("s-1", "s", "[{name: a, port: 8080}]", "[{addresses: [10.0.0.1]}]")],
        );
        assert!(sp(&state, "s", "a", Protocol::Tcp).has_any_endpoints);
        let b = sp(&state, "s", "b", Protocol::Tcp);
        assert!(b.endpoints.is_empty() && b.cluster_endpoints.is_empty() && !b.has_any_endpoints);
    }

    // ---- robustness, helpers -------------------------------------------------------------------

    #[test]
    fn never_panics_on_odd_input() {
        let svcs = [
            service("{}"),
            service("{metadata: {name: x}}"),
            service("{metadata: {namespace: ns1, name: nospec}}"),
            sv("neg", "{clusterIP: 10.96.0.1, ports: [{port: -5, nodePort: 99999}]}"),
            sv("big", "{clusterIP: 10.96.0.1, type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: -1, ports: [{port: 80}]}"),
            sv("weird-ips", "{clusterIP: 10.96.0.1, clusterIPs: [], ipFamilies: [IPv4, IPv4, IPv9], ports: [{port: 80}]}"),
            sv("affinity", "{clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: -3}}, ports: [{port: 80}]}"),
        ];
        let slices = [
            slice("{}"),
            slice("{metadata: {namespace: ns1, name: s, labels: {kubernetes.io/service-name: neg}}, addressType: IPv4, ports: [{name: '', port: -80}, {name: '', port: 70000}, {name: '', port: 80, protocol: ICMP}], endpoints: [{addresses: ['']}, {addresses: ['1.2.3.4.5']}, {addresses: ['256.1.1.1']}]}"),
            slice("{metadata: {namespace: ns1, name: t, labels: {kubernetes.io/service-name: x}}, addressType: Bogus}"),
        ];
        let (state, errors) = run(&svcs, &slices);
        assert_eq!(state.services.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["weird-ips"]);
        assert!(errors.len() >= 8, "{errors:#?}");
    }

    #[test]
    fn parse_ip_sloppy_cases() {
        let v4 = |s: &str| match parse_ip_sloppy(s) {
            Some(IpAddr::V4(ip)) => Some(ip.to_string()),
            _ => None,
        };
        assert_eq!(v4("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(v4("010.000.0.001").as_deref(), Some("10.0.0.1"));
        assert_eq!(v4("::ffff:1.2.3.4").as_deref(), Some("1.2.3.4"));
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.-4", "1..2.3", " 1.2.3.4", "1.2.3.4/32", "a.b.c.d"] {
            assert_eq!(parse_ip_sloppy(bad), None, "{bad:?}");
        }
        assert!(matches!(parse_ip_sloppy("2001:db8::1"), Some(IpAddr::V6(_))));
        assert!(matches!(parse_cidr_sloppy("10.1.2.3/16"), Some(Cidr::V4(n)) if n.to_string() == "10.1.0.0/16"));
        assert!(matches!(parse_cidr_sloppy("2001:db8::/32"), Some(Cidr::V6)));
        assert!(parse_cidr_sloppy("10.0.0.0/33").is_none());
        assert!(parse_cidr_sloppy("10.0.0.0").is_none());
    }

    #[test]
    fn display_formats() {
        assert_eq!(spn("svc", "http", Protocol::Tcp).to_string(), "ns1/svc:http/TCP");
        assert_eq!(spn("svc", "", Protocol::Udp).to_string(), "ns1/svc/UDP");
        assert_eq!(addr("10.0.0.1:8080").to_string(), "10.0.0.1:8080");
        assert_eq!(ObjectError::new("Service", "ns", "n", "boom").to_string(), "Service ns/n: boom");
        assert_eq!(ObjectError::new("EndpointSlice", "", "", "x").to_string(), "EndpointSlice <unnamed>: x");
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::parse(&p.to_string()), Some(p));
        }
        assert_eq!((Protocol::Tcp.number(), Protocol::Udp.number(), Protocol::Sctp.number()), (6, 17, 132));
        assert_eq!(Protocol::parse("tcp"), None);
        assert_eq!(serde_json::to_value(Protocol::Sctp).expect("json"), serde_json::json!("SCTP"));
    }

    #[test]
    fn state_serializes_to_json() {
        let state = run_ok(&[sv("s", "{type: LoadBalancer, clusterIP: 10.96.0.1, loadBalancerSourceRanges: [10.0.0.0/8], ports: [{port: 80, nodePort: 30000}]}")], &[]);
        let v = serde_json::to_value(&state).expect("json");
        let st = &v["services"]["ns1/s/TCP"];
        assert_eq!(st["load_balancer_source_ranges"], serde_json::json!(["10.0.0.0/8"]));
        assert_eq!(st["protocol"], serde_json::json!("TCP"));
        assert_eq!(st["node_port"], serde_json::json!(30000));
    }
}
