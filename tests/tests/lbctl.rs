//! `lbctl trace` as external tools drive it: exact flags, one JSON object on stdout.

use std::process::Command;

use lb_tests::{agent::bin_dir, privileges::require_root};
use serde_json::{json, Value};

fn trace(args: &[&str]) -> Value {
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/manifests");
    let out = Command::new(bin_dir().join("lbctl"))
        .args(["trace", "--manifests", manifests, "--hostname-override", "node1", "--output", "json"])
        .args(args)
        .output()
        .expect("running lbctl");
    assert!(out.status.success(), "lbctl trace {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one JSON object: {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn trace_reports_every_backend_of_a_clusterip_over_many_flows() {
    if !require_root("trace_reports_every_backend_of_a_clusterip_over_many_flows") {
        return;
    }
    let tcp = trace(&["--proto", "tcp", "--src", "10.244.1.10", "--dst", "10.96.0.10", "--dport", "80", "--flows", "100"]);
    assert_eq!(
        tcp,
        json!({"verdict": "DNAT", "backends": ["10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.13:8080"], "masquerade": false})
    );
    let udp = trace(&["--proto", "udp", "--src", "10.244.1.10", "--dst", "10.96.0.10", "--dport", "53", "--flows", "100"]);
    assert_eq!(udp["backends"].as_array().unwrap().len(), 3);
    assert!(udp["backends"].as_array().unwrap().iter().all(|b| b.as_str().unwrap().ends_with(":5353")));
}

#[test]
fn trace_passes_traffic_that_is_not_for_a_service() {
    if !require_root("trace_passes_traffic_that_is_not_for_a_service") {
        return;
    }
    for args in [
        ["--proto", "tcp", "--src", "10.244.1.10", "--dst", "10.244.1.11", "--dport", "8080"],
        ["--proto", "sctp", "--src", "10.244.1.10", "--dst", "10.96.0.10", "--dport", "80"],
    ] {
        assert_eq!(trace(&args), json!({"verdict": "PASS", "backends": [], "masquerade": false}), "{args:?}");
    }
}

#[test]
fn trace_rejects_bad_arguments_clearly() {
    let out = Command::new(bin_dir().join("lbctl"))
        .args(["trace", "--manifests", "/nonexistent", "--proto", "icmp", "--src", "1.2.3.4", "--dst", "1.2.3.5", "--dport", "1"])
        .output()
        .expect("running lbctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown protocol"));
}
