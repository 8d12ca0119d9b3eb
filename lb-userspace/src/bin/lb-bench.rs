//! `lb-bench` (run by `cargo xtask bench`): datapath and control-plane figures across service
//! counts, side by side with the floor (no-op XDP/tc programs) in the same run. Writes
//! `results.json` and `results.md` to `--out`.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lb_userspace::bench::datapath::{measure, Options, Point};

#[derive(Parser)]
#[command(name = "lb-bench", about = "Benchmark the eBPF service load balancer")]
struct Args {
    /// Service counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000,50000")]
    services: Vec<u32>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: u32,
    /// A smoke run: small sweep and fewer samples.
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Largest service count at which the iptables-nft and nftables baselines are loaded
    /// (their load time grows faster than linearly: 1000 × 10 takes seconds, 10000 × 10 minutes).
    #[arg(long, default_value_t = 1000)]
    baseline_max: u32,
    /// Largest service count for the iptables-legacy baseline.
    #[arg(long, default_value_t = 10000)]
    baseline_legacy_max: u32,
}

/// Load times of the kube-proxy-shaped baselines at `n` services (the `lb-baseline` binary next
/// to this one); empty, with a warning, if it is not there.
fn baselines(n: u32, e: u32, max: u32, legacy_max: u32) -> Result<std::collections::BTreeMap<String, f64>> {
    let bin = std::env::current_exe()?.with_file_name("lb-baseline");
    let mut backends = Vec::new();
    if n <= max {
        backends.extend(["iptables-nft", "nftables"]);
    }
    if n <= legacy_max {
        backends.push("iptables-legacy");
    }
    if backends.is_empty() {
        return Ok(Default::default());
    }
    if !bin.exists() {
        eprintln!("warning: {} missing: no iptables/nftables baselines", bin.display());
        return Ok(Default::default());
    }
    let out = std::process::Command::new(&bin)
        .args(["--services", &n.to_string(), "--endpoints", &e.to_string(), "--backends", &backends.join(",")])
        .output()?;
    anyhow::ensure!(out.status.success(), "lb-baseline: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn fmt_stat(s: &lb_userspace::bench::Stat) -> String {
    format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
}

fn markdown(points: &[Point], meta: &str) -> String {
    let mut md = String::new();
    md.push_str(&format!("# lb-bench\n\n{meta}\n\n"));
    md.push_str("Datapath through BPF_PROG_TEST_RUN, ns per packet: median (min–max) over the rounds, and the ratio of medians to the no-op tc program measured the same way in the same run.\n\n");
    md.push_str("Control plane: our writer programming every service from empty, against loading the same services as kube-proxy-shaped rule sets (iptables-restore with kube-proxy's flags / nft -f) in a scratch namespace, same run.\n\n");
    md.push_str("| services | ours: program all (s) | iptables-nft (s) | iptables-legacy (s) | nftables (s) |\n|---:|---:|---:|---:|---:|\n");
    for p in points {
        let b = |k: &str| p.baseline_load_s.get(k).map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        md.push_str(&format!(
            "| {} | {:.3} | {} | {} | {} |\n",
            p.services,
            p.program_all_ms / 1000.0,
            b("iptables-nft"),
            b("iptables-legacy"),
            b("nftables")
        ));
    }
    md.push_str("\n| services | no-op XDP | no-op tc | non-service (×) | established (×) | new flow (×, vs no-op tc single run) | program all (ms) | one endpoint change p50 / p99 (ms) | map memory (MiB) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} | {} ({:.2}) | {} ({:.2}) | {} ({:.2}) | {:.1} | {:.2} / {:.2} | {:.1} |\n",
            p.services,
            fmt_stat(&p.noop_xdp_ns),
            fmt_stat(&p.noop_tc_ns),
            fmt_stat(&p.non_service_ns),
            p.non_service_ratio,
            fmt_stat(&p.established_ns),
            p.established_ratio,
            fmt_stat(&p.new_flow_ns),
            p.new_flow_ratio,
            p.program_all_ms,
            p.endpoint_change_p50_ms,
            p.endpoint_change_p99_ms,
            p.map_memory_bytes as f64 / (1 << 20) as f64,
        ));
    }
    md
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (sweep, repeat, rounds, new_flows, changes) =
        if args.quick { (vec![1, 100, 1000], 1000, 5, 200, 10) } else { (args.services.clone(), 100_000, 9, 2000, 50) };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let bar = ProgressBar::new(sweep.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]").expect("template"));
    let mut points = Vec::new();
    for &n in &sweep {
        bar.set_message(format!("{n} services x {} endpoints", args.endpoints));
        let o = Options { services: n, endpoints: args.endpoints, repeat, rounds, new_flows, changes };
        let mut point = measure(&o).with_context(|| format!("at {n} services"))?;
        bar.set_message(format!("{n} services: kube-proxy-shaped iptables/nftables baselines"));
        point.baseline_load_s = baselines(n, args.endpoints, args.baseline_max, args.baseline_legacy_max)?;
        points.push(point);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let meta = format!(
        "{} services sweep, {} endpoints each, {} repeats x {} rounds, {} new flows; kernel {}; {} CPUs",
        sweep.iter().map(u32::to_string).collect::<Vec<_>>().join("/"),
        args.endpoints,
        repeat,
        rounds,
        new_flows,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    let json = serde_json::json!({"meta": meta, "points": points});
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let md = markdown(&points, &meta);
    std::fs::write(args.out.join("results.md"), &md)?;
    std::io::stdout().write_all(md.as_bytes())?;
    println!("\nwritten to {}", args.out.display());
    Ok(())
}
