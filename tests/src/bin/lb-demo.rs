//! `lb-demo` (run by `cargo xtask demo` after set-up and build): a real topology, the real
//! agent, real connections through a ClusterIP. It lives in the tests crate (next to the
//! topology helpers it uses) so that xtask itself builds before the eBPF toolchain exists.
//!
//! node namespace (lb-agent, tc programs on the pods' host-side veths)
//!   ├─ client    10.244.1.10
//!   ├─ backend-a 10.244.1.11  (TCP 8080 and UDP 5353 echo servers answering "backend-a")
//!   ├─ backend-b 10.244.1.12
//!   └─ backend-c 10.244.1.13
//! Service demo/echo: ClusterIP 10.96.0.10, TCP 80 → 8080, UDP 53 → 5353.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use lb_tests::{
    agent::Agent,
    client::{count_by_name, tcp_hello, udp_hello},
    topo::{PodSpec, Topology},
    wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CONNECTIONS: usize = 300;
const BACKENDS: [(&str, Ipv4Addr); 3] = [
    ("backend-a", Ipv4Addr::new(10, 244, 1, 11)),
    ("backend-b", Ipv4Addr::new(10, 244, 1, 12)),
    ("backend-c", Ipv4Addr::new(10, 244, 1, 13)),
];

fn title(s: &str) {
    println!("\n== {s}");
}

fn show(label: &str, results: &[Result<String>]) -> BTreeMap<String, usize> {
    let (counts, errors) = count_by_name(results);
    println!("{label}: {} ok, {errors} failed", results.len() - errors);
    for (name, n) in &counts {
        let share = *n as f64 * 100.0 / results.len() as f64;
        println!("  {name:<10} {n:>4}  {share:5.1}%  {}", "#".repeat((share / 2.0).round() as usize));
    }
    counts
}

fn check_balanced(counts: &BTreeMap<String, usize>, names: &[&str], total: usize) -> Result<()> {
    for name in names {
        let n = counts.get(*name).copied().unwrap_or(0);
        ensure!(n * 100 >= total * 15, "{name} got {n}/{total} connections (< 15%)");
    }
    Ok(())
}

fn main() {
    let bin = lb_tests::agent::bin_dir();
    std::env::set_var("LB_BIN_DIR", &bin);
    std::env::set_var("LB_ECHO_BIN", bin.join("lb-echo"));
    let result = tempdir().and_then(|manifests| {
        let r = demo(&manifests);
        let _ = std::fs::remove_dir_all(&manifests);
        r
    });
    match &result {
        Ok(()) => println!("\ndemo: every step worked"),
        Err(e) => {
            println!("\ndemo FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn demo(manifests: &Path) -> Result<()> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/manifests");
    for f in ["echo-service.yaml", "echo-endpoints.yaml"] {
        std::fs::copy(src.join(f), manifests.join(f)).with_context(|| format!("copying {f}"))?;
    }

    title("topology: a node namespace with a client pod and three backend pods (routed veths)");
    let mut pods = vec![PodSpec { name: "client".into(), ip: Ipv4Addr::new(10, 244, 1, 10) }];
    pods.extend(BACKENDS.iter().map(|(n, ip)| PodSpec { name: n.to_string(), ip: *ip }));
    let mut topo = Topology::create("demo", &pods)?;
    for (name, _) in BACKENDS {
        topo.spawn_echo(name, name, 8080, 5353)?;
        println!("  {name}: TCP 8080 and UDP 5353 echo servers");
    }
    let client_ns = topo.pod("client").netns.clone();

    title("lb-agent: programming the datapath from Kubernetes YAML");
    let bpffs = Path::new("/sys/fs/bpf/lb-demo");
    let mut agent = Agent::start(&topo.node_netns, manifests, &topo.host_if_pattern(), bpffs, &[])?;
    let frontend = format!("{VIP}:80");
    let udp_frontend = format!("{VIP}:53");
    wait::until("3 backends programmed", Duration::from_secs(20), || {
        let tcp = agent.active_backends(&frontend).ok()?;
        let udp = agent.active_backends(&udp_frontend).ok()?;
        (tcp.len() == 3 && udp.len() == 3).then_some(())
    })?;
    print_cmd_output(bin_lbctl(&agent, &["services"]))?;

    title(&format!("{CONNECTIONS} TCP connections to {VIP}:80"));
    let tcp = tcp_hello(&client_ns, SocketAddrV4::new(VIP, 80), CONNECTIONS, Duration::from_secs(3));
    let counts = show("TCP", &tcp);
    check_balanced(&counts, &["backend-a", "backend-b", "backend-c"], CONNECTIONS)?;

    title(&format!("{CONNECTIONS} UDP flows to {VIP}:53 (connected sockets: replies come from the VIP)"));
    let udp = udp_hello(&client_ns, SocketAddrV4::new(VIP, 53), CONNECTIONS, Duration::from_secs(3));
    let counts = show("UDP", &udp);
    check_balanced(&counts, &["backend-a", "backend-b", "backend-c"], CONNECTIONS)?;

    title("editing the EndpointSlice: backend-c leaves");
    let slice = std::fs::read_to_string(manifests.join("echo-endpoints.yaml"))?;
    let cut = slice.find("  - addresses: [10.244.1.13]").context("backend-c entry in the demo slice")?;
    let tmp = manifests.join(".echo-endpoints.yaml.tmp");
    std::fs::write(&tmp, &slice[..cut])?;
    std::fs::rename(&tmp, manifests.join("echo-endpoints.yaml"))?;
    wait::until("backend-c removed from both Maglev tables", Duration::from_secs(20), || {
        let tcp = agent.active_backends(&frontend).ok()?;
        let udp = agent.active_backends(&udp_frontend).ok()?;
        (tcp.len() == 2 && !tcp.contains_key("10.244.1.13:8080") && udp.len() == 2).then_some(())
    })?;
    print_cmd_output(bin_lbctl(&agent, &["services"]))?;

    title(&format!("{CONNECTIONS} new TCP connections after the change"));
    let tcp = tcp_hello(&client_ns, SocketAddrV4::new(VIP, 80), CONNECTIONS, Duration::from_secs(3));
    let counts = show("TCP", &tcp);
    ensure!(!counts.contains_key("backend-c"), "backend-c still received connections");
    ensure!(count_by_name(&tcp).1 == 0, "connections failed after the change");
    check_balanced(&counts, &["backend-a", "backend-b"], CONNECTIONS)?;

    title("datapath counters (lbctl stats)");
    print_cmd_output(bin_lbctl(&agent, &["stats"]))?;

    title("cleanup: SIGTERM to the agent, namespaces removed");
    let status = agent.stop()?;
    if !status.success() {
        bail!("lb-agent exited with {status}");
    }
    ensure!(!bpffs.exists(), "the agent left {} behind", bpffs.display());
    drop(topo);
    println!("  agent exited cleanly, pins removed, namespaces deleted");
    Ok(())
}

fn bin_lbctl(agent: &Agent, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(lb_tests::agent::bin_dir().join("lbctl"));
    c.arg("--bpffs").arg(&agent.bpffs).args(args);
    c
}

fn print_cmd_output(mut cmd: std::process::Command) -> Result<()> {
    let out = cmd.output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
