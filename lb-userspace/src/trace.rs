//! `lbctl trace`: where does this packet go, and why — answered by the real programs.
//!
//! The same eBPF object as the agent's is loaded with private (unpinned) maps, programmed from
//! manifests through the agent's own translation ([`crate::model::translate`]), flag resolution
//! ([`crate::config::ProxyFlags::node_net`]) and writer
//! ([`crate::dataplane::writer::Writer`]). The program the packet would really meet runs
//! through BPF_PROG_TEST_RUN on a real frame, once per flow (different source ports):
//! a source inside `--cluster-cidr` → `lb_pod_ingress` (a pod's packet entering the node);
//! one of `--node-ip` → `lb_host_egress` (the node's own connection); anything else →
//! `lb_uplink` (XDP: an external client). The verdict is read from the program's return code
//! and output frame (an ICMP port unreachable is a REJECT), masquerade from the flow's
//! conntrack entry.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    maps::HashMap,
    programs::{TestRun, TestRunOptions},
};
use lb_common::{ct_dir, ct_flags, ip_to_map, port_to_map, CtEntry, CtKey};

use crate::{
    config::{node_object_ip, ProxyFlags},
    dataplane::{
        attach::{load_tc_program, load_xdp_program},
        load_object, names,
        writer::Writer,
        Capacity, MapSet,
    },
    manifests,
    model::{self, NodeInfo, Protocol, TranslateOptions},
    packet,
};

/// What to trace.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub manifests: PathBuf,
    pub proxy: ProxyFlags,
    pub proto: Protocol,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub flows: u32,
}

/// The union of the outcomes over all flows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TraceOutcome {
    pub verdict: String,
    pub backends: Vec<String>,
    pub masquerade: bool,
}

/// Everything `--output text` shows.
#[derive(Clone, Debug)]
pub struct TraceDetails {
    pub outcome: TraceOutcome,
    pub program: &'static str,
    pub per_verdict: std::collections::BTreeMap<String, u32>,
    pub manifest_errors: Vec<String>,
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// A `struct xdp_md` for BPF_PROG_TEST_RUN: `data` (the metadata's length) and `data_end`.
fn xdp_md(data: u32, data_end: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[0..4].copy_from_slice(&data.to_ne_bytes());
    ctx[4..8].copy_from_slice(&data_end.to_ne_bytes());
    ctx
}

/// This machine's host name (the node name when no override is given), as kube-proxy does.
pub fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_lowercase()
}

/// The Node object named `name` among the objects.
pub fn find_node<'a>(objects: &'a manifests::ObjectSet, name: &str) -> Option<&'a k8s_openapi::api::core::v1::Node> {
    objects.nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name))
}

/// The node's labels from a Node object named `name` among the manifests (empty otherwise).
pub fn node_info(objects: &manifests::ObjectSet, name: &str) -> NodeInfo {
    let labels = find_node(objects, name).and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
    NodeInfo { name: name.to_string(), labels }
}

/// Which program a packet from `src` meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Pod,
    Host,
    Uplink,
}

impl Entry {
    pub fn of(src: Ipv4Addr, proxy: &ProxyFlags) -> Entry {
        if proxy.cluster_cidr.iter().any(|n| n.contains(&src)) {
            Entry::Pod
        } else if proxy.node_ip.contains(&src) {
            Entry::Host
        } else {
            Entry::Uplink
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Entry::Pod => "lb_pod_ingress (tc ingress, pod-facing interface: the source is in --cluster-cidr)",
            Entry::Host => "lb_host_egress (tc egress: the source is a --node-ip, the node's own connection)",
            Entry::Uplink => "lb_uplink (XDP on the uplink: an external source)",
        }
    }
}

pub fn run(req: &TraceRequest) -> Result<TraceDetails> {
    if req.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let node_name = req.proxy.node_name();
    let report = manifests::load_path(&req.manifests);
    let node = node_info(&report.objects, &node_name);
    let node_obj_ip = find_node(&report.objects, &node_name).and_then(node_object_ip);
    let node_net = req.proxy.node_net(node_obj_ip, &req.proxy.node_ip)?;
    let (desired, errors) =
        model::translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
    let mut manifest_errors = report.errors.clone();
    manifest_errors.extend(errors.iter().map(|e| e.to_string()));

    let cap = Capacity {
        max_frontends: 4096.max(desired.services.len() as u32 * 8),
        max_service_ports: 1024.max(desired.services.len() as u32 + 1),
        max_backends: 4096.max(desired.services.values().map(|s| s.endpoints.len() as u32).sum::<u32>() + 1),
        conntrack_entries: 4096.max(req.flows * 4),
        affinity_entries: 4096,
        source_ranges: 4096,
        ..Capacity::default()
    };
    let mut ebpf = load_object(&cap, None)?;
    let maps = MapSet::take(&mut ebpf, &cap, None)?;
    let mut writer = Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT)?;
    writer.set_node(&node_net)?;
    let sync = writer.apply(&desired);
    manifest_errors.extend(sync.errors);
    let ct: HashMap<_, CtKey, CtEntry> =
        HashMap::try_from(ebpf.take_map(names::CT).context("LB_CT missing")?).context("LB_CT")?;

    let entry = Entry::of(req.src, &req.proxy);
    let mut backends = BTreeSet::new();
    let mut per_verdict = std::collections::BTreeMap::new();
    let mut masquerade = false;
    for i in 0..req.flows {
        let sport = 10_000 + (i % 50_000) as u16;
        let frame = packet::build(req.proto, req.src, sport, req.dst, req.dport, b"lbctl-trace");
        let mut out = vec![0u8; frame.len() + 256];
        // XDP: an xdp_md context (data_end = the frame's length) so that the kernel reports
        // back where the packet starts: a frame handed to the uplink's tc program carries XDP
        // metadata in front of it, which the test run's output includes.
        let xdp_ctx_in = xdp_md(0, frame.len() as u32);
        let mut xdp_ctx_out = [0u8; 24];
        let opts = TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::new() };
        let result = match entry {
            Entry::Pod => load_tc_program(&mut ebpf, names::PROG_POD_INGRESS)?.test_run(opts),
            Entry::Host => load_tc_program(&mut ebpf, names::PROG_HOST_EGRESS)?.test_run(opts),
            Entry::Uplink => load_xdp_program(&mut ebpf)?.test_run(TestRunOptions {
                ctx_in: Some(&xdp_ctx_in),
                ctx_out: Some(&mut xdp_ctx_out),
                ..opts
            }),
        }
        .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        if entry == Entry::Uplink {
            // xdp_md.data: the metadata's length.
            let meta = u32::from_ne_bytes(xdp_ctx_out[0..4].try_into().expect("4 bytes")) as usize;
            out.drain(..meta.min(out.len()));
        }
        // A REJECT is the frame turned into an ICMP port unreachable: redirected back by tc,
        // passed to the kernel to route back by XDP (or transmitted back).
        let (dropped, sent_back) = match entry {
            Entry::Uplink => (result.return_value == XDP_DROP, matches!(result.return_value, XDP_TX | XDP_PASS)),
            _ => (result.return_value == TC_ACT_SHOT, result.return_value == TC_ACT_REDIRECT),
        };
        let passed = match entry {
            Entry::Uplink => matches!(result.return_value, XDP_PASS | XDP_TX),
            _ => matches!(result.return_value, TC_ACT_OK | TC_ACT_REDIRECT),
        };
        let verdict = if dropped {
            "DROP".to_string()
        } else if sent_back && packet::is_port_unreachable(&out) {
            "REJECT".to_string()
        } else if passed {
            let s = packet::summarize(&out).context("reading the program's output frame")?;
            if s.dst != req.dst || s.dport != req.dport {
                backends.insert(format!("{}:{}", s.dst, s.dport));
                let key = CtKey::new(
                    ip_to_map(req.src.octets()),
                    ip_to_map(req.dst.octets()),
                    port_to_map(sport),
                    port_to_map(req.dport),
                    req.proto.number(),
                    ct_dir::FORWARD,
                );
                if ct.get(&key, 0).is_ok_and(|e| e.flags & ct_flags::SNAT != 0) {
                    masquerade = true;
                }
                "DNAT".to_string()
            } else {
                "PASS".to_string()
            }
        } else {
            format!("RETURN_{}", result.return_value)
        };
        *per_verdict.entry(verdict).or_insert(0u32) += 1;
    }
    let verdict = ["DNAT", "REJECT", "DROP", "PASS"]
        .into_iter()
        .find(|v| per_verdict.contains_key(*v))
        .map(str::to_string)
        .unwrap_or_else(|| per_verdict.keys().next().cloned().unwrap_or_default());
    Ok(TraceDetails {
        outcome: TraceOutcome { verdict, backends: backends.into_iter().collect(), masquerade },
        program: entry.describe(),
        per_verdict,
        manifest_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_picks_the_program() {
        let proxy = ProxyFlags {
            cluster_cidr: vec!["10.0.0.0/8".parse().unwrap()],
            node_ip: vec!["192.168.0.2".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(Entry::of("10.1.2.3".parse().unwrap(), &proxy), Entry::Pod);
        assert_eq!(Entry::of("192.168.0.2".parse().unwrap(), &proxy), Entry::Host);
        assert_eq!(Entry::of("203.0.113.9".parse().unwrap(), &proxy), Entry::Uplink);
        // Without a detector, pods are indistinguishable from external clients.
        let no_detector = ProxyFlags { cluster_cidr: vec![], ..proxy };
        assert_eq!(Entry::of("10.1.2.3".parse().unwrap(), &no_detector), Entry::Uplink);
    }
}
