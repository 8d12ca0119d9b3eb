//! `lb-netbench`: the netns topology figures at one service count (see lb_tests::netbench):
//! packets/s through a node, first-packet cost, TCP connect latency and connections/s for our
//! agent, kube-proxy-shaped iptables/nftables rules and plain forwarding, plus the agent's RSS.
//! Prints one JSON object on stdout, progress on stderr. lb-bench runs it at each sweep point.

use anyhow::Result;
use clap::Parser;
use lb_tests::netbench::{measure, Options, IMPLS};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Implementations: floor, ours, iptables-nft, iptables-legacy, nftables.
    #[arg(long, value_delimiter = ',', default_value = "floor,ours,iptables-nft,iptables-legacy,nftables")]
    impls: Vec<String>,
    /// Frames per packets/s run.
    #[arg(long, default_value_t = 1_000_000)]
    pps_frames: u32,
    /// Flows the packets/s frames cycle through.
    #[arg(long, default_value_t = 1024)]
    pps_flows: u32,
    /// Frame length.
    #[arg(long, default_value_t = 64)]
    frame_len: usize,
    /// Frames (each a new flow) per first-packet run.
    #[arg(long, default_value_t = 10_000)]
    new_flow_frames: u32,
    /// Runs per figure (median, min, max over them).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Connects timed for the latency percentiles.
    #[arg(long, default_value_t = 2000)]
    connects: u32,
    /// Seconds per connections/s run.
    #[arg(long, default_value_t = 2.0)]
    rate_secs: f64,
    /// Client threads for connections/s.
    #[arg(long, default_value_t = 4)]
    rate_threads: usize,
    /// Seconds per bulk-throughput run (iperf3, 1 and 8 streams; whole seconds); 0 skips it.
    #[arg(long, default_value_t = 2.0)]
    bulk_secs: f64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    for i in &a.impls {
        anyhow::ensure!(IMPLS.contains(&i.as_str()), "unknown implementation {i} (one of {IMPLS:?})");
    }
    let bin_dir = std::env::current_exe()?.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    // lb-agent is found through LB_BIN_DIR (lb_tests::agent::bin_dir).
    if std::env::var_os("LB_BIN_DIR").is_none() {
        std::env::set_var("LB_BIN_DIR", &bin_dir);
    }
    let o = Options {
        services: a.services,
        endpoints: a.endpoints,
        impls: a.impls,
        pps_frames: a.pps_frames,
        pps_flows: a.pps_flows,
        frame_len: a.frame_len,
        new_flow_frames: a.new_flow_frames,
        repeats: a.repeats,
        connects: a.connects,
        rate_secs: a.rate_secs,
        rate_threads: a.rate_threads,
        bulk_secs: a.bulk_secs,
        bin_dir,
    };
    let id = format!("{:x}", std::process::id() & 0xfffff);
    let v = measure(&o, &id, &mut |m| eprintln!("lb-netbench: {m}"))?;
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}
