//! `lb_userspace::source::kube` with the real kube-rs client against a fake API server.
//!
//! The fake server (axum, plain HTTP) serves `/api/v1/services`,
//! `/apis/discovery.k8s.io/v1/endpointslices` and `/api/v1/nodes` cluster-wide, as kube-proxy
//! watches them:
//!
//! - list: a `{Kind}List` with `metadata.resourceVersion`, honouring `labelSelector` (`key`,
//!   `!key`, `key=value`, `key!=value`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`); the test can hold a kind's list back (gate);
//! - watch: newline-delimited `ADDED/MODIFIED/DELETED/BOOKMARK` events streamed in a chunked
//!   response, starting after the requested resourceVersion; a resourceVersion older than the
//!   compaction point answers an `ERROR` event with a 410 Status. Selector transitions are
//!   reported as the API server does (an object that stops matching is `DELETED`, one that starts
//!   matching is `ADDED`). The test can drop all watch connections (gracefully or by aborting the
//!   connection), hold new watches back, compact, and send bookmarks.
//!
//! Streaming lists (`sendInitialEvents`) are refused with 400: the source must list + watch.
//!
//! No root needed. Set RUST_LOG to see the source's and kube-rs' logs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::State,
    http::{header, StatusCode, Uri},
    response::Response,
    Router,
};
use lb_userspace::{manifests::ObjectSet, source::kube::KubeSource};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// Bound for every wait on a condition (the watcher's backoff after a 410 is 0.8–1.6 s).
const TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------------
// The fake API server
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    fn from_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// What the server saw, for waits and assertions.
#[derive(Default, Clone, Debug)]
struct Stats {
    lists_requested: HashMap<Kind, usize>,
    lists_served: HashMap<Kind, usize>,
    watches_requested: HashMap<Kind, usize>,
    /// Watches registered (answered with a stream of events, not with 410).
    watches_started: HashMap<Kind, usize>,
    /// Watches answered with 410 Gone.
    gone: HashMap<Kind, usize>,
}

impl Stats {
    fn get(map: &HashMap<Kind, usize>, kind: Kind) -> usize {
        map.get(&kind).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
}

#[derive(Clone, Debug)]
struct FieldReq {
    field: String,
    equal: bool,
    value: String,
}

#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let mut sel = Selector::default();
        for term in labels.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(format!("unsupported label selector term {term:?}"));
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else {
                LabelReq::Exists(term.to_string())
            };
            sel.labels.push(req);
        }
        for term in fields.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            if !matches!(field, "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {field}"));
            }
            sel.fields.push(FieldReq { field: field.to_string(), equal, value: value.to_string() });
        }
        Ok(sel)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
        });
        let fields_ok = self.fields.iter().all(|req| {
            let actual = match req.field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str().unwrap_or(""),
                _ => obj["metadata"]["namespace"].as_str().unwrap_or(""),
            };
            (actual == req.value) == req.equal
        });
        labels_ok && fields_ok
    }
}

/// One change, kept for watches that resume from an older resourceVersion.
struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
    /// The object sent (stamped with `rv`; for a deletion the last state).
    object: Value,
}

impl Change {
    /// The watch event line for a watcher with `sel`, if it sees this change at all.
    fn render(&self, sel: &Selector) -> Option<String> {
        let was = self.old.as_ref().is_some_and(|o| sel.matches(o));
        let is = self.new.as_ref().is_some_and(|o| sel.matches(o));
        let ty = match (was, is) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        Some(format!("{}\n", json!({"type": ty, "object": self.object})))
    }
}

type Chunk = Result<String, std::io::Error>;

struct Watcher {
    kind: Kind,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Chunk>,
}

#[derive(Default)]
struct Inner {
    /// The global resourceVersion counter (the last one handed out).
    rv: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    objects: HashMap<Kind, BTreeMap<String, Value>>,
    changes: Vec<Change>,
    watchers: Vec<Watcher>,
}

impl Inner {
    fn record(&mut self, change: Change) {
        for w in self.watchers.iter().filter(|w| w.kind == change.kind) {
            if let Some(line) = change.render(&w.selector) {
                let _ = w.tx.send(Ok(line));
            }
        }
        self.watchers.retain(|w| !w.tx.is_closed());
        self.changes.push(change);
    }
}

struct FakeApi {
    inner: Mutex<Inner>,
    /// Per kind: `true` = lists are answered.
    list_gates: HashMap<Kind, watch::Sender<bool>>,
    /// `true` = watch requests are answered.
    watch_gate: watch::Sender<bool>,
    stats: watch::Sender<Stats>,
    url: String,
}

fn key_of(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().expect("object without a name");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

impl FakeApi {
    async fn start() -> Arc<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = Arc::new(FakeApi {
            inner: Mutex::new(Inner { rv: 1, ..Inner::default() }),
            list_gates: Kind::ALL.iter().map(|&k| (k, watch::channel(true).0)).collect(),
            watch_gate: watch::channel(true).0,
            stats: watch::channel(Stats::default()).0,
            url: format!("http://{addr}"),
        });
        let app = Router::new().fallback(handle).with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        api
    }

    fn bump(&self, which: fn(&mut Stats) -> &mut HashMap<Kind, usize>, kind: Kind) {
        self.stats.send_modify(|s| *which(s).entry(kind).or_default() += 1);
    }

    fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    async fn wait_stats(&self, what: &str, pred: impl Fn(&Stats) -> bool) {
        let mut rx = self.stats.subscribe();
        if tokio::time::timeout(TIMEOUT, rx.wait_for(|s| pred(s))).await.is_err() {
            panic!("timed out waiting for {what}; server stats: {:?}", self.stats());
        }
    }

    // --- changes -------------------------------------------------------------------------------

    /// Creates or replaces an object (its resourceVersion is set by the server).
    fn put(&self, kind: Kind, mut obj: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.name());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let old = inner.objects.entry(kind).or_default().insert(key, obj.clone());
        inner.record(Change { rv, kind, old, new: Some(obj.clone()), object: obj });
    }

    /// Deletes an object by `namespace/name` (or `name`).
    fn delete(&self, kind: Kind, key: &str) {
        let mut inner = self.inner.lock().unwrap();
        let Some(old) = inner.objects.entry(kind).or_default().remove(key) else {
            panic!("delete: no {kind:?} {key}");
        };
        inner.rv += 1;
        let rv = inner.rv;
        let mut object = old.clone();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.record(Change { rv, kind, old: Some(old), new: None, object });
    }

    /// Forgets every change so far: watches from an older resourceVersion get 410 Gone.
    fn compact(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.compacted = inner.rv;
        let compacted = inner.compacted;
        inner.changes.retain(|c| c.rv > compacted);
    }

    /// Ends every open watch: gracefully (the chunked response ends) or by aborting the
    /// connection in the middle of the response.
    fn drop_watches(&self, abort: bool) {
        let mut inner = self.inner.lock().unwrap();
        for w in inner.watchers.drain(..) {
            if abort {
                let _ = w.tx.send(Err(std::io::Error::other("connection cut by the test")));
            }
        }
    }

    /// Holds new watch requests back (they wait) until `resume_watches`.
    fn pause_watches(&self) {
        let _inner = self.inner.lock().unwrap();
        self.watch_gate.send_replace(false);
    }

    fn resume_watches(&self) {
        let _inner = self.inner.lock().unwrap();
        self.watch_gate.send_replace(true);
    }

    /// Holds back (`false`) or releases (`true`) the lists of `kind`.
    fn set_list_gate(&self, kind: Kind, open: bool) {
        self.list_gates[&kind].send_replace(open);
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch that asked for them.
    fn bookmark(&self) {
        let inner = self.inner.lock().unwrap();
        for w in inner.watchers.iter().filter(|w| w.bookmarks) {
            let line = json!({"type": "BOOKMARK", "object": {
                "kind": w.kind.name(), "apiVersion": w.kind.api_version(),
                "metadata": {"resourceVersion": inner.rv.to_string()},
            }});
            let _ = w.tx.send(Ok(format!("{line}\n")));
        }
    }

    // --- requests ------------------------------------------------------------------------------

    async fn list(&self, kind: Kind, sel: Selector) -> Response {
        self.bump(|s| &mut s.lists_requested, kind);
        let mut gate = self.list_gates[&kind].subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let body = {
            let inner = self.inner.lock().unwrap();
            let items: Vec<Value> = inner
                .objects
                .get(&kind)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|o| sel.matches(o))
                .map(|o| {
                    // Like the API server, list items carry no apiVersion/kind.
                    let mut o = o.clone();
                    let map = o.as_object_mut().unwrap();
                    map.remove("apiVersion");
                    map.remove("kind");
                    o
                })
                .collect();
            json!({
                "kind": format!("{}List", kind.name()),
                "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": inner.rv.to_string()},
                "items": items,
            })
        };
        self.bump(|s| &mut s.lists_served, kind);
        Response::builder().header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
    }

    /// Registers a watch (or answers 410) if watches are not held back.
    fn try_watch(&self, kind: Kind, sel: &Selector, rv: u64, bookmarks: bool) -> Option<mpsc::UnboundedReceiver<Chunk>> {
        let mut inner = self.inner.lock().unwrap();
        if !*self.watch_gate.borrow() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if rv < inner.compacted {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {rv} ({})", inner.compacted),
                "reason": "Expired", "code": 410,
            });
            let _ = tx.send(Ok(format!("{}\n", json!({"type": "ERROR", "object": status}))));
            self.bump(|s| &mut s.gone, kind);
            return Some(rx);
        }
        for change in inner.changes.iter().filter(|c| c.kind == kind && c.rv > rv) {
            if let Some(line) = change.render(sel) {
                let _ = tx.send(Ok(line));
            }
        }
        inner.watchers.push(Watcher { kind, selector: sel.clone(), bookmarks, tx });
        self.bump(|s| &mut s.watches_started, kind);
        Some(rx)
    }

    async fn watch(&self, kind: Kind, sel: Selector, params: &HashMap<String, String>) -> Response {
        self.bump(|s| &mut s.watches_requested, kind);
        let rv: u64 = match params.get("resourceVersion").map(String::as_str) {
            None | Some("") => self.inner.lock().unwrap().rv,
            Some(v) => match v.parse() {
                Ok(v) => v,
                Err(_) => return status_response(400, "BadRequest", &format!("invalid resourceVersion {v:?}")),
            },
        };
        let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
        let mut gate = self.watch_gate.subscribe();
        let rx = loop {
            if let Some(rx) = self.try_watch(kind, &sel, rv, bookmarks) {
                break rx;
            }
            let _ = gate.wait_for(|open| *open).await;
        };
        let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
        Response::builder().header(header::CONTENT_TYPE, "application/json").body(Body::from_stream(body)).unwrap()
    }
}

async fn handle(State(api): State<Arc<FakeApi>>, uri: Uri) -> Response {
    let Some(kind) = Kind::from_path(uri.path()) else {
        return status_response(404, "NotFound", &format!("the server could not find {}", uri.path()));
    };
    let params: HashMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    if params.contains_key("sendInitialEvents") {
        return status_response(400, "BadRequest", "streaming lists (sendInitialEvents) are not supported");
    }
    let sel =
        match Selector::parse(params.get("labelSelector").map(String::as_str), params.get("fieldSelector").map(String::as_str)) {
            Ok(sel) => sel,
            Err(e) => return status_response(400, "BadRequest", &e),
        };
    if params.get("watch").is_some_and(|v| v == "true" || v == "1") {
        api.watch(kind, sel, &params).await
    } else {
        api.list(kind, sel).await
    }
}

// ------------------------------------------------------------------------------------------------
// Objects
// ------------------------------------------------------------------------------------------------

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-svc-{ns}-{name}"),
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

fn slice(ns: &str, name: &str, svc: &str, addrs: &[&str]) -> Value {
    let endpoints: Vec<Value> = addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
    json!({
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-eps-{ns}-{name}"),
            "labels": {"kubernetes.io/service-name": svc,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-node-{name}"),
                        "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}}})
}

fn with_label(mut obj: Value, key: &str, value: &str) -> Value {
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"][key] = json!(value);
    obj
}

const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";

// ------------------------------------------------------------------------------------------------
// The source under test
// ------------------------------------------------------------------------------------------------

type Snapshot = Option<Arc<ObjectSet>>;

struct Source {
    rx: watch::Receiver<Snapshot>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        lb_userspace::init_logging("info");
    }
}

fn start_source(api: &FakeApi, node: &str) -> Source {
    init_logging();
    let config = kube::Config::new(api.url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(KubeSource::new(client, node.to_string()).run(tx));
    Source { rx, task }
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

fn services(s: &ObjectSet) -> Vec<String> {
    let mut v: Vec<String> = s.services.iter().map(|o| ns_name(&o.metadata)).collect();
    v.sort();
    v
}

fn slices(s: &ObjectSet) -> Vec<String> {
    let mut v: Vec<String> = s.slices.iter().map(|o| ns_name(&o.metadata)).collect();
    v.sort();
    v
}

fn nodes(s: &ObjectSet) -> Vec<String> {
    let mut v: Vec<String> = s.nodes.iter().map(|o| ns_name(&o.metadata)).collect();
    v.sort();
    v
}

fn describe(s: &Snapshot) -> String {
    match s {
        None => "no snapshot".into(),
        Some(s) => format!("services {:?}, slices {:?}, nodes {:?}", services(s), slices(s), nodes(s)),
    }
}

fn cluster_ip(s: &ObjectSet, key: &str) -> Option<String> {
    s.services.iter().find(|o| ns_name(&o.metadata) == key)?.spec.as_ref()?.cluster_ip.clone()
}

fn slice_addrs(s: &ObjectSet, key: &str) -> Option<Vec<String>> {
    let sl = s.slices.iter().find(|o| ns_name(&o.metadata) == key)?;
    Some(sl.endpoints.iter().flat_map(|e| e.addresses.clone()).collect())
}

impl Source {
    /// Waits for a snapshot satisfying `pred` (the current one included).
    async fn wait(&mut self, what: &str, pred: impl Fn(&ObjectSet) -> bool) -> Arc<ObjectSet> {
        let rx = &mut self.rx;
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(s) = rx.borrow_and_update().clone() {
                    if pred(&s) {
                        return s;
                    }
                }
                rx.changed().await.expect("the source stopped");
            }
        })
        .await;
        match found {
            Ok(s) => s,
            Err(_) => panic!("timed out waiting for {what}; last: {}", describe(&self.rx.borrow())),
        }
    }

    /// Records every snapshot published from now on (for "never appears" checks).
    fn monitor(&self) -> Arc<Mutex<Vec<Arc<ObjectSet>>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut rx = self.rx.clone();
        let out = seen.clone();
        tokio::spawn(async move {
            loop {
                if let Some(s) = rx.borrow_and_update().clone() {
                    out.lock().unwrap().push(s);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        seen
    }
}

fn services_seen(seen: &Mutex<Vec<Arc<ObjectSet>>>) -> Vec<String> {
    let mut all: Vec<String> = seen.lock().unwrap().iter().flat_map(|s| services(s)).collect();
    all.sort();
    all.dedup();
    all
}

fn slices_seen(seen: &Mutex<Vec<Arc<ObjectSet>>>) -> Vec<String> {
    let mut all: Vec<String> = seen.lock().unwrap().iter().flat_map(|s| slices(s)).collect();
    all.sort();
    all.dedup();
    all
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

/// K1: nothing is published until both the Service and the EndpointSlice lists are complete; the
/// Node list does not gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_is_gated_on_services_and_slices() {
    let api = FakeApi::start().await;
    api.put(Kind::Service, service("default", "web", "10.96.0.10"));
    api.put(Kind::Service, service("kube-system", "dns", "10.96.0.53"));
    api.put(Kind::EndpointSlice, slice("default", "web-abc", "web", &["10.244.1.11", "10.244.1.12"]));
    api.put(Kind::EndpointSlice, slice("kube-system", "dns-xyz", "dns", &["10.244.1.53"]));
    api.put(Kind::Node, node("node1", "zone-a"));
    api.set_list_gate(Kind::EndpointSlice, false);
    api.set_list_gate(Kind::Node, false);

    let mut src = start_source(&api, "node1");
    // The Service list is done (the source went on to watch) and the slice list is pending.
    api.wait_stats("the Service watch and the EndpointSlice list request", |s| {
        Stats::get(&s.watches_started, Kind::Service) >= 1 && Stats::get(&s.lists_requested, Kind::EndpointSlice) >= 1
    })
    .await;
    // A Service change while the slices are still listing: still nothing published.
    api.put(Kind::Service, service("default", "web", "10.96.0.11"));
    api.put(Kind::Service, service("default", "late", "10.96.0.12"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(src.rx.borrow().is_none(), "published before the EndpointSlice list completed");
    assert!(!src.rx.has_changed().unwrap());
    assert_eq!(Stats::get(&api.stats().lists_served, Kind::EndpointSlice), 0);

    // Release the slices (the Node list stays blocked: it does not gate).
    api.set_list_gate(Kind::EndpointSlice, true);
    tokio::time::timeout(TIMEOUT, src.rx.changed()).await.expect("no snapshot after both lists").unwrap();
    let first = src.rx.borrow_and_update().clone().expect("first snapshot is Some");
    assert_eq!(services(&first), ["default/late", "default/web", "kube-system/dns"]);
    assert_eq!(cluster_ip(&first, "default/web").as_deref(), Some("10.96.0.11"));
    assert_eq!(slices(&first), ["default/web-abc", "kube-system/dns-xyz"]);
    assert_eq!(slice_addrs(&first, "default/web-abc").unwrap(), ["10.244.1.11", "10.244.1.12"]);
    assert!(first.nodes.is_empty(), "the Node list is still blocked");
    assert!(first.services.iter().all(|s| s.metadata.managed_fields.is_none()), "managedFields not stripped");

    // The Node arrives later on its own.
    api.set_list_gate(Kind::Node, true);
    let s = src.wait("the Node", |s| nodes(s) == ["node1"]).await;
    assert_eq!(services(&s).len(), 3);
    assert_eq!(slices(&s).len(), 2);
}

/// Adds, updates and deletes of Services and EndpointSlices reach the snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_update_delete_propagate() {
    let api = FakeApi::start().await;
    let mut src = start_source(&api, "node1");
    let s = src.wait("the first (empty) snapshot", |_| true).await;
    assert!(s.services.is_empty() && s.slices.is_empty() && s.nodes.is_empty(), "{}", describe(&Some(s)));

    api.put(Kind::Service, service("default", "web", "10.96.0.10"));
    src.wait("Service added", |s| services(s) == ["default/web"]).await;
    api.put(Kind::EndpointSlice, slice("default", "web-1", "web", &["10.244.1.11"]));
    src.wait("EndpointSlice added", |s| slices(s) == ["default/web-1"]).await;

    api.put(Kind::Service, service("default", "web", "10.96.0.20"));
    src.wait("Service updated", |s| cluster_ip(s, "default/web").as_deref() == Some("10.96.0.20")).await;
    api.put(Kind::EndpointSlice, slice("default", "web-1", "web", &["10.244.1.11", "10.244.2.22"]));
    src.wait("EndpointSlice updated", |s| {
        slice_addrs(s, "default/web-1") == Some(vec!["10.244.1.11".into(), "10.244.2.22".into()])
    })
    .await;

    // A slice without the kubernetes.io/service-name label is passed through (A6 is the
    // translation's business).
    let mut orphan = slice("default", "orphan", "x", &["10.244.3.3"]);
    orphan["metadata"]["labels"].as_object_mut().unwrap().remove("kubernetes.io/service-name");
    api.put(Kind::EndpointSlice, orphan);
    src.wait("unlabelled EndpointSlice", |s| slices(s) == ["default/orphan", "default/web-1"]).await;

    api.delete(Kind::EndpointSlice, "default/web-1");
    src.wait("EndpointSlice deleted", |s| slices(s) == ["default/orphan"]).await;
    api.delete(Kind::Service, "default/web");
    let s = src.wait("Service deleted", |s| s.services.is_empty()).await;
    assert_eq!(slices(&s), ["default/orphan"]);
}

/// 410 Gone: changes made while the watch was disconnected and then compacted away are picked up
/// by the relist, deletions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_gone_drops_objects_deleted_while_disconnected() {
    let api = FakeApi::start().await;
    api.put(Kind::Service, service("default", "keep", "10.96.0.10"));
    api.put(Kind::Service, service("default", "gone", "10.96.0.11"));
    api.put(Kind::EndpointSlice, slice("default", "keep-1", "keep", &["10.244.1.1"]));
    api.put(Kind::EndpointSlice, slice("default", "gone-1", "gone", &["10.244.1.2"]));
    let mut src = start_source(&api, "node1");
    src.wait("initial state", |s| services(s).len() == 2 && slices(s).len() == 2).await;
    api.wait_stats("both watches", |s| {
        Stats::get(&s.watches_started, Kind::Service) >= 1 && Stats::get(&s.watches_started, Kind::EndpointSlice) >= 1
    })
    .await;
    let before = api.stats();

    // Disconnect, change things while nobody watches, and forget the events.
    api.pause_watches();
    api.drop_watches(false);
    api.delete(Kind::Service, "default/gone");
    api.delete(Kind::EndpointSlice, "default/gone-1");
    api.put(Kind::Service, service("default", "new", "10.96.0.12"));
    api.put(Kind::EndpointSlice, slice("default", "keep-1", "keep", &["10.244.1.1", "10.244.1.9"]));
    api.compact();
    api.wait_stats("the reconnection attempts", |s| {
        Stats::get(&s.watches_requested, Kind::Service) > Stats::get(&before.watches_requested, Kind::Service)
            && Stats::get(&s.watches_requested, Kind::EndpointSlice) > Stats::get(&before.watches_requested, Kind::EndpointSlice)
    })
    .await;
    {
        let s = src.rx.borrow().clone().unwrap();
        assert_eq!(services(&s), ["default/gone", "default/keep"], "a change leaked before the reconnection");
        assert_eq!(slices(&s), ["default/gone-1", "default/keep-1"]);
    }
    api.resume_watches();

    let s = src
        .wait("the relisted state", |s| services(s) == ["default/keep", "default/new"] && slices(s) == ["default/keep-1"])
        .await;
    assert_eq!(slice_addrs(&s, "default/keep-1").unwrap(), ["10.244.1.1", "10.244.1.9"]);
    let after = api.stats();
    for kind in [Kind::Service, Kind::EndpointSlice] {
        assert!(Stats::get(&after.gone, kind) >= 1, "{kind:?}: no 410: {after:?}");
        assert!(Stats::get(&after.lists_served, kind) > Stats::get(&before.lists_served, kind), "{kind:?}: no relist: {after:?}");
    }

    // And the watch goes on after the relist.
    api.put(Kind::Service, service("default", "after", "10.96.0.13"));
    src.wait("a change after the relist", |s| services(s) == ["default/after", "default/keep", "default/new"]).await;
}

/// Watch connections cut (gracefully or abruptly): the watches resume and later changes arrive;
/// with bookmarks, a resume after a compaction does not need a relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drops_are_survived() {
    let api = FakeApi::start().await;
    api.put(Kind::Service, service("default", "a", "10.96.0.10"));
    let mut src = start_source(&api, "node1");
    src.wait("initial state", |s| services(s) == ["default/a"]).await;
    api.wait_stats("both watches", |s| {
        Stats::get(&s.watches_started, Kind::Service) >= 1 && Stats::get(&s.watches_started, Kind::EndpointSlice) >= 1
    })
    .await;
    let lists = api.stats().lists_served;

    // The response ends.
    api.drop_watches(false);
    api.put(Kind::Service, service("default", "b", "10.96.0.11"));
    src.wait("a change after a graceful drop", |s| services(s) == ["default/a", "default/b"]).await;

    // The connection is aborted in the middle of the chunked response.
    api.drop_watches(true);
    api.put(Kind::Service, service("default", "c", "10.96.0.12"));
    api.put(Kind::EndpointSlice, slice("default", "c-1", "c", &["10.244.1.3"]));
    src.wait("changes after an aborted connection", |s| {
        services(s) == ["default/a", "default/b", "default/c"] && slices(s) == ["default/c-1"]
    })
    .await;
    // Resumed from the last resourceVersion: no relist so far.
    assert_eq!(api.stats().lists_served, lists, "a watch drop caused a relist");

    // Both watches are registered now (c and c-1 came through them). Move the global
    // resourceVersion past what the Service watch saw, then bookmark, cut and compact: thanks to
    // the bookmark the resume is still valid.
    api.put(Kind::EndpointSlice, slice("default", "c-1", "c", &["10.244.1.3", "10.244.1.4"]));
    src.wait("slice update", |s| slice_addrs(s, "default/c-1").is_some_and(|a| a.len() == 2)).await;
    api.bookmark();
    api.drop_watches(false);
    api.compact();
    api.put(Kind::Service, service("default", "d", "10.96.0.13"));
    src.wait("a change after bookmark + drop + compaction", |s| services(s).len() == 4).await;
    let stats = api.stats();
    for kind in [Kind::Service, Kind::EndpointSlice] {
        assert_eq!(Stats::get(&stats.gone, kind), 0, "{kind:?}: bookmark not used: {stats:?}");
        assert_eq!(Stats::get(&stats.lists_served, kind), Stats::get(&lists, kind), "{kind:?} relisted");
    }
}

/// A1/A2: objects labelled service.kubernetes.io/service-proxy-name or
/// service.kubernetes.io/headless are never seen; removing the label makes a Service appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_filters_opted_out_objects() {
    let api = FakeApi::start().await;
    api.put(Kind::Service, service("default", "visible", "10.96.0.10"));
    api.put(Kind::Service, with_label(service("default", "other-proxy", "10.96.0.11"), PROXY_NAME, "foo"));
    api.put(Kind::Service, with_label(service("default", "headless-svc", "10.96.0.12"), HEADLESS, ""));
    api.put(Kind::EndpointSlice, slice("default", "visible-1", "visible", &["10.244.1.1"]));
    api.put(Kind::EndpointSlice, with_label(slice("default", "headless-1", "h", &["10.244.1.2"]), HEADLESS, ""));
    api.put(Kind::EndpointSlice, with_label(slice("default", "proxied-1", "p", &["10.244.1.3"]), PROXY_NAME, "x"));
    let mut src = start_source(&api, "node1");
    let seen = src.monitor();
    let s = src.wait("initial state", |s| !services(s).is_empty()).await;
    assert_eq!(services(&s), ["default/visible"]);
    assert_eq!(slices(&s), ["default/visible-1"]);

    // Through the watch.
    api.put(Kind::Service, with_label(service("default", "other-proxy-2", "10.96.0.13"), PROXY_NAME, ""));
    api.put(Kind::EndpointSlice, with_label(slice("default", "headless-2", "h", &["10.244.1.4"]), HEADLESS, ""));
    api.put(Kind::Service, service("default", "visible-2", "10.96.0.14"));
    api.put(Kind::EndpointSlice, slice("default", "visible-2-1", "visible-2", &["10.244.1.5"]));
    src.wait("visible additions", |s| services(s).len() == 2 && slices(s).len() == 2).await;

    // Labelling a visible Service hides it (the server turns the update into a DELETED event);
    // removing the label brings it back (an ADDED event).
    api.put(Kind::Service, with_label(service("default", "visible-2", "10.96.0.14"), PROXY_NAME, "mine"));
    src.wait("labelled Service gone", |s| services(s) == ["default/visible"]).await;
    api.put(Kind::Service, service("default", "visible-2", "10.96.0.14"));
    src.wait("unlabelled Service back", |s| services(s) == ["default/visible", "default/visible-2"]).await;

    assert_eq!(services_seen(&seen), ["default/visible", "default/visible-2"]);
    assert_eq!(slices_seen(&seen), ["default/visible-1", "default/visible-2-1"]);
}

/// One malformed object is skipped (logged); the others are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_are_skipped() {
    let api = FakeApi::start().await;
    let mut bad = service("default", "bad", "10.96.0.66");
    bad["spec"]["ports"] = json!("80");
    api.put(Kind::Service, service("default", "good-1", "10.96.0.10"));
    api.put(Kind::Service, bad);
    api.put(Kind::Service, service("default", "good-2", "10.96.0.11"));
    let mut bad_slice = slice("default", "bad-1", "bad", &[]);
    bad_slice["endpoints"] = json!({"addresses": "10.244.1.1"});
    api.put(Kind::EndpointSlice, bad_slice);
    api.put(Kind::EndpointSlice, slice("default", "good-1-1", "good-1", &["10.244.1.1"]));
    let mut src = start_source(&api, "node1");
    let seen = src.monitor();
    let s = src.wait("initial state", |s| !s.services.is_empty()).await;
    assert_eq!(services(&s), ["default/good-1", "default/good-2"]);
    assert_eq!(slices(&s), ["default/good-1-1"]);

    // Through the watch.
    let mut bad2 = service("default", "bad-2", "10.96.0.67");
    bad2["spec"]["ports"] = json!([{"port": "eighty", "protocol": "TCP"}]);
    api.put(Kind::Service, bad2);
    api.put(Kind::Service, service("default", "good-3", "10.96.0.12"));
    src.wait("good-3", |s| services(s) == ["default/good-1", "default/good-2", "default/good-3"]).await;

    // A good Service updated into a malformed one is dropped, and comes back when fixed.
    let mut broken = service("default", "good-1", "10.96.0.10");
    broken["spec"]["clusterIPs"] = json!(7);
    api.put(Kind::Service, broken);
    src.wait("good-1 broken", |s| services(s) == ["default/good-2", "default/good-3"]).await;
    api.put(Kind::Service, service("default", "good-1", "10.96.0.10"));
    src.wait("good-1 fixed", |s| services(s).len() == 3).await;

    let all = services_seen(&seen);
    assert!(!all.iter().any(|n| n.contains("bad")), "malformed Service delivered: {all:?}");
    assert_eq!(slices_seen(&seen), ["default/good-1-1"]);
}

/// B9: this node's Node object (by name) is delivered with its labels; other Nodes are not; a
/// missing Node is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_node_is_delivered_with_labels() {
    let api = FakeApi::start().await;
    api.put(Kind::Node, node("node1", "zone-a"));
    api.put(Kind::Node, node("node2", "zone-b"));
    let mut src = start_source(&api, "node1");
    let zone = |s: &ObjectSet| -> Option<String> {
        s.nodes.first()?.metadata.labels.as_ref()?.get("topology.kubernetes.io/zone").cloned()
    };
    let s = src.wait("node1", |s| !s.nodes.is_empty()).await;
    assert_eq!(nodes(&s), ["node1"]);
    assert_eq!(zone(&s).as_deref(), Some("zone-a"));
    assert!(s.nodes[0].metadata.managed_fields.is_none());

    api.put(Kind::Node, node("node2", "zone-x"));
    api.put(Kind::Node, node("node1", "zone-c"));
    let s = src.wait("node1 relabelled", |s| zone(s).as_deref() == Some("zone-c")).await;
    assert_eq!(nodes(&s), ["node1"]);

    api.delete(Kind::Node, "node1");
    src.wait("node1 deleted", |s| s.nodes.is_empty()).await;

    // A source for a node that does not exist still publishes (with no Node).
    let mut ghost = start_source(&api, "ghost");
    let s = ghost.wait("a snapshot without a Node", |_| true).await;
    assert!(s.nodes.is_empty());
    api.put(Kind::Node, node("ghost", "zone-g"));
    let s = ghost.wait("the ghost Node created", |s| nodes(s) == ["ghost"]).await;
    assert_eq!(zone(&s).as_deref(), Some("zone-g"));
}
