//! Pieces of the netns benchmark (lb_tests::netbench) that need no privileges: the manifest file
//! it gives the agent describes exactly the services the iptables/nftables baselines get, and
//! the summary statistics.

use std::net::Ipv4Addr;

use lb_tests::{baseline, netbench};
use lb_userspace::model::{translate, NodeInfo, TranslateOptions};

#[test]
fn the_agents_manifests_are_the_baselines_services() {
    let set = baseline::synthetic(25, 4);
    let dir = std::env::temp_dir().join(format!("lbbench-manifest-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("services.json");
    netbench::write_manifests(&file, &set).unwrap();
    let report = lb_userspace::manifests::load_path(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = NodeInfo { name: "node1".into(), labels: Default::default() };
    let o = &report.objects;
    let (state, errors) = translate(&o.services, &o.slices, &node, &TranslateOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(state.services.len(), 25);
    for s in &set {
        let (port, sp) = state
            .services
            .iter()
            .find(|(name, _)| format!("{}/{}:{}", name.namespace, name.name, name.port_name) == s.name)
            .unwrap_or_else(|| panic!("{} missing", s.name));
        assert_eq!((sp.cluster_ip, sp.port), (s.cluster_ip, s.port), "{port:?}");
        let mut eps: Vec<(Ipv4Addr, u16)> = sp.endpoints.iter().map(|e| (e.ip, e.port)).collect();
        eps.sort();
        assert_eq!(eps, s.endpoints, "{}", s.name);
        assert!(sp.endpoints.iter().all(|e| e.ready && e.serving));
    }
}

#[test]
fn stat_is_median_min_max() {
    let s = netbench::stat(&mut [3.0, 1.0, 2.0]);
    assert_eq!((s["median"].as_f64(), s["min"].as_f64(), s["max"].as_f64()), (Some(2.0), Some(1.0), Some(3.0)));
    assert_eq!(netbench::stat(&mut [4.0, 1.0])["median"].as_f64(), Some(2.5));
    assert_eq!(netbench::stat(&mut [])["median"].as_f64(), Some(0.0));
}
