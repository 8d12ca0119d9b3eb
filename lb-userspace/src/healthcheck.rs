//! The healthCheckNodePort servers (SEMANTICS J1), as kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go`.
//!
//! A `type: LoadBalancer` Service with `externalTrafficPolicy: Local` gets a
//! `spec.healthCheckNodePort`; cloud load balancers probe it on every node to learn which nodes
//! have local endpoints. Each such port is served over HTTP on the node-port addresses, and
//! every request (any path, any method) gets the same answer: 200 iff the service has local
//! ready endpoints on this node and the proxy is healthy, else 503.
//!
//! - [`health_check_services`] (pure): [`DesiredState`] → per port, the service and its
//!   `localEndpoints` count.
//! - [`health_check_response`] (pure): the status, headers and body of an answer.
//! - [`HealthCheckServers`]: keeps one listener set per port in step with the desired state
//!   (opens new ports, closes ports that went away, updates the served counts in place).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::ProxyFlags;
use crate::http::HealthState;
use crate::model::DesiredState;

/// What one healthCheckNodePort reports: the service and its `localEndpoints`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckService {
    pub namespace: String,
    pub name: String,
    /// The number of distinct IPs of this node's ready endpoints, over all ports of the service.
    pub local_endpoints: usize,
}

/// J1: the healthCheckNodePorts of `desired`, each with its service and `localEndpoints`.
///
/// `health_check_node_port` is only set for `type: LoadBalancer` with eTP=Local (kube-proxy's
/// `NeedsHealthCheck`; `model::translate` applies the rule). `localEndpoints` is kube-proxy's
/// `LocalReadyEndpoints`: the distinct IPs of the endpoints that are local and ready, over all
/// ports of the service. Serving-but-terminating endpoints do not count (`ready` is false for
/// them), so a node whose only local pods are terminating fails the check.
///
/// Two services claiming the same port cannot happen with an API server (it allocates the
/// ports); from manifests, the first service in `namespace/name` order keeps the port.
pub fn health_check_services(desired: &DesiredState) -> BTreeMap<u16, HealthCheckService> {
    // (namespace, name) → (port, distinct local ready IPs). All ports of a service carry the
    // same healthCheckNodePort (it is a service-level field).
    let mut by_service: BTreeMap<(&str, &str), (u16, BTreeSet<Ipv4Addr>)> = BTreeMap::new();
    for (spn, st) in &desired.services {
        let Some(port) = st.health_check_node_port else { continue };
        let entry = by_service.entry((spn.namespace.as_str(), spn.name.as_str())).or_insert((port, BTreeSet::new()));
        entry.1.extend(st.endpoints.iter().filter(|e| e.local && e.ready).map(|e| e.ip));
    }
    let mut out: BTreeMap<u16, HealthCheckService> = BTreeMap::new();
    for ((namespace, name), (port, ips)) in by_service {
        if let Some(owner) = out.get(&port) {
            warn!(
                service = %format!("{namespace}/{name}"),
                port,
                owner = %format!("{}/{}", owner.namespace, owner.name),
                "healthCheckNodePort already used by another service; not served for this one"
            );
            continue;
        }
        out.insert(port, HealthCheckService { namespace: namespace.to_string(), name: name.to_string(), local_endpoints: ips.len() });
    }
    out
}

/// One answer of a healthCheckNodePort server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a> {
    service: BodyService<'a>,
    #[serde(rename = "localEndpoints")]
    local_endpoints: usize,
    #[serde(rename = "serviceProxyHealthy")]
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct BodyService<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// J1: the answer for `service` when the proxy is (or is not) healthy: 200 iff
/// `localEndpoints > 0` and the proxy is healthy, else 503. The body is laid out as
/// kube-proxy's (tab-indented, no trailing newline).
pub fn health_check_response(service: &HealthCheckService, proxy_healthy: bool) -> HealthCheckResponse {
    let body = Body {
        service: BodyService { namespace: &service.namespace, name: &service.name },
        local_endpoints: service.local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, serde_json::ser::PrettyFormatter::with_indent(b"\t"));
    body.serialize(&mut ser).expect("health check body serializes");
    HealthCheckResponse {
        status: if service.local_endpoints > 0 && proxy_healthy { 200 } else { 503 },
        headers: vec![
            ("Content-Type", "application/json".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("X-Load-Balancing-Endpoint-Weight", service.local_endpoints.to_string()),
        ],
        body: String::from_utf8(buf).expect("JSON is UTF-8"),
    }
}

/// The addresses the healthCheckNodePorts listen on, from `--nodeport-addresses` (an empty list
/// means `0.0.0.0`, as kube-proxy when the flag is empty).
///
/// kube-proxy listens on the node's addresses that fall in the `--nodeport-addresses` CIDRs
/// (`primary`: the node's primary IPs). This only takes what the flag alone says: plain IPv4
/// addresses and `/32` CIDRs. If any IPv4 entry needs the node's addresses (`primary`, a wider
/// CIDR), it returns an empty list (bind everything) rather than a partial one. IPv6 entries are
/// ignored (the datapath is IPv4 only). The agent should pass the resolved node-port addresses
/// once it resolves them for NodePorts.
pub fn bind_addresses(flags: &ProxyFlags) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for entry in flags.nodeport_addresses.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if let Ok(ip) = entry.parse::<Ipv4Addr>() {
            out.push(IpAddr::V4(ip));
            continue;
        }
        match entry.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V6(_)) => continue,
            Ok(ipnet::IpNet::V4(net)) if net.prefix_len() == 32 => out.push(IpAddr::V4(net.addr())),
            _ if entry.parse::<std::net::Ipv6Addr>().is_ok() => continue,
            _ => {
                if entry != "primary" {
                    info!(entry, "--nodeport-addresses: healthCheckNodePorts listen on 0.0.0.0 (node addresses are not resolved)");
                }
                return Vec::new();
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Reads the proxy's health (kube-proxy's `healthzServer.IsHealthy()`).
pub type ProxyHealthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a listener serves; shared by its listeners and updated in place by each sync.
#[derive(Clone)]
struct Served {
    service: Arc<Mutex<HealthCheckService>>,
    proxy_healthy: ProxyHealthy,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handler(State(served): State<Served>) -> Response {
    let service = lock(&served.service).clone();
    let r = health_check_response(&service, (served.proxy_healthy)());
    let mut resp = (StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.body).into_response();
    for (k, v) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// The listeners of one healthCheckNodePort. Dropping it closes them (graceful shutdown:
/// no new connections, idle keep-alive connections closed, requests in flight finish).
struct PortServer {
    served: Served,
    addrs: Vec<SocketAddr>,
    _shutdown: watch::Sender<()>,
}

/// The healthCheckNodePort servers of this node (kube-proxy's `ServiceHealthServer`).
///
/// [`HealthCheckServers::sync`] is called after each successful sync with the desired state. It
/// must run inside a tokio runtime (the listeners are tokio tasks).
pub struct HealthCheckServers {
    bind_addresses: Vec<IpAddr>,
    proxy_healthy: ProxyHealthy,
    ports: BTreeMap<u16, PortServer>,
}

impl std::fmt::Debug for HealthCheckServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckServers")
            .field("bind_addresses", &self.bind_addresses)
            .field("ports", &self.ports.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl HealthCheckServers {
    /// Servers listening on `bind_addresses` (empty: `0.0.0.0`), answering with the proxy
    /// health read from `proxy_healthy`.
    pub fn new(bind_addresses: Vec<IpAddr>, proxy_healthy: ProxyHealthy) -> HealthCheckServers {
        let mut bind_addresses = bind_addresses;
        if bind_addresses.is_empty() {
            bind_addresses.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        bind_addresses.sort();
        bind_addresses.dedup();
        HealthCheckServers { bind_addresses, proxy_healthy, ports: BTreeMap::new() }
    }

    /// [`HealthCheckServers::new`] with the proxy health of `health` (its `IsHealthy`, which
    /// ignores node eligibility, as kube-proxy).
    pub fn with_health(bind_addresses: Vec<IpAddr>, health: Arc<HealthState>) -> HealthCheckServers {
        Self::new(bind_addresses, Arc::new(move || health.is_healthy()))
    }

    /// The ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.keys().copied().collect()
    }

    /// The addresses the listeners of `port` are bound to (empty if the port is not served).
    pub fn local_addrs(&self, port: u16) -> Vec<SocketAddr> {
        self.ports.get(&port).map(|p| p.addrs.clone()).unwrap_or_default()
    }

    /// [`HealthCheckServers::sync`] with [`health_check_services`] of `desired`.
    pub fn sync_desired(&mut self, desired: &DesiredState) {
        self.sync(&health_check_services(desired));
    }

    /// Brings the listeners in step with `services`: closes ports that went away, updates the
    /// service and count of the ports that stay (without restarting them), opens new ports. A
    /// port that cannot be opened (in use) is logged and retried at the next sync; the others
    /// are not affected.
    pub fn sync(&mut self, services: &BTreeMap<u16, HealthCheckService>) {
        self.ports.retain(|port, server| {
            let keep = services.contains_key(port);
            if !keep {
                let s = lock(&server.served.service);
                info!(service = %format!("{}/{}", s.namespace, s.name), port, "closing healthCheckNodePort");
            }
            keep
        });
        for (&port, service) in services {
            if let Some(server) = self.ports.get(&port) {
                let mut s = lock(&server.served.service);
                if *s != *service {
                    debug!(service = %format!("{}/{}", service.namespace, service.name), port, local_endpoints = service.local_endpoints, "healthCheckNodePort updated");
                    *s = service.clone();
                }
                continue;
            }
            match self.open(port, service) {
                Ok(server) => {
                    info!(service = %format!("{}/{}", service.namespace, service.name), port, addresses = ?server.addrs, "serving healthCheckNodePort");
                    self.ports.insert(port, server);
                }
                Err(e) => error!(
                    service = %format!("{}/{}", service.namespace, service.name),
                    port,
                    "failed to start healthcheck (retried at the next sync): {e:#}"
                ),
            }
        }
    }

    /// Binds `port` on every bind address (all or none, as kube-proxy) and serves it.
    fn open(&self, port: u16, service: &HealthCheckService) -> anyhow::Result<PortServer> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| anyhow::anyhow!("no tokio runtime: {e}"))?;
        let mut listeners = Vec::new();
        for ip in &self.bind_addresses {
            let addr = SocketAddr::new(*ip, port);
            let l = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("listen on {addr}: {e}"))?;
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
        let served = Served { service: Arc::new(Mutex::new(service.clone())), proxy_healthy: self.proxy_healthy.clone() };
        let router = Router::new().fallback(handler).with_state(served.clone());
        // Dropping `shutdown` (with the PortServer) stops every listener of the port.
        let (shutdown, shutdown_rx) = watch::channel(());
        let mut addrs = Vec::new();
        let _guard = runtime.enter();
        for l in listeners {
            let l = tokio::net::TcpListener::from_std(l)?;
            addrs.push(l.local_addr()?);
            let mut signal = shutdown_rx.clone();
            let router = router.clone();
            runtime.spawn(async move {
                let served = axum::serve(l, router).with_graceful_shutdown(async move {
                    let _ = signal.changed().await;
                });
                if let Err(e) = served.await {
                    warn!(port, "healthCheckNodePort server stopped: {e}");
                }
            });
        }
        Ok(PortServer { served, addrs, _shutdown: shutdown })
    }
}
