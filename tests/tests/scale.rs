//! Map memory at scale: 10 000 services × 10 endpoints programmed by the real writer into the
//! real maps (the agent's default capacities), measured by the kernel's own accounting
//! (fdinfo `memlock`). The Maglev tables are sized per service (M = 1021 for 10 backends), so
//! memory follows endpoints rather than services × 16381.

use std::time::Instant;

use lb_tests::privileges::require_root;
use lb_userspace::dataplane::{load_object, writer::Writer, Capacity, MapSet};

#[test]
fn ten_thousand_services_of_ten_endpoints_fit_well_under_100_mb() {
    if !require_root("ten_thousand_services_of_ten_endpoints_fit_well_under_100_mb") {
        return;
    }
    let cap = Capacity::default();
    let mut ebpf = load_object(&cap, None).unwrap();
    let maps = MapSet::take(&mut ebpf, &cap, None).unwrap();
    let mut writer = Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT).unwrap();
    let state = lb_userspace::bench::synthetic(10_000, 10);
    let started = Instant::now();
    let report = writer.apply(&state);
    let elapsed = started.elapsed();
    assert!(report.errors.is_empty(), "{:?}", &report.errors[..report.errors.len().min(3)]);
    assert_eq!(report.tables_written, 10_000);
    assert_eq!(report.backends_added, 100_000);

    let memory = writer.map_memory();
    let total: u64 = memory.values().sum();
    println!("programmed 10000 services x 10 endpoints in {:.2} s", elapsed.as_secs_f64());
    for (name, bytes) in &memory {
        println!("  {name:<18} {:>8.1} MiB", *bytes as f64 / (1 << 20) as f64);
    }
    println!("  {:<18} {:>8.1} MiB", "total", total as f64 / (1 << 20) as f64);
    assert!(memory["LB_MAGLEV tables"] > 10_000 * 1021 * 4, "tables are accounted");
    // Service-dependent maps (frontends, backends, tables) must stay well under 100 MB; the
    // conntrack LRU is preallocated at its configured size whatever the services.
    let service_maps = total - memory["LB_CT"];
    assert!(service_maps < 70 << 20, "service maps use {} MiB", service_maps >> 20);
    // The conntrack entry is 56 bytes since it carries the RST check's sequence number (34 MiB
    // at 262 144 entries, 2 MiB more than with 48): the whole stays near 100 MiB; cutting it
    // (a smaller entry, compact tables) belongs to the control-plane-at-scale work.
    assert!(memory["LB_CT"] < 40 << 20, "conntrack uses {} MiB", memory["LB_CT"] >> 20);
    assert!(total < 105 << 20, "all maps use {} MiB", total >> 20);

    // A second sync with nothing changed writes nothing.
    let again = writer.apply(&state);
    assert_eq!((again.service_ports_changed, again.tables_written), (0, 0));
}

/// The translation is recomputed from all objects at every sync (the writer then touches only
/// what differs); this shows what that costs at 10 000 Services × 10 endpoints. Printed, not
/// asserted: timings belong to the benchmark harness.
#[test]
fn translating_ten_thousand_services() {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use lb_userspace::model::{translate, NodeInfo, TranslateOptions};
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for s in 0..10_000u32 {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "scale", "name": format!("svc-{s}")},
            "spec": {"clusterIP": format!("10.96.{}.{}", s >> 8, s & 255), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let endpoints: Vec<serde_json::Value> = (0..10u32)
            .map(|e| {
                let n = s * 10 + e;
                serde_json::json!({"addresses": [format!("10.{}.{}.{}", 128 + (n >> 16), (n >> 8) & 255, n & 255)], "nodeName": "node1"})
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "scale", "name": format!("svc-{s}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap();
        services.push(svc);
        slices.push(slice);
    }
    let node = NodeInfo { name: "node1".into(), labels: Default::default() };
    let started = Instant::now();
    let (state, errors) = translate(&services, &slices, &node, &TranslateOptions::default());
    let elapsed = started.elapsed();
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(3)]);
    assert_eq!(state.services.len(), 10_000);
    assert!(state.services.values().all(|s| s.cluster_endpoints.len() == 10));
    println!("translated 10000 services x 10 endpoints in {:.1} ms (full)", elapsed.as_secs_f64() * 1000.0);

    // What a sync costs when one EndpointSlice changed: only its Service is translated again.
    let objects = lb_userspace::manifests::ObjectSet { services, slices, nodes: vec![] };
    let mut incremental = lb_userspace::incremental::Translator::default();
    let objects = std::sync::Arc::new(objects);
    let first = incremental.translate(&objects, &node, &TranslateOptions::default());
    assert_eq!(first.desired, state);
    let mut changed = (*objects).clone();
    changed.slices[1234].endpoints.pop();
    let changed = std::sync::Arc::new(changed);
    let started = Instant::now();
    let second = incremental.translate(&changed, &node, &TranslateOptions::default());
    let elapsed = started.elapsed();
    assert_eq!(second.recomputed, 1);
    assert_eq!(second.desired.services.len(), 10_000);
    println!(
        "one changed slice among 10000 services: re-translated in {:.1} ms (1 service recomputed)",
        elapsed.as_secs_f64() * 1000.0
    );
}
