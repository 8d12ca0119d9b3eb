//! `lbctl trace`: where does this packet go, and why — answered by the real programs.
//!
//! The same eBPF object as the agent's is loaded with private (unpinned) maps, programmed from
//! manifests through the agent's own translation ([`crate::model::translate`]) and writer
//! ([`crate::dataplane::writer::Writer`]), and the program that would receive the packet is
//! run through BPF_PROG_TEST_RUN on a real frame, once per flow (different source ports).

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};

use crate::{
    dataplane::{attach::load_pod_program, load_object, writer::Writer, Capacity, MapSet},
    manifests,
    model::{self, NodeInfo, Protocol, TranslateOptions},
    packet,
};

/// What to trace.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub manifests: PathBuf,
    pub node_name: String,
    pub node_ips: Vec<Ipv4Addr>,
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

/// The node's labels from a Node object named `name` among the manifests (empty otherwise).
pub fn node_info(objects: &manifests::ObjectSet, name: &str) -> NodeInfo {
    let labels = objects
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    NodeInfo { name: name.to_string(), labels }
}

pub fn run(req: &TraceRequest) -> Result<TraceDetails> {
    if req.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let report = manifests::load_path(&req.manifests);
    let node = node_info(&report.objects, &req.node_name);
    let (desired, errors) =
        model::translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
    let mut manifest_errors = report.errors.clone();
    manifest_errors.extend(errors.iter().map(|e| e.to_string()));

    let cap = Capacity {
        max_frontends: 4096.max(desired.services.len() as u32 * 4),
        max_service_ports: 1024.max(desired.services.len() as u32 + 1),
        max_backends: 4096.max(desired.services.values().map(|s| s.endpoints.len() as u32).sum::<u32>() + 1),
        conntrack_entries: 4096.max(req.flows * 4),
        ..Capacity::default()
    };
    let mut ebpf = load_object(&cap, None)?;
    let maps = MapSet::take(&mut ebpf, &cap, None)?;
    let mut writer = Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT)?;
    let sync = writer.apply(&desired);
    manifest_errors.extend(sync.errors);

    let prog = load_pod_program(&mut ebpf)?;
    let program = "lb_pod_ingress (tc ingress, pod-facing interface)";
    let mut backends = BTreeSet::new();
    let mut per_verdict = std::collections::BTreeMap::new();
    for i in 0..req.flows {
        let sport = 10_000 + (i % 50_000) as u16;
        let frame = packet::build(req.proto, req.src, sport, req.dst, req.dport, b"lbctl-trace");
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::new() })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        let verdict = match result.return_value {
            TC_ACT_SHOT => "DROP".to_string(),
            TC_ACT_OK => {
                let s = packet::summarize(&out).context("reading the program's output frame")?;
                if s.dst != req.dst || s.dport != req.dport {
                    backends.insert(format!("{}:{}", s.dst, s.dport));
                    "DNAT".to_string()
                } else {
                    "PASS".to_string()
                }
            }
            other => format!("TC_ACT_{other}"),
        };
        *per_verdict.entry(verdict).or_insert(0u32) += 1;
    }
    let verdict = ["DNAT", "REJECT", "DROP", "PASS"]
        .into_iter()
        .find(|v| per_verdict.contains_key(*v))
        .map(str::to_string)
        .unwrap_or_else(|| per_verdict.keys().next().cloned().unwrap_or_default());
    Ok(TraceDetails {
        outcome: TraceOutcome { verdict, backends: backends.into_iter().collect(), masquerade: false },
        program,
        per_verdict,
        manifest_errors,
    })
}
