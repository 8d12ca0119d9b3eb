//! The benchmark harness (`cargo xtask bench`): figures measured side by side in one run and
//! reported as ratios to a floor measured in the same run, plus medians with min/max.

pub mod datapath;
pub mod kpktgen;
pub mod pktgen;
pub mod plot;

use std::net::Ipv4Addr;

use crate::model::{DesiredState, Endpoint, Protocol, ServicePortName, ServicePortState};

/// Median, min, max and 99th percentile of samples.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p99: f64,
}

impl Stat {
    pub fn of(samples: &mut [f64]) -> Stat {
        if samples.is_empty() {
            return Stat::default();
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let n = samples.len();
        let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
        Stat { median, min: samples[0], max: samples[n - 1], p99: Stat::quantile(samples, 0.99) }
    }

    /// The value at quantile `q` (0..=1) of sorted samples.
    pub fn quantile(sorted: &[f64], q: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }
}

fn endpoint(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint {
        ip,
        port,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
        zone_hints: Default::default(),
        node_hints: Default::default(),
    }
}

/// A service port with the given ClusterIP and endpoints, all ready.
pub fn service_port(cluster_ip: Ipv4Addr, port: u16, endpoints: &[(Ipv4Addr, u16)]) -> ServicePortState {
    let eps: Vec<Endpoint> = endpoints.iter().map(|(ip, p)| endpoint(*ip, *p)).collect();
    ServicePortState {
        cluster_ip,
        port,
        protocol: Protocol::Tcp,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        health_check_node_port: None,
        external_policy_local: false,
        internal_policy_local: false,
        affinity_timeout_seconds: None,
        cluster_endpoints: eps.iter().map(Endpoint::addr).collect(),
        local_endpoints: vec![],
        has_any_endpoints: !eps.is_empty(),
        endpoints: eps,
        topology_mode: String::new(),
    }
}

/// The ClusterIP of synthetic service `i` (10.96.0.0/12).
pub fn synthetic_vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i)
}

/// `n` synthetic TCP services of `e` endpoints each (endpoints in 10.128.0.0/10).
pub fn synthetic(n: u32, e: u32) -> DesiredState {
    let mut state = DesiredState::default();
    for i in 0..n {
        let eps: Vec<(Ipv4Addr, u16)> =
            (0..e).map(|j| (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 1 + i * e + j), 8080)).collect();
        let name = ServicePortName {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
        };
        state.services.insert(name, service_port(synthetic_vip(i), 80, &eps));
    }
    state
}
