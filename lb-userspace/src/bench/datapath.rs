//! Datapath and control-plane figures at one service count, measured through the real
//! programs (BPF_PROG_TEST_RUN) and the real writer, side by side with no-op XDP and tc
//! programs (the floor) in the same run.
//!
//! - non-service packet: a TCP segment to an address that is no service;
//! - established flow: two services whose backends are each other's VIP, so the packet
//!   bounces between them in the test buffer (test_run reuses one buffer across repeats) and
//!   every repeat is a conntrack hit with a full DNAT + checksum rewrite;
//! - new flow: one run per fresh source port (conntrack miss, Maglev, two LRU inserts, DNAT),
//!   compared with the no-op tc program timed the same way (one run per call);
//! - the same three through the uplink's XDP program (`lb_uplink`, an external client: the
//!   established bounce and the new flows are ClusterIPs reached from outside, which with no
//!   local traffic detector are not masqueraded), against the no-op XDP program; plus new
//!   flows to a NodePort (DNAT + masquerade: a port reserved with a conntrack insert);
//! - control plane: programming N services from empty, and one endpoint change (p50/p99);
//! - map memory as the kernel accounts it.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context, Result};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};

use super::{pktgen::in_netns, service_port, synthetic, synthetic_vip, Stat};
use crate::{
    dataplane::{
        attach::{load_pod_program, load_xdp_program},
        load_object,
        writer::{NodeNet, Writer},
        Capacity, MapSet,
    },
    model::{Protocol, ServicePortName},
    packet,
};

#[derive(Clone, Debug)]
pub struct Options {
    pub services: u32,
    pub endpoints: u32,
    /// Repeats per BPF_PROG_TEST_RUN call (the kernel reports the mean per repeat).
    pub repeat: u32,
    /// Calls per figure (the median, min and max are over these).
    pub rounds: u32,
    /// Single-run calls for the new-flow figure.
    pub new_flows: u32,
    /// Endpoint changes timed for the control-plane figure.
    pub changes: u32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Point {
    pub services: u32,
    pub endpoints: u32,
    pub noop_xdp_ns: Stat,
    pub noop_tc_ns: Stat,
    pub non_service_ns: Stat,
    pub established_ns: Stat,
    /// One run per call, like `new_flow_ns`: the floor for it.
    pub noop_tc_single_ns: Stat,
    pub new_flow_ns: Stat,
    /// `lb_uplink` (XDP): non-service, established, new flow, new NodePort flow (masqueraded).
    pub xdp_non_service_ns: Stat,
    pub xdp_established_ns: Stat,
    /// One run per call, like the XDP new-flow figures: their floor.
    pub noop_xdp_single_ns: Stat,
    pub xdp_new_flow_ns: Stat,
    pub xdp_nodeport_new_flow_ns: Stat,
    /// Ratios of medians to the no-op XDP program's (same timing method).
    pub xdp_non_service_ratio: f64,
    pub xdp_established_ratio: f64,
    pub xdp_new_flow_ratio: f64,
    pub xdp_nodeport_new_flow_ratio: f64,
    /// Ratios of medians to the no-op tc program's (same timing method).
    pub non_service_ratio: f64,
    pub established_ratio: f64,
    pub new_flow_ratio: f64,
    pub program_all_ms: f64,
    pub endpoint_change_p50_ms: f64,
    pub endpoint_change_p99_ms: f64,
    pub map_memory_bytes: u64,
    /// Seconds kube-proxy-shaped rule sets for the same services take to load, per backend
    /// (`lb-baseline`, same run); backends over their size cap are left out.
    pub baseline_load_s: std::collections::BTreeMap<String, f64>,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// The uplink figures' client (nothing is local without a detector: same as CLIENT there).
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PING: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const PONG: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const NODE_PORT: u16 = 30080;

fn run_tc(prog: &mut SchedClassifier, frame: &[u8], repeat: u32) -> Result<f64> {
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..TestRunOptions::new() })?;
    Ok(r.duration.as_nanos() as f64)
}

/// One XDP test run of `frame` as if it arrived on interface `ingress` (0: the loopback).
fn run_xdp(prog: &mut Xdp, frame: &[u8], repeat: u32, ingress: u32) -> Result<f64> {
    let mut out = vec![0u8; frame.len() + 64];
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ingress, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..TestRunOptions::new()
    })?;
    Ok(r.duration.as_nanos() as f64)
}

fn rounds(n: u32, mut f: impl FnMut() -> Result<f64>) -> Result<Stat> {
    let mut samples = (0..n).map(|_| f()).collect::<Result<Vec<_>>>()?;
    Ok(Stat::of(&mut samples))
}

fn tc<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let p: &mut SchedClassifier = ebpf.program_mut(name).with_context(|| format!("program {name}"))?.try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    Ok(p)
}

/// A network namespace laid out like a node for the datapath figures: forwarding on, an
/// interface `dp0` with a router behind it (a permanent neighbour), and routes through it for
/// every address the figures translate to (pods, endpoints, external clients), so that the
/// programs deliver as they do on a node (next hop resolved, redirect / XDP_TX) rather than
/// falling back to the stack. Removed on drop.
struct NodeNs {
    name: String,
    uplink: u32,
}

impl NodeNs {
    fn create() -> Result<NodeNs> {
        let name = format!("lbbench-dp-{}", std::process::id());
        let run = |args: &[&str]| -> Result<()> {
            let st = std::process::Command::new("ip").args(args).status().context("running ip")?;
            anyhow::ensure!(st.success(), "ip {}", args.join(" "));
            Ok(())
        };
        // A namespace left by an interrupted run (none normally: quiet).
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        run(&["netns", "add", &name])?;
        // Removed on drop from here on, also on an error path.
        let mut ns = NodeNs { name: name.clone(), uplink: 0 };
        let n = name.as_str();
        run(&["-n", n, "link", "set", "lo", "up"])?;
        run(&["-n", n, "link", "add", "dp0", "type", "veth", "peer", "name", "dp1"])?;
        run(&["-n", n, "link", "set", "dp0", "up"])?;
        run(&["-n", n, "link", "set", "dp1", "up"])?;
        run(&["-n", n, "addr", "add", "192.0.2.1/24", "dev", "dp0"])?;
        run(&["-n", n, "addr", "add", &format!("{NODE}/32"), "dev", "lo"])?;
        run(&["-n", n, "neigh", "replace", "192.0.2.2", "lladdr", "02:00:00:00:02:02", "dev", "dp0", "nud", "permanent"])?;
        for prefix in ["10.0.0.0/8", "203.0.113.0/24"] {
            run(&["-n", n, "route", "add", prefix, "via", "192.0.2.2", "dev", "dp0"])?;
        }
        run(&["netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        ns.uplink = in_netns(Some(n), || {
            let c = std::ffi::CString::new("dp0")?;
            // SAFETY: a valid NUL-terminated name.
            Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
        })?;
        Ok(ns)
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// [`measure_in`] inside a [`NodeNs`].
pub fn measure(o: &Options) -> Result<Point> {
    let ns = NodeNs::create()?;
    let uplink = ns.uplink;
    in_netns(Some(&ns.name), || measure_in(o, uplink))
}

/// The figures, in the calling thread's network namespace; XDP runs as if frames arrived on
/// interface `uplink`.
fn measure_in(o: &Options, uplink: u32) -> Result<Point> {
    let (n, e) = (o.services, o.endpoints);
    let cap = Capacity {
        max_frontends: 2 * n + 64,
        conntrack_entries: 65_536.max(o.new_flows * 8),
        max_service_ports: n + 16,
        max_backends: n * e + 64,
        ..Capacity::default()
    };
    let mut ebpf = load_object(&cap, None)?;
    let maps = MapSet::take(&mut ebpf, &cap, None)?;
    let mut writer = Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT)?;
    // A node address for NodePorts and masquerade; no local traffic detector.
    writer.set_node(&NodeNet { nodeport_ips: vec![NODE], local_ips: vec![NODE], snat_ip: Some(NODE), ..NodeNet::default() })?;

    let mut desired = synthetic(n, e);
    for (name, vip, backend) in [("ping", PING, PONG), ("pong", PONG, PING)] {
        let sp =
            ServicePortName { namespace: "bench".into(), name: name.into(), port_name: "http".into(), protocol: Protocol::Tcp };
        desired.services.insert(sp, service_port(vip, 80, &[(backend, 80)]));
    }
    let np =
        ServicePortName { namespace: "bench".into(), name: "nodeport".into(), port_name: "http".into(), protocol: Protocol::Tcp };
    let mut np_state = service_port(Ipv4Addr::new(10, 255, 0, 3), 80, &[(Ipv4Addr::new(10, 254, 0, 1), 8080)]);
    np_state.node_port = Some(NODE_PORT);
    desired.services.insert(np, np_state);
    let started = Instant::now();
    let report = writer.apply(&desired);
    let program_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(report.errors.is_empty(), "programming: {:?}", report.errors.first());

    // One endpoint change at a time on services spread over the set.
    let mut change_ms = Vec::new();
    for k in 0..o.changes {
        let i = (k as u64 * 7919 % n.max(1) as u64) as u32;
        let name = ServicePortName {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
        };
        let Some(sp) = desired.services.get_mut(&name) else { break };
        let removed = sp.endpoints.pop();
        sp.cluster_endpoints.pop();
        let t = Instant::now();
        writer.apply(&desired);
        change_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Some(ep) = removed {
            let sp = desired.services.get_mut(&name).expect("present");
            sp.cluster_endpoints.push(ep.addr());
            sp.endpoints.push(ep);
            writer.apply(&desired);
        }
    }
    change_ms.sort_by(|a, b| a.total_cmp(b));
    let map_memory_bytes = writer.map_memory().values().sum();

    let tcp = |dst: Ipv4Addr, sport: u16| packet::build(Protocol::Tcp, CLIENT, sport, dst, 80, b"bench");
    let noop_frame = tcp(Ipv4Addr::new(10, 200, 0, 1), 40000);

    let noop_xdp_ns = {
        let xdp: &mut Xdp = ebpf.program_mut("lb_noop_xdp").context("lb_noop_xdp")?.try_into()?;
        if xdp.fd().is_err() {
            xdp.load()?;
        }
        rounds(o.rounds, || run_xdp(xdp, &noop_frame, o.repeat, uplink))?
    };
    let noop = tc(&mut ebpf, "lb_noop_tc")?;
    let noop_tc_ns = rounds(o.rounds, || run_tc(noop, &noop_frame, o.repeat))?;
    let noop_tc_single_ns = rounds(o.new_flows, || run_tc(noop, &noop_frame, 1))?;

    let lb = load_pod_program(&mut ebpf)?;
    let non_service_ns = rounds(o.rounds, || run_tc(lb, &noop_frame, o.repeat))?;
    let established = tcp(PING, 40000);
    run_tc(lb, &established, 2)?; // both directions of the bounce become known flows
    let established_ns = rounds(o.rounds, || run_tc(lb, &established, o.repeat))?;
    let target = synthetic_vip(n.saturating_sub(1));
    let mut sport = 1024u16;
    let mut src = 0u32;
    let mut samples = Vec::with_capacity(o.new_flows as usize);
    for _ in 0..o.new_flows {
        sport = sport.wrapping_add(1).max(1024);
        if sport == 1024 {
            src += 1;
        }
        let client = Ipv4Addr::from(u32::from(CLIENT) + src);
        let frame = packet::build(Protocol::Tcp, client, sport, target, 80, b"bench");
        samples.push(run_tc(lb, &frame, 1)?);
    }
    let new_flow_ns = Stat::of(&mut samples);

    // The uplink's XDP program, from an external client.
    let noop_xdp_single_ns = {
        let xdp: &mut Xdp = ebpf.program_mut("lb_noop_xdp").context("lb_noop_xdp")?.try_into()?;
        rounds(o.new_flows, || run_xdp(xdp, &noop_frame, 1, uplink))?
    };
    let prog = load_xdp_program(&mut ebpf)?;
    let xdp_non_service_ns = rounds(o.rounds, || run_xdp(prog, &noop_frame, o.repeat, uplink))?;
    let established = packet::build(Protocol::Tcp, EXTERNAL, 40001, PING, 80, b"bench");
    run_xdp(prog, &established, 2, uplink)?;
    let xdp_established_ns = rounds(o.rounds, || run_xdp(prog, &established, o.repeat, uplink))?;
    let mut new_flows = |dst: Ipv4Addr, dport: u16, first: u32| -> Result<Stat> {
        let mut samples = Vec::with_capacity(o.new_flows as usize);
        for i in 0..o.new_flows {
            let flow = first + i;
            let client = Ipv4Addr::from(u32::from(EXTERNAL) + flow / 50_000);
            let frame = packet::build(Protocol::Tcp, client, 1024 + (flow % 50_000) as u16, dst, dport, b"bench");
            samples.push(run_xdp(prog, &frame, 1, uplink)?);
        }
        Ok(Stat::of(&mut samples))
    };
    let xdp_new_flow_ns = new_flows(target, 80, 0)?;
    let xdp_nodeport_new_flow_ns = new_flows(NODE, NODE_PORT, o.new_flows)?;

    let ratio = |s: &Stat, floor: &Stat| if floor.median > 0.0 { s.median / floor.median } else { 0.0 };
    Ok(Point {
        services: n,
        endpoints: e,
        non_service_ratio: ratio(&non_service_ns, &noop_tc_ns),
        established_ratio: ratio(&established_ns, &noop_tc_ns),
        new_flow_ratio: ratio(&new_flow_ns, &noop_tc_single_ns),
        xdp_non_service_ratio: ratio(&xdp_non_service_ns, &noop_xdp_ns),
        xdp_established_ratio: ratio(&xdp_established_ns, &noop_xdp_ns),
        xdp_new_flow_ratio: ratio(&xdp_new_flow_ns, &noop_xdp_single_ns),
        xdp_nodeport_new_flow_ratio: ratio(&xdp_nodeport_new_flow_ns, &noop_xdp_single_ns),
        xdp_non_service_ns,
        xdp_established_ns,
        noop_xdp_single_ns,
        xdp_new_flow_ns,
        xdp_nodeport_new_flow_ns,
        noop_xdp_ns,
        noop_tc_ns,
        non_service_ns,
        established_ns,
        noop_tc_single_ns,
        new_flow_ns,
        program_all_ms,
        endpoint_change_p50_ms: Stat::quantile(&change_ms, 0.5),
        endpoint_change_p99_ms: Stat::quantile(&change_ms, 0.99),
        map_memory_bytes,
        baseline_load_s: Default::default(),
    })
}
