//! The benchmark harness runs and writes parseable results (no timing is asserted: timings are
//! the harness's output, not a test's).

use lb_tests::{agent::bin_dir, privileges::require_root};

#[test]
fn quick_bench_runs_and_writes_json_and_markdown() {
    if !require_root("quick_bench_runs_and_writes_json_and_markdown") {
        return;
    }
    let out = std::env::temp_dir().join(format!("lb-bench-test-{}", std::process::id()));
    let status = std::process::Command::new(bin_dir().join("lb-bench"))
        .args(["--quick", "--endpoints", "3", "--out"])
        .arg(&out)
        .status()
        .expect("running lb-bench");
    assert!(status.success());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let points = json["points"].as_array().unwrap();
    assert_eq!(points.iter().map(|p| p["services"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 100, 1000]);
    for p in points {
        for figure in ["noop_xdp_ns", "noop_tc_ns", "non_service_ns", "established_ns", "new_flow_ns"] {
            let s = &p[figure];
            let (min, med, max) = (s["min"].as_f64().unwrap(), s["median"].as_f64().unwrap(), s["max"].as_f64().unwrap());
            assert!(min > 0.0 && min <= med && med <= max, "{figure}: {s}");
        }
        assert!(p["map_memory_bytes"].as_u64().unwrap() > 0);
        assert!(p["established_ratio"].as_f64().unwrap() > 1.0, "our program costs more than the no-op one");
        // The kube-proxy-shaped baselines were loaded in the same run (up to 1000 services).
        let baselines = p["baseline_load_s"].as_object().unwrap();
        let keys: Vec<&str> = baselines.keys().map(String::as_str).collect();
        assert_eq!(keys, ["iptables-legacy", "iptables-nft", "nftables"], "{p}");
        assert!(baselines.values().all(|v| v.as_f64().unwrap() > 0.0));
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    // Two tables (control plane, datapath), one row per sweep point each.
    assert_eq!(md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| services")).count(), 6);
    std::fs::remove_dir_all(&out).unwrap();
}
