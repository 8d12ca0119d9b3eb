//! A fake Kubernetes API server for the API-source tests (`KubeSource` in-process, and the real
//! `lb-agent` binary through [`kubeconfig`]).
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
//! Streaming lists (`sendInitialEvents`) are refused with 400: clients must list + watch.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
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
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// Bound of [`FakeApi::wait_stats`].
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes `DIR/kubeconfig`: one cluster at `http://ADDR`, no credentials, one (current) context.
pub fn kubeconfig(addr: SocketAddr, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
"
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

// ------------------------------------------------------------------------------------------------
// The server
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    fn from_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// What the server saw, for waits and assertions.
#[derive(Default, Clone, Debug)]
pub struct Stats {
    pub lists_requested: HashMap<Kind, usize>,
    pub lists_served: HashMap<Kind, usize>,
    pub watches_requested: HashMap<Kind, usize>,
    /// Watches registered (answered with a stream of events, not with 410).
    pub watches_started: HashMap<Kind, usize>,
    /// Watches answered with 410 Gone.
    pub gone: HashMap<Kind, usize>,
}

impl Stats {
    pub fn get(map: &HashMap<Kind, usize>, kind: Kind) -> usize {
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

pub struct FakeApi {
    inner: Mutex<Inner>,
    /// Per kind: `true` = lists are answered.
    list_gates: HashMap<Kind, watch::Sender<bool>>,
    /// `true` = watch requests are answered.
    watch_gate: watch::Sender<bool>,
    stats: watch::Sender<Stats>,
    pub url: String,
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
    /// Starts a server on 127.0.0.1 (a free port) on a runtime of its own, in a background
    /// thread that lives as long as the process. Usable from sync and async code alike.
    pub fn start() -> (Arc<FakeApi>, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fake API server");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let api = Arc::new(FakeApi {
            inner: Mutex::new(Inner { rv: 1, ..Inner::default() }),
            list_gates: Kind::ALL.iter().map(|&k| (k, watch::channel(true).0)).collect(),
            watch_gate: watch::channel(true).0,
            stats: watch::channel(Stats::default()).0,
            url: format!("http://{addr}"),
        });
        let app = Router::new().fallback(handle).with_state(api.clone());
        std::thread::Builder::new()
            .name(format!("fake-api-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    axum::serve(listener, app).await
                })
            })
            .expect("spawning the fake API server thread");
        (api, addr)
    }

    fn bump(&self, which: fn(&mut Stats) -> &mut HashMap<Kind, usize>, kind: Kind) {
        self.stats.send_modify(|s| *which(s).entry(kind).or_default() += 1);
    }

    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    pub async fn wait_stats(&self, what: &str, pred: impl Fn(&Stats) -> bool) {
        let mut rx = self.stats.subscribe();
        if tokio::time::timeout(WAIT_TIMEOUT, rx.wait_for(|s| pred(s))).await.is_err() {
            panic!("timed out waiting for {what}; server stats: {:?}", self.stats());
        }
    }

    // --- changes -------------------------------------------------------------------------------

    /// Creates or replaces an object (its resourceVersion is set by the server).
    pub fn put(&self, kind: Kind, mut obj: Value) {
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
    pub fn delete(&self, kind: Kind, key: &str) {
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
    pub fn compact(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.compacted = inner.rv;
        let compacted = inner.compacted;
        inner.changes.retain(|c| c.rv > compacted);
    }

    /// Ends every open watch: gracefully (the chunked response ends) or by aborting the
    /// connection in the middle of the response.
    pub fn drop_watches(&self, abort: bool) {
        let mut inner = self.inner.lock().unwrap();
        for w in inner.watchers.drain(..) {
            if abort {
                let _ = w.tx.send(Err(std::io::Error::other("connection cut by the test")));
            }
        }
    }

    /// Holds new watch requests back (they wait) until `resume_watches`.
    pub fn pause_watches(&self) {
        let _inner = self.inner.lock().unwrap();
        self.watch_gate.send_replace(false);
    }

    pub fn resume_watches(&self) {
        let _inner = self.inner.lock().unwrap();
        self.watch_gate.send_replace(true);
    }

    /// Holds back (`false`) or releases (`true`) the lists of `kind`.
    pub fn set_list_gate(&self, kind: Kind, open: bool) {
        self.list_gates[&kind].send_replace(open);
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch that asked for them.
    pub fn bookmark(&self) {
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

/// A ClusterIP Service `ns/name` at `ip`, port `http` 80/TCP → 8080 (with managedFields).
pub fn service(ns: &str, name: &str, ip: &str) -> Value {
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

/// An IPv4 EndpointSlice `ns/name` of Service `svc`: port `http` 8080/TCP, one ready endpoint per
/// address.
pub fn slice(ns: &str, name: &str, svc: &str, addrs: &[&str]) -> Value {
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

/// A Node labelled with its hostname and `zone`.
pub fn node(name: &str, zone: &str) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-node-{name}"),
                        "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}}})
}

/// `obj` with the label `key=value` added.
pub fn with_label(mut obj: Value, key: &str, value: &str) -> Value {
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"][key] = json!(value);
    obj
}

/// Opt-out labels (SEMANTICS A1/A2).
pub const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS: &str = "service.kubernetes.io/headless";
