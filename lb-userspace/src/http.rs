//! Health and metrics endpoints, kube-proxy style.
//!
//! - [`HealthState`] + [`serve_health`]: kube-proxy's proxy health server (SEMANTICS J2,
//!   `pkg/proxy/healthcheck/proxy_health.go`): `/healthz` and `/livez` on `:10256`, same status
//!   codes, headers and JSON body.
//! - [`Metrics`] + [`serve_metrics`]: Prometheus metrics on `127.0.0.1:10249/metrics`, with
//!   kube-proxy's names where they mean the same thing (SEMANTICS K3) and `lb_*` names for what
//!   only this datapath has.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Default `--healthz-bind-address` (kube-proxy's).
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
/// Default `--metrics-bind-address` (kube-proxy's).
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";
/// The taint the Cluster Autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// The EndpointSlice annotation network programming latency is measured from.
pub const LAST_CHANGE_TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The IP family reported in the health body's `status` map (the datapath is IPv4 only).
const IP_FAMILY: &str = "IPv4";
/// OpenMetrics text exposition, as `prometheus_client::encoding::text` writes it.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

/// A point in time on both clocks: the monotonic one for ages, the wall one for the body.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    mono: Instant,
    wall: SystemTime,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp { mono: Instant::now(), wall: SystemTime::now() }
    }
    #[cfg(test)]
    fn plus(self, d: Duration) -> Stamp {
        Stamp { mono: self.mono + d, wall: self.wall + d }
    }
}

#[derive(Debug)]
struct HealthInner {
    last_updated: Option<Stamp>,
    oldest_pending: Option<Stamp>,
    node_eligible: bool,
}

/// J2: kube-proxy's proxy health.
///
/// Unhealthy (503) when an update has been queued for longer than `health_timeout` without
/// being applied, or — `/healthz` only — when the node is not eligible (it has a
/// deletionTimestamp or the `ToBeDeletedByClusterAutoscaler` taint). `/livez` ignores node
/// eligibility.
///
/// As in kube-proxy: [`HealthState::new`] counts as the first `Updated()` (kube-proxy calls it
/// when its sync loop starts "in case Sync() never succeeds"), so an agent that never manages
/// to apply a queued update turns unhealthy `health_timeout` after it was queued; and the node
/// is eligible until told otherwise. kube-proxy's `healthTimeout` is 2 × `--sync-period`, 60 s
/// by default.
#[derive(Debug)]
pub struct HealthState {
    health_timeout: Duration,
    inner: Mutex<HealthInner>,
}

/// The JSON body, field for field as kube-proxy's `ProxyHealth` marshals (Go's `encoding/json`
/// order is the struct order; `time.Time` marshals as RFC 3339 with nanoseconds, trailing zeros
/// trimmed).
#[derive(Debug, Serialize)]
struct ProxyHealthBody {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    #[serde(rename = "currentTime")]
    current_time: String,
    #[serde(rename = "nodeEligible", skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, ProxierHealthBody>,
}

#[derive(Debug, Serialize)]
struct ProxierHealthBody {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    healthy: bool,
}

/// A health response: status code and JSON body (headers are always [`HEALTH_HEADERS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthResponse {
    pub status: u16,
    pub body: String,
}

/// The headers kube-proxy sets on `/healthz` and `/livez` responses.
pub const HEALTH_HEADERS: [(&str, &str); 2] = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")];

/// Go's zero `time.Time`, as `encoding/json` writes it.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// RFC 3339 in UTC with nanoseconds, trailing zeros trimmed (Go's `time.RFC3339Nano`).
pub fn format_rfc3339_nano(t: SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.to_string(),
        Err(_) => GO_ZERO_TIME.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HealthState {
    pub fn new(health_timeout: Duration) -> Arc<HealthState> {
        Self::new_at(health_timeout, Stamp::now())
    }

    fn new_at(health_timeout: Duration, now: Stamp) -> Arc<HealthState> {
        Arc::new(HealthState {
            health_timeout,
            inner: Mutex::new(HealthInner { last_updated: Some(now), oldest_pending: None, node_eligible: true }),
        })
    }

    /// An update arrived that is not yet applied: records the time unless one is already pending.
    pub fn queued_update(&self) {
        self.queued_update_at(Stamp::now())
    }

    fn queued_update_at(&self, now: Stamp) {
        let mut inner = lock(&self.inner);
        if inner.oldest_pending.is_none() {
            inner.oldest_pending = Some(now);
        }
    }

    /// A sync completed: lastUpdated = now, nothing pending.
    pub fn updated(&self) {
        self.updated_at(Stamp::now())
    }

    fn updated_at(&self, now: Stamp) {
        let mut inner = lock(&self.inner);
        inner.oldest_pending = None;
        inner.last_updated = Some(now);
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        lock(&self.inner).node_eligible = eligible;
    }

    pub fn node_eligible(&self) -> bool {
        lock(&self.inner).node_eligible
    }

    /// kube-proxy's eligibility: not being deleted and not tainted `ToBeDeletedByClusterAutoscaler`.
    pub fn node_eligible_from(node: &Node) -> bool {
        if node.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        !tainted
    }

    /// The proxier's own health, ignoring the node (kube-proxy's `IsHealthy`).
    pub fn is_healthy(&self) -> bool {
        self.proxier_health_at(Stamp::now()).0
    }

    /// (healthy, last updated) at `now`.
    fn proxier_health_at(&self, now: Stamp) -> (bool, Option<Stamp>) {
        let inner = lock(&self.inner);
        // kube-proxy only judges families that have been Updated() at least once.
        let healthy = match (inner.last_updated, inner.oldest_pending) {
            (Some(_), Some(pending)) => now.mono.saturating_duration_since(pending.mono) < self.health_timeout,
            _ => true,
        };
        (healthy, inner.last_updated)
    }

    /// The `/healthz` response now.
    pub fn healthz(&self) -> HealthResponse {
        self.response_at(Stamp::now(), true)
    }

    /// The `/livez` response now.
    pub fn livez(&self) -> HealthResponse {
        self.response_at(Stamp::now(), false)
    }

    fn response_at(&self, now: Stamp, with_node: bool) -> HealthResponse {
        let (proxier_healthy, last_updated) = self.proxier_health_at(now);
        let node_eligible = with_node.then(|| self.node_eligible());
        let healthy = proxier_healthy && node_eligible.unwrap_or(true);
        let current_time = format_rfc3339_nano(now.wall);
        let mut status = BTreeMap::new();
        if let Some(lu) = last_updated {
            status.insert(IP_FAMILY, ProxierHealthBody { last_updated: format_rfc3339_nano(lu.wall), healthy: proxier_healthy });
        }
        // kube-proxy: "the returned lastUpdated value is 'recent' if the server is healthy".
        // The top-level `healthy` is the proxiers' health; only the status code folds in the node.
        let last_updated = if healthy {
            current_time.clone()
        } else {
            last_updated.map(|s| format_rfc3339_nano(s.wall)).unwrap_or_else(|| GO_ZERO_TIME.to_string())
        };
        let body = ProxyHealthBody { last_updated, current_time, node_eligible, healthy: proxier_healthy, status };
        HealthResponse {
            status: if healthy { 200 } else { 503 },
            body: serde_json::to_string(&body).expect("health body serializes"),
        }
    }
}

fn health_http_response(r: HealthResponse) -> Response {
    let mut resp = (StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.body).into_response();
    for (k, v) in HEALTH_HEADERS {
        resp.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    resp
}

async fn healthz_handler(State(h): State<Arc<HealthState>>) -> Response {
    health_http_response(h.healthz())
}

async fn livez_handler(State(h): State<Arc<HealthState>>) -> Response {
    health_http_response(h.livez())
}

/// The `/healthz` + `/livez` router (any method, as Go's ServeMux).
pub fn health_router(health: Arc<HealthState>) -> Router {
    Router::new().route("/healthz", any(healthz_handler)).route("/livez", any(livez_handler)).with_state(health)
}

/// Serves /healthz and /livez on `addr` (default 0.0.0.0:10256) until the future is dropped.
pub async fn serve_health(addr: SocketAddr, health: Arc<HealthState>) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("failed to start proxy healthz on {addr}: {e}"))?;
    serve_health_on(listener, health).await
}

/// [`serve_health`] on an already bound listener.
pub async fn serve_health_on(listener: tokio::net::TcpListener, health: Arc<HealthState>) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /healthz and /livez");
    axum::serve(listener, health_router(health)).await.map_err(|e| anyhow::anyhow!("proxy healthz closed with error: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Values read from the eBPF maps just before a scrape.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct DatapathSnapshot {
    /// `(name, value)` → counter `lb_datapath_<name>_total` (e.g. packets, bytes, new_flows, drop_*).
    pub counters: Vec<(String, u64)>,
    /// `(map name, entries, max_entries)` → gauges `lb_map_entries{map=..}` and `lb_map_max_entries{map=..}`.
    pub map_entries: Vec<(String, u64, u64)>,
}

/// Emits the last [`DatapathSnapshot`] on each encode.
#[derive(Debug, Default)]
struct DatapathCollector {
    snapshot: Mutex<DatapathSnapshot>,
}

/// A metric-name fragment: `[a-zA-Z0-9_]`, anything else becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = lock(&self.snapshot).clone();
        let mut seen = HashSet::new();
        for (name, value) in &snap.counters {
            let base = sanitize(name);
            let base = base.strip_suffix("_total").unwrap_or(&base);
            // The text encoder appends `_total` to counters.
            let metric = format!("lb_datapath_{base}");
            if !seen.insert(metric.clone()) {
                continue;
            }
            let help = format!("Datapath counter {base} (LB_STATS, summed over CPUs).");
            let counter = ConstCounter::new(*value);
            let enc = encoder.encode_descriptor(&metric, &help, None, counter.metric_type())?;
            counter.encode(enc)?;
        }
        if !snap.map_entries.is_empty() {
            for (metric, help, pick) in [
                ("lb_map_entries", "Entries in the eBPF map.", 1usize),
                ("lb_map_max_entries", "Capacity (max_entries) of the eBPF map.", 2usize),
            ] {
                let mut enc = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
                let mut maps = HashSet::new();
                for (map, entries, max) in &snap.map_entries {
                    if !maps.insert(map.as_str()) {
                        continue;
                    }
                    let v = if pick == 1 { *entries } else { *max };
                    let labels = [("map", map.as_str())];
                    ConstGauge::new(v as i64).encode(enc.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

type PolicyLabels = [(&'static str, &'static str); 1];

/// Prometheus metrics with kube-proxy's names where they mean the same.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    last_queued: Gauge<f64, AtomicU64>,
    network_programming: Histogram,
    no_local_endpoints: Family<PolicyLabels, Gauge>,
    service_ports: Gauge,
    sync_errors: Counter,
    conntrack_live: Gauge,
    conntrack_gc_deleted: Counter,
    datapath: Arc<DatapathCollector>,
}

/// kube-proxy's `sync_proxy_rules_duration_seconds` buckets: ExponentialBuckets(0.001, 2, 15).
pub fn sync_duration_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 15).collect()
}

/// kube-proxy's `network_programming_duration_seconds` buckets: its `merge()` starts with a 0
/// bucket, then 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5, 120..300 s by 30.
pub fn network_programming_buckets() -> Vec<f64> {
    std::iter::once(0.0)
        .chain(linear_buckets(0.25, 0.25, 2))
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7))
        .collect()
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(sync_duration_buckets());
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync.clone(),
        );
        let last_queued = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            last_queued.clone(),
        );
        let network_programming = Histogram::new(network_programming_buckets());
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            network_programming.clone(),
        );
        let no_local_endpoints = Family::<PolicyLabels, Gauge>::default();
        // Both series exist from the start, as kube-proxy sets both on every sync.
        let _ = no_local_endpoints.get_or_create(&[("traffic_policy", "internal")]);
        let _ = no_local_endpoints.get_or_create(&[("traffic_policy", "external")]);
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            no_local_endpoints.clone(),
        );
        let service_ports = Gauge::default();
        registry.register("lb_service_ports", "Service ports programmed in the datapath", service_ports.clone());
        let sync_errors = Counter::default();
        // Encoded as lb_sync_errors_total.
        registry.register("lb_sync_errors", "Syncs that failed to program the datapath", sync_errors.clone());
        let conntrack_live = Gauge::default();
        registry.register(
            "lb_conntrack_live_entries",
            "Live (not expired) conntrack entries at the last garbage collection (two per flow)",
            conntrack_live.clone(),
        );
        let conntrack_gc_deleted = Counter::default();
        // Encoded as lb_conntrack_gc_deleted_total.
        registry.register(
            "lb_conntrack_gc_deleted",
            "Expired conntrack entries removed by the garbage collector",
            conntrack_gc_deleted.clone(),
        );
        let datapath = Arc::new(DatapathCollector::default());
        registry.register_collector(Box::new(datapath.clone()));
        Arc::new(Metrics {
            registry,
            sync_duration,
            last_sync,
            last_queued,
            network_programming,
            no_local_endpoints,
            service_ports,
            sync_errors,
            conntrack_live,
            conntrack_gc_deleted,
            datapath,
        })
    }

    /// A sync succeeded and took `duration`: `kubeproxy_sync_proxy_rules_duration_seconds` and
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds` (now, unix seconds).
    pub fn observe_sync(&self, duration: Duration) {
        self.sync_duration.observe(duration.as_secs_f64());
        self.last_sync.set(unix_seconds(SystemTime::now()));
    }

    /// A sync was queued: `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` (now).
    /// kube-proxy: if this is much larger than the last sync timestamp, something is hung.
    pub fn queued_sync(&self) {
        self.last_queued.set(unix_seconds(SystemTime::now()));
    }

    /// `kubeproxy_network_programming_duration_seconds`: from an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` to the sync that programmed it
    /// (see [`network_programming_latency`]).
    pub fn observe_network_programming(&self, latency: Duration) {
        self.network_programming.observe(latency.as_secs_f64());
    }

    /// K3: `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal|external"}`,
    /// service ports with a Local policy, endpoints elsewhere and none on this node (a gauge,
    /// recounted each sync).
    pub fn set_no_endpoints(&self, internal: u64, external: u64) {
        self.no_local_endpoints.get_or_create(&[("traffic_policy", "internal")]).set(internal as i64);
        self.no_local_endpoints.get_or_create(&[("traffic_policy", "external")]).set(external as i64);
    }

    /// `lb_service_ports`: service ports programmed (kube-proxy has no equivalent; its
    /// iptables mode counts rules instead).
    pub fn set_service_ports(&self, n: u64) {
        self.service_ports.set(n as i64);
    }

    /// `lb_sync_errors_total`.
    pub fn inc_sync_errors(&self) {
        self.sync_errors.inc();
    }

    /// A conntrack garbage collection: `lb_conntrack_live_entries`, `lb_conntrack_gc_deleted_total`.
    pub fn observe_conntrack_gc(&self, live: u64, deleted: u64) {
        self.conntrack_live.set(live as i64);
        self.conntrack_gc_deleted.inc_by(deleted);
    }

    /// Replaces the datapath values (`lb_datapath_*_total`, `lb_map_entries`, `lb_map_max_entries`).
    pub fn set_datapath(&self, snapshot: DatapathSnapshot) {
        *lock(&self.datapath.snapshot) = snapshot;
    }

    /// OpenMetrics text (ends with `# EOF`); serve with [`METRICS_CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# EOF");
        }
        out
    }
}

/// Network programming latency of `slice` at `now`: `now` minus its
/// `endpoints.kubernetes.io/last-change-trigger-time` annotation. None when the annotation is
/// missing or unparsable, or lies in the future (clock skew; kube-proxy drops those too).
pub fn network_programming_latency(slice: &EndpointSlice, now: SystemTime) -> Option<Duration> {
    let raw = slice.metadata.annotations.as_ref()?.get(LAST_CHANGE_TRIGGER_TIME_ANNOTATION)?;
    let trigger: k8s_openapi::jiff::Timestamp = raw.parse().ok()?;
    let trigger = SystemTime::from(trigger);
    now.duration_since(trigger).ok()
}

type Refresh = Arc<dyn Fn() -> Option<DatapathSnapshot> + Send + Sync>;

#[derive(Clone)]
struct MetricsCtx {
    metrics: Arc<Metrics>,
    refresh: Refresh,
}

async fn metrics_handler(State(ctx): State<MetricsCtx>) -> Response {
    let refresh = ctx.refresh.clone();
    // The refresh reads BPF maps: keep it off the async workers.
    match tokio::task::spawn_blocking(move || refresh()).await {
        Ok(Some(snapshot)) => ctx.metrics.set_datapath(snapshot),
        Ok(None) => {}
        Err(e) => tracing::warn!("datapath metrics refresh panicked: {e}"),
    }
    let body = ctx.metrics.encode();
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
}

/// The `/metrics` router (plus `/healthz` → "ok", as on kube-proxy's metrics port).
pub fn metrics_router(metrics: Arc<Metrics>, refresh: Refresh) -> Router {
    Router::new()
        .route("/metrics", any(metrics_handler))
        .route("/healthz", any(|| async { "ok" }))
        .with_state(MetricsCtx { metrics, refresh })
}

/// Serves /metrics on `addr` (default 127.0.0.1:10249); before encoding, calls `refresh()` to
/// pull a fresh [`DatapathSnapshot`] (None keeps the previous one).
pub async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>, refresh: Refresh) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to start metrics server on {addr}: {e}"))?;
    serve_metrics_on(listener, metrics, refresh).await
}

/// [`serve_metrics`] on an already bound listener.
pub async fn serve_metrics_on(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, refresh: Refresh) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /metrics");
    axum::serve(listener, metrics_router(metrics, refresh))
        .await
        .map_err(|e| anyhow::anyhow!("metrics server closed with error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn json(r: &HealthResponse) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap()
    }

    fn parse_time(v: &serde_json::Value) -> SystemTime {
        SystemTime::from(v.as_str().unwrap().parse::<k8s_openapi::jiff::Timestamp>().unwrap())
    }

    #[test]
    fn fresh_state_is_healthy() {
        let t0 = Stamp::now();
        let h = HealthState::new_at(TIMEOUT, t0);
        let r = h.response_at(t0.plus(Duration::from_secs(3600)), true);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = json(&r);
        assert_eq!(v["healthy"], true);
        assert_eq!(v["nodeEligible"], true);
        // Healthy: lastUpdated is reported as the current time.
        assert_eq!(v["lastUpdated"], v["currentTime"]);
        assert_eq!(h.response_at(t0, false).status, 200);
        assert!(h.is_healthy());
    }

    #[test]
    fn queued_update_turns_unhealthy_after_timeout_and_updated_recovers() {
        let t0 = Stamp::now();
        let h = HealthState::new_at(TIMEOUT, t0);
        let q = t0.plus(Duration::from_secs(10));
        h.queued_update_at(q);
        // A second queued update does not move the oldest pending time.
        h.queued_update_at(q.plus(Duration::from_secs(30)));
        // Pending but not late yet.
        assert_eq!(h.response_at(q.plus(TIMEOUT - Duration::from_millis(1)), true).status, 200);
        // Exactly the timeout is late (kube-proxy: healthy while age < healthTimeout).
        let late = q.plus(TIMEOUT);
        for with_node in [true, false] {
            let r = h.response_at(late, with_node);
            assert_eq!(r.status, 503, "{}", r.body);
            let v = json(&r);
            assert_eq!(v["healthy"], false);
            // Unhealthy: lastUpdated is the last real update, not now.
            assert_eq!(parse_time(&v["lastUpdated"]), t0.wall);
            assert_eq!(parse_time(&v["currentTime"]), late.wall);
            assert_eq!(v["status"]["IPv4"]["healthy"], false);
            assert_eq!(parse_time(&v["status"]["IPv4"]["lastUpdated"]), t0.wall);
        }
        let u = late.plus(Duration::from_secs(1));
        h.updated_at(u);
        let r = h.response_at(u.plus(TIMEOUT * 10), true);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = json(&r);
        assert_eq!(v["status"]["IPv4"], serde_json::json!({"lastUpdated": format_rfc3339_nano(u.wall), "healthy": true}));
    }

    #[test]
    fn ineligible_node_fails_healthz_not_livez() {
        let t0 = Stamp::now();
        let h = HealthState::new_at(TIMEOUT, t0);
        h.set_node_eligible(false);
        let r = h.response_at(t0, true);
        assert_eq!(r.status, 503);
        let v = json(&r);
        assert_eq!(v["nodeEligible"], false);
        // The proxier itself is healthy; only the status code reflects the node.
        assert_eq!(v["healthy"], true);
        assert_eq!(parse_time(&v["lastUpdated"]), t0.wall);
        let l = h.response_at(t0, false);
        assert_eq!(l.status, 200);
        assert!(json(&l).get("nodeEligible").is_none(), "{}", l.body);
        h.set_node_eligible(true);
        assert_eq!(h.response_at(t0, true).status, 200);
    }

    #[test]
    fn body_field_names_and_time_format() {
        let t0 = Stamp { mono: Instant::now(), wall: UNIX_EPOCH + Duration::new(1_700_000_000, 123_450_000) };
        let h = HealthState::new_at(TIMEOUT, t0);
        let r = h.response_at(t0, true);
        assert_eq!(
            r.body,
            r#"{"lastUpdated":"2023-11-14T22:13:20.12345Z","currentTime":"2023-11-14T22:13:20.12345Z","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:20.12345Z","healthy":true}}}"#
        );
        let l = h.response_at(t0.plus(Duration::from_millis(877)), false);
        assert_eq!(
            l.body,
            r#"{"lastUpdated":"2023-11-14T22:13:21.00045Z","currentTime":"2023-11-14T22:13:21.00045Z","healthy":true,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:20.12345Z","healthy":true}}}"#
        );
        // Whole seconds have no fraction; nanoseconds keep all nine digits.
        assert_eq!(format_rfc3339_nano(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339_nano(UNIX_EPOCH + Duration::new(0, 1)), "1970-01-01T00:00:00.000000001Z");
    }

    #[test]
    fn node_eligibility_from_node() {
        let mut node = Node { metadata: ObjectMeta { name: Some("n1".into()), ..Default::default() }, ..Default::default() };
        assert!(HealthState::node_eligible_from(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(HealthState::node_eligible_from(&node));
        node.spec.as_mut().unwrap().taints.as_mut().unwrap().push(Taint {
            key: TO_BE_DELETED_TAINT.into(),
            value: Some("1700000000".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        assert!(!HealthState::node_eligible_from(&node));
        node.spec = None;
        node.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!HealthState::node_eligible_from(&node));
    }

    #[tokio::test]
    async fn health_router_sets_kube_proxy_headers() {
        let h = HealthState::new(TIMEOUT);
        let resp = healthz_handler(State(h.clone())).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        h.set_node_eligible(false);
        let resp = healthz_handler(State(h.clone())).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(livez_handler(State(h)).await.status(), 200);
    }

    /// `# TYPE` line of `name` in `text`.
    fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        let prefix = format!("# TYPE {name} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
    }

    #[test]
    fn encode_has_every_metric_with_its_type() {
        let m = Metrics::new();
        m.observe_sync(Duration::from_millis(3));
        m.queued_sync();
        m.observe_network_programming(Duration::from_millis(1500));
        m.set_no_endpoints(2, 5);
        m.set_service_ports(7);
        m.inc_sync_errors();
        m.set_datapath(DatapathSnapshot {
            counters: vec![
                ("packets".into(), 10),
                ("bytes".into(), 1500),
                ("new_flows".into(), 3),
                ("drop_no_endpoint".into(), 1),
            ],
            map_entries: vec![("LB_SERVICES".into(), 4, 65536), ("LB_CT".into(), 9, 262144)],
        });
        let text = m.encode();
        for (name, ty) in [
            ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
            ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
            ("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "gauge"),
            ("kubeproxy_network_programming_duration_seconds", "histogram"),
            ("kubeproxy_sync_proxy_rules_no_local_endpoints_total", "gauge"),
            ("lb_service_ports", "gauge"),
            ("lb_sync_errors", "counter"),
            ("lb_datapath_packets", "counter"),
            ("lb_datapath_bytes", "counter"),
            ("lb_datapath_new_flows", "counter"),
            ("lb_datapath_drop_no_endpoint", "counter"),
            ("lb_map_entries", "gauge"),
            ("lb_map_max_entries", "gauge"),
        ] {
            assert_eq!(type_of(&text, name), Some(ty), "{name} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(sample(&text, "kubeproxy_sync_proxy_rules_duration_seconds_count"), Some(1.0));
        assert_eq!(sample(&text, "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"}"), Some(1.0));
        assert_eq!(sample(&text, "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"}"), Some(0.0));
        assert_eq!(sample(&text, "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"}"), Some(1.0));
        assert_eq!(sample(&text, "kubeproxy_network_programming_duration_seconds_bucket{le=\"2.0\"}"), Some(1.0));
        assert_eq!(sample(&text, "kubeproxy_network_programming_duration_seconds_bucket{le=\"1.0\"}"), Some(0.0));
        assert_eq!(sample(&text, "kubeproxy_network_programming_duration_seconds_bucket{le=\"300.0\"}"), Some(1.0));
        let ts = sample(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds").unwrap();
        assert!((ts - unix_seconds(SystemTime::now())).abs() < 60.0, "{ts}");
        assert_eq!(sample(&text, "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"}"), Some(2.0));
        assert_eq!(sample(&text, "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"}"), Some(5.0));
        assert_eq!(sample(&text, "lb_service_ports"), Some(7.0));
        assert_eq!(sample(&text, "lb_sync_errors_total"), Some(1.0));
        assert_eq!(sample(&text, "lb_datapath_packets_total"), Some(10.0));
        assert_eq!(sample(&text, "lb_datapath_drop_no_endpoint_total"), Some(1.0));
        assert_eq!(sample(&text, "lb_map_entries{map=\"LB_CT\"}"), Some(9.0));
        assert_eq!(sample(&text, "lb_map_max_entries{map=\"LB_SERVICES\"}"), Some(65536.0));
    }

    #[test]
    fn bucket_layouts_match_kube_proxy() {
        let b = sync_duration_buckets();
        assert_eq!(b.len(), 15);
        assert_eq!(b[0], 0.001);
        assert!((b[14] - 16.384).abs() < 1e-9);
        let n = network_programming_buckets();
        assert_eq!(n.len(), 1 + 2 + 59 + 12 + 7);
        assert_eq!(&n[..4], &[0.0, 0.25, 0.5, 1.0]);
        assert_eq!(n[61], 59.0);
        assert_eq!(n[62], 60.0);
        assert_eq!(n[73], 115.0);
        assert_eq!(n[74], 120.0);
        assert_eq!(*n.last().unwrap(), 300.0);
    }

    #[test]
    fn datapath_names_are_sanitized_and_deduplicated() {
        let m = Metrics::new();
        m.set_datapath(DatapathSnapshot {
            counters: vec![("drop-frag".into(), 2), ("packets_total".into(), 5), ("packets".into(), 6)],
            map_entries: vec![],
        });
        let text = m.encode();
        assert_eq!(sample(&text, "lb_datapath_drop_frag_total"), Some(2.0));
        assert_eq!(sample(&text, "lb_datapath_packets_total"), Some(5.0));
        assert_eq!(text.matches("# TYPE lb_datapath_packets counter").count(), 1);
        assert!(type_of(&text, "lb_map_entries").is_none());
        m.set_datapath(DatapathSnapshot::default());
        assert!(type_of(&m.encode(), "lb_datapath_packets").is_none());
    }

    #[test]
    fn network_programming_latency_from_annotation() {
        let mut slice = EndpointSlice { address_type: "IPv4".into(), endpoints: vec![], ..Default::default() };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        assert_eq!(network_programming_latency(&slice, now), None);
        slice.metadata.annotations =
            Some([(LAST_CHANGE_TRIGGER_TIME_ANNOTATION.to_string(), "2023-11-14T22:13:20.5Z".to_string())].into());
        assert_eq!(network_programming_latency(&slice, now), Some(Duration::from_millis(9500)));
        // In the future (clock skew): not observed.
        assert_eq!(network_programming_latency(&slice, UNIX_EPOCH + Duration::from_secs(1_700_000_000)), None);
        slice.metadata.annotations = Some([(LAST_CHANGE_TRIGGER_TIME_ANNOTATION.to_string(), "yesterday".to_string())].into());
        assert_eq!(network_programming_latency(&slice, now), None);
    }

    /// One HTTP/1.1 request over a plain TCP connection: (status, lower-cased headers, body).
    async fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        crate::testutil::http_exchange(&mut s, &format!("GET {path} HTTP/1.1\r\nHost: {addr}")).await
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn serves_and_scrapes_over_tcp() {
        let health = HealthState::new(Duration::from_millis(200));
        let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let haddr = hl.local_addr().unwrap();
        let hs = tokio::spawn(serve_health_on(hl, health.clone()));

        let metrics = Metrics::new();
        metrics.observe_sync(Duration::from_millis(12));
        let scrapes = Arc::new(AtomicU64::new(0));
        let sc = scrapes.clone();
        let refresh: Refresh = Arc::new(move || {
            let n = sc.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Some(DatapathSnapshot { counters: vec![("packets".into(), 100 * n)], map_entries: vec![("LB_CT".into(), n, 1024)] })
        });
        let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let maddr = ml.local_addr().unwrap();
        let ms = tokio::spawn(serve_metrics_on(ml, metrics.clone(), refresh));

        // Healthy.
        for path in ["/healthz", "/livez"] {
            let (status, headers, body) = http_get(haddr, path).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(header(&headers, "content-type"), Some("application/json"));
            assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["healthy"], true);
            assert_eq!(v.get("nodeEligible").is_some(), path == "/healthz", "{body}");
        }
        // A queued update left unapplied past the timeout.
        health.queued_update();
        tokio::time::sleep(Duration::from_millis(250)).await;
        for path in ["/healthz", "/livez"] {
            let (status, _, body) = http_get(haddr, path).await;
            assert_eq!(status, 503, "{path}: {body}");
        }
        health.updated();
        health.set_node_eligible(false);
        assert_eq!(http_get(haddr, "/healthz").await.0, 503);
        assert_eq!(http_get(haddr, "/livez").await.0, 200);
        assert_eq!(http_get(haddr, "/nope").await.0, 404);

        // Metrics: each scrape pulls a fresh snapshot.
        let (status, headers, body) = http_get(maddr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), Some(METRICS_CONTENT_TYPE));
        assert_eq!(sample(&body, "lb_datapath_packets_total"), Some(100.0), "{body}");
        assert_eq!(sample(&body, "kubeproxy_sync_proxy_rules_duration_seconds_count"), Some(1.0));
        let (_, _, body) = http_get(maddr, "/metrics").await;
        assert_eq!(sample(&body, "lb_datapath_packets_total"), Some(200.0));
        assert_eq!(sample(&body, "lb_map_entries{map=\"LB_CT\"}"), Some(2.0));
        assert_eq!(http_get(maddr, "/healthz").await.2, "ok");

        hs.abort();
        ms.abort();
    }

    #[tokio::test]
    async fn bind_failure_is_reported() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let err = serve_health(addr, HealthState::new(TIMEOUT)).await.unwrap_err();
        assert!(err.to_string().contains("failed to start proxy healthz"), "{err}");
    }
}
