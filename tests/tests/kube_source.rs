//! `lb_userspace::source::kube` with the real kube-rs client against the fake API server of
//! `lb_tests::fakeapi` (list + watch, label/field selectors, list gates, 410 Gone after a
//! compaction, dropped connections, bookmarks).
//!
//! No root needed. Set RUST_LOG to see the source's and kube-rs' logs.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_tests::fakeapi::{node, service, slice, with_label, FakeApi, Kind, Stats, HEADLESS, PROXY_NAME};
use lb_userspace::{manifests::ObjectSet, source::kube::KubeSource};
use serde_json::json;
use tokio::sync::watch;

/// Bound for every wait on a condition (the watcher's backoff after a 410 is 0.8–1.6 s).
const TIMEOUT: Duration = Duration::from_secs(20);

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
    let (api, _) = FakeApi::start();
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
    let (api, _) = FakeApi::start();
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
    let (api, _) = FakeApi::start();
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
    let (api, _) = FakeApi::start();
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
    let (api, _) = FakeApi::start();
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
    let (api, _) = FakeApi::start();
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
    let (api, _) = FakeApi::start();
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
