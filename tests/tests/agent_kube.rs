//! The real `lb-agent` binary with the API-server source (`--kubeconfig`) against the fake API
//! server of `lb_tests::fakeapi`, checked through the datapath maps (`lbctl services|backends`).
//!
//! The agent runs in this process's network namespace with `--interfaces none` (nothing is
//! attached: only the maps matter here), its maps pinned under its own `/sys/fs/bpf/lb-ak-<tag>`.
//! Needs root (BPF).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use lb_tests::{
    agent::Agent,
    fakeapi::{kubeconfig, service, slice, with_label, FakeApi, Kind, Stats, PROXY_NAME},
    privileges::require_root,
    wait,
};
use serde_json::json;

/// Bound for every wait on a condition (the kube-rs watcher's backoff after a 410 is 0.8–1.6 s).
const T: Duration = Duration::from_secs(20);

struct Env {
    api: Arc<FakeApi>,
    agent: Agent,
    dir: PathBuf,
}

impl Env {
    /// A fake API server (already holding what `setup` puts there) and an agent watching it;
    /// waits for the agent's `ready` if `ready`.
    fn new(tag: &str, setup: impl FnOnce(&FakeApi), ready: bool) -> Env {
        let (api, addr) = FakeApi::start();
        setup(&api);
        let dir = std::env::temp_dir().join(format!("lb-ak-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = spawn_agent(tag, addr, &dir);
        let mut env = Env { api, agent, dir };
        if ready {
            env.agent.wait_ready(T).unwrap_or_else(|e| panic!("{e:#}"));
        }
        env
    }

    /// Polls `f` until it returns `Some` (≤ `T`); on timeout, panics with the agent's log.
    fn wait<R>(&self, what: &str, f: impl FnMut() -> Option<R>) -> R {
        wait::until(what, T, f)
            .unwrap_or_else(|e| panic!("{e:#}\nserver stats: {:?}\nagent log:\n{}", self.api.stats(), self.agent.log()))
    }

    /// The frontends (`ip:port`) of `lbctl services`; `None` while lbctl cannot read the maps.
    fn frontends(&self) -> Option<BTreeSet<String>> {
        let v = self.agent.lbctl_json(&["services"]).ok()?;
        Some(v.as_array()?.iter().filter_map(|s| Some(s["frontend"].as_str()?.to_string())).collect())
    }

    /// The backend addresses (`ip:port`) of `lbctl backends`.
    fn backends(&self) -> Option<BTreeSet<String>> {
        let v = self.agent.lbctl_json(&["backends"]).ok()?;
        Some(v.as_array()?.iter().filter_map(|b| Some(b["address"].as_str()?.to_string())).collect())
    }

    /// The backends holding Maglev slots for `frontend`.
    fn active(&self, frontend: &str) -> Option<BTreeSet<String>> {
        Some(self.agent.active_backends(frontend).ok()?.into_keys().collect())
    }

    /// Waits until the programmed frontends are exactly `want`.
    fn wait_frontends(&self, what: &str, want: &[&str]) {
        let want = set(want);
        self.wait(&format!("{what}: frontends = {want:?}"), || (self.frontends()? == want).then_some(()));
    }

    /// Waits until `frontend`'s Maglev table holds exactly `want` (`ip:port`).
    fn wait_active(&self, what: &str, frontend: &str, want: &[&str]) {
        let want = set(want);
        self.wait(&format!("{what}: {frontend} → {want:?}"), || (self.active(frontend)? == want).then_some(()));
    }

    /// Waits until the backend map holds exactly `want` (`ip:port`).
    fn wait_backends(&self, what: &str, want: &[&str]) {
        let want = set(want);
        self.wait(&format!("{what}: backends = {want:?}"), || (self.backends()? == want).then_some(()));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// lb-agent with `--kubeconfig` pointing at the fake server, in this network namespace, not
/// waiting for `ready`.
fn spawn_agent(tag: &str, addr: SocketAddr, dir: &std::path::Path) -> Agent {
    let kc = kubeconfig(addr, dir);
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/lb-ak-{tag}"));
    // A previous run killed before its cleanup must not hand its maps over (they would be adopted).
    let _ = std::fs::remove_dir_all(&bpffs);
    Agent::spawn_with(
        None,
        &["--kubeconfig", kc.to_str().unwrap()],
        "none",
        &bpffs,
        &["--healthz-bind-address", "", "--metrics-bind-address", ""],
    )
    .expect("spawning lb-agent")
}

fn count(map: &HashMap<Kind, usize>, kind: Kind) -> usize {
    Stats::get(map, kind)
}

/// K1 end to end: while the EndpointSlice list is held back the agent programs nothing (its maps
/// are pinned and empty) and is not ready; once the list is released the Service's ClusterIP
/// frontend appears with its backends.
#[test]
fn initial_sync_waits_for_the_endpointslice_list() {
    if !require_root("initial_sync_waits_for_the_endpointslice_list") {
        return;
    }
    let mut env = Env::new(
        "gate",
        |api| {
            api.put(Kind::Service, service("default", "web", "10.96.0.10"));
            api.put(Kind::EndpointSlice, slice("default", "web-1", "web", &["10.244.1.11", "10.244.1.12"]));
            api.set_list_gate(Kind::EndpointSlice, false);
        },
        false,
    );
    env.wait("the Service watch and the EndpointSlice list request", || {
        let s = env.api.stats();
        (count(&s.watches_started, Kind::Service) >= 1 && count(&s.lists_requested, Kind::EndpointSlice) >= 1).then_some(())
    });
    // The maps are pinned before the initial lists complete: lbctl reads them, empty.
    let frontends = env.wait("lbctl reading the pinned maps", || env.frontends());
    assert!(frontends.is_empty(), "programmed before the EndpointSlice list completed: {frontends:?}");
    // A Service change while the slices are still listing: still nothing programmed.
    env.api.put(Kind::Service, service("default", "late", "10.96.0.11"));
    std::thread::sleep(Duration::from_millis(500)); // 5 × --min-sync-period
    assert_eq!(env.frontends().unwrap(), BTreeSet::new(), "programmed before the EndpointSlice list completed");
    assert_eq!(env.backends().unwrap(), BTreeSet::new());
    assert!(!env.agent.is_ready(), "ready before the initial lists:\n{}", env.agent.log());
    assert!(env.agent.try_exit_status().is_none(), "the agent exited:\n{}", env.agent.log());
    assert_eq!(count(&env.api.stats().lists_served, Kind::EndpointSlice), 0);

    env.api.set_list_gate(Kind::EndpointSlice, true);
    env.agent.wait_ready(T).unwrap_or_else(|e| panic!("{e:#}"));
    env.wait_active("after the EndpointSlice list", "10.96.0.10:80", &["10.244.1.11:8080", "10.244.1.12:8080"]);
    env.wait_frontends("after the EndpointSlice list", &["10.96.0.10:80", "10.96.0.11:80"]);
    assert_eq!(env.active("10.96.0.11:80").unwrap(), BTreeSet::new(), "late has no endpoints");
}

/// Adds, updates (endpoint added, endpoint removed, a second slice, the ClusterIP port changed)
/// and deletes of Services and EndpointSlices reach the maps.
#[test]
fn add_update_delete_reach_the_maps() {
    if !require_root("add_update_delete_reach_the_maps") {
        return;
    }
    let env = Env::new("aud", |_| {}, true);
    assert_eq!(env.frontends().unwrap(), BTreeSet::new());
    let api = &env.api;

    api.put(Kind::Service, service("default", "web", "10.96.0.10"));
    env.wait_frontends("Service added", &["10.96.0.10:80"]);
    assert_eq!(env.active("10.96.0.10:80").unwrap(), BTreeSet::new(), "no endpoints yet");

    api.put(Kind::EndpointSlice, slice("default", "web-1", "web", &["10.244.1.11"]));
    env.wait_active("EndpointSlice added", "10.96.0.10:80", &["10.244.1.11:8080"]);

    api.put(Kind::EndpointSlice, slice("default", "web-1", "web", &["10.244.1.11", "10.244.1.12"]));
    env.wait_active("endpoint added", "10.96.0.10:80", &["10.244.1.11:8080", "10.244.1.12:8080"]);

    api.put(Kind::EndpointSlice, slice("default", "web-1", "web", &["10.244.1.12"]));
    env.wait_active("endpoint removed", "10.96.0.10:80", &["10.244.1.12:8080"]);
    env.wait_backends("endpoint removed", &["10.244.1.12:8080"]);

    api.put(Kind::EndpointSlice, slice("default", "web-2", "web", &["10.244.2.21"]));
    env.wait_active("second slice", "10.96.0.10:80", &["10.244.1.12:8080", "10.244.2.21:8080"]);

    let mut moved = service("default", "web", "10.96.0.10");
    moved["spec"]["ports"][0]["port"] = json!(8081);
    api.put(Kind::Service, moved);
    env.wait_frontends("ClusterIP port changed", &["10.96.0.10:8081"]);
    env.wait_active("ClusterIP port changed", "10.96.0.10:8081", &["10.244.1.12:8080", "10.244.2.21:8080"]);

    api.delete(Kind::EndpointSlice, "default/web-2");
    env.wait_active("EndpointSlice deleted", "10.96.0.10:8081", &["10.244.1.12:8080"]);
    env.wait_backends("EndpointSlice deleted", &["10.244.1.12:8080"]);

    api.delete(Kind::Service, "default/web");
    env.wait_frontends("Service deleted", &[]);
    env.wait_backends("Service deleted", &[]);

    // The Service comes back at another ClusterIP, its remaining slice with it.
    api.put(Kind::Service, service("default", "web", "10.96.0.20"));
    env.wait_active("Service re-created", "10.96.0.20:80", &["10.244.1.12:8080"]);
    env.wait_frontends("Service re-created", &["10.96.0.20:80"]);
    api.delete(Kind::EndpointSlice, "default/web-1");
    env.wait_active("last EndpointSlice deleted", "10.96.0.20:80", &[]);
    env.wait_backends("last EndpointSlice deleted", &[]);
}

/// 410 Gone: objects deleted (and others changed) while the watches were disconnected, with the
/// events compacted away, are reconciled by the relist: the deleted ones leave the maps.
#[test]
fn relist_after_gone_removes_objects_deleted_while_disconnected() {
    if !require_root("relist_after_gone_removes_objects_deleted_while_disconnected") {
        return;
    }
    let env = Env::new(
        "relist",
        |api| {
            api.put(Kind::Service, service("default", "keep", "10.96.0.10"));
            api.put(Kind::Service, service("default", "gone", "10.96.0.11"));
            api.put(Kind::EndpointSlice, slice("default", "keep-1", "keep", &["10.244.1.1"]));
            api.put(Kind::EndpointSlice, slice("default", "gone-1", "gone", &["10.244.1.2"]));
        },
        true,
    );
    let api = &env.api;
    env.wait_active("initial state", "10.96.0.10:80", &["10.244.1.1:8080"]);
    env.wait_active("initial state", "10.96.0.11:80", &["10.244.1.2:8080"]);
    env.wait("both watches", || {
        let s = api.stats();
        (count(&s.watches_started, Kind::Service) >= 1 && count(&s.watches_started, Kind::EndpointSlice) >= 1).then_some(())
    });
    let before = api.stats();

    // Disconnect, change things while nobody watches, and forget the events.
    api.pause_watches();
    api.drop_watches(false);
    api.delete(Kind::Service, "default/gone");
    api.delete(Kind::EndpointSlice, "default/gone-1");
    api.put(Kind::Service, service("default", "new", "10.96.0.12"));
    api.put(Kind::EndpointSlice, slice("default", "new-1", "new", &["10.244.1.3"]));
    api.put(Kind::EndpointSlice, slice("default", "keep-1", "keep", &["10.244.1.1", "10.244.1.9"]));
    api.compact();
    env.wait("the reconnection attempts", || {
        let s = api.stats();
        (count(&s.watches_requested, Kind::Service) > count(&before.watches_requested, Kind::Service)
            && count(&s.watches_requested, Kind::EndpointSlice) > count(&before.watches_requested, Kind::EndpointSlice))
        .then_some(())
    });
    assert_eq!(env.frontends().unwrap(), set(&["10.96.0.10:80", "10.96.0.11:80"]), "a change leaked before the relist");
    api.resume_watches();

    env.wait_frontends("the relisted state", &["10.96.0.10:80", "10.96.0.12:80"]);
    env.wait_active("the relisted state", "10.96.0.10:80", &["10.244.1.1:8080", "10.244.1.9:8080"]);
    env.wait_active("the relisted state", "10.96.0.12:80", &["10.244.1.3:8080"]);
    env.wait_backends("the relisted state", &["10.244.1.1:8080", "10.244.1.9:8080", "10.244.1.3:8080"]);
    let after = api.stats();
    for kind in [Kind::Service, Kind::EndpointSlice] {
        assert!(count(&after.gone, kind) >= 1, "{kind:?}: no 410: {after:?}");
        assert!(count(&after.lists_served, kind) > count(&before.lists_served, kind), "{kind:?}: no relist: {after:?}");
    }

    // The watches go on after the relist.
    api.delete(Kind::Service, "default/new");
    env.wait_frontends("a deletion after the relist", &["10.96.0.10:80"]);
}

/// A malformed Service (in the initial list, then through the watch) is skipped and named in the
/// agent's log; the others are programmed.
#[test]
fn malformed_service_is_skipped() {
    if !require_root("malformed_service_is_skipped") {
        return;
    }
    let env = Env::new(
        "malformed",
        |api| {
            let mut bad = service("default", "bad", "10.96.0.66");
            bad["spec"]["ports"] = json!("80");
            api.put(Kind::Service, bad);
            api.put(Kind::Service, service("default", "good", "10.96.0.10"));
            api.put(Kind::EndpointSlice, slice("default", "bad-1", "bad", &["10.244.1.66"]));
            api.put(Kind::EndpointSlice, slice("default", "good-1", "good", &["10.244.1.1"]));
        },
        true,
    );
    env.wait_active("the good Service", "10.96.0.10:80", &["10.244.1.1:8080"]);
    env.wait_frontends("the good Service only", &["10.96.0.10:80"]);
    env.wait_backends("the good Service's backend only", &["10.244.1.1:8080"]);
    let log = env.agent.log();
    assert!(log.lines().any(|l| l.contains("malformed") && l.contains("default/bad")), "default/bad not named:\n{log}");

    // Through the watch.
    let mut bad2 = service("default", "bad-2", "10.96.0.67");
    bad2["spec"]["ports"] = json!([{"port": "eighty", "protocol": "TCP"}]);
    env.api.put(Kind::Service, bad2);
    env.api.put(Kind::Service, service("default", "good-2", "10.96.0.11"));
    env.wait_frontends("good-2 next to a malformed bad-2", &["10.96.0.10:80", "10.96.0.11:80"]);
    env.wait("the agent naming default/bad-2", || {
        env.agent.log().lines().any(|l| l.contains("malformed") && l.contains("default/bad-2")).then_some(())
    });
    env.wait_active("good unaffected", "10.96.0.10:80", &["10.244.1.1:8080"]);
}

/// A1: a Service labelled service.kubernetes.io/service-proxy-name (and a slice so labelled) never
/// reaches the maps; labelling a programmed Service removes it.
#[test]
fn service_proxy_name_label_keeps_a_service_out() {
    if !require_root("service_proxy_name_label_keeps_a_service_out") {
        return;
    }
    let env = Env::new(
        "label",
        |api| {
            api.put(Kind::Service, service("default", "visible", "10.96.0.10"));
            api.put(Kind::EndpointSlice, slice("default", "visible-1", "visible", &["10.244.1.1"]));
            // A slice of the visible Service, but owned by another proxy: ignored.
            api.put(
                Kind::EndpointSlice,
                with_label(slice("default", "visible-x", "visible", &["10.244.1.99"]), PROXY_NAME, "other"),
            );
            api.put(Kind::Service, with_label(service("default", "other", "10.96.0.11"), PROXY_NAME, "other"));
            api.put(Kind::EndpointSlice, slice("default", "other-1", "other", &["10.244.1.2"]));
        },
        true,
    );
    let api = &env.api;
    env.wait_active("the visible Service", "10.96.0.10:80", &["10.244.1.1:8080"]);
    env.wait_frontends("the visible Service only", &["10.96.0.10:80"]);
    env.wait_backends("the visible Service's backend only", &["10.244.1.1:8080"]);

    // Through the watch: the labelled Service is written first, so once the later one is
    // programmed the labelled one would have been too.
    api.put(Kind::Service, with_label(service("default", "other-2", "10.96.0.12"), PROXY_NAME, ""));
    api.put(Kind::EndpointSlice, slice("default", "other-2-1", "other-2", &["10.244.1.3"]));
    api.put(Kind::Service, service("default", "visible-2", "10.96.0.13"));
    api.put(Kind::EndpointSlice, slice("default", "visible-2-1", "visible-2", &["10.244.1.4"]));
    env.wait_active("visible-2", "10.96.0.13:80", &["10.244.1.4:8080"]);
    assert_eq!(env.frontends().unwrap(), set(&["10.96.0.10:80", "10.96.0.13:80"]));
    assert_eq!(env.backends().unwrap(), set(&["10.244.1.1:8080", "10.244.1.4:8080"]));

    // Labelling a programmed Service takes it out of the maps (the watch reports a DELETED).
    api.put(Kind::Service, with_label(service("default", "visible-2", "10.96.0.13"), PROXY_NAME, "other"));
    env.wait_frontends("visible-2 labelled", &["10.96.0.10:80"]);
    env.wait_backends("visible-2 labelled", &["10.244.1.1:8080"]);
    assert_eq!(env.active("10.96.0.10:80").unwrap(), set(&["10.244.1.1:8080"]));
}
