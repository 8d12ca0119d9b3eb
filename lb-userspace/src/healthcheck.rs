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
        out.insert(
            port,
            HealthCheckService { namespace: namespace.to_string(), name: name.to_string(), local_endpoints: ips.len() },
        );
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

    /// Changes the addresses to listen on (the agent passes the resolved node-port addresses
    /// at every sync). On a change every port is closed and reopened by the next
    /// [`HealthCheckServers::sync`].
    pub fn set_bind_addresses(&mut self, bind_addresses: Vec<IpAddr>) {
        let mut want = bind_addresses;
        if want.is_empty() {
            want.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        want.sort();
        want.dedup();
        if want != self.bind_addresses {
            info!(addresses = ?want, "healthCheckNodePort addresses changed; reopening");
            self.ports.clear();
            self.bind_addresses = want;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::model::{translate, NodeInfo, TranslateOptions};

    const NODE: &str = "node-a";

    fn sv(name: &str, spec: &str) -> Service {
        serde_yaml::from_str(&format!("{{metadata: {{namespace: ns1, name: {name}}}, spec: {spec}}}")).expect("Service YAML")
    }

    /// An IPv4 slice `ns1/<name>` of service `svc`.
    fn sl(name: &str, svc: &str, ports: &str, endpoints: &str) -> EndpointSlice {
        serde_yaml::from_str(&format!(
            "{{metadata: {{namespace: ns1, name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}, \
             addressType: IPv4, ports: {ports}, endpoints: {endpoints}}}"
        ))
        .expect("EndpointSlice YAML")
    }

    fn desired(svcs: &[Service], slices: &[EndpointSlice]) -> DesiredState {
        let node = NodeInfo { name: NODE.into(), labels: BTreeMap::new() };
        let (state, errors) = translate(svcs, slices, &node, &TranslateOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        state
    }

    fn hcs(namespace: &str, name: &str, local_endpoints: usize) -> HealthCheckService {
        HealthCheckService { namespace: namespace.into(), name: name.into(), local_endpoints }
    }

    const LB_LOCAL: &str =
        "{type: LoadBalancer, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, healthCheckNodePort: 32000, \
        ports: [{name: http, port: 80, nodePort: 30080}, {name: https, port: 443, nodePort: 30443}]}";
    const TWO_PORTS: &str = "[{name: http, port: 8080}, {name: https, port: 8443}]";

    /// (what, services, slices, expected ports).
    type Case = (&'static str, Vec<Service>, Vec<EndpointSlice>, Vec<(u16, HealthCheckService)>);

    #[test]
    fn health_check_services_table() {
        let ready_local = |ip: &str| format!("{{addresses: [{ip}], nodeName: {NODE}}}");
        let cases: Vec<Case> = vec![
            ("no endpoints: the port is served with 0", vec![sv("lb", LB_LOCAL)], vec![], vec![(32000, hcs("ns1", "lb", 0))]),
            (
                "one local ready endpoint on both ports counts once",
                vec![sv("lb", LB_LOCAL)],
                vec![sl("lb-1", "lb", TWO_PORTS, &format!("[{}]", ready_local("10.0.1.1")))],
                vec![(32000, hcs("ns1", "lb", 1))],
            ),
            (
                "distinct IPs over all ports; the same IP in two slices (ports) counts once",
                vec![sv("lb", LB_LOCAL)],
                vec![
                    sl("lb-1", "lb", "[{name: http, port: 8080}]", &format!("[{}, {}]", ready_local("10.0.1.1"), ready_local("10.0.1.2"))),
                    sl("lb-2", "lb", "[{name: https, port: 8443}]", &format!("[{}, {}]", ready_local("10.0.1.1"), ready_local("10.0.1.3"))),
                ],
                vec![(32000, hcs("ns1", "lb", 3))],
            ),
            (
                "remote and nodeName-less endpoints do not count",
                vec![sv("lb", LB_LOCAL)],
                vec![sl(
                    "lb-1",
                    "lb",
                    TWO_PORTS,
                    &format!("[{}, {{addresses: [10.0.2.1], nodeName: node-b}}, {{addresses: [10.0.2.2]}}]", ready_local("10.0.1.1")),
                )],
                vec![(32000, hcs("ns1", "lb", 1))],
            ),
            (
                "remote only",
                vec![sv("lb", LB_LOCAL)],
                vec![sl("lb-1", "lb", TWO_PORTS, "[{addresses: [10.0.2.1], nodeName: node-b}]")],
                vec![(32000, hcs("ns1", "lb", 0))],
            ),
            (
                "terminating only (still serving): 0",
                vec![sv("lb", LB_LOCAL)],
                vec![sl(
                    "lb-1",
                    "lb",
                    TWO_PORTS,
                    &format!(
                        "[{{addresses: [10.0.1.1], nodeName: {NODE}, conditions: {{ready: false, serving: true, terminating: true}}}}, \
                          {{addresses: [10.0.1.2], nodeName: {NODE}, conditions: {{ready: false, serving: false, terminating: true}}}}]"
                    ),
                )],
                vec![(32000, hcs("ns1", "lb", 0))],
            ),
            (
                "terminating endpoints next to a ready one: only the ready one counts",
                vec![sv("lb", LB_LOCAL)],
                vec![sl(
                    "lb-1",
                    "lb",
                    TWO_PORTS,
                    &format!(
                        "[{}, {{addresses: [10.0.1.2], nodeName: {NODE}, conditions: {{ready: false, serving: true, terminating: true}}}}]",
                        ready_local("10.0.1.1")
                    ),
                )],
                vec![(32000, hcs("ns1", "lb", 1))],
            ),
            (
                "local but not ready (not terminating): 0",
                vec![sv("lb", LB_LOCAL)],
                vec![sl("lb-1", "lb", TWO_PORTS, &format!("[{{addresses: [10.0.1.1], nodeName: {NODE}, conditions: {{ready: false}}}}]"))],
                vec![(32000, hcs("ns1", "lb", 0))],
            ),
            (
                "not a LoadBalancer (NodePort with eTP=Local): no port",
                vec![sv(
                    "np",
                    "{type: NodePort, clusterIP: 10.96.0.2, externalTrafficPolicy: Local, healthCheckNodePort: 32001, \
                      ports: [{name: http, port: 80, nodePort: 30081}]}",
                )],
                vec![sl("np-1", "np", "[{name: http, port: 8080}]", &format!("[{}]", ready_local("10.0.1.1")))],
                vec![],
            ),
            (
                "LoadBalancer with eTP=Cluster: no port",
                vec![sv(
                    "lbc",
                    "{type: LoadBalancer, clusterIP: 10.96.0.3, externalTrafficPolicy: Cluster, healthCheckNodePort: 32002, \
                      ports: [{name: http, port: 80, nodePort: 30082}]}",
                )],
                vec![sl("lbc-1", "lbc", "[{name: http, port: 8080}]", &format!("[{}]", ready_local("10.0.1.1")))],
                vec![],
            ),
            (
                "ClusterIP service: no port",
                vec![sv("c", "{clusterIP: 10.96.0.4, ports: [{name: http, port: 80}]}")],
                vec![sl("c-1", "c", "[{name: http, port: 8080}]", &format!("[{}]", ready_local("10.0.1.1")))],
                vec![],
            ),
            (
                "two services, each with its own port and count; the same pod IP is counted per service",
                vec![
                    sv("lb", LB_LOCAL),
                    sv(
                        "lb2",
                        "{type: LoadBalancer, clusterIP: 10.96.0.5, externalTrafficPolicy: Local, healthCheckNodePort: 32005, \
                          ports: [{name: http, port: 80, nodePort: 30085}]}",
                    ),
                ],
                vec![
                    sl("lb-1", "lb", TWO_PORTS, &format!("[{}, {}]", ready_local("10.0.1.1"), ready_local("10.0.1.2"))),
                    sl("lb2-1", "lb2", "[{name: http, port: 8080}]", &format!("[{}]", ready_local("10.0.1.1"))),
                ],
                vec![(32000, hcs("ns1", "lb", 2)), (32005, hcs("ns1", "lb2", 1))],
            ),
            (
                "two services on the same port (manifests only): the first by name keeps it",
                vec![sv("b", LB_LOCAL.replace("10.96.0.1", "10.96.0.6").as_str()), sv("a", LB_LOCAL)],
                vec![sl("b-1", "b", TWO_PORTS, &format!("[{}]", ready_local("10.0.1.1")))],
                vec![(32000, hcs("ns1", "a", 0))],
            ),
        ];
        for (name, svcs, slices, want) in cases {
            let got = health_check_services(&desired(&svcs, &slices));
            assert_eq!(got, want.into_iter().collect::<BTreeMap<_, _>>(), "{name}");
        }
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn response_table() {
        // (local endpoints, proxy healthy, status)
        for (n, healthy, status) in [(2, true, 200), (1, true, 200), (0, true, 503), (2, false, 503), (0, false, 503)] {
            let r = health_check_response(&hcs("ns1", "web", n), healthy);
            assert_eq!(r.status, status, "{n} {healthy}");
            assert_eq!(header(&r.headers, "Content-Type"), Some("application/json"));
            assert_eq!(header(&r.headers, "X-Content-Type-Options"), Some("nosniff"));
            assert_eq!(header(&r.headers, "X-Load-Balancing-Endpoint-Weight"), Some(n.to_string().as_str()));
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"service": {"namespace": "ns1", "name": "web"}, "localEndpoints": n, "serviceProxyHealthy": healthy})
            );
        }
        // kube-proxy's layout: tab-indented, in this key order, no trailing newline.
        assert_eq!(
            health_check_response(&hcs("ns1", "web", 2), true).body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns1\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
    }

    /// A port that was free a moment ago on 127.0.0.1.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Sends `request` (without the final blank line) and reads the whole response:
    /// (status, lower-cased headers, body).
    async fn send(stream: &mut tokio::net::TcpStream, request: &str) -> (u16, Vec<(String, String)>, String) {
        crate::testutil::http_exchange(stream, request).await
    }

    async fn request(port: u16, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        send(&mut s, &format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}")).await
    }

    fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Waits (up to 5 s) until nothing listens on `port` any more.
    async fn assert_refused(port: u16) {
        for _ in 0..100 {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("port {port} still accepts connections");
    }

    fn state(entries: &[(u16, HealthCheckService)]) -> BTreeMap<u16, HealthCheckService> {
        entries.iter().cloned().collect()
    }

    #[tokio::test]
    async fn servers_follow_the_syncs_over_tcp() {
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let mut servers = HealthCheckServers::new(vec!["127.0.0.1".parse().unwrap()], Arc::new(move || h.load(Ordering::SeqCst)));
        let port = free_port();

        // From a desired state, through the model.
        let lb = LB_LOCAL.replace("32000", &port.to_string());
        let d = desired(
            &[sv("lb", &lb)],
            &[sl(
                "lb-1",
                "lb",
                TWO_PORTS,
                &format!("[{{addresses: [10.0.1.1], nodeName: {NODE}}}, {{addresses: [10.0.1.2], nodeName: {NODE}}}]"),
            )],
        );
        servers.sync_desired(&d);
        assert_eq!(servers.ports(), vec![port]);
        assert_eq!(servers.local_addrs(port), vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        for (method, path) in [("GET", "/"), ("GET", "/healthz"), ("POST", "/any/path?x=1"), ("PUT", "/")] {
            let (status, headers, body) = request(port, method, path).await;
            assert_eq!(status, 200, "{method} {path}: {body}");
            assert_eq!(get(&headers, "content-type"), Some("application/json"));
            assert_eq!(get(&headers, "x-content-type-options"), Some("nosniff"));
            assert_eq!(get(&headers, "x-load-balancing-endpoint-weight"), Some("2"));
            assert_eq!(body, health_check_response(&hcs("ns1", "lb", 2), true).body);
        }

        // A connection accepted before the update is answered after it with the new count: the
        // listener was updated in place, not restarted.
        let mut early = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        servers.sync(&state(&[(port, hcs("ns1", "lb", 1))]));
        let (status, headers, _) = send(&mut early, &format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}")).await;
        assert_eq!((status, get(&headers, "x-load-balancing-endpoint-weight")), (200, Some("1")));

        // The proxy turns unhealthy: 503 with the count still reported.
        healthy.store(false, Ordering::SeqCst);
        let (status, headers, body) = request(port, "GET", "/").await;
        assert_eq!((status, get(&headers, "x-load-balancing-endpoint-weight")), (503, Some("1")));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["serviceProxyHealthy"], false);
        healthy.store(true, Ordering::SeqCst);

        // No local ready endpoints left: 503.
        servers.sync(&state(&[(port, hcs("ns1", "lb", 0))]));
        let (status, headers, body) = request(port, "GET", "/").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(get(&headers, "x-load-balancing-endpoint-weight"), Some("0"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"service": {"namespace": "ns1", "name": "lb"}, "localEndpoints": 0, "serviceProxyHealthy": true})
        );

        // A port in use: logged, the other port still opens, and it is retried at the next sync.
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let both = state(&[(port, hcs("ns1", "lb", 0)), (busy_port, hcs("ns1", "other", 3))]);
        servers.sync(&both);
        assert_eq!(servers.ports(), vec![port]);
        assert_eq!(request(port, "GET", "/").await.0, 503);
        drop(busy);
        servers.sync(&both);
        let mut ports = vec![port, busy_port];
        ports.sort();
        assert_eq!(servers.ports(), ports);
        let (status, headers, _) = request(busy_port, "GET", "/").await;
        assert_eq!((status, get(&headers, "x-load-balancing-endpoint-weight")), (200, Some("3")));

        // The service disappears: its port is closed, the other one stays.
        servers.sync(&state(&[(busy_port, hcs("ns1", "other", 3))]));
        assert_eq!(servers.ports(), vec![busy_port]);
        assert_refused(port).await;
        assert_eq!(request(busy_port, "GET", "/").await.0, 200);

        // Everything gone (the desired state has no LoadBalancer service any more).
        servers.sync_desired(&DesiredState::default());
        assert!(servers.ports().is_empty());
        assert_refused(busy_port).await;
    }

    #[tokio::test]
    async fn dropping_the_manager_closes_the_ports() {
        let mut servers = HealthCheckServers::new(vec!["127.0.0.1".parse().unwrap()], Arc::new(|| true));
        let port = free_port();
        servers.sync(&state(&[(port, hcs("ns1", "lb", 1))]));
        assert_eq!(request(port, "HEAD", "/").await.0, 200);
        drop(servers);
        assert_refused(port).await;
    }
}
