//! The benchmark harness runs and writes parseable results (no timing is asserted: timings are
//! the harness's output, not a test's).

use lb_tests::{agent::bin_dir, privileges::require_root};
use serde_json::Value;

/// A {median, min, max} object with 0 < min ≤ median ≤ max.
fn assert_stat(s: &Value, what: &str) {
    let (min, med, max) = (s["min"].as_f64().unwrap(), s["median"].as_f64().unwrap(), s["max"].as_f64().unwrap());
    assert!(min > 0.0 && min <= med && med <= max, "{what}: {s}");
}

#[test]
fn quick_bench_runs_and_writes_json_markdown_and_plots() {
    if !require_root("quick_bench_runs_and_writes_json_markdown_and_plots") {
        return;
    }
    let out = std::env::temp_dir().join(format!("lb-bench-test-{}", std::process::id()));
    let status = std::process::Command::new(bin_dir().join("lb-bench"))
        .args(["--quick", "--endpoints", "3", "--out"])
        .arg(&out)
        .status()
        .expect("running lb-bench");
    assert!(status.success());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let points = json["points"].as_array().unwrap();
    assert_eq!(points.iter().map(|p| p["services"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 100, 1000]);
    for p in points {
        for figure in [
            "noop_xdp_ns",
            "noop_tc_ns",
            "non_service_ns",
            "established_ns",
            "new_flow_ns",
            "noop_xdp_single_ns",
            "xdp_non_service_ns",
            "xdp_established_ns",
            "xdp_new_flow_ns",
            "xdp_nodeport_new_flow_ns",
        ] {
            assert_stat(&p[figure], figure);
        }
        assert!(p["map_memory_bytes"].as_u64().unwrap() > 0);
        assert!(p["established_ratio"].as_f64().unwrap() > 1.0, "our program costs more than the no-op one");
        // The kube-proxy-shaped baselines were loaded in the same run (up to 1000 services).
        let baselines = p["baseline_load_s"].as_object().unwrap();
        let keys: Vec<&str> = baselines.keys().map(String::as_str).collect();
        assert_eq!(keys, ["iptables-legacy", "iptables-nft", "nftables"], "{p}");
        assert!(baselines.values().all(|v| v.as_f64().unwrap() > 0.0));
    }

    // The netns topology figures: every implementation at every point, every frame delivered.
    let nets = json["net"].as_array().unwrap();
    assert_eq!(nets.iter().map(|p| p["services"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 100, 1000]);
    for net in nets {
        assert!(net["generator_drop_ns"]["median"].as_f64().unwrap() > 0.0);
        let impls = net["impls"].as_object().unwrap();
        let mut names: Vec<&str> = impls.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["floor", "iptables-legacy", "iptables-nft", "nftables", "ours"], "{net}");
        for (name, v) in impls {
            let what = |f: &str| format!("{} services, {name}: {f}", net["services"]);
            for run in ["pps", "first_packet_last", "first_packet_first"] {
                for f in ["pps", "ns_per_packet", "cpu_ns_per_packet"] {
                    // CPU time is tick-based: a quick run may see none.
                    if f != "cpu_ns_per_packet" {
                        assert_stat(&v[run][f], &what(&format!("{run}.{f}")));
                    }
                }
                // The generator's frames crossed the node (NATed where a service is the
                // destination: without NAT none would reach the backend's sink). Not all of them
                // need to: a veth ring may overflow on a loaded machine.
                let delivered = v[run]["delivered_fraction"]["min"].as_f64().unwrap();
                assert!(delivered > 0.5 && delivered <= 1.0, "{}: {delivered}", what(run));
            }
            let c = &v["connect_us"];
            assert!(c["p50"].as_f64().unwrap() > 0.0 && c["p50"].as_f64() <= c["p99"].as_f64(), "{}", what("connect"));
            assert_stat(&v["conn_per_s"], &what("conn_per_s"));
            for streams in ["1", "8"] {
                assert_stat(&v["bulk"][streams]["gbit_s"], &what(&format!("bulk {streams} Gbit/s")));
                assert_stat(&v["bulk"][streams]["cpu_s_per_gb"], &what(&format!("bulk {streams} CPU s/GB")));
            }
        }
        let ours = &impls["ours"];
        assert!(ours["agent_rss_kib"].as_u64().unwrap() > 0 && ours["agent_hwm_kib"].as_u64().unwrap() > 0);
    }

    // Maglev quality rows.
    let maglev = json["maglev"].as_array().unwrap();
    assert!(!maglev.is_empty());
    for r in maglev {
        assert!(r["max_over_avg"].as_f64().unwrap() >= 1.0);
        assert!(r["disruption_leave"].as_f64().unwrap() >= r["ideal_leave"].as_f64().unwrap() * 0.5);
    }

    // The plots exist and are SVG documents with their series.
    let plots: Vec<&str> = json["plots"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for want in [
        "datapath_ns.svg",
        "programming_s.svg",
        "node_ns_per_packet.svg",
        "node_mpps.svg",
        "first_packet_ns.svg",
        "connections_per_s.svg",
        "connect_p99_us.svg",
    ] {
        assert!(plots.contains(&want), "{want} not in {plots:?}");
        let svg = std::fs::read_to_string(out.join(want)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{want} is not an SVG document");
        assert_eq!(svg.matches("<svg").count(), 1, "{want}");
        let series: &[&str] = match want {
            "datapath_ns.svg" => &["no-op XDP", "ours: established"],
            "programming_s.svg" => &["ours (writer)", "iptables-legacy", "nftables"],
            _ => &["no NAT (floor)", "ours", "iptables-nft", "iptables-legacy", "nftables"],
        };
        for s in series {
            assert!(svg.contains(s), "{want}: no series {s}");
        }
    }

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    // Three datapath/control-plane tables (tc, XDP), six netns tables (packets/s, first packet,
    // connect latency, connections/s, bulk throughput with 1 and 8 streams) and the memory
    // table (one row per sweep point each), the Maglev table.
    let rows = md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| services") && !l.starts_with("| backends")).count();
    assert_eq!(rows, 10 * 3 + maglev.len(), "{md}");
    for heading in [
        "## Through a node (netns topology)",
        "First packet",
        "TCP connect latency",
        "New connections per second",
        "Bulk TCP throughput",
        "## Maglev quality",
        "The uplink's XDP program",
    ] {
        assert!(md.contains(heading), "no {heading} in results.md");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
