//! End-to-end: network namespaces, the real lb-agent binary, real TCP/UDP sockets through a
//! ClusterIP. Each test builds its own topology (unique tag) and agent (own bpffs dir).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    agent::Agent,
    client::{count_by_name, http_get, tcp_hello, udp_hello, HeldTcp, UdpFlow},
    privileges::require_root,
    topo::{PodSpec, Topology},
    wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(3);

/// (pod name, ready, serving, terminating)
type Ep<'a> = (&'a str, bool, bool, bool);

struct Env {
    topo: Topology,
    agent: Agent,
    dir: PathBuf,
}

fn ip_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 11 + i as u8)
}

const NAMES: [&str; 4] = ["backend-a", "backend-b", "backend-c", "backend-d"];

fn write_manifests(dir: &Path, eps: &[Ep]) {
    let svc = r#"apiVersion: v1
kind: Service
metadata: {namespace: e2e, name: echo}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 53, targetPort: 5353, protocol: UDP}
"#;
    let mut slice = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  namespace: e2e\n  name: echo-1\n  labels: {kubernetes.io/service-name: echo}\naddressType: IPv4\nports:\n- {name: tcp, port: 8080, protocol: TCP}\n- {name: udp, port: 5353, protocol: UDP}\nendpoints:\n",
    );
    for (name, ready, serving, terminating) in eps {
        let i = NAMES.iter().position(|n| n == name).expect("known backend");
        slice.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n  nodeName: node1\n",
            ip_of(i)
        ));
    }
    std::fs::write(dir.join("svc.yaml"), svc).unwrap();
    // Replace by rename, as editors and kubectl-style tools do.
    let tmp = dir.join(".slice.yaml.tmp");
    std::fs::write(&tmp, slice).unwrap();
    std::fs::rename(&tmp, dir.join("slice.yaml")).unwrap();
}

fn ready(name: &str) -> Ep<'_> {
    (name, true, true, false)
}

impl Env {
    fn new(tag: &str, backends: usize, eps: &[Ep]) -> Env {
        let mut pods = vec![PodSpec { name: "client".into(), ip: Ipv4Addr::new(10, 244, 1, 10) }];
        pods.extend((0..backends).map(|i| PodSpec { name: NAMES[i].into(), ip: ip_of(i) }));
        let mut topo = Topology::create(tag, &pods).expect("topology");
        for name in &NAMES[..backends] {
            topo.spawn_echo(name, name, 8080, 5353).expect("echo server");
        }
        let dir = std::env::temp_dir().join(format!("lb-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_manifests(&dir, eps);
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/lb-e2e-{tag}"));
        let agent = Agent::start(&topo.node_netns, &dir, &topo.host_if_pattern(), &bpffs, &[]).expect("agent");
        let env = Env { topo, agent, dir };
        env.wait_active(&eps.iter().filter(|e| e.1).map(|e| e.0).collect::<Vec<_>>());
        // Fail fast (with the agent's log) if the datapath does not answer at all, rather than
        // through hundreds of connection timeouts.
        wait::until("a first connection through the ClusterIP", Duration::from_secs(15), || {
            tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 1, Duration::from_millis(500)).pop()?.ok()
        })
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", env.agent.log()));
        env
    }

    fn client(&self) -> String {
        self.topo.pod("client").netns.clone()
    }

    /// Waits until the TCP frontend's Maglev table holds exactly these backends.
    fn wait_active(&self, names: &[&str]) {
        let want: BTreeSet<String> =
            names.iter().map(|n| format!("{}:8080", ip_of(NAMES.iter().position(|x| x == n).unwrap()))).collect();
        wait::until(&format!("Maglev table = {names:?}"), Duration::from_secs(20), || {
            let got: BTreeSet<String> = self.agent.active_backends("10.96.0.10:80").ok()?.into_keys().collect();
            (got == want).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", self.agent.log()));
    }

    fn set_endpoints(&self, eps: &[Ep]) {
        write_manifests(&self.dir, eps);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_balanced(label: &str, results: &[anyhow::Result<String>], names: &[&str]) {
    let (counts, errors) = count_by_name(results);
    println!("{label}: {counts:?}, {errors} errors");
    assert_eq!(errors, 0, "{label}: failures: {:?}", results.iter().filter_map(|r| r.as_ref().err()).take(3).collect::<Vec<_>>());
    for n in names {
        let c = counts.get(*n).copied().unwrap_or(0);
        assert!(c * 100 >= results.len() * 15, "{label}: {n} got {c}/{} (< 15%): {counts:?}", results.len());
    }
}

#[test]
fn tcp_and_udp_through_clusterip_reach_all_backends() {
    if !require_root("tcp_and_udp_through_clusterip_reach_all_backends") {
        return;
    }
    let env = Env::new("e1", 3, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let before = env.agent.stats().unwrap();
    let tcp = tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 300, T);
    assert_balanced("TCP", &tcp, &NAMES[..3]);
    // Connected UDP sockets only accept replies from the VIP: every answer proves reverse NAT.
    let udp = udp_hello(&env.client(), SocketAddrV4::new(VIP, 53), 300, T);
    assert_balanced("UDP", &udp, &NAMES[..3]);
    let stats = env.agent.stats().unwrap();
    let delta = |c: &str| stats[c] - before[c];
    // 600 flows; the kernel may hand a client the same ephemeral port twice, and such a flow
    // rightly hits its conntrack entry instead of counting as new.
    assert!((570..=600).contains(&delta("new_flows")), "{before:?} -> {stats:?}");
    assert!(delta("reply_packets") >= 600, "{before:?} -> {stats:?}");
    assert_eq!(stats["drop_rewrite_failed"], 0);

    // lbctl sees both directions of tracked flows and every backend.
    let ct = env.agent.lbctl_json(&["conntrack"]).unwrap();
    let dirs: BTreeSet<&str> = ct.as_array().unwrap().iter().filter_map(|e| e["direction"].as_str()).collect();
    assert_eq!(dirs, BTreeSet::from(["forward", "reply"]));
    let backends = env.agent.lbctl_json(&["backends"]).unwrap();
    assert_eq!(backends.as_array().unwrap().len(), 6, "3 endpoints x 2 service ports");

    // A malformed Service next to the good one: reported with its name, nothing else lost.
    std::fs::write(
        env.dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: e2e, name: broken}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    wait::until("the broken Service reported", Duration::from_secs(10), || env.agent.log().contains("e2e/broken").then_some(()))
        .unwrap();
    let tcp = tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 30, T);
    assert_eq!(count_by_name(&tcp).1, 0, "the good Service still works");
    env.wait_active(&NAMES[..3]);
}

#[test]
fn established_tcp_keeps_its_backend_when_the_slice_gains_one() {
    if !require_root("established_tcp_keeps_its_backend_when_the_slice_gains_one") {
        return;
    }
    let env = Env::new("e2", 4, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let mut held = HeldTcp::open(&env.client(), SocketAddrV4::new(VIP, 80), 30, T).expect("30 connections");
    let before = held.names();
    env.set_endpoints(&[ready("backend-a"), ready("backend-b"), ready("backend-c"), ready("backend-d")]);
    env.wait_active(&NAMES);
    let after: Vec<String> = held.ping(T).into_iter().map(|r| r.expect("established connection still answers")).collect();
    assert_eq!(before, after, "every established connection kept its backend");
    // New connections do reach the new backend.
    let tcp = tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 200, T);
    assert_balanced("TCP after join", &tcp, &NAMES);
}

#[test]
fn removed_backend_gets_no_new_connections_and_udp_flows_move() {
    if !require_root("removed_backend_gets_no_new_connections_and_udp_flows_move") {
        return;
    }
    let env = Env::new("e3", 3, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let client = env.client();
    let flows: Vec<UdpFlow> = (0..30).map(|_| UdpFlow::open(&client, SocketAddrV4::new(VIP, 53)).unwrap()).collect();
    let first: Vec<String> = flows.iter().map(|f| f.send_recv(T).unwrap()).collect();
    assert!(first.iter().any(|n| n == "backend-c"), "some UDP flow on backend-c: {first:?}");

    env.set_endpoints(&[ready("backend-a"), ready("backend-b")]);
    env.wait_active(&NAMES[..2]);
    let tcp = tcp_hello(&client, SocketAddrV4::new(VIP, 80), 200, T);
    let (counts, errors) = count_by_name(&tcp);
    assert_eq!(errors, 0);
    assert!(!counts.contains_key("backend-c"), "{counts:?}");
    for (flow, was) in flows.iter().zip(&first) {
        let now = flow.send_recv(T).expect("UDP flow answered after the backend left");
        assert_ne!(now, "backend-c");
        if was != "backend-c" {
            assert_eq!(&now, was, "flows on live backends stay");
        }
    }
}

#[test]
fn terminating_serving_backend_keeps_established_connections_but_gets_no_new_ones() {
    if !require_root("terminating_serving_backend_keeps_established_connections_but_gets_no_new_ones") {
        return;
    }
    let env = Env::new("e4", 3, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let mut held = HeldTcp::open(&env.client(), SocketAddrV4::new(VIP, 80), 30, T).expect("30 connections");
    let before = held.names();
    assert!(before.iter().any(|n| n == "backend-c"));
    env.set_endpoints(&[ready("backend-a"), ready("backend-b"), ("backend-c", false, true, true)]);
    env.wait_active(&NAMES[..2]);
    let after: Vec<String> = held.ping(T).into_iter().map(|r| r.expect("connection alive")).collect();
    assert_eq!(before, after);
    let tcp = tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 200, T);
    let (counts, errors) = count_by_name(&tcp);
    assert_eq!(errors, 0);
    assert!(!counts.contains_key("backend-c"), "new connection to a terminating backend: {counts:?}");
}

#[test]
fn agent_attaches_interfaces_that_appear_later_and_cleans_up_on_sigterm() {
    if !require_root("agent_attaches_interfaces_that_appear_later_and_cleans_up_on_sigterm") {
        return;
    }
    let mut env = Env::new("e5", 1, &[ready("backend-a")]);
    // A pod created after the agent started: its host-side veth must get the program.
    env.topo.add_pod(&PodSpec { name: "late".into(), ip: Ipv4Addr::new(10, 244, 1, 30) }).unwrap();
    let late = env.topo.pod("late").netns.clone();
    let results = wait::until("late pod reaches the ClusterIP", Duration::from_secs(15), || {
        let r = tcp_hello(&late, SocketAddrV4::new(VIP, 80), 5, Duration::from_millis(500));
        r.iter().all(|x| x.is_ok()).then_some(r)
    })
    .unwrap();
    assert_eq!(count_by_name(&results).0.get("backend-a"), Some(&5));
    let bpffs = env.agent.bpffs.clone();
    let status = env.agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}");
    assert!(!bpffs.exists(), "pins removed on SIGTERM");
    // Detached: the ClusterIP no longer answers from the pod.
    // The kernel releases an unpinned link from a workqueue: detachment follows shortly.
    wait::until("the ClusterIP stops answering after the agent left", Duration::from_secs(10), || {
        tcp_hello(&late, SocketAddrV4::new(VIP, 80), 1, Duration::from_millis(500)).pop()?.is_err().then_some(())
    })
    .unwrap();
}

#[test]
fn health_and_metrics_endpoints_answer_like_kube_proxy() {
    if !require_root("health_and_metrics_endpoints_answer_like_kube_proxy") {
        return;
    }
    let env = Env::new("e6", 2, &[ready("backend-a"), ready("backend-b")]);
    let tcp = tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 20, T);
    assert_eq!(count_by_name(&tcp).1, 0);
    let node = env.topo.node_netns.clone();
    for path in ["/healthz", "/livez"] {
        let (status, headers, body) = wait::until(&format!("{path} answers"), Duration::from_secs(10), || {
            http_get(&node, "127.0.0.1:10256".parse().unwrap(), path, T).ok()
        })
        .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert!(headers["content-type"].starts_with("application/json"), "{headers:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for field in ["lastUpdated", "currentTime"] {
            assert!(v.get(field).is_some(), "{path} body lacks {field}: {body}");
        }
        // As kube-proxy's proxy_health.go: only /healthz reports node eligibility.
        assert_eq!(v.get("nodeEligible").is_some(), path == "/healthz", "{path}: {body}");
    }
    let (status, _, metrics) = http_get(&node, "127.0.0.1:10249".parse().unwrap(), "/metrics", T).unwrap();
    assert_eq!(status, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "lb_datapath_new_flows_total",
        "lb_map_entries",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    // The datapath counters are live: 20 new flows were just made.
    let new_flows: f64 = metrics
        .lines()
        .find(|l| l.starts_with("lb_datapath_new_flows_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(new_flows >= 20.0, "{new_flows}");
}

#[test]
fn agent_restart_under_load_drops_nothing_and_keeps_ids() {
    if !require_root("agent_restart_under_load_drops_nothing_and_keeps_ids") {
        return;
    }
    let mut env = Env::new("e7", 4, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let client = env.client();
    let ids_before = env.agent.lbctl_json(&["services"]).unwrap();
    let backend_ids = |env: &Env| -> BTreeSet<(u64, String)> {
        let rows = env.agent.lbctl_json(&["backends"]).unwrap();
        rows.as_array().unwrap().iter().map(|b| (b["id"].as_u64().unwrap(), b["address"].as_str().unwrap().to_string())).collect()
    };
    let backends_before = backend_ids(&env);
    let mut held = HeldTcp::open(&client, SocketAddrV4::new(VIP, 80), 30, T).unwrap();
    let names_before = held.names();
    // The held connections' conntrack entries (forward direction, to the ClusterIP's TCP port).
    let held_flows = |env: &Env| -> BTreeSet<String> {
        let rows = env.agent.lbctl_json(&["conntrack"]).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["direction"] == "forward" && e["destination"] == "10.96.0.10:80")
            .map(|e| format!("{} b{}", e["source"].as_str().unwrap(), e["backend_id"]))
            .collect()
    };
    let ct_before = held_flows(&env);
    assert!(ct_before.len() >= 30, "{ct_before:?}");
    let flows: Vec<UdpFlow> = (0..10).map(|_| UdpFlow::open(&client, SocketAddrV4::new(VIP, 53)).unwrap()).collect();
    let udp_before: Vec<String> = flows.iter().map(|f| f.send_recv(T).unwrap()).collect();

    let load = Load::start(&client, flows, udp_before);
    // The agent dies without cleaning anything: the datapath keeps serving on its own.
    let bpffs = env.agent.bpffs.clone();
    env.agent.kill9().unwrap();
    load.wait_for_more("traffic served while no agent runs", 20);
    // A new agent adopts the pinned maps and links, then applies a change.
    env.agent = lb_tests::agent::Agent::start(&env.topo.node_netns, &env.dir, &env.topo.host_if_pattern(), &bpffs, &[]).unwrap();
    assert!(env.agent.log().contains("adopted=2 service ports, 6 backends, 2 Maglev tables"), "{}", env.agent.log());
    env.set_endpoints(&[ready("backend-a"), ready("backend-b"), ready("backend-c"), ready("backend-d")]);
    env.wait_active(&NAMES);
    load.wait_for_more("traffic after the change", 20);
    let served = load.finish();
    println!("restart under load: {served} requests served, 0 failed");

    // Established connections kept their backends; service-port ids did not change.
    let after: Vec<String> = held.ping(T).into_iter().map(|r| r.expect("established connection survived")).collect();
    assert_eq!(after, names_before);
    let ids = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v.as_array().unwrap().iter().map(|s| (s["frontend"].as_str().unwrap().to_string(), s["id"].as_u64().unwrap())).collect()
    };
    assert_eq!(ids(&env.agent.lbctl_json(&["services"]).unwrap()), ids(&ids_before));
    let backends_after = backend_ids(&env);
    assert!(backends_before.is_subset(&backends_after), "backend ids kept: {backends_before:?} vs {backends_after:?}");
    let ct_after = held_flows(&env);
    let lost: Vec<&String> = ct_before.iter().filter(|f| !ct_after.contains(*f)).collect();
    assert!(lost.is_empty(), "conntrack entries lost across the restart: {lost:?}");
    let log = env.agent.log();
    assert!(log.contains("took over the pinned link"), "{log}");
}

#[test]
fn keep_datapath_leaves_traffic_flowing_and_cleanup_removes_it() {
    if !require_root("keep_datapath_leaves_traffic_flowing_and_cleanup_removes_it") {
        return;
    }
    let mut env = Env::new("e8", 1, &[ready("backend-a")]);
    let bpffs = env.agent.bpffs.clone();
    // Restart the agent with --keep-datapath, then SIGTERM it.
    env.agent.kill9().unwrap();
    env.agent =
        lb_tests::agent::Agent::start(&env.topo.node_netns, &env.dir, &env.topo.host_if_pattern(), &bpffs, &["--keep-datapath"])
            .unwrap();
    let status = env.agent.stop().unwrap();
    assert!(status.success());
    // Two pod-facing interfaces × (ingress, egress) + lo's egress.
    let layout = format!("v{}/LB_SERVICES", lb_common::MAP_LAYOUT_VERSION);
    assert!(bpffs.join(layout).exists() && bpffs.join("links").read_dir().unwrap().count() == 5);
    let r = tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 10, T);
    assert_eq!(count_by_name(&r).0.get("backend-a"), Some(&10), "traffic flows with no agent: {r:?}");

    // The agents let the pod interfaces accept node-address sources (fallback paths).
    let host_if = env.topo.pods[0].host_if.clone();
    let accept_local = || {
        lb_tests::netns::run(
            "ip",
            &["netns", "exec", &env.topo.node_netns, "cat", &format!("/proc/sys/net/ipv4/conf/{host_if}/accept_local")],
        )
        .unwrap()
        .trim()
        .to_string()
    };
    assert_eq!(accept_local(), "1");

    // --cleanup (in the node's namespace) removes everything and restores the sysctls: the
    // ClusterIP stops answering.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.topo.node_netns))
        .arg(lb_tests::agent::bin_dir().join("lb-agent"))
        .arg("--cleanup")
        .arg("--bpffs")
        .arg(&bpffs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!bpffs.exists());
    assert_eq!(accept_local(), "0", "accept_local restored by --cleanup");
    // The kernel releases an unpinned link from a workqueue: detachment follows shortly.
    wait::until("the ClusterIP stops answering after --cleanup", Duration::from_secs(10), || {
        tcp_hello(&env.client(), SocketAddrV4::new(VIP, 80), 1, Duration::from_millis(500)).pop()?.is_err().then_some(())
    })
    .unwrap();
}

/// Continuous load through the ClusterIP on a thread: new TCP connections, and datagrams on
/// established UDP flows that must keep their backend.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(client: &str, flows: Vec<UdpFlow>, udp_before: Vec<String>) -> Load {
        use std::sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            Arc,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let handle = {
            let (stop, ok, client) = (stop.clone(), ok.clone(), client.to_string());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for r in tcp_hello(&client, SocketAddrV4::new(VIP, 80), 5, T) {
                        match r {
                            Ok(_) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                            Err(e) => errors.push(format!("TCP: {e:#}")),
                        }
                    }
                    for (f, was) in flows.iter().zip(&udp_before) {
                        match f.send_recv(T) {
                            Ok(n) if &n == was => drop(ok.fetch_add(1, Ordering::Relaxed)),
                            other => errors.push(format!("UDP flow: {other:?} (was {was})")),
                        }
                    }
                }
                errors
            })
        };
        Load { stop, ok, handle }
    }

    /// Waits until `n` more requests succeeded.
    fn wait_for_more(&self, what: &str, n: usize) {
        let from = self.ok.load(std::sync::atomic::Ordering::Relaxed);
        wait::until(what, Duration::from_secs(10), || {
            (self.ok.load(std::sync::atomic::Ordering::Relaxed) >= from + n).then_some(())
        })
        .unwrap();
    }

    /// Stops the load; panics on any failure; returns the requests served.
    fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let errors = self.handle.join().unwrap();
        assert!(errors.is_empty(), "{} failures, e.g. {:?}", errors.len(), &errors[..errors.len().min(3)]);
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Builds the `variant-b` datapath (a program that differs from the default in one constant)
/// exactly as aya-build builds the default one.
fn build_variant_object() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = root.join("target/ebpf-variant-b");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = format!("{home}/.local/share/lb-ebpf-toolchain/bin:{}", std::env::var("PATH").unwrap_or_default());
    let rustflags = format!("--cfg=bpf_target_arch=\"{}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf", std::env::consts::ARCH);
    let out = std::process::Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "-p", "lb-ebpf", "--bins", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--features", "variant-b", "--target-dir"])
        .arg(&target)
        .current_dir(&root)
        .env("PATH", path)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running cargo for the variant datapath");
    assert!(out.status.success(), "building the variant: {}", String::from_utf8_lossy(&out.stderr));
    target.join("bpfel-unknown-none/release/lb-ebpf")
}

#[test]
fn upgrade_to_a_changed_program_under_load_drops_nothing() {
    if !require_root("upgrade_to_a_changed_program_under_load_drops_nothing") {
        return;
    }
    let variant = build_variant_object();
    let mut env = Env::new("e9", 3, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let client = env.client();
    // (program name, id, tag) of every attachment.
    let programs = |env: &Env| -> BTreeSet<(String, u64, String)> {
        let rows = env.agent.lbctl_json(&["attachments"]).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["program_name"].as_str().unwrap().to_string(),
                    r["program_id"].as_u64().unwrap(),
                    r["program_tag"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = programs(&env);
    assert_eq!(before.len(), 2, "one pod-ingress and one host-egress program on every interface: {before:?}");
    let mut held = HeldTcp::open(&client, SocketAddrV4::new(VIP, 80), 30, T).unwrap();
    let names_before = held.names();
    let flows: Vec<UdpFlow> = (0..10).map(|_| UdpFlow::open(&client, SocketAddrV4::new(VIP, 53)).unwrap()).collect();
    let udp_before: Vec<String> = flows.iter().map(|f| f.send_recv(T).unwrap()).collect();
    let load = Load::start(&client, flows, udp_before);

    // The orchestrator replaces the agent; the new one carries a changed datapath.
    let bpffs = env.agent.bpffs.clone();
    env.agent.kill9().unwrap();
    let variant_arg = variant.to_str().unwrap().to_string();
    env.agent = lb_tests::agent::Agent::start(
        &env.topo.node_netns,
        &env.dir,
        &env.topo.host_if_pattern(),
        &bpffs,
        &["--ebpf-object", &variant_arg],
    )
    .unwrap();
    let after = programs(&env);
    assert_eq!(after.len(), 2, "{after:?}");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.0, new.0);
        assert_ne!(old.1, new.1, "a new program instance is attached");
        assert_ne!(old.2, new.2, "the attached program is the changed one (different tag)");
    }
    let (old, new) = ((&before.first().unwrap().2), (&after.first().unwrap().2));
    load.wait_for_more("traffic through the upgraded datapath", 20);
    let served = load.finish();
    println!("upgrade under load: program tag {old} -> {new}, {served} requests served, 0 failed");
    let now: Vec<String> = held.ping(T).into_iter().map(|r| r.expect("established connection survived the upgrade")).collect();
    assert_eq!(now, names_before);
}

/// A map layout upgrade carries the running datapath's connections over: the layout-4
/// agent's conntrack table (today's connections, in a table with one global LRU list, pinned
/// where a layout-4 agent pins it) is copied into the new agent's table before it attaches, so
/// the held connections are tracked (their state, their backend) before any of their packets
/// is seen, keep working, and the old layout's maps are removed. (The layout-4 programs
/// themselves do not run here: the table is what the new agent reads.)
#[test]
fn layout_upgrade_carries_connections_over() {
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::{CtEntry, CtKey};
    if !require_root("layout_upgrade_carries_connections_over") {
        return;
    }
    let mut env = Env::new("e12", 3, &[ready("backend-a"), ready("backend-b"), ready("backend-c")]);
    let client = env.client();
    let mut held = HeldTcp::open(&client, SocketAddrV4::new(VIP, 80), 20, T).unwrap();
    let names = held.names();
    let bpffs = env.agent.bpffs.clone();
    env.agent.kill9().unwrap();

    let current = bpffs.join(format!("v{}", lb_common::MAP_LAYOUT_VERSION)).join("LB_CT");
    let table: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&current).unwrap())).unwrap();
    let entries: Vec<(CtKey, CtEntry)> = table.iter().filter_map(Result::ok).collect();
    assert!(entries.len() >= 40, "both halves of 20 connections: {}", entries.len());
    drop(table);
    // What a layout-4 agent leaves: its table under v4/ (flags 0: one global LRU list), and
    // nothing of ours.
    std::fs::create_dir_all(bpffs.join("v4")).unwrap();
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let value_size = std::mem::size_of::<CtEntry>() as u32;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_LRU_HASH, 16, value_size, 4096, 0);
    let v4 = MapData::create(obj, "LB_CT", None).unwrap();
    v4.pin(bpffs.join("v4/LB_CT")).unwrap();
    let mut v4: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(Map::LruHashMap(v4)).unwrap();
    for (k, e) in &entries {
        v4.insert(k, e, 0).unwrap();
    }
    drop(v4);
    std::fs::remove_file(&current).unwrap();

    env.agent = Agent::start(&env.topo.node_netns, &env.dir, &env.topo.host_if_pattern(), &bpffs, &[]).unwrap();
    assert!(env.agent.log().contains("carried over"), "{}", env.agent.log());
    // Tracked before any packet of theirs: the same entries (the held connections' halves
    // ESTABLISHED; the probes' closed ones as they were).
    let rows = env.agent.lbctl_json(&["conntrack"]).unwrap();
    let rows = rows.as_array().unwrap();
    let carried = rows.iter().filter(|r| r["frontend"] == "10.96.0.10:80").count();
    assert_eq!(carried, entries.len(), "{rows:#?}");
    let established = rows.iter().filter(|r| r["frontend"] == "10.96.0.10:80" && r["state"] == "ESTABLISHED").count();
    assert!(established >= 40, "both halves of the 20 held connections, ESTABLISHED: {rows:#?}");
    assert!(!bpffs.join("v4").exists(), "the old layout's maps are removed");
    let now: Vec<String> = held.ping(T).into_iter().map(|r| r.expect("held connection survives the upgrade")).collect();
    assert_eq!(now, names, "each connection keeps its backend");
}
