//! The netns topology benchmark (`lb-netbench`, run by `lb-bench` at each service count):
//!
//! ```text
//!  gen (lb-pktgen: XDP live frames) ──┐
//!                                     ├── node ── back (sink XDP / TCP server on the endpoints)
//!  cli (TCP clients, 10.189.0.10) ────┘
//! ```
//!
//! Per implementation, on a fresh topology (so no conntrack state, neighbour or TIME_WAIT entry
//! is shared): `floor` (nothing in the node: plain forwarding to an endpoint address), `ours`
//! (the real lb-agent with N services from a manifest file, its tc program on the node's veths),
//! `iptables-nft`, `iptables-legacy`, `nftables` (kube-proxy-shaped rules of
//! [`crate::baseline`] for the same N services, the measured service last in KUBE-SERVICES,
//! svc-0 first). The synthetic services are [`crate::baseline::synthetic`]`(N, E)` for everyone.
//!
//! Figures per implementation:
//! - packets/s through the node: `lb-pktgen` sends 64-byte TCP SYN frames of 1024 flows to the
//!   last service (the floor: straight to one of its endpoints) and `lb_pktgen_sink` counts
//!   what reaches the backend namespace; ns per delivered packet; busy CPU (all CPUs,
//!   /proc/stat) per delivered packet, generation and the sink included;
//! - first packet: the same with every frame a new flow (a SYN from a fresh source port), to the
//!   last service and to the first: ns per packet;
//! - TCP connect latency (p50, p99) to the last service from the client namespace;
//! - connections per second (connect, 1-byte request, 1-byte response, close; client threads);
//! - bulk TCP throughput (iperf3, 1 and 8 streams, client → backend): Gbit/s and busy CPU
//!   seconds (all CPUs, /proc/stat) per GB received;
//! - for `ours`, the agent's VmRSS and VmHWM once it is ready.
//!
//! Everything runs on the same machine: the generator thread is pinned to CPU 0, where the
//! node's softirq processing of its frames also runs (veth delivers on the sending CPU).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    baseline::{self, Backend},
    netns::{in_netns, ip, ip_netns, sysctl_in},
};

/// The implementations, in report order.
pub const IMPLS: [&str; 5] = ["floor", "ours", "iptables-nft", "iptables-legacy", "nftables"];

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 189, 0, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 188, 0, 2);
const GATEWAY: &str = "169.254.1.1";
const ENDPOINT_PORT: u16 = 8080;

#[derive(Clone, Debug)]
pub struct Options {
    pub services: usize,
    pub endpoints: usize,
    pub impls: Vec<String>,
    /// Frames per packets/s run, runs per figure.
    pub pps_frames: u32,
    pub pps_flows: u32,
    pub frame_len: usize,
    /// Frames per first-packet run.
    pub new_flow_frames: u32,
    pub repeats: u32,
    /// Connects timed for the latency figure.
    pub connects: u32,
    /// Seconds per connections/s round, client threads.
    pub rate_secs: f64,
    pub rate_threads: usize,
    /// Seconds per bulk-throughput run (iperf3; 0 skips the figure).
    pub bulk_secs: f64,
    /// Where lb-agent and lb-pktgen are.
    pub bin_dir: PathBuf,
}

/// Median, min, max of samples.
pub fn stat(samples: &mut [f64]) -> Value {
    if samples.is_empty() {
        return json!({"median": 0.0, "min": 0.0, "max": 0.0});
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
    json!({"median": median, "min": samples[0], "max": samples[n - 1]})
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The namespaces of one implementation's measurement, deleted on drop.
pub struct NetTopo {
    pub node: String,
    pub gen: String,
    pub cli: String,
    pub back: String,
    /// Node-side veths: to gen, to cli, to back.
    pub gen_if: String,
    pub cli_if: String,
    pub back_if: String,
    /// Glob of the node-side veths (the agent's --interfaces).
    pub pattern: String,
}

impl NetTopo {
    /// `id` keeps concurrent runs apart (≤ 6 characters).
    pub fn create(id: &str) -> Result<NetTopo> {
        let ns = |r: &str| format!("lbbench-{id}-{r}");
        let t = NetTopo {
            node: ns("node"),
            gen: ns("gen"),
            cli: ns("cli"),
            back: ns("back"),
            gen_if: format!("lbb{id}g"),
            cli_if: format!("lbb{id}c"),
            back_if: format!("lbb{id}b"),
            pattern: format!("lbb{id}*"),
        };
        for n in [&t.node, &t.gen, &t.cli, &t.back] {
            let _ = ip(&["netns", "del", n]);
        }
        // From here on, drop deletes whatever was created.
        for n in [&t.node, &t.gen, &t.cli, &t.back] {
            ip(&["netns", "add", n])?;
            ip_netns(n, &["link", "set", "lo", "up"])?;
        }
        ip_netns(&t.node, &["addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"])?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ] {
            sysctl_in(&t.node, k, v)?;
        }
        for (pod, host_if, addr) in
            [(&t.gen, &t.gen_if, None), (&t.cli, &t.cli_if, Some(CLIENT)), (&t.back, &t.back_if, Some(BACKEND))]
        {
            let _ = sysctl_in(pod, "net.ipv6.conf.all.disable_ipv6", "1");
            let _ = sysctl_in(pod, "net.ipv6.conf.default.disable_ipv6", "1");
            ip(&["link", "add", host_if, "netns", &t.node, "type", "veth", "peer", "name", "eth0", "netns", pod])?;
            ip_netns(pod, &["link", "set", "eth0", "up"])?;
            ip_netns(&t.node, &["link", "set", host_if, "up"])?;
            sysctl_in(&t.node, &format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
            if let Some(a) = addr {
                ip_netns(pod, &["addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
                ip_netns(pod, &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
                ip_netns(pod, &["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
                ip_netns(&t.node, &["route", "add", &format!("{a}/32"), "dev", host_if])?;
            }
        }
        // Every synthetic endpoint (10.128.0.0/13 holds 50 000 × 10) lives behind the backend.
        ip_netns(&t.node, &["route", "add", "10.128.0.0/13", "via", &BACKEND.to_string(), "dev", &t.back_if, "onlink"])?;
        sysctl_in(&t.cli, "net.ipv4.ip_local_port_range", "1024 65000")?;
        sysctl_in(&t.cli, "net.ipv4.tcp_tw_reuse", "1")?;
        sysctl_in(&t.back, "net.core.somaxconn", "4096")?;
        sysctl_in(&t.back, "net.ipv4.tcp_max_syn_backlog", "4096")?;
        Ok(t)
    }
}

impl Drop for NetTopo {
    fn drop(&mut self) {
        for n in [&self.gen, &self.cli, &self.back, &self.node] {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// A TCP server in `netns` on 0.0.0.0:port: answers one byte with one byte, until close.
struct Server {
    netns: String,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(netns: &str, port: u16, threads: usize) -> Result<Server> {
        let listener = in_netns(netns, || TcpListener::bind(("0.0.0.0", port)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let l = listener.try_clone()?;
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut s) = conn else { continue };
                    let _ = s.set_nodelay(true);
                    // A client that vanished without its FIN arriving must not keep this
                    // thread (and the server's shutdown) waiting forever.
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut b = [0u8; 1];
                    while let Ok(1) = s.read(&mut b) {
                        if s.write_all(&b).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Server { netns: netns.to_string(), stop, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), threads: handles })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every accept() (from inside the namespace).
        let (addr, n) = (self.addr, self.threads.len());
        in_netns(&self.netns, || {
            for _ in 0..n {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
            }
        });
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// A directory removed on drop (the agent's manifests, also on an error path).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `services` as Service and EndpointSlice objects (a JSON stream) for lb-agent.
pub fn write_manifests(path: &Path, services: &[baseline::BaselineService]) -> Result<()> {
    let mut out = String::with_capacity(services.len() * 600);
    for s in services {
        let name = s.name.split('/').nth(1).and_then(|r| r.split(':').next()).unwrap_or("svc");
        let ns = s.name.split('/').next().unwrap_or("bench");
        let port_name = s.name.rsplit(':').next().unwrap_or("http");
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"type": "ClusterIP", "clusterIP": s.cluster_ip.to_string(),
                     "ports": [{"name": port_name, "port": s.port, "targetPort": s.endpoints.first().map(|e| e.1).unwrap_or(s.port), "protocol": "TCP"}]}});
        let eps: Vec<Value> = s
            .endpoints
            .iter()
            .map(|(ip, _)| json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node2"}))
            .collect();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": s.endpoints.first().map(|e| e.1).unwrap_or(s.port), "protocol": "TCP"}],
            "endpoints": eps});
        out.push_str(&svc.to_string());
        out.push('\n');
        out.push_str(&slice.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// `VmRSS` and `VmHWM` of a process, KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Pktgen<'a> {
    o: &'a Options,
    t: &'a NetTopo,
}

impl Pktgen<'_> {
    /// Runs lb-pktgen; returns its runs (JSON) and the next frame number.
    fn run(&self, dst: Ipv4Addr, dport: u16, flows: u32, frames: u32, start: u64, drop: bool) -> Result<(Vec<Value>, u64)> {
        let bin = self.o.bin_dir.join("lb-pktgen");
        let mut cmd = Command::new(&bin);
        cmd.args(["--netns", &self.t.gen, "--iface", "eth0", "--peer-netns", &self.t.node, "--peer-iface", &self.t.gen_if])
            .args(["--peer-xdp", "--dst", &dst.to_string(), "--dport", &dport.to_string()])
            .args(["--flows", &flows.to_string(), "--count", &frames.to_string(), "--repeats", &self.o.repeats.to_string()])
            .args(["--size", &self.o.frame_len.to_string(), "--start", &start.to_string(), "--cpu", "0"])
            .args(["--src", "10.190.0.1", "--sport-span", "60000"]);
        if drop {
            cmd.arg("--drop");
        } else {
            cmd.args(["--sink-netns", &self.t.back, "--sink-iface", "eth0"]);
        }
        if flows == 0 {
            cmd.args(["--warmup", "200"]);
        }
        let out = cmd.output().with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("lb-pktgen: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let next = v["next_start"].as_u64().unwrap_or(start + frames as u64 * self.o.repeats as u64);
        Ok((v["runs"].as_array().cloned().unwrap_or_default(), next))
    }
}

fn per_run(runs: &[Value], f: impl Fn(&Value) -> Option<f64>) -> Value {
    let mut v: Vec<f64> = runs.iter().filter_map(&f).collect();
    stat(&mut v)
}

fn delivered(r: &Value) -> f64 {
    r["delivered"].as_f64().unwrap_or(0.0)
}

/// Time per delivered packet (ns): the kernel's own time of the run (BPF_PROG_RUN's duration:
/// the batches and the softirq work they raise on the generator's CPU, not the fixed setup and
/// teardown of the call, ~20 ms) over the packets that reached the sink.
fn ns_per_delivered(r: &Value) -> Option<f64> {
    let d = delivered(r);
    (d > 0.0).then(|| r["kernel_ns_per_frame"].as_f64().map(|ns| ns * r["frames"].as_f64().unwrap_or(0.0) / d)).flatten()
}

/// Packets/s, ns and CPU ns per delivered packet, fraction delivered.
fn pps_figures(runs: &[Value]) -> Value {
    json!({
        "pps": per_run(runs, |r| ns_per_delivered(r).map(|ns| 1e9 / ns)),
        "ns_per_packet": per_run(runs, ns_per_delivered),
        "cpu_ns_per_packet": per_run(runs, |r| if delivered(r) > 0.0 { Some(r["cpu_ns"].as_f64()? / delivered(r)) } else { None }),
        "delivered_fraction": per_run(runs, |r| Some(delivered(r) / r["frames"].as_f64()?)),
        "wall_ns_per_frame": per_run(runs, |r| Some(r["elapsed_ns"].as_f64()? / r["frames"].as_f64()?)),
    })
}

/// TCP connects to `dst` from the client namespace: latency samples (µs).
fn connect_latency(netns: &str, dst: SocketAddr, n: u32) -> Result<Vec<f64>> {
    in_netns(netns, || {
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
            drop(s);
        }
        Ok::<_, std::io::Error>(v)
    })
    .with_context(|| format!("connecting to {dst}"))
}

/// Connections per second: `threads` clients doing connect, 1-byte request/response, close.
fn connection_rate(netns: &str, dst: SocketAddr, threads: usize, secs: f64) -> Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (count, errors) = (count.clone(), errors.clone());
            s.spawn(move || {
                in_netns(netns, || {
                    while Instant::now() < deadline {
                        let r = (|| -> std::io::Result<()> {
                            let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
                            c.set_nodelay(true)?;
                            c.write_all(b"x")?;
                            let mut b = [0u8; 1];
                            c.read_exact(&mut b)?;
                            Ok(())
                        })();
                        match r {
                            Ok(()) => count.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    if n == 0 {
        bail!("no connection to {dst} succeeded ({} errors)", errors.load(Ordering::Relaxed));
    }
    Ok(n as f64 / elapsed)
}

/// Busy and total jiffies of all CPUs (/proc/stat).
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    anyhow::ensure!(v.len() >= 5, "unexpected /proc/stat line {line:?}");
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Ok((total - idle, total))
}

/// One iperf3 run of `secs` with `streams` parallel streams from the client namespace to
/// `dst` (an iperf3 server on the endpoint port in the backend namespace): Gbit/s received,
/// and busy CPU seconds (all CPUs) per GB received.
fn bulk_throughput(t: &NetTopo, dst: SocketAddr, streams: usize, secs: f64) -> Result<(f64, f64)> {
    let port = ENDPOINT_PORT.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", &t.back, "iperf3", "-s", "-p", &port])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 (Debian package iperf3; cargo xtask setup installs it)")?;
    // Ready once it listens (a probe connection would count as a client).
    let deadline = Instant::now() + Duration::from_secs(5);
    let filter = format!("sport = :{port}");
    while crate::netns::run("ip", &["netns", "exec", &t.back, "ss", "-Hltn", &filter])?.trim().is_empty() {
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            bail!("iperf3 server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let hz = 100.0; // USER_HZ
    let (busy0, _) = cpu_jiffies()?;
    // iperf3 takes whole seconds (0 would mean "forever"); `timeout` bounds a stuck run.
    let secs = secs.ceil().max(1.0) as u64;
    let out = Command::new("timeout")
        .args([&(secs + 20).to_string(), "ip", "netns", "exec", &t.cli, "iperf3", "-J", "-c", &dst.ip().to_string()])
        .args(["-p", &dst.port().to_string(), "-P", &streams.to_string(), "-t", &secs.to_string(), "--connect-timeout", "3000"])
        .output()
        .context("running iperf3 -c")?;
    let (busy1, _) = cpu_jiffies()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 to {dst}: {e}");
    }
    let bits = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no sum_received")?;
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().context("iperf3: no bytes")?;
    let cpu_s = (busy1 - busy0) as f64 / hz;
    Ok((bits / 1e9, if bytes > 0.0 { cpu_s / (bytes / 1e9) } else { 0.0 }))
}

fn backend_of(name: &str) -> Option<Backend> {
    match name {
        "iptables-nft" => Some(Backend::IptablesNft),
        "iptables-legacy" => Some(Backend::IptablesLegacy),
        "nftables" => Some(Backend::Nftables),
        _ => None,
    }
}

/// Measures one implementation on a fresh topology.
pub fn measure_impl(o: &Options, which: &str, id: &str, start: &mut u64, log: &mut dyn FnMut(&str)) -> Result<Value> {
    let set = baseline::synthetic(o.services, o.endpoints);
    let last = set.len() - 1;
    let t = NetTopo::create(id)?;
    let mut out = json!({});
    // The endpoints of the measured services answer TCP in the backend namespace.
    for s in [&set[0], &set[last]] {
        for (ep, _) in &s.endpoints {
            let _ = ip_netns(&t.back, &["addr", "add", &format!("{ep}/32"), "dev", "lo"]);
        }
    }
    let _server = Server::start(&t.back, ENDPOINT_PORT, o.rate_threads.max(2))?;

    let setup = Instant::now();
    // Dropped after the agent (reverse order of declaration).
    let mut _manifests: Option<RemoveOnDrop> = None;
    let mut agent = None;
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/lbbench-{id}"));
    match which {
        "floor" => {}
        "ours" => {
            let dir = std::env::temp_dir().join(format!("lbbench-{id}-manifests"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            _manifests = Some(RemoveOnDrop(dir.clone()));
            write_manifests(&dir.join("services.json"), &set)?;
            let (n, e) = (o.services as u32, o.endpoints as u32);
            let caps = [
                ("--max-frontends", (2 * n + 64).max(1024)),
                ("--max-service-ports", (n + 16).max(512)),
                ("--max-backends", (n * e + 64).max(4096)),
            ];
            let caps: Vec<String> = caps.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect();
            let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
            let t0 = Instant::now();
            let mut agent_running = crate::agent::Agent::spawn_with(
                Some(&t.node),
                &["--manifests", dir.to_str().context("path")?],
                &t.pattern,
                &bpffs,
                &caps,
            )?;
            // Tens of thousands of services take a while to parse, translate and program.
            agent_running.wait_ready(Duration::from_secs(600))?;
            out["agent_ready_s"] = json!(t0.elapsed().as_secs_f64());
            let pid = agent_running.pid().context("agent pid")?;
            let (rss, hwm) = rss_kib(pid);
            out["agent_rss_kib"] = json!(rss);
            out["agent_hwm_kib"] = json!(hwm);
            agent = Some(agent_running);
        }
        b => {
            let backend = backend_of(b).with_context(|| format!("unknown implementation {b}"))?;
            baseline::load(&t.node, backend, &backend.rules(&set, last, true))?;
        }
    }
    out["setup_s"] = json!(setup.elapsed().as_secs_f64());
    let g = Pktgen { o, t: &t };
    let (target, first) = (set[last].cluster_ip, set[0].cluster_ip);
    let (dst, dport) = if which == "floor" { (set[last].endpoints[0].0, ENDPOINT_PORT) } else { (target, 80) };
    let (dst_first, _) = if which == "floor" { (set[0].endpoints[0].0, ENDPOINT_PORT) } else { (first, 80) };

    log(&format!("{which}: packets/s"));
    let (runs, next) = g.run(dst, dport, o.pps_flows, o.pps_frames, *start, false)?;
    *start = next;
    out["pps"] = pps_figures(&runs);
    log(&format!("{which}: first packet (last service)"));
    let (runs, next) = g.run(dst, dport, 0, o.new_flow_frames, *start, false)?;
    *start = next;
    out["first_packet_last"] = pps_figures(&runs);
    log(&format!("{which}: first packet (first service)"));
    let (runs, next) = g.run(dst_first, dport, 0, o.new_flow_frames, *start, false)?;
    *start = next;
    out["first_packet_first"] = pps_figures(&runs);

    log(&format!("{which}: TCP connect latency"));
    let svc_addr = SocketAddr::from((dst, dport));
    let mut lat = connect_latency(&t.cli, svc_addr, o.connects)?;
    lat.sort_by(|a, b| a.total_cmp(b));
    out["connect_us"] = json!({"p50": quantile(&lat, 0.5), "p99": quantile(&lat, 0.99), "samples": lat.len()});
    log(&format!("{which}: connections/s"));
    let mut rates = Vec::new();
    for _ in 0..o.repeats {
        rates.push(connection_rate(&t.cli, svc_addr, o.rate_threads, o.rate_secs)?);
    }
    out["conn_per_s"] = stat(&mut rates);
    if o.bulk_secs > 0.0 {
        // iperf3 takes the endpoint port over from the 1-byte server.
        drop(_server);
        let mut bulk = json!({});
        for streams in [1usize, 8] {
            log(&format!("{which}: bulk TCP, {streams} stream(s)"));
            let mut gbps = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..o.repeats {
                let (g, c) = bulk_throughput(&t, svc_addr, streams, o.bulk_secs)?;
                gbps.push(g);
                cpu.push(c);
            }
            bulk[streams.to_string()] = json!({"gbit_s": stat(&mut gbps), "cpu_s_per_gb": stat(&mut cpu)});
        }
        out["bulk"] = bulk;
    }
    let log = agent.as_ref().map(|a: &crate::agent::Agent| a.log_path.clone());
    drop(agent);
    let _ = std::fs::remove_dir_all(&bpffs);
    if let Some(log) = log {
        let _ = std::fs::remove_file(log);
    }
    Ok(out)
}

/// The generator alone (frames dropped in the generator): its own cost per frame.
pub fn generator_floor(o: &Options, id: &str) -> Result<Value> {
    let t = NetTopo::create(id)?;
    let g = Pktgen { o, t: &t };
    let (runs, _) = g.run(Ipv4Addr::new(10, 128, 0, 1), ENDPOINT_PORT, o.pps_flows, o.pps_frames, 0, true)?;
    Ok(per_run(&runs, |r| r["kernel_ns_per_frame"].as_f64()))
}

/// Every figure at one service count.
pub fn measure(o: &Options, id: &str, log: &mut dyn FnMut(&str)) -> Result<Value> {
    let mut impls = serde_json::Map::new();
    let mut start = 0u64;
    for which in IMPLS {
        if !o.impls.iter().any(|i| i == which) {
            continue;
        }
        let v = measure_impl(o, which, id, &mut start, log).with_context(|| format!("{which} at {} services", o.services))?;
        impls.insert(which.to_string(), v);
    }
    Ok(json!({
        "services": o.services,
        "endpoints": o.endpoints,
        "generator_drop_ns": generator_floor(o, id)?,
        "impls": impls,
    }))
}
