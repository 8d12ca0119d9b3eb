//! kube-proxy conformance: the packet-flow tables of kube-proxy's own unit tests
//! (`pkg/proxy/nftables/proxier_test.go`, `packetFlowTest`), transcribed to JSON under
//! `tests/conformance/`, replayed through `lbctl trace` against the real eBPF programs.
//!
//! Case format: `/work/shared/SEMANTICS.md` section 2 (see also `tests/conformance/README.md`).
//! Each file is a JSON array of cases (one file per kube-proxy test function). For every case
//! the objects plus a Node object are written as manifests into a fresh directory and each
//! packet is traced with one `lbctl trace` run. Multi-step cases (`steps`) rewrite the
//! directory between `expect` steps.
//!
//! Every mismatch of every file is collected and reported at the end, so one run shows all
//! failures. Packets marked `knownDifference` (places where we deliberately follow iptables
//! mode rather than nftables mode) are traced and reported but never fail.
//!
//! `LB_CONFORMANCE_FILTER=substring` restricts the root test to cases whose id contains it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
};

use lb_tests::{agent::bin_dir, privileges::require_root};
use serde_json::{json, Map, Value};

const CASES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance");

/// Flows per trace: with 64 source ports Maglev reaches every member of a small backend set.
const FLOWS: u32 = 64;

/// Above this many expected backends, "hit them all" is not reliable with [`FLOWS`] flows:
/// the observed set must then be a subset with at least two members.
const MAX_EXACT_BACKENDS: usize = 4;

/// The kube-proxy test functions the suite must cover (one file each).
const REQUIRED_FILES: &[&str] = &[
    "TestNoEndpointsReject",
    "TestClusterIPGeneral",
    "TestLoadBalancer",
    "TestNodePorts",
    "TestExternalTrafficPolicyLocal",
    "TestExternalTrafficPolicyCluster",
    "TestInternalTrafficPolicy",
    "TestTerminatingEndpointsTrafficPolicyLocal",
    "TestTerminatingEndpointsTrafficPolicyCluster",
    "TestInternalExternalMasquerade",
    "TestLoadBalancerIngressRouteTypeProxy",
];

const VERDICTS: &[&str] = &["DNAT", "REJECT", "DROP", "PASS", "ACCEPT"];

// ------------------------------------------------------------------------------------------------
// The case model, parsed (and validated) from JSON
// ------------------------------------------------------------------------------------------------

struct CaseFile {
    path: PathBuf,
    cases: Vec<Case>,
}

impl CaseFile {
    fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

struct Case {
    id: String,
    node_name: String,
    local_ips: Vec<Ipv4Addr>,
    labels: Map<String, Value>,
    /// `Some` when `config.detectLocal` is set (ClusterCIDR mode).
    cluster_cidrs: Option<Vec<String>>,
    masquerade_all: bool,
    nodeport_addresses: Vec<String>,
    objects: Vec<Value>,
    packets: Vec<Packet>,
    steps: Vec<Step>,
}

enum Step {
    Apply(Vec<Value>),
    Delete(Vec<ObjKey>),
    Expect(Vec<Packet>),
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct ObjKey {
    kind: String,
    namespace: String,
    name: String,
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone)]
struct Packet {
    name: String,
    src: Ipv4Addr,
    proto: String,
    dst: Ipv4Addr,
    dport: u16,
    expect: Expect,
    known_difference: Option<String>,
}

#[derive(Clone)]
struct Expect {
    verdict: String,
    backends: Option<BTreeSet<String>>,
    masq: Option<bool>,
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.verdict)?;
        if let Some(b) = &self.backends {
            write!(f, " [{}]", b.iter().cloned().collect::<Vec<_>>().join(", "))?;
        }
        if let Some(m) = self.masq {
            write!(f, " masq={m}")?;
        }
        Ok(())
    }
}

/// Validation errors, each prefixed with where it was found.
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, at: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{at}: {msg}"));
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], at: &str, errs: &mut Errors) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            errs.push(at, format!("unknown field {k:?} (allowed: {allowed:?})"));
        }
    }
}

fn req<'a>(obj: &'a Map<String, Value>, key: &str, at: &str, errs: &mut Errors) -> Option<&'a Value> {
    let v = obj.get(key);
    if v.is_none() {
        errs.push(at, format!("missing required field {key:?}"));
    }
    v
}

fn req_str(obj: &Map<String, Value>, key: &str, at: &str, errs: &mut Errors) -> Option<String> {
    match req(obj, key, at, errs)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        other => {
            errs.push(at, format!("{key:?} must be a non-empty string, got {other}"));
            None
        }
    }
}

fn req_obj<'a>(obj: &'a Map<String, Value>, key: &str, at: &str, errs: &mut Errors) -> Option<&'a Map<String, Value>> {
    match req(obj, key, at, errs)? {
        Value::Object(m) => Some(m),
        other => {
            errs.push(at, format!("{key:?} must be an object, got {other}"));
            None
        }
    }
}

fn req_array<'a>(obj: &'a Map<String, Value>, key: &str, at: &str, errs: &mut Errors) -> Option<&'a Vec<Value>> {
    match req(obj, key, at, errs)? {
        Value::Array(a) => Some(a),
        other => {
            errs.push(at, format!("{key:?} must be an array, got {other}"));
            None
        }
    }
}

fn ipv4(v: &Value, what: &str, at: &str, errs: &mut Errors) -> Option<Ipv4Addr> {
    match v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
        Some(ip) => Some(ip),
        None => {
            errs.push(at, format!("{what} must be an IPv4 address string, got {v}"));
            None
        }
    }
}

fn is_ipv4_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.trim().split_once('/') else { return false };
    ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

fn is_ipv6_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.trim().split_once('/') else { return false };
    ip.parse::<std::net::Ipv6Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
}

fn parse_object(v: &Value, at: &str, errs: &mut Errors) -> Option<(ObjKey, Value)> {
    let Some(m) = v.as_object() else {
        errs.push(at, "object must be a JSON object");
        return None;
    };
    let api = req_str(m, "apiVersion", at, errs)?;
    let kind = req_str(m, "kind", at, errs)?;
    match (kind.as_str(), api.as_str()) {
        ("Service", "v1") | ("EndpointSlice", "discovery.k8s.io/v1") => {}
        _ => errs.push(at, format!("kind {kind} / apiVersion {api}: only v1 Service and discovery.k8s.io/v1 EndpointSlice")),
    }
    let meta = req_obj(m, "metadata", at, errs)?;
    let namespace = req_str(meta, "namespace", &format!("{at}.metadata"), errs)?;
    let name = req_str(meta, "name", &format!("{at}.metadata"), errs)?;
    Some((ObjKey { kind, namespace, name }, v.clone()))
}

fn parse_packet(v: &Value, at: &str, errs: &mut Errors) -> Option<Packet> {
    let Some(m) = v.as_object() else {
        errs.push(at, "packet must be an object");
        return None;
    };
    check_keys(m, &["name", "src", "proto", "dst", "dport", "expect", "knownDifference", "note"], at, errs);
    let name = req_str(m, "name", at, errs);
    let at = &format!("{at} ({:?})", name.as_deref().unwrap_or("?"));
    let src = req(m, "src", at, errs).and_then(|v| ipv4(v, "src", at, errs));
    let dst = req(m, "dst", at, errs).and_then(|v| ipv4(v, "dst", at, errs));
    let proto = req_str(m, "proto", at, errs).and_then(|p| {
        let up = p.to_uppercase();
        if ["TCP", "UDP", "SCTP"].contains(&up.as_str()) {
            Some(up)
        } else {
            errs.push(at, format!("proto must be TCP, UDP or SCTP, got {p:?}"));
            None
        }
    });
    let dport = req(m, "dport", at, errs).and_then(|v| match v.as_u64() {
        Some(p @ 1..=65535) => Some(p as u16),
        _ => {
            errs.push(at, format!("dport must be an integer in 1..=65535, got {v}"));
            None
        }
    });
    let known_difference = match m.get("knownDifference") {
        None => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(other) => {
            errs.push(at, format!("knownDifference must be a non-empty string (the reason), got {other}"));
            None
        }
    };
    let expect = req_obj(m, "expect", at, errs).and_then(|e| {
        let at = &format!("{at}.expect");
        check_keys(e, &["verdict", "backends", "masq"], at, errs);
        let verdict = req_str(e, "verdict", at, errs)?;
        if !VERDICTS.contains(&verdict.as_str()) {
            errs.push(at, format!("verdict must be one of {VERDICTS:?}, got {verdict:?}"));
            return None;
        }
        let backends = match (verdict.as_str(), e.get("backends")) {
            ("DNAT", None) => {
                errs.push(at, "DNAT needs \"backends\" (the set of possible ip:port targets)");
                return None;
            }
            ("DNAT", Some(Value::Array(a))) => {
                let mut set = BTreeSet::new();
                for b in a {
                    match b.as_str().and_then(|s| s.parse::<SocketAddrV4>().ok()) {
                        Some(sa) => {
                            if !set.insert(sa.to_string()) {
                                errs.push(at, format!("duplicate backend {b}"));
                            }
                        }
                        None => errs.push(at, format!("backend must be \"ipv4:port\", got {b}")),
                    }
                }
                if set.is_empty() {
                    errs.push(at, "DNAT needs at least one backend");
                }
                Some(set)
            }
            ("DNAT", Some(other)) => {
                errs.push(at, format!("backends must be an array, got {other}"));
                return None;
            }
            (_, Some(_)) => {
                errs.push(at, format!("backends are only allowed with verdict DNAT (verdict is {verdict})"));
                return None;
            }
            (_, None) => None,
        };
        let masq = match e.get("masq") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                errs.push(at, format!("masq must be a boolean, got {other}"));
                return None;
            }
        };
        Some(Expect { verdict, backends, masq })
    });
    Some(Packet { name: name?, src: src?, proto: proto?, dst: dst?, dport: dport?, expect: expect?, known_difference })
}

fn parse_packets(v: &[Value], at: &str, errs: &mut Errors) -> Vec<Packet> {
    v.iter().enumerate().filter_map(|(i, p)| parse_packet(p, &format!("{at}[{i}]"), errs)).collect()
}

fn parse_case(v: &Value, at: &str, errs: &mut Errors) -> Option<Case> {
    let Some(m) = v.as_object() else {
        errs.push(at, "case must be an object");
        return None;
    };
    check_keys(m, &["id", "origin", "node", "config", "objects", "packets", "steps", "note"], at, errs);
    let id = req_str(m, "id", at, errs);
    let at = &format!("{at} ({:?})", id.as_deref().unwrap_or("?"));

    if let Some(o) = req_obj(m, "origin", at, errs) {
        for k in ["repo", "file", "test", "license"] {
            req_str(o, k, &format!("{at}.origin"), errs);
        }
    }

    let node = req_obj(m, "node", at, errs);
    let node_at = &format!("{at}.node");
    let node_name = node.and_then(|n| req_str(n, "name", node_at, errs));
    let local_ips: Option<Vec<Ipv4Addr>> = node.and_then(|n| req_array(n, "localIPs", node_at, errs)).and_then(|a| {
        if a.is_empty() {
            errs.push(node_at, "localIPs must not be empty");
            return None;
        }
        a.iter().map(|ip| ipv4(ip, "localIPs entry", node_at, errs)).collect()
    });
    let labels = node.and_then(|n| req_obj(n, "labels", node_at, errs)).cloned();

    let config = req_obj(m, "config", at, errs);
    let cfg_at = &format!("{at}.config");
    let mut cluster_cidrs = None;
    let mut masquerade_all = false;
    let mut nodeport_addresses = Vec::new();
    if let Some(c) = config {
        check_keys(
            c,
            &["ipFamily", "detectLocal", "masqueradeAll", "nodePortAddresses", "serviceCIDRs", "features"],
            cfg_at,
            errs,
        );
        if let Some(f) = c.get("ipFamily") {
            if f != "IPv4" {
                errs.push(cfg_at, format!("only ipFamily IPv4 is supported, got {f}"));
            }
        }
        match req(c, "detectLocal", cfg_at, errs) {
            Some(Value::Null) | None => {}
            Some(Value::Object(d)) => {
                let d_at = &format!("{cfg_at}.detectLocal");
                if req_str(d, "mode", d_at, errs).is_some_and(|mode| mode != "ClusterCIDR") {
                    errs.push(d_at, "only mode ClusterCIDR is supported");
                }
                if let Some(a) = req_array(d, "cidrs", d_at, errs) {
                    let cidrs: Vec<String> = a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect();
                    if cidrs.is_empty() || cidrs.len() != a.len() || !cidrs.iter().all(|c| is_ipv4_cidr(c)) {
                        errs.push(
                            d_at,
                            format!("cidrs must be a non-empty array of IPv4 CIDRs, got {}", Value::Array(a.clone())),
                        );
                    }
                    cluster_cidrs = Some(cidrs);
                }
            }
            Some(other) => errs.push(cfg_at, format!("detectLocal must be null or an object, got {other}")),
        }
        match req(c, "masqueradeAll", cfg_at, errs) {
            Some(Value::Bool(b)) => masquerade_all = *b,
            Some(other) => errs.push(cfg_at, format!("masqueradeAll must be a boolean, got {other}")),
            None => {}
        }
        match c.get("nodePortAddresses") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for x in a {
                    match x.as_str() {
                        // IPv6 CIDRs matter to the IPv4 proxier only by their presence: a
                        // list without IPv4 CIDRs means every address (D3).
                        Some(s) if s == "primary" || is_ipv4_cidr(s) || is_ipv6_cidr(s) => nodeport_addresses.push(s.to_string()),
                        _ => errs.push(cfg_at, format!("nodePortAddresses entries must be CIDRs or \"primary\", got {x}")),
                    }
                }
            }
            Some(other) => errs.push(cfg_at, format!("nodePortAddresses must be an array or null, got {other}")),
        }
    }

    let mut keys = BTreeSet::new();
    let objects: Vec<Value> = req_array(m, "objects", at, errs)
        .map(|a| {
            a.iter()
                .enumerate()
                .filter_map(|(i, o)| {
                    let (k, v) = parse_object(o, &format!("{at}.objects[{i}]"), errs)?;
                    if !keys.insert(k.clone()) {
                        errs.push(at, format!("duplicate object {k}"));
                    }
                    Some(v)
                })
                .collect()
        })
        .unwrap_or_default();

    let packets = req_array(m, "packets", at, errs).map(|a| parse_packets(a, &format!("{at}.packets"), errs)).unwrap_or_default();

    let mut steps = Vec::new();
    match req(m, "steps", at, errs) {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, s) in a.iter().enumerate() {
                let s_at = &format!("{at}.steps[{i}]");
                let Some(sm) = s.as_object().filter(|sm| sm.len() == 1) else {
                    errs.push(s_at, "a step is an object with exactly one of \"apply\", \"delete\", \"expect\"");
                    continue;
                };
                let (kind, body) = sm.iter().next().unwrap();
                let Some(list) = body.as_array() else {
                    errs.push(s_at, format!("{kind:?} must be an array"));
                    continue;
                };
                match kind.as_str() {
                    "apply" => steps.push(Step::Apply(
                        list.iter()
                            .enumerate()
                            .filter_map(|(j, o)| parse_object(o, &format!("{s_at}.apply[{j}]"), errs).map(|(_, v)| v))
                            .collect(),
                    )),
                    "delete" => steps.push(Step::Delete(
                        list.iter()
                            .enumerate()
                            .filter_map(|(j, o)| parse_object(o, &format!("{s_at}.delete[{j}]"), errs).map(|(k, _)| k))
                            .collect(),
                    )),
                    "expect" => steps.push(Step::Expect(parse_packets(list, &format!("{s_at}.expect"), errs))),
                    other => errs.push(s_at, format!("unknown step {other:?} (apply, delete, expect)")),
                }
            }
        }
        Some(other) => errs.push(at, format!("steps must be null or an array, got {other}")),
    }

    let all_packets: Vec<&Packet> = packets
        .iter()
        .chain(steps.iter().flat_map(|s| match s {
            Step::Expect(p) => p.iter().collect(),
            _ => Vec::new(),
        }))
        .collect();
    if all_packets.is_empty() {
        errs.push(at, "no packets to check");
    }
    let mut names = BTreeSet::new();
    for p in &all_packets {
        if !names.insert(p.name.as_str()) {
            errs.push(at, format!("duplicate packet name {:?}", p.name));
        }
    }

    Some(Case {
        id: id?,
        node_name: node_name?,
        local_ips: local_ips?,
        labels: labels?,
        cluster_cidrs,
        masquerade_all,
        nodeport_addresses,
        objects,
        packets,
        steps,
    })
}

/// Reads and validates every case file; all problems of all files at once.
fn load_all() -> Result<Vec<CaseFile>, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let mut paths: Vec<PathBuf> = match fs::read_dir(CASES_DIR) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect(),
        Err(e) => return Err(vec![format!("{CASES_DIR}: {e}")]),
    };
    paths.sort();
    let mut files = Vec::new();
    let mut ids = BTreeSet::new();
    for path in paths {
        let at = path.file_name().unwrap().to_string_lossy().into_owned();
        let value: Value = match fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                errs.push(&at, format!("not valid JSON: {e}"));
                continue;
            }
        };
        let raw: Vec<Value> = match value {
            Value::Array(a) => a,
            obj @ Value::Object(_) => vec![obj],
            other => {
                errs.push(&at, format!("a case file holds a case object or an array of cases, got {other}"));
                continue;
            }
        };
        if raw.is_empty() {
            errs.push(&at, "no cases");
        }
        let cases: Vec<Case> =
            raw.iter().enumerate().filter_map(|(i, c)| parse_case(c, &format!("{at}[{i}]"), &mut errs)).collect();
        for c in &cases {
            if !ids.insert(c.id.clone()) {
                errs.push(&at, format!("duplicate case id {:?}", c.id));
            }
        }
        files.push(CaseFile { path, cases });
    }
    for required in REQUIRED_FILES {
        if !files.iter().any(|f| f.path.file_stem().is_some_and(|s| s == *required)) {
            errs.push(CASES_DIR, format!("missing case file {required}.json"));
        }
    }
    if errs.0.is_empty() {
        Ok(files)
    } else {
        Err(errs.0)
    }
}

// ------------------------------------------------------------------------------------------------
// Running
// ------------------------------------------------------------------------------------------------

/// What `lbctl trace --output json` printed.
struct Got {
    verdict: String,
    backends: BTreeSet<String>,
    masquerade: bool,
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.verdict)?;
        if !self.backends.is_empty() {
            write!(f, " [{}]", self.backends.iter().cloned().collect::<Vec<_>>().join(", "))?;
        }
        write!(f, " masq={}", self.masquerade)
    }
}

fn node_object(case: &Case) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": case.node_name, "labels": case.labels},
        "status": {"addresses": [{"type": "InternalIP", "address": case.local_ips[0].to_string()}]},
    })
}

fn obj_key(v: &Value) -> ObjKey {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    ObjKey { kind: s("/kind"), namespace: s("/metadata/namespace"), name: s("/metadata/name") }
}

/// Writes the current objects (plus the Node) as one manifest file each into a new `dir`.
fn write_manifests(dir: &Path, case: &Case, objects: &BTreeMap<ObjKey, Value>) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let write = |file: String, v: &Value| {
        let path = dir.join(file);
        fs::write(&path, serde_json::to_string_pretty(v).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };
    write("000-node.json".into(), &node_object(case));
    for (i, (k, v)) in objects.iter().enumerate() {
        write(format!("{:03}-{}-{}-{}.json", i + 1, k.kind.to_lowercase(), k.namespace, k.name), v);
    }
}

fn trace_args(case: &Case, dir: &Path, p: &Packet) -> Vec<String> {
    let mut a: Vec<String> = vec!["trace".into(), "--manifests".into(), dir.display().to_string()];
    a.extend(["--hostname-override".into(), case.node_name.clone()]);
    for ip in &case.local_ips {
        a.extend(["--node-ip".into(), ip.to_string()]);
    }
    for cidr in case.cluster_cidrs.iter().flatten() {
        a.extend(["--cluster-cidr".into(), cidr.clone()]);
    }
    if case.masquerade_all {
        a.push("--masquerade-all".into());
    }
    if !case.nodeport_addresses.is_empty() {
        a.extend(["--nodeport-addresses".into(), case.nodeport_addresses.join(",")]);
    }
    a.extend(["--proto".into(), p.proto.to_lowercase()]);
    a.extend(["--src".into(), p.src.to_string(), "--dst".into(), p.dst.to_string(), "--dport".into(), p.dport.to_string()]);
    a.extend(["--flows".into(), FLOWS.to_string(), "--output".into(), "json".into()]);
    a
}

fn shell_line(bin: &Path, args: &[String]) -> String {
    let quote = |s: &str| {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:,=@".contains(c)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(bin.display().to_string()).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

fn run_lbctl(bin: &Path, args: &[String]) -> Result<Got, String> {
    let out = Command::new(bin).args(args).output().map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("lbctl exited with {}: {}", out.status, stderr.trim()));
    }
    let v: Value =
        serde_json::from_str(stdout.trim()).map_err(|e| format!("lbctl output is not one JSON object ({e}): {stdout:?}"))?;
    let verdict = v["verdict"].as_str().ok_or_else(|| format!("no \"verdict\" string in {v}"))?.to_string();
    let backends = v["backends"]
        .as_array()
        .ok_or_else(|| format!("no \"backends\" array in {v}"))?
        .iter()
        .map(|b| b.as_str().map(str::to_string).ok_or_else(|| format!("backend is not a string in {v}")))
        .collect::<Result<_, _>>()?;
    let masquerade = v["masquerade"].as_bool().ok_or_else(|| format!("no \"masquerade\" boolean in {v}"))?;
    Ok(Got { verdict, backends, masquerade })
}

/// Why `got` does not match `want` (empty: it matches).
fn compare(want: &Expect, got: &Got) -> Vec<String> {
    let mut why = Vec::new();
    if want.verdict != got.verdict {
        why.push(format!("verdict: expected {}, got {}", want.verdict, got.verdict));
    } else if let (Some(want_b), "DNAT") = (&want.backends, want.verdict.as_str()) {
        if want_b.len() <= MAX_EXACT_BACKENDS {
            if *want_b != got.backends {
                let missing: Vec<_> = want_b.difference(&got.backends).cloned().collect();
                let extra: Vec<_> = got.backends.difference(want_b).cloned().collect();
                why.push(format!("backends differ: missing {missing:?}, unexpected {extra:?}"));
            }
        } else {
            let extra: Vec<_> = got.backends.difference(want_b).cloned().collect();
            if !extra.is_empty() {
                why.push(format!("backends outside the expected set: {extra:?}"));
            }
            if got.backends.len() < 2 {
                why.push(format!("only {} of {} backends hit over {FLOWS} flows", got.backends.len(), want_b.len()));
            }
        }
    }
    if let Some(m) = want.masq {
        if m != got.masquerade {
            why.push(format!("masquerade: expected {m}, got {}", got.masquerade));
        }
    }
    why
}

#[derive(Default)]
struct Tally {
    passed: usize,
    known: Vec<String>,
    failed: Vec<String>,
    passed_ids: Vec<String>,
}

fn run_case(bin: &Path, root: &Path, file: &CaseFile, index: usize, case: &Case, tally: &mut Tally) {
    let mut objects: BTreeMap<ObjKey, Value> = case.objects.iter().map(|o| (obj_key(o), o.clone())).collect();
    let case_dir = root.join(file.path.file_stem().unwrap()).join(format!("case{index}"));
    // The initial packets, then each step in order; every `expect` gets a fresh directory
    // written from the objects as they are at that point.
    let mut phases: Vec<(String, Vec<Packet>)> = Vec::new();
    let mut dirs: Vec<(PathBuf, BTreeMap<ObjKey, Value>)> = Vec::new();
    phases.push((String::new(), case.packets.clone()));
    dirs.push((case_dir.join("step0"), objects.clone()));
    let mut applied = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Apply(objs) => {
                for o in objs {
                    applied.push(format!("apply {}", obj_key(o)));
                    objects.insert(obj_key(o), o.clone());
                }
            }
            Step::Delete(keys) => {
                for k in keys {
                    applied.push(format!("delete {k}"));
                    if objects.remove(k).is_none() {
                        tally.failed.push(format!(
                            "FAIL {} :: {} :: step {i}: delete of {k}: no such object",
                            file.name(),
                            case.id
                        ));
                    }
                }
            }
            Step::Expect(p) => {
                phases.push((format!(" (after step {i}: {})", applied.join(", ")), p.clone()));
                dirs.push((case_dir.join(format!("step{}", i + 1)), objects.clone()));
            }
        }
    }
    for ((phase, packets), (dir, objs)) in phases.iter().zip(&dirs) {
        if packets.is_empty() {
            continue;
        }
        write_manifests(dir, case, objs);
        for p in packets {
            let args = trace_args(case, dir, p);
            let line = shell_line(bin, &args);
            let head = format!("{} :: {} :: {:?}{phase}", file.name(), case.id, p.name);
            let (ok, detail) = match run_lbctl(bin, &args) {
                Ok(got) => {
                    let why = compare(&p.expect, &got);
                    (
                        why.is_empty(),
                        format!(
                            "  expected: {}\n  got:      {got}\n{}",
                            p.expect,
                            why.iter().map(|w| format!("  why:      {w}\n")).collect::<String>()
                        ),
                    )
                }
                Err(e) => (false, format!("  expected: {}\n  error:    {e}\n", p.expect)),
            };
            if let Some(reason) = &p.known_difference {
                let status = if ok { "now matches kube-proxy nftables" } else { "differs, as documented" };
                tally.known.push(format!("KNOWN {head}: {status}\n  reason:   {reason}\n  command:  {line}\n{detail}"));
            } else if ok {
                tally.passed += 1;
                tally.passed_ids.push(format!("{} :: {:?}{phase}", case.id, p.name));
            } else {
                tally.failed.push(format!("FAIL {head}\n  command:  {line}\n{detail}"));
            }
        }
    }
}

#[test]
fn conformance_case_files_are_well_formed() {
    let files =
        load_all().unwrap_or_else(|errs| panic!("malformed conformance cases ({} problems):\n{}", errs.len(), errs.join("\n")));
    let mut summary = String::new();
    for f in &files {
        let packets: usize = f
            .cases
            .iter()
            .map(|c| c.packets.len() + c.steps.iter().map(|s| if let Step::Expect(p) = s { p.len() } else { 0 }).sum::<usize>())
            .sum();
        writeln!(summary, "{}: {} cases, {} packets", f.name(), f.cases.len(), packets).unwrap();
    }
    println!("{summary}");
}

#[test]
fn schema_check_rejects_malformed_cases() {
    let good = json!({
        "id": "x", "origin": {"repo": "r", "file": "f", "test": "t", "license": "Apache-2.0"},
        "node": {"name": "n", "localIPs": ["192.168.0.2"], "labels": {}},
        "config": {"detectLocal": null, "masqueradeAll": false},
        "objects": [], "steps": null,
        "packets": [{"name": "p", "src": "10.0.0.2", "proto": "TCP", "dst": "172.30.0.41", "dport": 80,
                     "expect": {"verdict": "DNAT", "backends": ["10.180.0.1:80"], "masq": false}}]
    });
    let mut errs = Errors(Vec::new());
    assert!(parse_case(&good, "good", &mut errs).is_some() && errs.0.is_empty(), "{:?}", errs.0);

    let bad = |patch: &dyn Fn(&mut Value), needle: &str| {
        let mut v = good.clone();
        patch(&mut v);
        let mut errs = Errors(Vec::new());
        parse_case(&v, "bad", &mut errs);
        assert!(errs.0.iter().any(|e| e.contains(needle)), "expected an error containing {needle:?}, got {:?}", errs.0);
    };
    bad(&|v| v["packets"][0]["expect"]["verdict"] = json!("ALLOW"), "verdict must be one of");
    bad(
        &|v| v["packets"][0]["expect"] = json!({"verdict": "DROP", "backends": ["10.180.0.1:80"]}),
        "only allowed with verdict DNAT",
    );
    bad(&|v| v["packets"][0]["expect"] = json!({"verdict": "DNAT"}), "DNAT needs \"backends\"");
    bad(&|v| v["packets"][0]["expect"]["backends"] = json!(["10.180.0.1"]), "ipv4:port");
    bad(&|v| v["packets"][0]["proto"] = json!("ICMP"), "proto must be");
    bad(&|v| v["packets"][0]["dport"] = json!(0), "dport");
    bad(&|v| v["packets"][0]["src"] = json!("2001:db8::1"), "IPv4");
    bad(&|v| v["packets"][0]["knowndifference"] = json!("typo"), "unknown field");
    bad(&|v| v.as_object_mut().unwrap().remove("node").map(|_| ()).unwrap(), "missing required field \"node\"");
    bad(&|v| v["config"]["detectLocal"] = json!({"mode": "ClusterCIDR", "cidrs": ["10.0.0.0/33"]}), "IPv4 CIDRs");
    bad(
        &|v| v["objects"] = json!([{"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "a", "name": "b"}}]),
        "only v1 Service",
    );
    bad(&|v| v["steps"] = json!([{"expect": [], "delete": []}]), "exactly one of");
    bad(&|v| v["packets"] = json!([]), "no packets");
}

#[test]
fn comparison_treats_backends_as_a_set() {
    let want = |v: &str, b: &[&str], m: Option<bool>| Expect {
        verdict: v.into(),
        backends: (v == "DNAT").then(|| b.iter().map(|s| s.to_string()).collect()),
        masq: m,
    };
    let got = |v: &str, b: &[&str], m: bool| Got {
        verdict: v.into(),
        backends: b.iter().map(|s| s.to_string()).collect(),
        masquerade: m,
    };
    assert!(compare(
        &want("DNAT", &["1.1.1.1:80", "2.2.2.2:80"], Some(false)),
        &got("DNAT", &["2.2.2.2:80", "1.1.1.1:80"], false)
    )
    .is_empty());
    assert!(!compare(&want("DNAT", &["1.1.1.1:80", "2.2.2.2:80"], None), &got("DNAT", &["1.1.1.1:80"], true)).is_empty());
    assert!(!compare(&want("DNAT", &["1.1.1.1:80"], Some(true)), &got("DNAT", &["1.1.1.1:80"], false)).is_empty());
    assert!(compare(&want("PASS", &[], None), &got("PASS", &[], true)).is_empty());
    assert!(!compare(&want("REJECT", &[], Some(false)), &got("PASS", &[], false)).is_empty());
    let five = ["1.0.0.1:80", "1.0.0.2:80", "1.0.0.3:80", "1.0.0.4:80", "1.0.0.5:80"];
    assert!(compare(&want("DNAT", &five, None), &got("DNAT", &five[..3], false)).is_empty());
    assert!(!compare(&want("DNAT", &five, None), &got("DNAT", &five[..1], false)).is_empty());
    assert!(!compare(&want("DNAT", &five, None), &got("DNAT", &["9.9.9.9:80", "1.0.0.1:80"], false)).is_empty());
}

#[test]
fn conformance_kube_proxy_packet_flows() {
    if !require_root("conformance_kube_proxy_packet_flows") {
        return;
    }
    let files = load_all().unwrap_or_else(|errs| panic!("malformed conformance cases:\n{}", errs.join("\n")));
    let bin = bin_dir().join("lbctl");
    assert!(bin.exists(), "{} not built (cargo build -p lb-userspace --bin lbctl)", bin.display());
    let filter = std::env::var("LB_CONFORMANCE_FILTER").ok();
    let root = std::env::temp_dir().join(format!("lb-conformance-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);

    let mut tally = Tally::default();
    for file in &files {
        for (i, case) in file.cases.iter().enumerate() {
            if filter.as_deref().is_some_and(|f| !case.id.contains(f)) {
                continue;
            }
            run_case(&bin, &root, file, i, case, &mut tally);
        }
    }

    for k in &tally.known {
        println!("{k}");
    }
    for p in &tally.passed_ids {
        println!("ok   {p}");
    }
    let summary =
        format!("conformance: {} passed, {} known differences, {} failed", tally.passed, tally.known.len(), tally.failed.len());
    println!("{summary}");
    if tally.failed.is_empty() {
        let _ = fs::remove_dir_all(&root);
    } else {
        panic!(
            "{} conformance mismatches (manifests kept under {}):\n\n{}\n{summary}",
            tally.failed.len(),
            root.display(),
            tally.failed.join("\n")
        );
    }
}
