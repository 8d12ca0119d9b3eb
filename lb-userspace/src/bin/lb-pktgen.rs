//! `lb-pktgen`: the live-frames packet generator (see `lb_userspace::bench::pktgen`) as a
//! command, for the netns benchmark (`lb-netbench` runs it) and by hand.
//!
//! Sends `--repeats` runs of `--count` frames out of `--iface` in `--netns` (XDP_TX on that
//! veth: its peer receives them), destination MAC the peer's (`--peer-netns`/`--peer-iface`),
//! optionally counting what arrives at a sink (`lb_pktgen_sink` attached to `--sink-iface` in
//! `--sink-netns`). Prints one JSON object: the runs with frames sent, wall time, the kernel's
//! ns per frame, busy CPU time (/proc/stat) and frames delivered to the sink.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use lb_userspace::{
    bench::{
        kpktgen::{self, Engine},
        pktgen::{in_netns, mac_of, settle, FrameSpec, Generator, XdpAttachment, PROG_NOOP, PROG_SINK},
    },
    model::Protocol,
};

#[derive(Parser)]
#[command(name = "lb-pktgen", about = "Live-frames XDP packet generator")]
struct Args {
    /// Namespace of the sending veth (default: this one).
    #[arg(long)]
    netns: Option<String>,
    /// The sending veth.
    #[arg(long)]
    iface: String,
    /// Namespace of the receiving peer veth.
    #[arg(long)]
    peer_netns: Option<String>,
    /// The receiving peer veth (its MAC is the destination MAC).
    #[arg(long)]
    peer_iface: String,
    /// Attach the no-op XDP program to the peer (veth delivers XDP_TX frames only to a peer
    /// with NAPI enabled: native XDP or GRO). Off when something else already is attached.
    #[arg(long)]
    peer_xdp: bool,
    /// Count (and drop) what arrives at this interface...
    #[arg(long)]
    sink_iface: Option<String>,
    /// ...in this namespace.
    #[arg(long)]
    sink_netns: Option<String>,
    #[arg(long, default_value = "tcp")]
    proto: String,
    #[arg(long, default_value = "10.190.0.1")]
    src: Ipv4Addr,
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    #[arg(long, default_value_t = 60000)]
    sport_span: u16,
    #[arg(long)]
    dst: Ipv4Addr,
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// Frame length in bytes (64..=1514).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Distinct flows cycled through (0: every frame a new flow).
    #[arg(long, default_value_t = 1024)]
    flows: u32,
    /// Frames per run.
    #[arg(long, default_value_t = 1_000_000)]
    count: u32,
    #[arg(long, default_value_t = 64)]
    batch: u32,
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Frames sent (and not reported) before the runs: ARP, routes, caches.
    #[arg(long, default_value_t = 1000)]
    warmup: u32,
    /// Frame number of the first frame (flows of different invocations stay apart).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// CPU the generator thread is pinned to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Drop every frame in the generator instead of transmitting (its own cost; XDP only).
    #[arg(long)]
    drop: bool,
    /// The generator: the kernel's pktgen where it exists (UDP only), else XDP live frames.
    #[arg(long, value_enum, default_value = "auto")]
    engine: Engine,
}

#[derive(serde::Serialize)]
struct Run {
    #[serde(flatten)]
    stats: lb_userspace::bench::pktgen::RunStats,
    delivered: Option<u64>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let proto = match a.proto.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        p => anyhow::bail!("--proto tcp|udp, not {p}"),
    };
    let dst_mac = mac_of(a.peer_netns.as_deref(), &a.peer_iface).context("the peer's MAC")?;
    let src_mac = mac_of(a.netns.as_deref(), &a.iface).context("the sender's MAC")?;
    let spec = FrameSpec {
        proto,
        src_mac,
        dst_mac,
        src: a.src,
        sport: a.sport,
        sport_span: a.sport_span,
        dst: a.dst,
        dport: a.dport,
        frame_len: a.size,
        flows: a.flows,
    };
    let _peer = if a.peer_xdp { Some(XdpAttachment::attach(a.peer_netns.as_deref(), &a.peer_iface, PROG_NOOP)?) } else { None };
    let sink = match &a.sink_iface {
        Some(i) => Some(XdpAttachment::attach(a.sink_netns.as_deref(), i, PROG_SINK)?),
        None => None,
    };
    let pktgen = in_netns(a.netns.as_deref(), || Ok(kpktgen::available()))?;
    let engine = a.engine.resolve(proto, pktgen)?;
    anyhow::ensure!(!(a.drop && engine == Engine::Kernel), "--drop needs the XDP generator");
    let mut generator = match engine {
        Engine::Kernel => None,
        _ => Some(Generator::new(spec.clone(), !a.drop)?),
    };
    // One run of `count` frames starting at frame number `start` (the XDP generator numbers
    // flows from it; pktgen restarts its flow ranges every run).
    let mut send = |count: u32, start: u64| -> Result<lb_userspace::bench::pktgen::RunStats> {
        match generator.as_mut() {
            Some(g) => g.run(a.netns.as_deref(), &a.iface, count, a.batch, start, a.cpu),
            None => {
                let cmds = kpktgen::commands(&spec, &a.iface, count, a.cpu)?;
                in_netns(a.netns.as_deref(), || kpktgen::run(&a.iface, &cmds))
            }
        }
    };
    let counted = || -> Result<u64> {
        match &sink {
            Some(s) => Ok(settle(|| Ok(s.sink_counts()?.0), Duration::from_millis(20), Duration::from_secs(2))?),
            None => Ok(0),
        }
    };
    let mut start = a.start;
    if a.warmup > 0 {
        send(a.warmup, start)?;
        start += a.warmup as u64;
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut runs = Vec::new();
    for _ in 0..a.repeats {
        let before = counted()?;
        let stats = send(a.count, start)?;
        start += a.count as u64;
        let delivered = sink.as_ref().map(|_| counted().map(|after| after - before)).transpose()?;
        runs.push(Run { stats, delivered });
    }
    let mac = dst_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let engine = if engine == Engine::Kernel { "pktgen" } else { lb_userspace::bench::pktgen::engine_name() };
    let out = serde_json::json!({ "engine": engine, "frame_len": a.size, "dst_mac": mac, "next_start": start, "runs": runs });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
