//! `lb-bench` (run by `cargo xtask bench`): datapath and control-plane figures across service
//! counts, side by side with the floor (no-op XDP/tc programs) in the same run; at each count
//! also the netns topology figures of `lb-netbench` (packets/s through a node from the
//! live-frames generator, first-packet cost, TCP connect latency, connections/s, agent RSS, for
//! our agent against kube-proxy-shaped iptables/nftables rules and plain forwarding) and the
//! rule-set load times of `lb-baseline`; Maglev quality. Writes `results.json`, `results.md`
//! and SVG plots to `--out`.

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lb_common::maglev;
use lb_userspace::bench::{
    datapath::{measure, Options, Point},
    plot, Stat,
};
use serde_json::{json, Value};

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
    /// Leave out the netns topology figures (lb-netbench).
    #[arg(long)]
    no_net: bool,
    /// Frames per packets/s run through the node (default 1 000 000; --quick 20 000).
    #[arg(long)]
    pps_frames: Option<u32>,
    /// New-flow frames per first-packet run (default 10 000; --quick 1000).
    #[arg(long)]
    new_flow_frames: Option<u32>,
    /// Runs per netns figure (default 3; --quick 1).
    #[arg(long)]
    net_repeats: Option<u32>,
    /// BPF_PROG_TEST_RUN calls per datapath figure (default 9; --quick 5): more for steadier
    /// medians, or to profile one program (`perf record` over a long run).
    #[arg(long)]
    rounds: Option<u32>,
    /// Single-run BPF_PROG_TEST_RUN calls per new-flow figure (default 2000; --quick 200).
    #[arg(long)]
    new_flows: Option<u32>,
}

/// The implementations measured at `n` services, within the baseline caps.
fn implementations(n: u32, max: u32, legacy_max: u32) -> Vec<&'static str> {
    let mut v = vec!["floor", "ours"];
    if n <= max {
        v.push("iptables-nft");
    }
    if n <= legacy_max {
        v.push("iptables-legacy");
    }
    if n <= max {
        v.push("nftables");
    }
    v
}

/// Load times of the kube-proxy-shaped baselines at `n` services (the `lb-baseline` binary next
/// to this one); empty, with a warning, if it is not there.
fn baselines(n: u32, e: u32, max: u32, legacy_max: u32) -> Result<BTreeMap<String, f64>> {
    let bin = std::env::current_exe()?.with_file_name("lb-baseline");
    let backends: Vec<&str> = implementations(n, max, legacy_max).into_iter().filter(|i| *i != "floor" && *i != "ours").collect();
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

struct NetParams {
    pps_frames: u32,
    new_flow_frames: u32,
    repeats: u32,
    connects: u32,
    rate_secs: f64,
    bulk_secs: f64,
}

/// The netns figures at `n` services (`lb-netbench` next to this binary).
fn netbench(n: u32, e: u32, impls: &[&str], p: &NetParams, bar: &ProgressBar) -> Result<Value> {
    let bin = std::env::current_exe()?.with_file_name("lb-netbench");
    anyhow::ensure!(bin.exists(), "{} missing (cargo build -p lb-tests --bin lb-netbench)", bin.display());
    let mut child = std::process::Command::new(&bin)
        .args(["--services", &n.to_string(), "--endpoints", &e.to_string(), "--impls", &impls.join(",")])
        .args(["--pps-frames", &p.pps_frames.to_string(), "--new-flow-frames", &p.new_flow_frames.to_string()])
        .args(["--repeats", &p.repeats.to_string(), "--connects", &p.connects.to_string()])
        .args(["--rate-secs", &p.rate_secs.to_string(), "--bulk-secs", &p.bulk_secs.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let b = bar.clone();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(m) = line.strip_prefix("lb-netbench: ") {
                b.set_message(format!("{n} services: {m}"));
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let out = child.wait_with_output()?;
    let err = log.join().unwrap_or_default();
    anyhow::ensure!(out.status.success(), "lb-netbench at {n} services failed:\n{err}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Maglev balance and disruption (lb_common::maglev), for the report.
fn maglev_quality() -> Value {
    let backends = |n: u32| -> Vec<maglev::MaglevBackend> {
        (0..n)
            .map(|i| maglev::MaglevBackend {
                name: format!("10.{}.{}.{}:8080", 128 + i / 65536, (i / 256) % 256, i % 256),
                id: i + 1,
            })
            .collect()
    };
    let rows: Vec<Value> = [3u32, 10, 100, 1000]
        .iter()
        .map(|&n| {
            let m = maglev::table_size(n as usize, maglev::DEFAULT_MAX_TABLE_SIZE)
                .max(maglev::table_size(n as usize + 1, maglev::DEFAULT_MAX_TABLE_SIZE));
            let full = backends(n + 1);
            let before = maglev::build_table(&full[..n as usize], m);
            let joined = maglev::build_table(&full, m);
            let mut left = full[..n as usize].to_vec();
            left.remove(n as usize / 2);
            let after_leave = maglev::build_table(&left, m);
            json!({
                "backends": n,
                "table_size": m,
                "max_over_avg": maglev::imbalance(&before, n as usize),
                "disruption_leave": maglev::disruption(&before, &after_leave),
                "ideal_leave": 1.0 / n as f64,
                "disruption_join": maglev::disruption(&before, &joined),
                "ideal_join": 1.0 / (n + 1) as f64,
            })
        })
        .collect();
    Value::Array(rows)
}

fn fmt_stat(s: &Stat) -> String {
    format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
}

/// [`fmt_stat`] and the 99th percentile (one run per sample: new flows).
fn fmt_stat_p99(s: &Stat) -> String {
    format!("{:.0} ({:.0}–{:.0}, p99 {:.0})", s.median, s.min, s.max, s.p99)
}

fn jstat(v: &Value) -> Option<Stat> {
    Some(Stat {
        median: v["median"].as_f64()?,
        min: v["min"].as_f64()?,
        max: v["max"].as_f64()?,
        p99: v["p99"].as_f64().unwrap_or(f64::NAN),
    })
}

/// The implementations shown in the netns tables, in order.
const NET_IMPLS: [&str; 5] = ["floor", "ours", "iptables-nft", "iptables-legacy", "nftables"];

fn net_table(md: &mut String, points: &[(u32, Value)], header: &str, cell: impl Fn(&Value, &Value) -> Option<String>) {
    md.push_str(header);
    md.push_str(
        "\n\n| services | no NAT (floor) | ours | iptables-nft | iptables-legacy | nftables |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, net) in points {
        let ours = &net["impls"]["ours"];
        let cells: Vec<String> = NET_IMPLS
            .iter()
            .map(|i| {
                let v = &net["impls"][*i];
                if v.is_null() {
                    "–".to_string()
                } else {
                    cell(v, ours).unwrap_or_else(|| "–".into())
                }
            })
            .collect();
        md.push_str(&format!("| {n} | {} |\n", cells.join(" | ")));
    }
    md.push('\n');
}

fn markdown(points: &[Point], nets: &[(u32, Value)], maglev: &Value, meta: &str) -> String {
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
            fmt_stat_p99(&p.new_flow_ns),
            p.new_flow_ratio,
            p.program_all_ms,
            p.endpoint_change_p50_ms,
            p.endpoint_change_p99_ms,
            p.map_memory_bytes as f64 / (1 << 20) as f64,
        ));
    }
    md.push_str("\nThe uplink's XDP program (`lb_uplink`) from an external client, ns per packet (× = ratio to the no-op XDP program timed the same way): non-service, established ClusterIP flow, new ClusterIP flow, new NodePort flow (DNAT + masquerade, the source port reserved with a conntrack insert).\n\n");
    md.push_str("| services | no-op XDP (single run) | non-service (×) | established (×) | new flow (×) | new NodePort flow, masqueraded (×) |\n|---:|---:|---:|---:|---:|---:|\n");
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} ({:.2}) | {} ({:.2}) | {} ({:.2}) | {} ({:.2}) |\n",
            p.services,
            fmt_stat(&p.noop_xdp_single_ns),
            fmt_stat(&p.xdp_non_service_ns),
            p.xdp_non_service_ratio,
            fmt_stat(&p.xdp_established_ns),
            p.xdp_established_ratio,
            fmt_stat_p99(&p.xdp_new_flow_ns),
            p.xdp_new_flow_ratio,
            fmt_stat_p99(&p.xdp_nodeport_new_flow_ns),
            p.xdp_nodeport_new_flow_ratio,
        ));
    }
    md.push('\n');

    if !nets.is_empty() {
        md.push_str("## Through a node (netns topology)\n\n");
        md.push_str("generator netns (lb-pktgen: BPF_PROG_RUN of an XDP program with BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX on a veth) and client netns → node netns (our lb-agent, or kube-proxy-shaped rules for the same services, or nothing: plain forwarding to an endpoint address) → backend netns (an XDP sink counting what arrives, TCP servers on the endpoints). A fresh topology per implementation; the measured service is last in KUBE-SERVICES order. Medians (min–max) over the runs. Generation, the node's work and the sink all run on CPU 0 in the softirqs the generator raises (veth delivers on the sending CPU), so ns per packet is the whole path: the kernel's own duration of the BPF_PROG_RUN call (mean per frame × frames, which leaves out the call's fixed ~20 ms setup/teardown) over the frames the sink counted. CPU ns per packet: CPU time of the generator thread (getrusage RUSAGE_THREAD; tick-based accounting charges the softirq work done in its context to it) plus that CPU's ksoftirqd, over the frames counted.\n\n");
        let gen: Vec<String> =
            nets.iter().filter_map(|(n, v)| Some(format!("{n}: {:.0}", jstat(&v["generator_drop_ns"])?.median))).collect();
        md.push_str(&format!("The generator alone (frames dropped in the generator) costs ns/frame: {}.\n\n", gen.join(", ")));
        net_table(
            &mut md,
            nets,
            "Packets/s through the node, 64-byte TCP SYN frames over 1024 flows (established after the first): Mpps median (min–max); ns per packet; CPU ns per packet",
            |v, _| {
                let pps = jstat(&v["pps"]["pps"])?;
                let ns = jstat(&v["pps"]["ns_per_packet"])?;
                let cpu = jstat(&v["pps"]["cpu_ns_per_packet"])?;
                Some(format!(
                    "{:.2} ({:.2}–{:.2}) Mpps; {:.0} ns; {:.0} CPU ns",
                    pps.median / 1e6,
                    pps.min / 1e6,
                    pps.max / 1e6,
                    ns.median,
                    cpu.median
                ))
            },
        );
        net_table(
            &mut md,
            nets,
            "First packet: ns per new-flow SYN through the node (every frame a new source port), to the service LAST / FIRST in KUBE-SERVICES order; (×) = ratio of medians to ours, same run",
            |v, ours| {
                let last = jstat(&v["first_packet_last"]["ns_per_packet"])?.median;
                let first = jstat(&v["first_packet_first"]["ns_per_packet"])?.median;
                let o = jstat(&ours["first_packet_last"]["ns_per_packet"]).map(|s| s.median).unwrap_or(0.0);
                let ratio = if o > 0.0 { format!(" ({:.2}×)", last / o) } else { String::new() };
                Some(format!("{last:.0}{ratio} / {first:.0}"))
            },
        );
        net_table(&mut md, nets, "TCP connect latency to the ClusterIP from the client netns, p50 / p99 (µs)", |v, _| {
            Some(format!("{:.0} / {:.0}", v["connect_us"]["p50"].as_f64()?, v["connect_us"]["p99"].as_f64()?))
        });
        net_table(
            &mut md,
            nets,
            "New connections per second through the ClusterIP (connect, 1-byte request and response, close; 4 client threads): median (min–max); (×) = ratio of medians to ours",
            |v, ours| {
                let s = jstat(&v["conn_per_s"])?;
                let o = jstat(&ours["conn_per_s"]).map(|s| s.median).unwrap_or(0.0);
                let ratio = if o > 0.0 { format!(" ({:.2}×)", s.median / o) } else { String::new() };
                Some(format!("{:.0} ({:.0}–{:.0}){ratio}", s.median, s.min, s.max))
            },
        );
        for streams in ["1", "8"] {
            net_table(
                &mut md,
                nets,
                &format!(
                    "Bulk TCP throughput through the service (iperf3, {streams} stream(s), client → backend): Gbit/s median (min–max); busy CPU seconds (all CPUs) per GB received; (×) = ratio of Gbit/s medians to ours"
                ),
                |v, ours| {
                    let g = jstat(&v["bulk"][streams]["gbit_s"])?;
                    let c = jstat(&v["bulk"][streams]["cpu_s_per_gb"])?;
                    let o = jstat(&ours["bulk"][streams]["gbit_s"]).map(|s| s.median).unwrap_or(0.0);
                    let ratio = if o > 0.0 { format!(" ({:.2}×)", g.median / o) } else { String::new() };
                    Some(format!("{:.2} ({:.2}–{:.2}){ratio}; {:.2} CPU s/GB", g.median, g.min, g.max, c.median))
                },
            );
        }
        md.push_str("Agent memory: VmRSS / VmHWM (/proc/<pid>/status) of the real lb-agent once ready with N services, and the kernel-accounted map memory of the writer (above).\n\n| services | agent VmRSS (MiB) | agent VmHWM (MiB) | map memory (MiB) | agent start to ready (s), manifest file of N services |\n|---:|---:|---:|---:|---:|\n");
        for (n, net) in nets {
            let o = &net["impls"]["ours"];
            let mib = |k: &str| o[k].as_f64().map(|v| format!("{:.1}", v / 1024.0)).unwrap_or_else(|| "–".into());
            let maps = points.iter().find(|p| p.services == *n).map(|p| p.map_memory_bytes as f64 / (1 << 20) as f64);
            md.push_str(&format!(
                "| {n} | {} | {} | {} | {} |\n",
                mib("agent_rss_kib"),
                mib("agent_hwm_kib"),
                maps.map(|m| format!("{m:.1}")).unwrap_or_else(|| "–".into()),
                o["agent_ready_s"].as_f64().map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into()),
            ));
        }
        md.push('\n');
    }

    md.push_str("## Maglev quality (lb_common::maglev)\n\n| backends | table size M | max/avg slots | disruption, one leaves (ideal 1/N) | disruption, one joins (ideal 1/(N+1)) |\n|---:|---:|---:|---:|---:|\n");
    for r in maglev.as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {:.4} | {:.3} ({:.3}) | {:.3} ({:.3}) |\n",
            r["backends"],
            r["table_size"],
            r["max_over_avg"].as_f64().unwrap_or(0.0),
            r["disruption_leave"].as_f64().unwrap_or(0.0),
            r["ideal_leave"].as_f64().unwrap_or(0.0),
            r["disruption_join"].as_f64().unwrap_or(0.0),
            r["ideal_join"].as_f64().unwrap_or(0.0),
        ));
    }
    md
}

/// The SVG plots; returns the file names written.
fn plots(out: &std::path::Path, points: &[Point], nets: &[(u32, Value)]) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let xs = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
        points.iter().filter_map(|p| Some((p.services as f64, f(p)?))).collect()
    };
    let datapath = vec![
        ("no-op XDP".to_string(), xs(&|p| Some(p.noop_xdp_ns.median))),
        ("no-op tc".to_string(), xs(&|p| Some(p.noop_tc_ns.median))),
        ("ours: non-service".to_string(), xs(&|p| Some(p.non_service_ns.median))),
        ("ours: established".to_string(), xs(&|p| Some(p.established_ns.median))),
        ("ours: new flow".to_string(), xs(&|p| Some(p.new_flow_ns.median))),
        ("ours XDP: established".to_string(), xs(&|p| Some(p.xdp_established_ns.median))),
        ("ours XDP: new NodePort flow".to_string(), xs(&|p| Some(p.xdp_nodeport_new_flow_ns.median))),
    ];
    plot::lines(&out.join("datapath_ns.svg"), "Datapath ns/packet (BPF_PROG_TEST_RUN)", "services", "ns per packet", &datapath)?;
    written.push("datapath_ns.svg".to_string());
    let mut programming = vec![("ours (writer)".to_string(), xs(&|p| Some(p.program_all_ms / 1000.0)))];
    for b in ["iptables-nft", "iptables-legacy", "nftables"] {
        programming.push((b.to_string(), xs(&|p| p.baseline_load_s.get(b).copied())));
    }
    plot::lines(&out.join("programming_s.svg"), "Programming N services from empty", "services", "seconds", &programming)?;
    written.push("programming_s.svg".to_string());
    if !nets.is_empty() {
        let net_series = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
            NET_IMPLS
                .iter()
                .map(|i| {
                    let pts = nets
                        .iter()
                        .filter_map(|(n, v)| {
                            let x = &v["impls"][*i];
                            if x.is_null() {
                                None
                            } else {
                                Some((*n as f64, f(x)?))
                            }
                        })
                        .collect();
                    (if *i == "floor" { "no NAT (floor)".to_string() } else { i.to_string() }, pts)
                })
                .collect()
        };
        let med = |v: &Value| v["median"].as_f64();
        for (file, title, y, f) in [
            (
                "node_ns_per_packet.svg",
                "ns per packet through the node (1024 flows)",
                "ns per packet",
                &(|v: &Value| med(&v["pps"]["ns_per_packet"])) as &dyn Fn(&Value) -> Option<f64>,
            ),
            ("node_mpps.svg", "Packets/s through the node (1024 flows)", "Mpps", &|v: &Value| {
                med(&v["pps"]["pps"]).map(|p| p / 1e6)
            }),
            ("first_packet_ns.svg", "First packet (new flow) to the last service", "ns per packet", &|v: &Value| {
                med(&v["first_packet_last"]["ns_per_packet"])
            }),
            ("connections_per_s.svg", "New connections per second through the ClusterIP", "connections/s", &|v: &Value| {
                med(&v["conn_per_s"])
            }),
            ("connect_p99_us.svg", "TCP connect latency p99", "µs", &|v: &Value| v["connect_us"]["p99"].as_f64()),
        ] {
            plot::lines(&out.join(file), title, "services", y, &net_series(f))?;
            written.push(file.to_string());
        }
    }
    Ok(written)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (sweep, repeat, rounds, new_flows, changes) =
        if args.quick { (vec![1, 100, 1000], 1000, 5, 200, 10) } else { (args.services.clone(), 100_000, 9, 2000, 50) };
    let rounds = args.rounds.unwrap_or(rounds);
    let new_flows = args.new_flows.unwrap_or(new_flows);
    let net = if args.quick {
        NetParams { pps_frames: 20_000, new_flow_frames: 1000, repeats: 1, connects: 100, rate_secs: 0.3, bulk_secs: 1.0 }
    } else {
        NetParams { pps_frames: 1_000_000, new_flow_frames: 10_000, repeats: 3, connects: 2000, rate_secs: 2.0, bulk_secs: 2.0 }
    };
    let net = NetParams {
        pps_frames: args.pps_frames.unwrap_or(net.pps_frames),
        new_flow_frames: args.new_flow_frames.unwrap_or(net.new_flow_frames),
        repeats: args.net_repeats.unwrap_or(net.repeats),
        ..net
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let bar = ProgressBar::new(sweep.len() as u64 * if args.no_net { 1 } else { 2 });
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]").expect("template"));
    let mut points = Vec::new();
    let mut nets = Vec::new();
    for &n in &sweep {
        bar.set_message(format!("{n} services x {} endpoints", args.endpoints));
        let o = Options { services: n, endpoints: args.endpoints, repeat, rounds, new_flows, changes };
        let mut point = measure(&o).with_context(|| format!("at {n} services"))?;
        bar.set_message(format!("{n} services: kube-proxy-shaped iptables/nftables baselines"));
        point.baseline_load_s = baselines(n, args.endpoints, args.baseline_max, args.baseline_legacy_max)?;
        points.push(point);
        bar.inc(1);
        if !args.no_net {
            bar.set_message(format!("{n} services: netns topology"));
            let impls = implementations(n, args.baseline_max, args.baseline_legacy_max);
            // A failure here (say, the agent cannot program this many services) is reported and
            // leaves this point's netns figures out; the sweep goes on.
            match netbench(n, args.endpoints, &impls, &net, &bar) {
                Ok(v) => nets.push((n, v)),
                Err(e) => {
                    bar.println(format!("warning: netns figures at {n} services: {e:#}"));
                    nets.push((n, json!({"services": n, "error": format!("{e:#}"), "impls": {}})));
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let meta = format!(
        "{} services sweep, {} endpoints each, {} repeats x {} rounds, {} new flows; netns: {} frames per packets/s run, {} per first-packet run, {} runs per figure, {} connects; kernel {}; {} CPUs",
        sweep.iter().map(u32::to_string).collect::<Vec<_>>().join("/"),
        args.endpoints,
        repeat,
        rounds,
        new_flows,
        net.pps_frames,
        net.new_flow_frames,
        net.repeats,
        net.connects,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    let maglev = maglev_quality();
    let svgs = plots(&args.out, &points, &nets)?;
    let json = json!({
        "meta": meta,
        "points": points,
        "net": nets.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        "maglev": maglev,
        "plots": svgs,
    });
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let mut md = markdown(&points, &nets, &maglev, &meta);
    md.push_str(&format!("\nPlots: {}\n", svgs.join(", ")));
    std::fs::write(args.out.join("results.md"), &md)?;
    std::io::stdout().write_all(md.as_bytes())?;
    println!("\nwritten to {}", args.out.display());
    Ok(())
}
