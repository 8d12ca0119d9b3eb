//! Only dirty services are recomputed (SEMANTICS K2's partial syncs): the translation result of
//! each Service is cached with where its Service and the EndpointSlices that joined it were in
//! the previous snapshot (kept alive, shared with the source: no copy of the objects), and
//! reused while they compare equal by value. A change of this node's name or labels (B9:
//! topology) invalidates everything. The result is, by construction, the full
//! [`model::translate`] of the same objects: each Service's ports depend only on that Service,
//! its slices and the node.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    manifests::ObjectSet,
    model::{self, DesiredState, NodeInfo, ObjectError, ServicePortName, ServicePortState, TranslateOptions, LABEL_SERVICE_NAME},
};

type Key = (String, String);

struct Entry {
    /// Indices of the Service(s) and slices in the previous snapshot.
    services: Vec<usize>,
    slices: Vec<usize>,
    ports: Vec<(ServicePortName, ServicePortState)>,
    errors: Vec<ObjectError>,
}

/// One translation.
pub struct Translation {
    pub desired: DesiredState,
    pub errors: Vec<ObjectError>,
    /// Services translated anew (the others came from the cache).
    pub recomputed: usize,
}

#[derive(Default)]
pub struct Translator {
    node: Option<NodeInfo>,
    /// The snapshot the cache's indices point into.
    previous: Arc<ObjectSet>,
    cache: HashMap<Key, Entry>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, name: Option<&str>) -> Key {
    (meta.namespace.clone().unwrap_or_default(), name.or(meta.name.as_deref()).unwrap_or_default().to_string())
}

impl Translator {
    pub fn translate(&mut self, objects: &Arc<ObjectSet>, node: &NodeInfo, opts: &TranslateOptions) -> Translation {
        if self.node.as_ref() != Some(node) {
            self.cache.clear();
            self.node = Some(node.clone());
        }
        // Services by (namespace, name) — duplicates stay together, so the model reports them —
        // and slices by the Service their label names. References only: objects are cloned
        // just for the Services translated anew.
        let mut services: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
        for (i, s) in objects.services.iter().enumerate() {
            services.entry(key_of(&s.metadata, None)).or_default().push(i);
        }
        let mut slices: HashMap<Key, Vec<usize>> = HashMap::new();
        let mut unjoined = Vec::new();
        for (i, s) in objects.slices.iter().enumerate() {
            match s.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)).filter(|n| !n.is_empty()) {
                Some(svc) => slices.entry(key_of(&s.metadata, Some(svc))).or_default().push(i),
                None => unjoined.push(s.clone()),
            }
        }
        let previous = std::mem::replace(&mut self.previous, objects.clone());
        let same_snapshot = Arc::ptr_eq(&previous, objects);

        let mut recomputed = 0;
        let mut desired = DesiredState::default();
        let mut errors = Vec::new();
        self.cache.retain(|k, _| services.contains_key(k));
        for (key, svcs) in services {
            let own_slices = slices.remove(&key).unwrap_or_default();
            // Indices in an entry point into `previous` (every entry is refreshed below).
            let fresh = self.cache.get(&key).is_some_and(|e| {
                e.services.len() == svcs.len()
                    && e.slices.len() == own_slices.len()
                    && (same_snapshot && e.services == svcs && e.slices == own_slices
                        || e.services.iter().zip(&svcs).all(|(&a, &b)| previous.services[a] == objects.services[b])
                            && e.slices.iter().zip(&own_slices).all(|(&a, &b)| previous.slices[a] == objects.slices[b]))
            });
            if fresh {
                let e = self.cache.get_mut(&key).expect("fresh");
                e.services = svcs;
                e.slices = own_slices;
            } else {
                let svc_objs: Vec<Service> = svcs.iter().map(|&i| objects.services[i].clone()).collect();
                let slice_objs: Vec<EndpointSlice> = own_slices.iter().map(|&i| objects.slices[i].clone()).collect();
                let (state, errs) = model::translate(&svc_objs, &slice_objs, node, opts);
                let ports = state.services.into_iter().collect();
                self.cache.insert(key.clone(), Entry { services: svcs, slices: own_slices, ports, errors: errs });
                recomputed += 1;
            }
            let entry = &self.cache[&key];
            desired.services.extend(entry.ports.iter().cloned());
            errors.extend(entry.errors.iter().cloned());
        }
        // Slices without a Service label are only reported (A6); slices of absent Services join
        // nothing and are ignored, as in the full translation.
        if !unjoined.is_empty() {
            errors.extend(model::translate(&[], &unjoined, node, opts).1);
        }
        Translation { desired, errors, recomputed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_str;

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: a, name: web}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: a, name: dns}
spec: {clusterIP: 10.96.0.2, internalTrafficPolicy: Local, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: b, name: broken}
spec: {clusterIP: not-an-ip, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: a, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.0.1], nodeName: n1, zone: z1, hints: {forZones: [{name: z1}]}}
- {addresses: [10.0.0.2], nodeName: n2, zone: z2, hints: {forZones: [{name: z2}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: a, name: web-2, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.0.3], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: a, name: dns-1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}]
endpoints:
- {addresses: [10.0.0.9], nodeName: n2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: a, name: stray}
addressType: IPv4
endpoints: []
"#;

    fn objects() -> ObjectSet {
        let r = parse_str(OBJECTS, "t.yaml");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r.objects
    }

    fn node(zone: &str) -> NodeInfo {
        NodeInfo { name: "n1".into(), labels: [("topology.kubernetes.io/zone".to_string(), zone.to_string())].into() }
    }

    fn full(o: &ObjectSet, n: &NodeInfo) -> (DesiredState, usize) {
        let (d, e) = model::translate(&o.services, &o.slices, n, &TranslateOptions::default());
        (d, e.len())
    }

    #[test]
    fn equals_the_full_translation_and_recomputes_only_what_changed() {
        let mut t = Translator::default();
        let opts = TranslateOptions::default();
        let mut o = objects();
        let n = node("z1");
        let first = t.translate(&Arc::new(o.clone()), &n, &opts);
        assert_eq!((first.desired.clone(), first.errors.len()), full(&o, &n));
        assert_eq!(first.recomputed, 3);
        assert!(first.errors.iter().any(|e| e.name == "broken"));
        assert!(first.errors.iter().any(|e| e.name == "stray"), "{:?}", first.errors);

        let again = t.translate(&Arc::new(o.clone()), &n, &opts);
        assert_eq!(again.recomputed, 0);
        assert_eq!(again.desired, first.desired);
        // The very same snapshot again (a periodic resync): nothing recomputed either.
        let same = Arc::new(o.clone());
        t.translate(&same, &n, &opts);
        let resync = t.translate(&same, &n, &opts);
        assert_eq!((resync.recomputed, &resync.desired), (0, &first.desired));

        // One slice of `web` changes: only `web` is recomputed.
        o.slices[1].endpoints[0].conditions.as_mut().unwrap().serving = Some(false);
        let third = t.translate(&Arc::new(o.clone()), &n, &opts);
        assert_eq!(third.recomputed, 1);
        assert_eq!((third.desired.clone(), third.errors.len()), full(&o, &n));

        // A Service disappears: its ports go, nothing else is recomputed.
        o.services.retain(|s| s.metadata.name.as_deref() != Some("dns"));
        let fourth = t.translate(&Arc::new(o.clone()), &n, &opts);
        assert_eq!(fourth.recomputed, 0);
        assert_eq!((fourth.desired.clone(), fourth.errors.len()), full(&o, &n));

        // The node's zone changes (topology): everything is recomputed.
        let n2 = node("z2");
        let fifth = t.translate(&Arc::new(o.clone()), &n2, &opts);
        assert_eq!(fifth.recomputed, 2);
        assert_eq!((fifth.desired.clone(), fifth.errors.len()), full(&o, &n2));
    }
}
