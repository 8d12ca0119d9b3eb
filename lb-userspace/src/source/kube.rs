//! The Kubernetes API server as the source of Services, EndpointSlices and this node's Node.
//!
//! Like kube-proxy's informers:
//!
//! - Services and EndpointSlices are watched cluster-wide with the label selector
//!   `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless` (SEMANTICS A1/A2);
//! - only this node's Node object is watched (field selector `metadata.name=<node>`, B9);
//! - nothing is published before **both** the Service and the EndpointSlice initial lists are
//!   complete (K1). The Node watch does not gate: until it is listed (or when the Node does not
//!   exist) the snapshots simply have no Node.
//!
//! Objects are watched as [`DynamicObject`]s and converted one by one into the typed objects, so
//! one malformed object (a field of the wrong type, an unknown enum shape...) is logged with its
//! kind and namespace/name and skipped instead of failing the whole list. `metadata.managedFields`
//! is dropped. EndpointSlices without a `kubernetes.io/service-name` label are passed through: the
//! translation reports them (A6).
//!
//! Reconnects and relists (410 Gone) are handled by kube-runtime's [`watcher`] with its default
//! backoff. A relist replaces the whole store of that kind once it is complete, so objects deleted
//! while the watch was disconnected disappear from the next snapshot; until then the previous state
//! stays published.
//!
//! Snapshots are coalesced: at most one per [`DEFAULT_COALESCE`] (configurable) while events keep
//! arriving; the last state is always published. A snapshot identical to the previous one is not
//! published again.

use std::{collections::BTreeMap, fmt, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::manifests::ObjectSet;

/// kube-proxy's label selector for its Service and EndpointSlice informers (SEMANTICS A1).
pub const PROXY_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Default minimum interval between two published snapshots.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(100);

/// At most this many already-available events are folded into a snapshot that is due.
const DRAIN_LIMIT: usize = 1024;

/// Builds a client: from the kubeconfig file `kubeconfig` if given, else from the in-cluster
/// configuration, else from the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no Kubernetes configuration (in-cluster or kubeconfig) found")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Watches Services and EndpointSlices (with kube-proxy's label selector) and this node's Node
/// object, keeps stores, and publishes a full snapshot whenever something changed, once both the
/// Service and the EndpointSlice initial lists are complete (K1).
pub struct KubeSource {
    client: Client,
    node_name: String,
    coalesce: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        })
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn object_key(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// The typed object of `obj`, or `None` (logged) when it does not deserialize.
fn convert<T: DeserializeOwned>(kind: Kind, key: &str, mut obj: DynamicObject) -> Option<T> {
    obj.metadata.managed_fields = None;
    let mut value = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => {
            warn!(%kind, object = %key, "skipping malformed {kind} {key}: {e}");
            return None;
        }
    };
    // The watch already fixes the kind; list items usually carry no apiVersion/kind anyway.
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    match serde_json::from_value::<T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(%kind, object = %key, "skipping malformed {kind} {key}: {e}");
            None
        }
    }
}

/// The objects of one kind, as the watcher reports them.
struct Store<T> {
    kind: Kind,
    objects: BTreeMap<String, T>,
    /// The objects of the relist in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<String, T>>,
    /// The initial list has completed at least once.
    synced: bool,
}

impl<T: DeserializeOwned + PartialEq + Clone> Store<T> {
    fn new(kind: Kind) -> Self {
        Store { kind, objects: BTreeMap::new(), relist: None, synced: false }
    }

    /// Applies one watcher event; returns whether the published state may have changed.
    fn apply(&mut self, event: watcher::Event<DynamicObject>) -> bool {
        let kind = self.kind;
        match event {
            watcher::Event::Init => {
                debug!(%kind, "listing");
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let key = object_key(&obj.metadata);
                let typed = convert::<T>(kind, &key, obj);
                match self.relist.as_mut() {
                    Some(buf) => {
                        if let Some(t) = typed {
                            buf.insert(key, t);
                        }
                        false
                    }
                    // Not expected (InitApply always follows Init): treat as an update.
                    None => self.upsert(key, typed),
                }
            }
            watcher::Event::InitDone => {
                if let Some(buf) = self.relist.take() {
                    self.objects = buf;
                }
                if self.synced {
                    debug!(%kind, objects = self.objects.len(), "relist complete");
                } else {
                    info!(%kind, objects = self.objects.len(), "initial list complete");
                }
                self.synced = true;
                true
            }
            watcher::Event::Apply(obj) => {
                let key = object_key(&obj.metadata);
                let typed = convert::<T>(kind, &key, obj);
                self.upsert(key, typed)
            }
            watcher::Event::Delete(obj) => {
                let key = object_key(&obj.metadata);
                debug!(%kind, object = %key, "deleted");
                self.objects.remove(&key).is_some()
            }
        }
    }

    /// Stores the new version of an object; a malformed new version (`None`) removes it.
    fn upsert(&mut self, key: String, typed: Option<T>) -> bool {
        match typed {
            Some(t) => match self.objects.get(&key) {
                Some(old) if *old == t => false,
                _ => {
                    self.objects.insert(key, t);
                    true
                }
            },
            None => self.objects.remove(&key).is_some(),
        }
    }

    fn snapshot(&self) -> Vec<T> {
        self.objects.values().cloned().collect()
    }
}

/// All three stores.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

impl Stores {
    fn apply(&mut self, kind: Kind, event: watcher::Event<DynamicObject>) -> bool {
        match kind {
            Kind::Service => self.services.apply(event),
            Kind::EndpointSlice => self.slices.apply(event),
            Kind::Node => self.nodes.apply(event),
        }
    }

    /// K1: both the Service and the EndpointSlice initial lists are complete.
    fn ready(&self) -> bool {
        self.services.synced && self.slices.synced
    }

    fn snapshot(&self) -> ObjectSet {
        ObjectSet { services: self.services.snapshot(), slices: self.slices.snapshot(), nodes: self.nodes.snapshot() }
    }
}

fn same(a: &ObjectSet, b: &ObjectSet) -> bool {
    a.services == b.services && a.slices == b.slices && a.nodes == b.nodes
}

fn log_watch_error(kind: Kind, err: &watcher::Error) {
    match err {
        watcher::Error::WatchError(status) if status.code == 410 => {
            info!(%kind, "watch resource version too old (410 Gone): relisting")
        }
        _ => warn!(%kind, "watch error (retrying with backoff): {err}"),
    }
}

type EventStream = stream::BoxStream<'static, (Kind, Result<watcher::Event<DynamicObject>, watcher::Error>)>;

fn watch_kind(api: Api<DynamicObject>, config: watcher::Config, kind: Kind) -> EventStream {
    watcher(api, config).default_backoff().map(move |ev| (kind, ev)).boxed()
}

impl KubeSource {
    pub fn new(client: Client, node_name: String) -> KubeSource {
        KubeSource { client, node_name, coalesce: DEFAULT_COALESCE }
    }

    /// Sets the minimum interval between two snapshots (default [`DEFAULT_COALESCE`]).
    pub fn coalesce(mut self, interval: Duration) -> KubeSource {
        self.coalesce = interval;
        self
    }

    /// Runs until all receivers of `tx` are dropped (then returns `Ok`). Snapshots are sent as
    /// `Some(snapshot)`; nothing is sent before both the Service and the EndpointSlice lists
    /// completed. Watch errors are logged and retried with a backoff; malformed objects are logged
    /// with their kind and namespace/name and skipped.
    pub async fn run(self, tx: watch::Sender<Option<Arc<ObjectSet>>>) -> Result<()> {
        // Plain list + watch (no streaming lists), with bookmarks; pages of 500 like client-go.
        let proxy_config = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let node_config = watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let services = Api::<DynamicObject>::all_with(self.client.clone(), &ApiResource::erase::<Service>(&()));
        let slices = Api::<DynamicObject>::all_with(self.client.clone(), &ApiResource::erase::<EndpointSlice>(&()));
        let nodes = Api::<DynamicObject>::all_with(self.client.clone(), &ApiResource::erase::<Node>(&()));
        let mut events = stream::select_all([
            watch_kind(services, proxy_config.clone(), Kind::Service),
            watch_kind(slices, proxy_config, Kind::EndpointSlice),
            watch_kind(nodes, node_config, Kind::Node),
        ]);

        let mut stores = Stores {
            services: Store::new(Kind::Service),
            slices: Store::new(Kind::EndpointSlice),
            nodes: Store::new(Kind::Node),
        };
        let mut dirty = false;
        let mut last_publish: Option<Instant> = None;
        let mut published: Option<Arc<ObjectSet>> = None;
        info!(node = %self.node_name, "watching Services, EndpointSlices and the Node from the API server");

        loop {
            let due = dirty && stores.ready();
            let deadline = match last_publish {
                Some(t) => t + self.coalesce,
                None => Instant::now(),
            };
            tokio::select! {
                biased;
                _ = tx.closed() => return Ok(()),
                _ = tokio::time::sleep_until(deadline), if due => {
                    // Fold in what is already there (e.g. the rest of a burst) before publishing.
                    for _ in 0..DRAIN_LIMIT {
                        match events.next().now_or_never() {
                            Some(Some((kind, Ok(ev)))) => {
                                stores.apply(kind, ev);
                            }
                            Some(Some((kind, Err(e)))) => log_watch_error(kind, &e),
                            Some(None) => anyhow::bail!("Kubernetes watch streams ended"),
                            None => break,
                        }
                    }
                    dirty = false;
                    last_publish = Some(Instant::now());
                    let snapshot = stores.snapshot();
                    if published.as_deref().is_some_and(|p| same(p, &snapshot)) {
                        debug!("no change since the last snapshot");
                        continue;
                    }
                    debug!(
                        services = snapshot.services.len(),
                        slices = snapshot.slices.len(),
                        nodes = snapshot.nodes.len(),
                        "publishing snapshot"
                    );
                    let snapshot = Arc::new(snapshot);
                    published = Some(snapshot.clone());
                    if tx.send(Some(snapshot)).is_err() {
                        return Ok(());
                    }
                }
                ev = events.next() => match ev {
                    Some((kind, Ok(ev))) => dirty |= stores.apply(kind, ev),
                    Some((kind, Err(e))) => log_watch_error(kind, &e),
                    None => anyhow::bail!("Kubernetes watch streams ended"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dyn_service(ns: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn store_relist_replaces_and_skips_malformed() {
        let mut s = Store::<Service>::new(Kind::Service);
        assert!(!s.apply(watcher::Event::Init));
        assert!(!s.apply(watcher::Event::InitApply(dyn_service("a", "x", serde_json::json!({"ports": []})))));
        assert!(!s.apply(watcher::Event::InitApply(dyn_service("a", "bad", serde_json::json!({"ports": "80"})))));
        assert!(!s.synced);
        assert!(s.apply(watcher::Event::InitDone));
        assert!(s.synced);
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), ["a/x"]);
        assert!(s.objects["a/x"].metadata.managed_fields.is_none());
        // Same content again: no change.
        assert!(!s.apply(watcher::Event::Apply(dyn_service("a", "x", serde_json::json!({"ports": []})))));
        assert!(s.apply(watcher::Event::Apply(dyn_service("b", "y", serde_json::json!({})))));
        // A relist without b/y: b/y disappears once complete, not before.
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(dyn_service("a", "x", serde_json::json!({}))));
        assert_eq!(s.objects.len(), 2);
        s.apply(watcher::Event::InitDone);
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), ["a/x"]);
        // A valid object updated into a malformed one is dropped.
        assert!(s.apply(watcher::Event::Apply(dyn_service("a", "x", serde_json::json!({"ports": 1})))));
        assert!(s.objects.is_empty());
    }
}
