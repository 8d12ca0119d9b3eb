//! Fuzz suite: every datapath program (`lb_pod_ingress`, `lb_host_egress`, `lb_uplink`,
//! `lb_uplink_deliver`) through BPF_PROG_TEST_RUN with seeded random and mutated frames, each
//! output checked against invariants derived from the datapath's documented policy
//! (lb-ebpf/src/lb.rs, parse.rs, frag.rs, related.rs, reject.rs).
//!
//! Frames: valid service frames (TCP/UDP/SCTP to ClusterIPs, NodePorts on the node address,
//! an ExternalIP, a LoadBalancer IP with source ranges, services without endpoints), replies
//! of the flows the run created, ICMP errors about those flows, fragmented datagrams (in
//! order, reversed, shuffled, one lost), traffic between foreign addresses, non-IPv4
//! ethertypes (ARP, IPv6, VLAN, QinQ), random bytes, and mutations of all of them
//! (truncation, bit flips, header bytes, IHL 0..15, total length, IP options valid and
//! garbage, fragment fields, TCP data offset, protocol numbers, ethertypes, addresses,
//! ports, TTL, version, trailers); now and then a frame is cut at every length.
//!
//! Invariants, for every frame (each violation reports the seed, the frame index, what the
//! frame was and both frames in hex):
//! - the verdict is one the program may return; REDIRECT / XDP_TX only for frames it changed;
//! - a frame the datapath cannot or must not translate passes untouched: not IPv4 to the
//!   datapath, protocols without ports, ICMP that is no error about a flow, anything that is
//!   not for a service frontend and whose source is no backend (it matches no flow), later
//!   fragments whose first fragment was never seen, away from service addresses;
//! - a frame to a service address that cannot be translated consistently (truncated
//!   transport header, SCTP fragment, fragment of an unknown datagram) is dropped;
//! - a service frame (to a frontend, with its ports) is never passed untouched: translated,
//!   rejected or dropped;
//! - a changed frame is a whole translation: DNAT to an endpoint of the frontend's service
//!   (the source kept or masqueraded to the node; on a LoadBalancer IP only from its source
//!   ranges), a reverse NAT to exactly the frontend and
//!   client of the flow the reply belongs to, a later fragment rewritten like its flow, an
//!   ICMP error about a flow with its outer and quoted headers translated, or a REJECT (ICMP
//!   port unreachable from the frontend to the sender, quoting the frame). Only the fields
//!   of that translation change (plus, when the program delivers the frame itself, the MAC
//!   addresses and the TTL, decremented by one); every checksum is updated consistently:
//!   valid stays valid (checked by etherparse where the input is a whole valid packet), and
//!   an invalid one stays invalid by the same amount (incremental updates, never half fixed);
//! - a dropped frame may be anything;
//! - conntrack comes before the frontends (as in netfilter): a frame to a frontend that is the
//!   reply of a flow the run just created (masqueraded to node:port, the port a NodePort's
//!   number) is reverse-NATed, and so are its later fragments; never load-balanced, rejected
//!   or dropped as a new connection (collected apart: the run goes on, the test fails at the
//!   end).
//!
//! `lb_uplink_deliver` delivers only frames `lb_uplink` handed over in the XDP metadata, which
//! BPF_PROG_TEST_RUN cannot attach to an skb: through it, every frame must pass untouched.
//! BPF_PROG_TEST_RUN refuses frames shorter than the Ethernet header (none are generated) and,
//! for tc, frames whose ethertype says IPv4 (IPv6) but which are shorter than that header
//! (EINVAL): those are counted and not run; any other refusal fails the test.
//!
//! `LB_FUZZ_SEED` (decimal or 0x-hex) picks the seed, `LB_FUZZ_FRAMES` the frames per program
//! (default 250 000: 1 000 000 over the four programs); `LB_FUZZ_OBJECT` fuzzes another build
//! of the datapath (an object file, as `lb-agent --ebpf-object`) instead of the embedded one.
//! The datapath keeps time (conntrack refreshes and timeouts), so a seed replays the same
//! frames as long as its timed decisions fall alike; every report carries the frames' bytes.

// Arrays of byte ranges (`&[24..34]`) are what the checks pass around, not vectors.
#![allow(clippy::single_range_in_vec_init)]

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    net::Ipv4Addr,
    ops::Range,
    process::Command,
    time::Instant,
};

use aya::{
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{xdp_meta, Counter};
use lb_tests::privileges::require_root;
use lb_userspace::{
    dataplane::{
        attach::{load_tc_program, load_xdp_program},
        load_object_from, names,
        writer::{NodeNet, Writer},
        Capacity, MapSet,
    },
    manifests,
    model::{translate, DesiredState, NodeInfo, TranslateOptions},
    packet::{sctp_crc32c, summarize, DST_MAC, SRC_MAC},
};

mod common;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

const DEFAULT_SEED: u64 = 0x1b_f022_5eed;
const DEFAULT_FRAMES: u64 = 250_000;
/// Violations collected before a run stops (the first ones are the interesting ones).
const MAX_VIOLATIONS: usize = 8;
/// Below this many frames per program the coverage checks at the end are skipped.
const COVERAGE_FRAMES: u64 = 50_000;

/// The node: its address on the uplink (`wan`), the NodePort address and masquerade source.
const NODE: [u8; 4] = [192, 168, 7, 1];
/// The uplink's gateway (remote nodes and the Internet are behind it).
const GATEWAY: [u8; 4] = [192, 168, 7, 254];
/// Sources of service traffic: local pods, a remote pod, external clients (inside and outside
/// the LoadBalancer's source ranges), the node itself, and a backend (hairpin).
const CLIENTS: [[u8; 4]; 9] = [
    [10, 244, 1, 10],
    [10, 244, 1, 20],
    [10, 244, 3, 5],
    [192, 168, 7, 100],
    [203, 0, 113, 7],
    [203, 0, 113, 200],
    [198, 51, 100, 9],
    NODE,
    [10, 244, 1, 11],
];
const NODE_PORTS: [u16; 9] = [30009, 30053, 30080, 30081, 30082, 30083, 30084, 30085, 30089];

/// web: every protocol, a NodePort each and an ExternalIP; empty: no endpoints (REJECT);
/// local / remote: externalTrafficPolicy Local with a local endpoint / with none; lb: a
/// LoadBalancer IP with source ranges; alias: the same backend as web behind another frontend
/// (source port remapping); sticky: ClientIP affinity.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.10]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}
  - {name: sctp, port: 9, targetPort: 9999, nodePort: 30009, protocol: SCTP}
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: empty}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80, nodePort: 30082, protocol: TCP}
  - {name: dns, port: 53, nodePort: 30083, protocol: UDP}
  - {name: sctp, port: 9, nodePort: 30089, protocol: SCTP}
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: remote}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.12
  ports: [{name: dns, port: 53, targetPort: 5353, nodePort: 30085, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.13
  loadBalancerSourceRanges: [203.0.113.0/25]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30084, protocol: TCP}]
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: alias}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: sticky}
spec:
  clusterIP: 10.96.0.50
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}]
"#;

fn slice(service: &str, ports: &str, endpoints: &[(&str, &str)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, node)| format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n"))
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  namespace: ns\n  name: {service}-1\n  \
         labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: {ports}\nendpoints:\n{eps}"
    )
}

/// The desired state and the node's network (pods in 10.244.0.0/16, masquerade from NODE).
fn config() -> (DesiredState, NodeNet) {
    let http = "[{name: http, port: 8080, protocol: TCP}]";
    let dns = "[{name: dns, port: 5353, protocol: UDP}]";
    let (a, b, r) = (("10.244.1.11", "node1"), ("10.244.1.12", "node1"), ("10.244.2.21", "node2"));
    let mut yaml = MANIFESTS.to_string();
    yaml.push_str(&slice(
        "web",
        "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}, \
         {name: sctp, port: 9999, protocol: SCTP}]",
        &[a, b, r],
    ));
    yaml.push_str(&slice("local", http, &[a, r]));
    yaml.push_str(&slice("remote", dns, &[r]));
    yaml.push_str(&slice("lb", http, &[a, b]));
    yaml.push_str(&slice("alias", http, &[a]));
    yaml.push_str(&slice("sticky", dns, &[a, b, r]));
    let report = manifests::parse_str(&yaml, "fuzz.yaml");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = NodeInfo { name: "node1".into(), labels: Default::default() };
    let (desired, errors) = translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    let node_ip = Ipv4Addr::from(NODE);
    let net = NodeNet {
        nodeport_ips: vec![node_ip],
        local_ips: vec![node_ip],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        masquerade_all: false,
        snat_ip: Some(node_ip),
    };
    (desired, net)
}

// ---------------------------------------------------------------------------------------
// What the configuration says (the oracle of the checks).

struct SvcInfo {
    name: String,
    /// Every endpoint: (address, target port).
    backends: HashSet<(u32, u16)>,
    has_endpoints: bool,
    /// The LoadBalancer IPs and the sources they admit (loadBalancerSourceRanges; SEMANTICS
    /// D7: the NodePort and ClusterIP of the service are open to all).
    lb_ips: Vec<u32>,
    source_ranges: Vec<ipnet::Ipv4Net>,
}

impl SvcInfo {
    fn admits(&self, frontend: u32, source: u32) -> bool {
        self.source_ranges.is_empty()
            || !self.lb_ips.contains(&frontend)
            || self.source_ranges.iter().any(|net| net.contains(&ip(source)))
    }
}

struct Oracle {
    /// (address, port, protocol) → service port.
    frontends: HashMap<(u32, u16, u8), usize>,
    list: Vec<(u32, u16, u8)>,
    svcs: Vec<SvcInfo>,
    /// Every frontend address (the datapath's address markers).
    service_addrs: HashSet<u32>,
    node_addrs: HashSet<u32>,
    backend_addrs: HashSet<u32>,
    snat: u32,
    /// Addresses worth putting into a mutated frame.
    interesting: Vec<u32>,
}

impl Oracle {
    /// The frontends as the writer programs them (SEMANTICS D1–D6): the ClusterIP, the
    /// NodePort on every NodePort address, the ExternalIPs and LoadBalancer IPs.
    fn new(desired: &DesiredState, node: &NodeNet) -> Oracle {
        let mut o = Oracle {
            frontends: HashMap::new(),
            list: Vec::new(),
            svcs: Vec::new(),
            service_addrs: HashSet::new(),
            node_addrs: node.local_ips.iter().map(|ip| u32::from(*ip)).collect(),
            backend_addrs: HashSet::new(),
            snat: node.snat_ip.map_or(0, u32::from),
            interesting: Vec::new(),
        };
        for (name, st) in &desired.services {
            let id = o.svcs.len();
            let proto = st.protocol.number();
            let mut keys = vec![(u32::from(st.cluster_ip), st.port)];
            if let Some(np) = st.node_port {
                keys.extend(node.nodeport_ips.iter().map(|ip| (u32::from(*ip), np)));
            }
            keys.extend(st.external_ips.iter().chain(&st.load_balancer_ips).map(|ip| (u32::from(*ip), st.port)));
            for (a, p) in keys {
                o.frontends.insert((a, p, proto), id);
                o.list.push((a, p, proto));
                o.service_addrs.insert(a);
            }
            let backends: HashSet<(u32, u16)> = st.endpoints.iter().map(|e| (u32::from(e.ip), e.port)).collect();
            o.backend_addrs.extend(backends.iter().map(|b| b.0));
            o.svcs.push(SvcInfo {
                name: name.to_string(),
                backends,
                has_endpoints: st.has_any_endpoints,
                lb_ips: st.load_balancer_ips.iter().map(|a| u32::from(*a)).collect(),
                source_ranges: st.load_balancer_source_ranges.clone(),
            });
        }
        o.list.sort();
        o.list.dedup();
        let mut all: Vec<u32> = o.service_addrs.iter().chain(&o.backend_addrs).chain(&o.node_addrs).copied().collect();
        all.extend(CLIENTS.iter().map(|c| u32::from_be_bytes(*c)));
        all.extend([0, u32::MAX, u32::from_be_bytes(GATEWAY)]);
        all.sort();
        all.dedup();
        o.interesting = all;
        o
    }
}

// ---------------------------------------------------------------------------------------
// What the run has seen the datapath do (the flows it created), and the first fragments it
// sent: a superset of what the datapath's maps hold (entries it evicted or expired are
// simply unknown to it; it then passes or drops, never translates, which the checks allow).

/// (source, source port, destination, destination port, protocol).
type Tuple = (u32, u16, u32, u16, u8);

#[derive(Default)]
struct Model {
    /// Client tuple → the tuple it was translated to (latest translation seen).
    forward: HashMap<Tuple, Tuple>,
    /// Reply tuple (backend → client or masquerade address) → what a reply is restored to
    /// (frontend → client), with the frame index that created it.
    reply: HashMap<Tuple, (Tuple, u64)>,
    /// A datagram's first fragment, as the datapath remembers it: (source, destination,
    /// identification, protocol) → ports.
    frags: HashMap<(u32, u32, u16, u8), (u16, u16)>,
    /// Recent flows (client tuple, translated tuple), for replies and ICMP errors.
    flows: Vec<(Tuple, Tuple)>,
    next_flow: usize,
}

const FLOW_RING: usize = 4096;
/// A flow created at most this many frames ago is certainly still tracked by the datapath
/// (the shortest timeout is 10 s; a run does tens of thousands of frames a second).
const FRESH_FRAMES: u64 = 2_000;

impl Model {
    fn record(&mut self, client: Tuple, translated: Tuple, idx: u64) {
        self.forward.insert(client, translated);
        let reply_key = (translated.2, translated.3, translated.0, translated.1, translated.4);
        self.reply.insert(reply_key, ((client.2, client.3, client.0, client.1, client.4), idx));
        if self.flows.len() < FLOW_RING {
            self.flows.push((client, translated));
        } else {
            self.flows[self.next_flow] = (client, translated);
            self.next_flow = (self.next_flow + 1) % FLOW_RING;
        }
    }

    /// `frag::remember`: a TCP/UDP first fragment with its ports leaves them for the rest.
    fn remember(&mut self, v: &View) {
        if v.frag == Frag::First && matches!(v.proto, TCP | UDP) {
            if let Some(ports) = v.ports {
                self.frags.insert((v.saddr, v.daddr, v.id, v.proto), ports);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames as the datapath's parser sees them (parse.rs).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Frag {
    None,
    /// MF set, offset 0.
    First,
    /// Offset > 0.
    Later,
}

#[derive(Clone, Copy, Debug)]
struct View {
    l4_off: usize,
    tot_len: u16,
    saddr: u32,
    daddr: u32,
    proto: u8,
    id: u16,
    frag: Frag,
    /// The transport ports when the datapath reads them (`has_l4`).
    ports: Option<(u16, u16)>,
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// `parse::parse`: `None` is `Parsed::Other` (passed untouched).
fn view(f: &[u8]) -> Option<View> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 || f[14] & 0x0f < 5 {
        return None;
    }
    let l4_off = 14 + (f[14] & 0x0f) as usize * 4;
    if f.len() < l4_off {
        return None;
    }
    let fo = be16(f, 20);
    let frag = if fo & 0x1fff != 0 {
        Frag::Later
    } else if fo & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    let proto = f[23];
    let need = match proto {
        TCP => 20,
        UDP => 8,
        SCTP => 12,
        _ => usize::MAX,
    };
    let reads_l4 = frag != Frag::Later && !(frag == Frag::First && proto == SCTP);
    let ports = (reads_l4 && need != usize::MAX && l4_off + need <= f.len()).then(|| (be16(f, l4_off), be16(f, l4_off + 2)));
    Some(View { l4_off, tot_len: be16(f, 16), saddr: be32(f, 26), daddr: be32(f, 30), proto, id: be16(f, 18), frag, ports })
}

// ---------------------------------------------------------------------------------------
// Checksums (own code; etherparse checks whole valid packets independently).

/// One's complement sum of `data` as big-endian 16-bit words, added to `acc` (partly folded).
fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut acc = acc;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = words.remainder() {
        acc += (*b as u32) << 8;
    }
    (acc & 0xffff) + (acc >> 16)
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The one's complement sum of the given (word-aligned) ranges, as a number mod 0xffff (0 and
/// 0xffff are the same one's complement number). An incremental checksum update leaves the
/// sum over the changed fields and the checksum unchanged, whatever the rest of the packet.
fn residual(f: &[u8], ranges: &[Range<usize>]) -> u16 {
    let s = fold(ranges.iter().fold(0, |acc, r| sum(acc, &f[r.clone()])));
    if s == 0xffff {
        0
    } else {
        s
    }
}

fn ip_valid(f: &[u8]) -> Option<bool> {
    let hl = (f[14] & 0x0f) as usize * 4;
    (hl >= 20 && f.len() >= 14 + hl).then(|| fold(sum(0, &f[14..14 + hl])) == 0xffff)
}

fn pseudo(f: &[u8], proto: u8, len: usize) -> u32 {
    sum(sum(0, &f[26..34]), &[0, proto]) + len as u32
}

/// Whether the transport (or ICMP) checksum over the segment the IPv4 total length claims is
/// valid; `None` when that segment is not all in the frame or shorter than its header, or the
/// frame is a fragment (the checksum covers the whole datagram).
fn l4_valid(f: &[u8], v: &View) -> Option<bool> {
    let end = 14 + v.tot_len as usize;
    let hdr = match v.proto {
        TCP => 20,
        UDP | ICMP => 8,
        SCTP => 12,
        _ => return None,
    };
    if v.frag != Frag::None || end > f.len() || end < v.l4_off + hdr {
        return None;
    }
    let (l, seg) = (v.l4_off, &f[v.l4_off..end]);
    Some(match v.proto {
        TCP => fold(sum(pseudo(f, TCP, seg.len()), seg)) == 0xffff,
        UDP => be16(f, l + 6) == 0 || fold(sum(pseudo(f, UDP, seg.len()), seg)) == 0xffff,
        SCTP => {
            let mut c = seg.to_vec();
            let stored = u32::from_le_bytes([c[8], c[9], c[10], c[11]]);
            c[8..12].fill(0);
            sctp_crc32c(&c) == stored
        }
        _ => fold(sum(0, seg)) == 0xffff,
    })
}

fn fix_ip(f: &mut [u8]) {
    let hl = (f.get(14).copied().unwrap_or(0) & 0x0f) as usize * 4;
    if hl >= 20 && f.len() >= 14 + hl {
        f[24..26].fill(0);
        let c = !fold(sum(0, &f[14..14 + hl]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

/// Recomputes the transport (or ICMP) checksum over what the total length claims (as far as
/// the frame goes); not for fragments.
fn fix_l4(f: &mut [u8]) {
    if f.len() < 34 || f[14] & 0x0f < 5 || be16(f, 20) & 0x3fff != 0 {
        return;
    }
    let l = 14 + (f[14] & 0x0f) as usize * 4;
    let end = (14 + be16(f, 16) as usize).min(f.len());
    let proto = f[23];
    let at = match proto {
        TCP => l + 16,
        UDP => l + 6,
        ICMP => l + 2,
        SCTP => l + 8,
        _ => return,
    };
    if end < at + 2 || (proto == SCTP && end < l + 12) {
        return;
    }
    if proto == SCTP {
        f[l + 8..l + 12].fill(0);
        let crc = sctp_crc32c(&f[l..end]);
        f[l + 8..l + 12].copy_from_slice(&crc.to_le_bytes());
        return;
    }
    f[at..at + 2].fill(0);
    let init = if proto == ICMP { 0 } else { pseudo(f, proto, end - l) };
    let mut c = !fold(sum(init, &f[l..end]));
    if proto == UDP && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

// ---------------------------------------------------------------------------------------
// Building frames.

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;

/// Ethernet + IPv4 (with `options`, a multiple of 4 bytes) + `l4`; the IPv4 checksum set.
#[allow(clippy::too_many_arguments)]
fn ip_frame(src: u32, dst: u32, proto: u8, ttl: u8, id: u16, frag: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let hl = 20 + options.len();
    let mut f = Vec::with_capacity(14 + hl + l4.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x40 | (hl / 4) as u8, 0]);
    f.extend_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[ttl, proto, 0, 0]);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(options);
    fix_ip(&mut f);
    f.extend_from_slice(l4);
    f
}

fn tcp_hdr(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&ack.to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

fn udp_hdr(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn sctp_hdr(sport: u16, dport: u16, vtag: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(12 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&vtag.to_be_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(payload);
    h
}

fn icmp_msg(ty: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quote);
    let c = !fold(sum(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Splits an unfragmented frame's IPv4 payload into fragments of the given payload sizes
/// (multiples of 8; the last takes the rest), each with the header (and its options).
fn fragment(frame: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let l = 14 + (frame[14] & 0x0f) as usize * 4;
    let payload = &frame[l..];
    let mut out = Vec::new();
    let mut at = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let last = i + 1 == sizes.len() || at + len >= payload.len();
        let len = if last { payload.len() - at } else { len };
        let mut f = frame[..l].to_vec();
        f.extend_from_slice(&payload[at..at + len]);
        let tot = (l - 14 + len) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        let field = (at / 8) as u16 | if last { 0 } else { 0x2000 };
        f[20..22].copy_from_slice(&field.to_be_bytes());
        fix_ip(&mut f);
        out.push(f);
        at += len;
        if last {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The generator.

struct Gen {
    rng: fastrand::Rng,
    queue: VecDeque<(Vec<u8>, String)>,
}

impl Gen {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.usize(..items.len())]
    }

    fn client(&mut self) -> u32 {
        u32::from_be_bytes(self.pick(&CLIENTS))
    }

    fn sport(&mut self) -> u16 {
        match self.rng.u8(0..100) {
            0..=69 => 40_000 + self.rng.u16(0..48),
            70..=84 => self.rng.u16(1..),
            85..=94 => self.rng.u16(32_768..=60_999),
            // A client port that is a NodePort: kept by the masquerade (outside the node's
            // ephemeral range), so the reply goes to NODE:<NodePort>.
            _ => self.pick(&NODE_PORTS),
        }
    }

    fn ttl(&mut self) -> u8 {
        match self.rng.u8(0..100) {
            0..=89 => 64,
            90..=94 => 1,
            95..=96 => 0,
            _ => self.rng.u8(..),
        }
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let mut p = vec![0u8; self.rng.usize(0..=max)];
        self.rng.fill(&mut p);
        p
    }

    fn tcp_flags(&mut self, reply: bool) -> u8 {
        match self.rng.u8(0..100) {
            0..=44 if reply => SYN | ACK,
            0..=44 => SYN,
            45..=69 => ACK,
            70..=79 => PSH | ACK,
            80..=86 => FIN | ACK,
            87..=91 => RST,
            92..=94 => RST | ACK,
            _ => self.rng.u8(..),
        }
    }

    fn l4(&mut self, proto: u8, sport: u16, dport: u16, reply: bool, max_payload: usize) -> Vec<u8> {
        let payload = self.payload(max_payload);
        match proto {
            TCP => {
                let flags = self.tcp_flags(reply);
                let seq = if self.rng.bool() { 1000 + self.rng.u32(0..100) } else { self.rng.u32(..) };
                let mut h = tcp_hdr(sport, dport, seq, self.rng.u32(..), flags, &payload);
                if self.rng.u8(0..5) == 0 {
                    // Options: MSS, SACK permitted, timestamps, window scale (data offset 10).
                    let mut opts = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
                    opts.extend_from_slice(&self.rng.u32(..).to_be_bytes());
                    opts.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
                    h.splice(20..20, opts);
                    h[12] = 10 << 4;
                }
                h
            }
            UDP => udp_hdr(sport, dport, &payload),
            SCTP => {
                let vtag = self.rng.u32(..);
                sctp_hdr(sport, dport, vtag, &payload)
            }
            _ => payload,
        }
    }

    /// IP options: NOP/EOL padding or a record route (valid), or random bytes.
    fn options(&mut self, valid: bool, max_words: usize) -> Vec<u8> {
        let words = self.rng.usize(1..=max_words.max(1));
        let mut o = vec![0u8; words * 4];
        if !valid {
            self.rng.fill(&mut o);
            return o;
        }
        match self.rng.u8(0..3) {
            0 => {
                o.fill(1);
                o[words * 4 - 1] = 0;
            }
            1 => {}
            _ => {
                o[0] = 7;
                o[1] = (words * 4 - 1) as u8;
                o[2] = 4;
            }
        }
        if o[0] == 7 && o[1] < 3 {
            o.fill(1);
        }
        o
    }

    fn maybe_options(&mut self) -> Vec<u8> {
        if self.rng.u8(0..100) < 10 {
            self.options(true, 10)
        } else {
            Vec::new()
        }
    }

    /// A complete packet (checksums valid; now and then a UDP datagram without one).
    fn packet(&mut self, src: u32, dst: u32, proto: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
        let ttl = self.ttl();
        let id = self.rng.u16(..);
        let df = if self.rng.bool() { 0x4000 } else { 0 };
        let mut f = ip_frame(src, dst, proto, ttl, id, df, options, l4);
        fix_l4(&mut f);
        if proto == UDP && self.rng.u8(0..10) == 0 {
            let l = 14 + options.len() + 20;
            f[l + 6..l + 8].fill(0);
        }
        f
    }

    /// A client's frame to a frontend.
    fn service(&mut self, o: &Oracle) -> Vec<u8> {
        let (fa, fp, proto) = self.pick(&o.list);
        let (c, sp) = (self.client(), self.sport());
        let l4 = self.l4(proto, sp, fp, false, 48);
        let opts = self.maybe_options();
        self.packet(c, fa, proto, &opts, &l4)
    }

    /// A backend's reply on a flow the run created (a service frame if there is none yet).
    fn reply(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, &'static str) {
        if m.flows.is_empty() {
            return (self.service(o), "service");
        }
        let (_, t) = self.pick(&m.flows);
        let l4 = self.l4(t.4, t.3, t.1, true, 48);
        let opts = self.maybe_options();
        (self.packet(t.2, t.0, t.4, &opts, &l4), "reply")
    }

    /// An ICMP error about a flow: about the client's translated packet (sent back to its
    /// translated source) or about the reverse-NATed reply (sent back to the frontend).
    fn icmp_error(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, &'static str) {
        if m.flows.is_empty() {
            return (self.service(o), "service");
        }
        let (c, t) = self.pick(&m.flows);
        let ((qs, qsp), (qd, qdp), to) =
            if self.rng.bool() { ((t.0, t.1), (t.2, t.3), t.0) } else { ((c.2, c.3), (c.0, c.1), c.2) };
        let l4 = self.l4(t.4, qsp, qdp, false, 32);
        // Now and then a quote the datapath leaves alone: with IP options, of a later fragment.
        let (qopts, qfrag) = match self.rng.u8(0..20) {
            0 => (self.options(true, 3), 0),
            1 => (Vec::new(), self.rng.u16(1..0x2000)),
            _ => (Vec::new(), 0),
        };
        let mut q = ip_frame(qs, qd, t.4, 63, self.rng.u16(..), qfrag, &qopts, &l4);
        fix_l4(&mut q);
        let q = &q[14..];
        let qlen = match self.rng.u8(0..10) {
            0..=5 => q.len(),
            6..=8 => 28.min(q.len()),
            _ => self.rng.usize(20..=q.len()),
        };
        let (ty, code) = match self.rng.u8(0..100) {
            0..=29 => (3, 3),
            30..=49 => (3, 4),
            50..=59 => (3, self.rng.u8(0..16)),
            60..=74 => (11, self.rng.u8(0..2)),
            75..=84 => (12, 0),
            85..=89 => (8, 0),
            90..=94 => (0, 0),
            _ => (self.rng.u8(..), self.rng.u8(..)),
        };
        let rest = if (ty, code) == (3, 4) { [0, 0, 0x05, 0xdc] } else { [0; 4] };
        let icmp = icmp_msg(ty, code, rest, &q[..qlen]);
        let from = match self.rng.u8(0..3) {
            0 => u32::from_be_bytes(GATEWAY),
            1 => t.2,
            _ => self.foreign_addr(),
        };
        let opts = self.maybe_options();
        (self.packet(from, to, ICMP, &opts, &icmp), "icmp-error")
    }

    /// A fragmented TCP/UDP datagram (to a frontend, or a reply of a flow): its fragments.
    fn datagram_pieces(&mut self, o: &Oracle, m: &Model) -> (Vec<Vec<u8>>, &'static str) {
        let flows: Vec<(Tuple, Tuple)> = m.flows.iter().filter(|(c, _)| matches!(c.4, TCP | UDP)).copied().collect();
        let (src, sp, dst, dp, proto, what) = if flows.is_empty() || self.rng.bool() {
            let fes: Vec<(u32, u16, u8)> = o.list.iter().filter(|f| matches!(f.2, TCP | UDP)).copied().collect();
            let (fa, fp, proto) = self.pick(&fes);
            (self.client(), self.sport(), fa, fp, proto, "fragmented service datagram")
        } else {
            let (_, t) = self.pick(&flows);
            (t.2, t.3, t.0, t.1, t.4, "fragmented reply")
        };
        let l4 = self.l4(proto, sp, dp, what == "fragmented reply", 200);
        let opts = self.maybe_options();
        let mut whole = ip_frame(src, dst, proto, self.ttl(), self.rng.u16(..), 0, &opts, &l4);
        fix_l4(&mut whole);
        let hdr = if proto == TCP { 24 } else { 8 };
        let len = l4.len();
        let mut sizes = Vec::new();
        let first = if self.rng.u8(0..100) < 15 || len <= hdr + 8 {
            8 // a tiny first fragment (a TCP header cut in two)
        } else {
            8 * self.rng.usize(hdr / 8..=(len - 1) / 8)
        };
        sizes.push(first);
        let mut at = first;
        for _ in 0..self.rng.usize(0..3) {
            if at + 8 >= len {
                break;
            }
            let n = 8 * self.rng.usize(1..=((len - at - 1) / 8).max(1));
            sizes.push(n);
            at += n;
        }
        sizes.push(0);
        let mut frags = fragment(&whole, &sizes);
        match self.rng.u8(0..10) {
            0 => frags.reverse(),
            1 => self.rng.shuffle(&mut frags),
            2 if frags.len() > 1 => {
                let lost = self.rng.usize(..frags.len());
                frags.remove(lost);
            }
            _ => {}
        }
        (frags, what)
    }

    fn fragments(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, String) {
        let (frags, what) = self.datagram_pieces(o, m);
        let n = frags.len();
        let mut it = frags.into_iter().enumerate();
        let (_, first) = it.next().unwrap();
        for (i, f) in it {
            self.queue.push_back((f, format!("{what}, piece {}/{n}", i + 1)));
        }
        (first, format!("{what}, piece 1/{n}"))
    }

    fn foreign_addr(&mut self) -> u32 {
        match self.rng.u8(0..3) {
            0 => 0xac10_0000 | self.rng.u32(0..1 << 20),
            1 => 0xc612_0000 | self.rng.u32(0..1 << 17),
            _ => 0x6440_0000 | self.rng.u32(0..1 << 22),
        }
    }

    /// Traffic between addresses that are no frontend, backend, node or client address: it
    /// matches nothing and must pass untouched.
    fn foreign(&mut self) -> Vec<u8> {
        let (s, d) = (self.foreign_addr(), self.foreign_addr());
        let proto = match self.rng.u8(0..6) {
            0 => TCP,
            1 => UDP,
            2 => SCTP,
            3 | 4 => ICMP,
            _ => self.rng.u8(..),
        };
        let l4 = if proto == ICMP {
            let (qs, qd) = (self.foreign_addr(), self.foreign_addr());
            let inner = self.pick(&[TCP, UDP, SCTP]);
            let (sp, dp) = (self.rng.u16(..), self.rng.u16(..));
            let ql4 = self.l4(inner, sp, dp, false, 16);
            let q = ip_frame(qs, qd, inner, 9, 7, 0, &[], &ql4);
            let ty = self.pick(&[3, 3, 11, 12, 8, 0]);
            icmp_msg(ty, self.rng.u8(0..5), [0; 4], &q[14..])
        } else {
            let (sp, dp, reply) = (self.rng.u16(..), self.rng.u16(..), self.rng.bool());
            self.l4(proto, sp, dp, reply, 64)
        };
        let valid = self.rng.bool();
        let opts = if self.rng.u8(0..100) < 15 { self.options(valid, 10) } else { Vec::new() };
        let mut f = self.packet(s, d, proto, &opts, &l4);
        if self.rng.u8(0..100) < 15 {
            let field = self.rng.u16(..) | 0x2000;
            f[20..22].copy_from_slice(&field.to_be_bytes());
            fix_ip(&mut f);
        }
        f
    }

    fn non_ipv4(&mut self, o: &Oracle) -> (Vec<u8>, &'static str) {
        match self.rng.u8(0..5) {
            0 => {
                let mut f = Vec::new();
                f.extend_from_slice(&[0xff; 6]);
                f.extend_from_slice(&SRC_MAC);
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&SRC_MAC);
                f.extend_from_slice(&CLIENTS[0]);
                f.extend_from_slice(&[0; 6]);
                let (fa, _, _) = self.pick(&o.list);
                f.extend_from_slice(&fa.to_be_bytes());
                (f, "arp")
            }
            1 => {
                let mut f = Vec::new();
                f.extend_from_slice(&DST_MAC);
                f.extend_from_slice(&SRC_MAC);
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, UDP, 64]);
                let mut addrs = [0u8; 32];
                self.rng.fill(&mut addrs);
                f.extend_from_slice(&addrs);
                f.extend_from_slice(&udp_hdr(1234, 53, &[0; 8]));
                (f, "ipv6")
            }
            2 | 3 => {
                let inner = self.service(o);
                let mut f = inner[..12].to_vec();
                if self.rng.bool() {
                    f.extend_from_slice(&[0x88, 0xa8, 0, 7]);
                }
                f.extend_from_slice(&[0x81, 0x00, 0, 0x64]);
                f.extend_from_slice(&inner[12..]);
                (f, "vlan-tagged service frame")
            }
            _ => {
                let mut f = self.service(o);
                let mut t = self.rng.u16(..);
                if t == 0x0800 {
                    t = 0x0801;
                }
                f[12..14].copy_from_slice(&t.to_be_bytes());
                (f, "service frame, other ethertype")
            }
        }
    }

    fn random_bytes(&mut self, o: &Oracle) -> Vec<u8> {
        let mut f = vec![0u8; self.rng.usize(14..=200)];
        self.rng.fill(&mut f);
        if self.rng.bool() {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            if f.len() > 14 && self.rng.bool() {
                f[14] = 0x45;
            }
            if f.len() >= 38 && self.rng.u8(0..3) == 0 {
                let (fa, fp, proto) = self.pick(&o.list);
                f[23] = proto;
                f[30..34].copy_from_slice(&fa.to_be_bytes());
                let l = 14 + (f[14] & 0x0f).max(5) as usize * 4;
                if f.len() >= l + 4 {
                    f[l + 2..l + 4].copy_from_slice(&fp.to_be_bytes());
                }
            }
        }
        f
    }

    /// One mutation of `f` (in place); its name.
    fn mutate(&mut self, f: &mut Vec<u8>, o: &Oracle) -> &'static str {
        let len = f.len();
        let ihl = if len > 14 { (f[14] & 0x0f).max(5) as usize * 4 } else { 20 };
        let l4 = (14 + ihl).min(len);
        let hdr_end = len.min(l4 + 24).max(13);
        match self.rng.u8(0..16) {
            0 => {
                if len > 14 {
                    f.truncate(self.rng.usize(14..len));
                }
                "truncate"
            }
            1 => {
                for _ in 0..self.rng.usize(1..=3) {
                    let p = if self.rng.u8(0..5) != 0 { self.rng.usize(0..hdr_end) } else { self.rng.usize(0..len) };
                    f[p] ^= 1 << self.rng.u8(0..8);
                }
                "bitflip"
            }
            2 => {
                for _ in 0..self.rng.usize(1..=4) {
                    let p = self.rng.usize(12..hdr_end);
                    f[p] = self.rng.u8(..);
                }
                "header-byte"
            }
            3 => {
                if len > 14 {
                    f[14] = (f[14] & 0xf0) | self.rng.u8(0..16);
                }
                "ihl"
            }
            4 => {
                if len >= 18 {
                    let claimed = (len - 14) as u16;
                    let t = match self.rng.u8(0..4) {
                        0 => self.rng.u16(..),
                        1 => 0,
                        2 => claimed.wrapping_add(self.rng.u16(1..40)),
                        _ => claimed.wrapping_sub(self.rng.u16(1..40)),
                    };
                    f[16..18].copy_from_slice(&t.to_be_bytes());
                }
                "total-length"
            }
            5 => {
                let cur = if len > 14 { (f[14] & 0x0f).max(5) as usize } else { 15 };
                let at = 14 + cur * 4;
                if len < 34 || cur >= 15 || at > len {
                    return "options(none)";
                }
                let valid = self.rng.bool();
                let opts = self.options(valid, 15 - cur);
                let words = opts.len() / 4;
                f.splice(at..at, opts);
                f[14] = (f[14] & 0xf0) | (cur + words) as u8;
                let t = be16(f, 16).wrapping_add((words * 4) as u16);
                f[16..18].copy_from_slice(&t.to_be_bytes());
                if valid {
                    "options"
                } else {
                    "garbage-options"
                }
            }
            6 => {
                if len >= 22 {
                    let v = match self.rng.u8(0..5) {
                        0 => 0x2000,
                        1 => 0x2000 | self.rng.u16(1..0x2000),
                        2 => self.rng.u16(1..0x2000),
                        3 => self.rng.u16(..),
                        _ => 0x4000 | (be16(f, 20) & 0x3fff),
                    };
                    f[20..22].copy_from_slice(&v.to_be_bytes());
                }
                "fragment-field"
            }
            7 => {
                if len > l4 + 12 {
                    f[l4 + 12] = (self.rng.u8(0..16) << 4) | (f[l4 + 12] & 0x0f);
                }
                "tcp-data-offset"
            }
            8 => {
                if len > 23 {
                    f[23] = self.pick(&[0, 1, 2, 4, 6, 17, 41, 47, 50, 132, 255, 58, 136]);
                    if self.rng.u8(0..4) == 0 {
                        f[23] = self.rng.u8(..);
                    }
                }
                "protocol"
            }
            9 => {
                match self.rng.u8(0..4) {
                    0 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                    1 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
                    2 => {
                        f.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
                    }
                    _ => {
                        let t = self.rng.u16(..);
                        f[12..14].copy_from_slice(&t.to_be_bytes());
                    }
                }
                "ethertype"
            }
            10 => {
                if len >= 34 {
                    let a = if self.rng.u8(0..4) == 0 { self.rng.u32(..) } else { self.pick(&o.interesting) };
                    let at = if self.rng.bool() { 26 } else { 30 };
                    f[at..at + 4].copy_from_slice(&a.to_be_bytes());
                }
                "address"
            }
            11 => {
                if len >= l4 + 4 {
                    let p = match self.rng.u8(0..3) {
                        0 => self.rng.u16(..),
                        1 => self.pick(&o.list).1,
                        _ => self.pick(&NODE_PORTS),
                    };
                    let at = l4 + 2 * self.rng.usize(0..2);
                    f[at..at + 2].copy_from_slice(&p.to_be_bytes());
                }
                "port"
            }
            12 => {
                if len > 22 {
                    f[22] = self.pick(&[0, 1, 2, 255, 64]);
                }
                "ttl"
            }
            13 => {
                if len > 14 {
                    f[14] = (self.rng.u8(0..16) << 4) | (f[14] & 0x0f);
                }
                "version"
            }
            14 => {
                let t = self.payload(64);
                f.extend_from_slice(&t);
                "trailer"
            }
            _ => {
                if len > l4 + 13 {
                    f[l4 + 13] = self.rng.u8(..);
                }
                "tcp-flags"
            }
        }
    }

    fn base(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, &'static str) {
        match self.rng.u8(0..10) {
            0..=4 => (self.service(o), "service"),
            5 | 6 => self.reply(o, m),
            7 => self.icmp_error(o, m),
            8 => {
                let (mut frags, what) = self.datagram_pieces(o, m);
                let i = self.rng.usize(..frags.len());
                (frags.swap_remove(i), what)
            }
            _ => (self.foreign(), "foreign"),
        }
    }

    fn mutated(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, String) {
        let (mut f, what) = self.base(o, m);
        let mut kind = what.to_string();
        for _ in 0..self.rng.usize(1..=3) {
            kind.push_str(" +");
            kind.push_str(self.mutate(&mut f, o));
        }
        if self.rng.bool() {
            fix_ip(&mut f);
            kind.push_str(" +ip-checksum-fixed");
        }
        if self.rng.u8(0..4) == 0 {
            fix_l4(&mut f);
            kind.push_str(" +l4-checksum-fixed");
        }
        (f, kind)
    }

    /// A frame cut at every length from 14 bytes (BPF_PROG_TEST_RUN refuses shorter frames
    /// with EINVAL: the Ethernet header must be there), its total length kept or adjusted.
    fn sweep(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, String) {
        let (base, what) = match self.rng.u8(0..4) {
            0 => (self.service(o), "service"),
            1 => self.reply(o, m),
            2 => self.icmp_error(o, m),
            _ => {
                let (frags, what) = self.datagram_pieces(o, m);
                (frags.into_iter().next().unwrap(), what)
            }
        };
        let adjust = self.rng.bool();
        for l in 14..base.len() {
            let mut f = base[..l].to_vec();
            if adjust && l >= 34 {
                f[16..18].copy_from_slice(&((l - 14) as u16).to_be_bytes());
                fix_ip(&mut f);
            }
            let how = if adjust { ", total length adjusted" } else { "" };
            self.queue.push_back((f, format!("{what} cut to {l} of {} bytes{how}", base.len())));
        }
        self.queue.pop_front().unwrap_or_else(|| (base, what.to_string()))
    }

    fn next(&mut self, o: &Oracle, m: &Model) -> (Vec<u8>, String) {
        if let Some(x) = self.queue.pop_front() {
            return x;
        }
        match self.rng.u32(0..1000) {
            0..=219 => (self.service(o), "service".into()),
            220..=359 => {
                let (f, what) = self.reply(o, m);
                (f, what.into())
            }
            360..=429 => {
                let (f, what) = self.icmp_error(o, m);
                (f, what.into())
            }
            430..=499 => self.fragments(o, m),
            500..=569 => (self.foreign(), "foreign".into()),
            570..=599 => {
                let (f, what) = self.non_ipv4(o);
                (f, what.into())
            }
            600..=649 => (self.random_bytes(o), "random bytes".into()),
            650..=995 => self.mutated(o, m),
            _ => self.sweep(o, m),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The programs under test.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prog {
    PodIngress,
    HostEgress,
    Uplink,
    UplinkDeliver,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::PodIngress => names::PROG_POD_INGRESS,
            Prog::HostEgress => names::PROG_HOST_EGRESS,
            Prog::Uplink => names::PROG_UPLINK,
            Prog::UplinkDeliver => names::PROG_UPLINK_DELIVER,
        }
    }

    fn xdp(self) -> bool {
        self == Prog::Uplink
    }
}

fn ip_cmd(args: &str) {
    let st = Command::new("ip").args(args.split_whitespace()).status().expect("ip");
    assert!(st.success(), "ip {args}");
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "no interface {name}");
    idx
}

/// The test thread's own network namespace (`common::isolate_netns`), with routes for the
/// delivery: `pods` (10.244.1.1/24; one backend and the clients with resolved neighbours,
/// 10.244.1.12 unresolved) and the uplink `wan` (192.168.7.1/24, the node address; remote
/// nodes and the Internet behind 192.168.7.254), forwarding on. Translated frames are
/// redirected or transmitted (MACs and TTL rewritten), or handed to the stack.
struct Net {
    pods: u32,
    wan: u32,
}

fn network() -> Net {
    common::isolate_netns();
    ip_cmd("link set lo up");
    ip_cmd("link add pods type veth peer name pods-peer");
    ip_cmd("link add wan type veth peer name wan-peer");
    for i in ["pods", "pods-peer", "wan", "wan-peer"] {
        ip_cmd(&format!("link set {i} up"));
    }
    ip_cmd("addr add 10.244.1.1/24 dev pods");
    ip_cmd("addr add 192.168.7.1/24 dev wan");
    for (addr, mac) in
        [("10.244.1.11", "02:be:00:00:00:11"), ("10.244.1.10", "02:c1:00:00:00:10"), ("10.244.1.20", "02:c1:00:00:00:20")]
    {
        ip_cmd(&format!("neigh replace {addr} lladdr {mac} dev pods nud permanent"));
    }
    ip_cmd("neigh replace 192.168.7.100 lladdr 02:e0:00:00:00:64 dev wan nud permanent");
    ip_cmd("neigh replace 192.168.7.254 lladdr 02:e0:00:00:00:fe dev wan nud permanent");
    ip_cmd("route add 10.244.2.0/24 via 192.168.7.254");
    ip_cmd("route add 10.244.3.0/24 via 192.168.7.254");
    ip_cmd("route add default via 192.168.7.254");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    Net { pods: ifindex("pods"), wan: ifindex("wan") }
}

struct Harness {
    ebpf: Ebpf,
    _writer: Writer,
    prog: Prog,
}

/// One test run's result: verdict, output frame (without XDP metadata), the XDP metadata.
struct Outcome {
    rc: u32,
    out: Vec<u8>,
    meta: Option<u32>,
}

impl Harness {
    fn new(prog: Prog, desired: &DesiredState, node: &NodeNet, frames: u64) -> Harness {
        // Conntrack large enough that the run never evicts (a run opens a flow, two entries,
        // every ~13 frames). Evictions only make flows unknown, which the checks allow, but
        // a half evicted twice can be rebuilt from its other half with an older translation
        // than the latest the run saw (`conntrack::sync_partner`).
        let conntrack_entries = if prog == Prog::UplinkDeliver { 1024 } else { (frames / 2).max(262_144).next_power_of_two() };
        let cap = Capacity {
            max_frontends: 1024,
            max_service_ports: 64,
            max_backends: 1024,
            conntrack_entries: conntrack_entries.min(u32::MAX as u64) as u32,
            ..Capacity::default()
        };
        let object = std::env::var_os("LB_FUZZ_OBJECT").map(std::path::PathBuf::from);
        let mut ebpf = load_object_from(object.as_deref(), &cap, None).expect("load object");
        let maps = MapSet::take(&mut ebpf, &cap, None).expect("maps");
        let mut writer =
            Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT).expect("writer");
        writer.set_node(node).expect("node");
        let report = writer.apply(desired);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        if prog.xdp() {
            load_xdp_program(&mut ebpf).expect("verifier accepts lb_uplink");
        } else {
            load_tc_program(&mut ebpf, prog.name()).unwrap_or_else(|e| panic!("verifier accepts {}: {e:#}", prog.name()));
        }
        Harness { ebpf, _writer: writer, prog }
    }

    /// Runs `frame` arriving on (tc: at) `ifindex` (0: the loopback); Err(errno) when the
    /// kernel refuses the frame.
    fn run(&self, frame: &[u8], ifindex: u32) -> Result<Outcome, i32> {
        let errno = |e: ProgramError| match e {
            ProgramError::SyscallError(e) => e.io_error.raw_os_error().unwrap_or(-1),
            e => panic!("BPF_PROG_TEST_RUN: {e}"),
        };
        let mut out = vec![0u8; frame.len() + 256];
        if self.prog.xdp() {
            let prog: &Xdp = self.ebpf.program(self.prog.name()).unwrap().try_into().unwrap();
            // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
            let ctx = [0, frame.len() as u32, 0, ifindex, 0, 0];
            let ctx_in: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let mut ctx_out = vec![0u8; ctx_in.len()];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx_in),
                    ctx_out: Some(&mut ctx_out),
                    ..TestRunOptions::new()
                })
                .map_err(errno)?;
            out.truncate(r.data_size_out as usize);
            // The output starts at the metadata; xdp_md.data is its length.
            let meta_len = u32::from_ne_bytes(ctx_out[0..4].try_into().unwrap()) as usize;
            let meta = (meta_len == 4).then(|| u32::from_ne_bytes(out[..4].try_into().unwrap()));
            out.drain(..meta_len.min(out.len()));
            Ok(Outcome { rc: r.return_value, out, meta })
        } else {
            let prog: &SchedClassifier = self.ebpf.program(self.prog.name()).unwrap().try_into().unwrap();
            // struct __sk_buff: ifindex at offset 40 (the kernel puts the skb on that device).
            let mut ctx = [0u8; 192];
            ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: (ifindex != 0).then_some(&ctx[..]),
                    ..TestRunOptions::new()
                })
                .map_err(errno)?;
            out.truncate(r.data_size_out as usize);
            Ok(Outcome { rc: r.return_value, out, meta: None })
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

/// What may happen to a frame the program left as it was.
enum Expect {
    Pass(&'static str),
    Drop(&'static str),
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Out {
    PassedUntouched,
    DroppedUntouched,
    DroppedChanged,
    Dnat,
    ReverseNat,
    Fragment,
    IcmpRelated,
    Reject,
}

struct Checker<'a> {
    o: &'a Oracle,
    m: Model,
    prog: Prog,
    /// The frame's index (for the model's ages).
    idx: u64,
    /// A datapath defect the frame showed that is not a broken translation (collected apart:
    /// the run goes on).
    defect: Option<String>,
}

fn csum_field(proto: u8, l: usize) -> Range<usize> {
    match proto {
        TCP => l + 16..l + 18,
        UDP => l + 6..l + 8,
        _ => l + 8..l + 12,
    }
}

/// What the delivery of a translated frame may rewrite besides the translation: the MAC
/// addresses (the program sends it to the next hop itself) and the TTL (decremented by one
/// when it forwards it).
#[derive(Clone, Copy)]
struct Delivery {
    macs: bool,
    ttl: bool,
}

/// Only bytes in `allowed` changed, and what the delivery may rewrite.
fn only_changed(i: &[u8], o: &[u8], allowed: &[Range<usize>], d: Delivery) -> Result<(), String> {
    if i.len() != o.len() {
        return Err(format!("length changed from {} to {} (only a REJECT may change it)", i.len(), o.len()));
    }
    for (k, (a, b)) in i.iter().zip(o).enumerate() {
        if a == b || allowed.iter().any(|r| r.contains(&k)) || (d.macs && k < 12) {
            continue;
        }
        if k == 22 && d.ttl && *a > 1 && *b == a - 1 {
            continue;
        }
        return Err(format!("byte {k} changed {a:#04x} -> {b:#04x}: not a field this translation may rewrite"));
    }
    Ok(())
}

/// The IPv4 header checksum: updated consistently (valid stays valid, invalid stays invalid
/// by the same amount); etherparse agrees it is valid when it was.
fn ip_checks(i: &[u8], o: &[u8]) -> Result<(), String> {
    let (vi, vo) = (ip_valid(i), ip_valid(o));
    if residual(i, &[22..34]) != residual(o, &[22..34]) {
        return Err(format!("IPv4 header checksum not updated with the header (valid before: {vi:?}, after: {vo:?})"));
    }
    if vi == Some(true) && !etherparse_sum_ok(&o[14..14 + (o[14] & 0x0f) as usize * 4]) {
        return Err("etherparse: the IPv4 header checksum is invalid after the translation".into());
    }
    Ok(())
}

/// etherparse's one's complement sum over raw bytes (its header types drop bits they do not
/// model: the IPv4 reserved flag, ICMP's unused bytes, TCP's reserved bits).
fn etherparse_sum_ok(b: &[u8]) -> bool {
    etherparse::checksum::Sum16BitWords::new().add_slice(b).ones_complement() == 0
}

/// The transport checksum of a frame whose addresses and ports changed.
fn l4_checks(i: &[u8], o: &[u8], v: &View) -> Result<(), String> {
    let l = v.l4_off;
    let words = [26..34, l..l + 4, csum_field(v.proto, l)];
    match v.proto {
        TCP if residual(i, &words) != residual(o, &words) => {
            return Err("TCP checksum not updated with the addresses and ports".into());
        }
        UDP => {
            let (ci, co) = (be16(i, l + 6), be16(o, l + 6));
            if ci == 0 && co != 0 {
                return Err(format!("UDP checksum 0 (none) became {co:#06x}"));
            }
            if ci != 0 && co == 0 {
                return Err("UDP checksum became 0 (none)".into());
            }
            if ci != 0 && residual(i, &words) != residual(o, &words) {
                return Err("UDP checksum not updated with the addresses and ports".into());
            }
        }
        _ => {}
    }
    if let (Some(a), Some(b)) = (l4_valid(i, v), l4_valid(o, v)) {
        if a != b {
            return Err(format!("transport checksum valid before: {a}, after: {b}"));
        }
    }
    Ok(())
}

/// etherparse (an independent implementation): a whole valid packet stays valid.
fn etherparse_checks(i: &[u8], o: &[u8], v: &View) -> Result<(), String> {
    let end = 14 + v.tot_len as usize;
    if v.frag != Frag::None || end > i.len() {
        return Ok(());
    }
    let Ok(si) = summarize(&i[..end]) else { return Ok(()) };
    if !(si.ip_checksum_ok && si.l4_checksum_ok) {
        return Ok(());
    }
    let so = summarize(&o[..end]).map_err(|e| format!("etherparse cannot read the translated frame: {e}"))?;
    if !so.ip_checksum_ok || !so.l4_checksum_ok {
        return Err(format!(
            "etherparse: checksums after the translation: IPv4 {}, transport {}",
            so.ip_checksum_ok, so.l4_checksum_ok
        ));
    }
    Ok(())
}

fn tuple_str(t: (u32, u16, u32, u16)) -> String {
    format!("{}:{} -> {}:{}", ip(t.0), t.1, ip(t.2), t.3)
}

impl Checker<'_> {
    /// Checks one run; the class of its outcome.
    fn check(&mut self, input: &[u8], r: &Outcome) -> Result<Out, String> {
        let xdp = self.prog.xdp();
        let (passed, dropped, delivered) = if xdp {
            (r.rc == XDP_PASS, r.rc == XDP_DROP, r.rc == XDP_TX || r.rc == XDP_REDIRECT)
        } else {
            (r.rc == TC_ACT_OK, r.rc == TC_ACT_SHOT, r.rc == TC_ACT_REDIRECT)
        };
        if !(passed || dropped || delivered) {
            return Err(format!("verdict {} is none the program may return", r.rc));
        }
        let v = view(input);
        let changed = r.out != input;
        if self.prog == Prog::UplinkDeliver {
            // It delivers only what lb_uplink handed over in the XDP metadata, which
            // BPF_PROG_TEST_RUN cannot attach to an skb: everything passes untouched.
            return if changed || !passed {
                Err("lb_uplink_deliver touched a frame without the XDP hand-off metadata".into())
            } else {
                Ok(Out::PassedUntouched)
            };
        }
        if !changed {
            if delivered {
                return Err("redirected / transmitted without being translated".into());
            }
            if r.meta.is_some() {
                return Err(format!("XDP metadata {:?} on a frame passed untouched", r.meta));
            }
            if dropped {
                self.dropped_reply_fragment(v.as_ref());
            }
            return match (self.expect_untouched(v.as_ref()), passed) {
                (Expect::Pass(why), false) => Err(format!("dropped; must pass untouched: {why}")),
                (Expect::Drop(why), true) => Err(format!("passed untouched; must be translated or dropped: {why}")),
                _ => Ok(if passed { Out::PassedUntouched } else { Out::DroppedUntouched }),
            };
        }
        if dropped {
            return Ok(Out::DroppedChanged);
        }
        let Some(v) = v else { return Err("changed a frame that is not IPv4 to the datapath".into()) };
        // tc egress delivers a frame that already leaves through the right interface with
        // TC_ACT_OK, its MACs rewritten; the node's own packets keep their TTL.
        let d = Delivery { macs: delivered || (self.prog == Prog::HostEgress && passed), ttl: delivered };
        let class = self.check_changed(input, r, &v, d)?;
        // XDP hands REJECTs and what it cannot transmit to the uplink's tc program.
        let kind = if class == Out::Reject { xdp_meta::ORIGINATED } else { xdp_meta::FORWARDED };
        if r.meta.is_some_and(|m| m != kind || r.rc != XDP_PASS) {
            return Err(format!("XDP metadata {:?} with verdict {} for a {class:?}", r.meta, r.rc));
        }
        Ok(class)
    }

    fn expect_untouched(&self, v: Option<&View>) -> Expect {
        let o = self.o;
        let Some(v) = v else {
            return Expect::Pass("not IPv4 to the datapath (ethertype, version, IHL < 5, or shorter than its header)");
        };
        let to_service_addr = o.service_addrs.contains(&v.daddr);
        let ports_proto = matches!(v.proto, TCP | UDP | SCTP);
        match (v.frag, v.ports) {
            (Frag::Later, _) if matches!(v.proto, TCP | UDP) => match self.m.frags.get(&(v.saddr, v.daddr, v.id, v.proto)) {
                None if to_service_addr => Expect::Drop("a later fragment to a service address, its first fragment never seen"),
                None => Expect::Pass("a later fragment whose first fragment was never seen, not to a service address"),
                Some(&(_, dp)) if o.frontends.contains_key(&(v.daddr, dp, v.proto)) => {
                    Expect::Drop("a later fragment of a datagram to a frontend (translated with it, or dropped)")
                }
                Some(_) if to_service_addr => Expect::Any,
                Some(_) => Expect::Pass("a later fragment of a datagram to no frontend (a reply at most)"),
            },
            (Frag::Later, _) if v.proto == SCTP && to_service_addr => Expect::Drop("an SCTP fragment to a service address"),
            (Frag::Later, _) => Expect::Pass("a later fragment of a protocol without ports"),
            (Frag::First, _) if v.proto == ICMP => Expect::Pass("an ICMP fragment"),
            (_, None) if v.proto == ICMP => Expect::Pass("an ICMP message that is no error about a flow"),
            (_, None) if ports_proto && to_service_addr => {
                Expect::Drop("a truncated transport header (or an SCTP fragment) to a service address")
            }
            (_, None) if ports_proto => Expect::Pass("a truncated transport header, not to a service address"),
            (_, None) => Expect::Pass("a protocol without ports"),
            (_, Some((sp, dp))) => {
                if let Some(&s) = o.frontends.get(&(v.daddr, dp, v.proto)) {
                    if !o.svcs[s].has_endpoints && self.prog.xdp() && o.node_addrs.contains(&v.daddr) {
                        // No REJECT in the frame (IP options): the kernel answers it.
                        Expect::Any
                    } else {
                        Expect::Drop("a service frame")
                    }
                } else if !o.backend_addrs.contains(&v.saddr) {
                    Expect::Pass("not for a service and from no backend: it matches no flow")
                } else if self.m.reply.contains_key(&(v.saddr, sp, v.daddr, dp, v.proto)) {
                    Expect::Any
                } else {
                    Expect::Pass("not for a service and the reply of no flow the run created")
                }
            }
        }
    }

    fn check_changed(&mut self, i: &[u8], r: &Outcome, v: &View, d: Delivery) -> Result<Out, String> {
        let o = &r.out;
        match (v.frag, v.ports) {
            (Frag::Later, _) if matches!(v.proto, TCP | UDP) => self.check_fragment(i, o, v, d),
            (Frag::Later, _) | (Frag::First, None) => Err("changed a fragment the datapath cannot translate".into()),
            (_, None) if v.proto == ICMP => self.check_related(i, o, v, d),
            (_, None) => Err("changed a frame without ports that is no ICMP error".into()),
            (_, Some((sp, dp))) => match self.o.frontends.get(&(v.daddr, dp, v.proto)) {
                // Conntrack before the frontends (as in netfilter): to a frontend and the reply
                // of a tracked flow (masqueraded to node:port, the port a NodePort's number),
                // it is reverse-NATed.
                Some(_) if self.is_reverse_nat(o, v, (sp, dp)) => self.check_reverse_nat(i, o, v, (sp, dp), d),
                Some(&s) if self.o.svcs[s].has_endpoints => self.check_dnat(i, o, v, (sp, dp), s, d),
                Some(&s) => self.check_reject(i, r, v, (sp, dp), s, d.ttl),
                None => self.check_reverse_nat(i, o, v, (sp, dp), d),
            },
        }
    }

    fn nat_bytes(&self, i: &[u8], o: &[u8], v: &View, d: Delivery) -> Result<(u32, u16, u32, u16), String> {
        let l = v.l4_off;
        only_changed(i, o, &[24..34, l..l + 4, csum_field(v.proto, l)], d)?;
        ip_checks(i, o)?;
        l4_checks(i, o, v)?;
        etherparse_checks(i, o, v)?;
        Ok((be32(o, 26), be16(o, l), be32(o, 30), be16(o, l + 2)))
    }

    /// A later fragment of a datagram to a frontend that replies to a fresh flow (its first
    /// fragment reverse-NATed, opening none), dropped: the datagram can never be reassembled.
    fn dropped_reply_fragment(&mut self, v: Option<&View>) {
        let Some(v) = v.filter(|v| v.frag == Frag::Later && matches!(v.proto, TCP | UDP)) else { return };
        let Some(&(sp, dp)) = self.m.frags.get(&(v.saddr, v.daddr, v.id, v.proto)) else { return };
        if self.o.frontends.contains_key(&(v.daddr, dp, v.proto)) {
            let what = "a later fragment of it dropped, not reverse-NATed as its first fragment is";
            self.fresh_reply(&(v.saddr, sp, v.daddr, dp, v.proto), what);
        }
    }

    /// Whether `o` is `v` reverse-NATed as the reply of a flow the run created.
    fn is_reverse_nat(&self, o: &[u8], v: &View, (sp, dp): (u16, u16)) -> bool {
        let l = v.l4_off;
        let Some(&(want, _)) = self.m.reply.get(&(v.saddr, sp, v.daddr, dp, v.proto)) else { return false };
        o.len() >= l + 4 && (be32(o, 26), be16(o, l), be32(o, 30), be16(o, l + 2)) == (want.0, want.1, want.2, want.3)
    }

    /// A frame to a frontend that is the reply of a flow created just before (so certainly
    /// still tracked), and of no flow it opened itself, load-balanced (`what`) instead of
    /// reverse-NATed: a defect, reported apart.
    fn fresh_reply(&mut self, client: &Tuple, what: &str) {
        if let Some(&(restore, at)) = self.m.reply.get(client) {
            if self.idx - at <= FRESH_FRAMES && !self.m.forward.contains_key(client) {
                self.defect = Some(format!(
                    "this frame replies to the flow {} created {} frames ago (it should become {}), but was {what}",
                    tuple_str((restore.2, restore.3, restore.0, restore.1)),
                    self.idx - at,
                    tuple_str((restore.0, restore.1, restore.2, restore.3)),
                ));
            }
        }
    }

    fn check_dnat(&mut self, i: &[u8], o: &[u8], v: &View, (sp, dp): (u16, u16), s: usize, d: Delivery) -> Result<Out, String> {
        let t = self.nat_bytes(i, o, v, d)?;
        let svc = &self.o.svcs[s];
        if !svc.backends.contains(&(t.2, t.3)) {
            return Err(format!("DNAT to {}:{}, not an endpoint of {}", ip(t.2), t.3, svc.name));
        }
        if t.0 != v.saddr && t.0 != self.o.snat {
            return Err(format!("source rewritten to {}: neither the client nor the node's masquerade address", ip(t.0)));
        }
        if !svc.admits(v.daddr, v.saddr) {
            return Err(format!("DNAT of {}, a source outside the loadBalancerSourceRanges of {}", ip(v.saddr), svc.name));
        }
        let client = (v.saddr, sp, v.daddr, dp, v.proto);
        // (The flow it created is recorded: what follows is checked against what the
        // datapath did.)
        let what = format!("load-balanced as a new connection to {}", svc.name);
        self.fresh_reply(&client, &what);
        self.m.record(client, (t.0, t.1, t.2, t.3, v.proto), self.idx);
        Ok(Out::Dnat)
    }

    fn check_reverse_nat(&mut self, i: &[u8], o: &[u8], v: &View, (sp, dp): (u16, u16), d: Delivery) -> Result<Out, String> {
        let t = self.nat_bytes(i, o, v, d)?;
        let Some(&(want, _)) = self.m.reply.get(&(v.saddr, sp, v.daddr, dp, v.proto)) else {
            return Err(format!("rewritten to {}, but it is the reply of no flow the run created", tuple_str(t)));
        };
        if t != (want.0, want.1, want.2, want.3) {
            return Err(format!(
                "reverse NAT to {}, the flow says {}",
                tuple_str(t),
                tuple_str((want.0, want.1, want.2, want.3))
            ));
        }
        Ok(Out::ReverseNat)
    }

    fn check_fragment(&mut self, i: &[u8], o: &[u8], v: &View, d: Delivery) -> Result<Out, String> {
        only_changed(i, o, &[24..34], d)?;
        ip_checks(i, o)?;
        let (os, od) = (be32(o, 26), be32(o, 30));
        let Some(&(sp, dp)) = self.m.frags.get(&(v.saddr, v.daddr, v.id, v.proto)) else {
            return Err("a later fragment was translated, but its first fragment was never sent".into());
        };
        // As its first fragment: the flow it opened (to a frontend), else the flow it replies to.
        let key = (v.saddr, sp, v.daddr, dp, v.proto);
        let forward = self.m.forward.get(&key).filter(|_| self.o.frontends.contains_key(&(v.daddr, dp, v.proto)));
        let wants: Vec<(u32, u32)> =
            forward.map(|t| (t.0, t.2)).into_iter().chain(self.m.reply.get(&key).map(|(t, _)| (t.0, t.2))).collect();
        if wants.contains(&(os, od)) {
            return Ok(Out::Fragment);
        }
        let want: Vec<String> = wants.iter().map(|w| format!("{} -> {}", ip(w.0), ip(w.1))).collect();
        Err(format!(
            "later fragment (ports {sp} -> {dp}) rewritten to {} -> {}; the run's flows say {}",
            ip(os),
            ip(od),
            if want.is_empty() { "there is no such flow".to_string() } else { want.join(" or ") }
        ))
    }

    fn check_related(&mut self, i: &[u8], o: &[u8], v: &View, d: Delivery) -> Result<Out, String> {
        let (icmp, inner) = (v.l4_off, v.l4_off + 8);
        let il4 = inner + 20;
        if v.frag != Frag::None
            || i.len() < il4 + 4
            || !matches!(i[icmp], 3 | 11 | 12)
            || i[inner] != 0x45
            || !matches!(i[inner + 9], TCP | UDP | SCTP)
            || be16(i, inner + 6) & 0x1fff != 0
        {
            return Err("changed an ICMP message that is no error quoting a whole transport header".into());
        }
        let proto = i[inner + 9];
        let check = match proto {
            TCP => Some(il4 + 16..il4 + 18),
            UDP => Some(il4 + 6..il4 + 8),
            _ => None,
        }
        .filter(|c| c.end <= i.len());
        let mut allowed = vec![24..34, icmp + 2..icmp + 4, inner + 10..inner + 20, il4..il4 + 4];
        allowed.extend(check.clone());
        only_changed(i, o, &allowed, d)?;
        ip_checks(i, o)?;
        // ICMP checksum over every word that changed in the message; the quoted IPv4 header's
        // and the quoted transport checksum over theirs.
        if residual(i, &allowed[1..]) != residual(o, &allowed[1..]) {
            return Err("ICMP checksum not updated with the quote".into());
        }
        if residual(i, &[inner + 10..inner + 20]) != residual(o, &[inner + 10..inner + 20]) {
            return Err("the quoted IPv4 header's checksum not updated with its addresses".into());
        }
        if let Some(c) = check.clone() {
            let words = [inner + 12..inner + 20, il4..il4 + 4, c.clone()];
            let (ci, co) = (be16(i, c.start), be16(o, c.start));
            if proto == UDP && (ci == 0) != (co == 0) {
                return Err(format!("the quoted UDP checksum went from {ci:#06x} to {co:#06x}"));
            }
            if !(proto == UDP && ci == 0) && residual(i, &words) != residual(o, &words) {
                return Err("the quoted transport checksum not updated with its addresses and ports".into());
            }
        }
        let end = 14 + v.tot_len as usize;
        if allowed.iter().all(|r| r.end <= end) {
            if let (Some(a), Some(b)) = (l4_valid(i, v), l4_valid(o, v)) {
                if a != b {
                    return Err(format!("ICMP checksum valid before: {a}, after: {b}"));
                }
                if a && etherparse::SlicedPacket::from_ethernet(&i[..end]).is_ok() {
                    let quote_valid = fold(sum(0, &i[inner..inner + 20])) == 0xffff;
                    etherparse_icmp(&o[..end], quote_valid)?;
                }
            }
        }
        // The translation: the flow the quote belongs to, either way round.
        let (isrc, idst, isp, idp) = (be32(i, inner + 12), be32(i, inner + 16), be16(i, il4), be16(i, il4 + 2));
        let key = (idst, idp, isrc, isp, proto);
        let got = ((be32(o, inner + 12), be16(o, il4), be32(o, inner + 16), be16(o, il4 + 2)), (be32(o, 26), be32(o, 30)));
        let mut wants = Vec::new();
        if let Some(&(t, _)) = self.m.reply.get(&key) {
            // About the client's translated packet: to the client, from the frontend.
            wants.push(((t.2, t.3, t.0, t.1), (t.0, t.2)));
        }
        if let Some(&t) = self.m.forward.get(&key) {
            // About the reverse-NATed reply: to the backend, from the masquerade source.
            wants.push(((t.2, t.3, t.0, t.1), (t.0, t.2)));
        }
        if wants.contains(&got) {
            return Ok(Out::IcmpRelated);
        }
        let want: Vec<String> =
            wants.iter().map(|(q, a)| format!("quote {} outer {} -> {}", tuple_str(*q), ip(a.0), ip(a.1))).collect();
        Err(format!(
            "ICMP error translated to quote {} outer {} -> {}; the run's flows say {}",
            tuple_str(got.0),
            ip(got.1 .0),
            ip(got.1 .1),
            if want.is_empty() { "there is no such flow".to_string() } else { want.join(" or ") }
        ))
    }

    fn check_reject(
        &mut self,
        i: &[u8],
        r: &Outcome,
        v: &View,
        (sp, dp): (u16, u16),
        s: usize,
        delivered: bool,
    ) -> Result<Out, String> {
        let (o, xdp) = (&r.out, self.prog.xdp());
        if v.l4_off != 34 {
            return Err("changed a frame with IP options to a frontend without endpoints (no REJECT for those)".into());
        }
        let want_len = if xdp { i.len().max(70) } else { 70 };
        if o.len() != want_len {
            return Err(format!("REJECT of {} bytes, expected {want_len}", o.len()));
        }
        if xdp {
            if r.rc != XDP_PASS || r.meta != common::handed_to_tc(xdp_meta::ORIGINATED) {
                return Err(format!("REJECT with verdict {} and metadata {:?}: not handed to tc", r.rc, r.meta));
            }
            if o[..12] != i[..12] || (i.len() > 70 && o[70..] != i[70..]) {
                return Err("REJECT changed the MAC addresses or the bytes after the reply".into());
            }
        } else {
            if !delivered {
                return Err(format!("REJECT with verdict {}: not sent back", r.rc));
            }
            if o[..6] != i[6..12] || o[6..12] != i[..6] {
                return Err("REJECT not addressed back to the sender's MAC".into());
            }
        }
        let h = etherparse::Ipv4HeaderSlice::from_slice(&o[14..70]).map_err(|e| format!("REJECT: bad IPv4 header: {e}"))?;
        if o[12..14] != [0x08, 0x00]
            || h.ihl() != 5
            || h.total_len() != 56
            || h.protocol() != etherparse::IpNumber::ICMP
            || h.to_header().calc_header_checksum() != h.header_checksum()
            || h.is_fragmenting_payload()
        {
            return Err("REJECT: not an IPv4 header of a 56-byte ICMP packet with a valid checksum".into());
        }
        if (be32(o, 26), be32(o, 30)) != (v.daddr, v.saddr) {
            return Err(format!("REJECT from {} to {}: not from the frontend to the sender", ip(be32(o, 26)), ip(be32(o, 30))));
        }
        let icmp = etherparse::Icmpv4Slice::from_slice(&o[34..70]).map_err(|e| format!("REJECT: bad ICMP: {e}"))?;
        let port_unreachable = etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
        if icmp.icmp_type() != port_unreachable
            || etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum != icmp.checksum()
            || fold(sum(0, &o[34..70])) != 0xffff
        {
            return Err("REJECT: not a port unreachable with a valid ICMP checksum".into());
        }
        if o[42..70] != i[14..42] {
            return Err("REJECT does not quote the frame's IPv4 header and first 8 bytes".into());
        }
        let what = format!("rejected as a new connection to {} (no endpoints)", self.o.svcs[s].name);
        self.fresh_reply(&(v.saddr, sp, v.daddr, dp, v.proto), &what);
        Ok(Out::Reject)
    }
}

/// etherparse: the ICMP checksum, and the quoted IPv4 header's (if it was valid).
fn etherparse_icmp(frame: &[u8], quote_valid: bool) -> Result<(), String> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).map_err(|e| format!("etherparse cannot read the ICMP error: {e}"))?;
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else { return Ok(()) };
    if !etherparse_sum_ok(icmp.slice()) {
        return Err("etherparse: the ICMP checksum is invalid after the translation".into());
    }
    if quote_valid && icmp.payload().len() >= 20 && !etherparse_sum_ok(&icmp.payload()[..20]) {
        return Err("etherparse: the quoted IPv4 header's checksum is invalid after the translation".into());
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for (k, chunk) in b.chunks(32).enumerate() {
        let _ = write!(s, "\n    {:04x}: ", k * 32);
        for x in chunk {
            let _ = write!(s, "{x:02x}");
        }
    }
    s
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

fn fuzz(prog: Prog, test: &str) {
    if !require_root(test) {
        return;
    }
    let seed = env_u64("LB_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let frames = env_u64("LB_FUZZ_FRAMES").unwrap_or(DEFAULT_FRAMES);
    println!("{test}: seed {seed:#x} (LB_FUZZ_SEED), {frames} frames (LB_FUZZ_FRAMES)");
    let started = Instant::now();
    let net = network();
    let (desired, node) = config();
    let oracle = Oracle::new(&desired, &node);
    let h = Harness::new(prog, &desired, &node, frames);
    let loaded = started.elapsed();
    let mut gen = Gen {
        rng: fastrand::Rng::with_seed(seed.wrapping_add((prog as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        queue: VecDeque::new(),
    };
    let mut checker = Checker { o: &oracle, m: Model::default(), prog, idx: 0, defect: None };
    let mut counts: BTreeMap<Out, u64> = BTreeMap::new();
    let mut verdicts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    let (mut defects, mut defect_examples) = (0u64, Vec::new());
    let report = |idx: u64, kind: &str, ifindex: u32, msg: &str, frame: &[u8], r: &Outcome| {
        format!(
            "{test}: seed {seed:#x}, frame #{idx} ({kind}), arriving on ifindex {ifindex}: {msg}\n  verdict {}, XDP \
             metadata {:?}\n  in  ({} bytes):{}\n  out ({} bytes):{}",
            r.rc,
            r.meta,
            frame.len(),
            hex(frame),
            r.out.len(),
            hex(&r.out)
        )
    };
    // `frames` frames run through the program; `idx` counts the generated ones (the kernel
    // refuses a few, below).
    let (mut ran, mut idx) = (0u64, 0u64);
    while ran < frames {
        idx += 1;
        let (frame, kind) = gen.next(&oracle, &checker.m);
        let ifindex = match (prog, gen.rng.u8(0..4)) {
            (Prog::PodIngress, 0 | 1) => net.pods,
            (Prog::HostEgress, 0) => net.wan,
            (Prog::HostEgress, 1) => net.pods,
            (Prog::Uplink | Prog::UplinkDeliver, 0..=2) => net.wan,
            _ => 0,
        };
        let r = match h.run(&frame, ifindex) {
            Ok(r) => r,
            Err(errno) => {
                // The kernel runs no tc program on a frame whose ethertype says IPv4 (IPv6)
                // but which is shorter than that header: EINVAL before the program runs.
                let why = match (errno, &frame[12..14]) {
                    (libc::EINVAL, [0x08, 0x00]) if !prog.xdp() && frame.len() < 14 + 20 => "IPv4 header cut short",
                    (libc::EINVAL, [0x86, 0xdd]) if !prog.xdp() && frame.len() < 14 + 40 => "IPv6 header cut short",
                    _ => panic!("{test}: BPF_PROG_TEST_RUN refused frame #{idx} ({kind}): errno {errno}{}", hex(&frame)),
                };
                *refused.entry(why).or_default() += 1;
                continue;
            }
        };
        ran += 1;
        checker.idx = idx;
        *verdicts.entry(r.rc).or_default() += 1;
        match checker.check(&frame, &r) {
            Ok(class) => *counts.entry(class).or_default() += 1,
            Err(msg) => {
                violations.push(report(idx, &kind, ifindex, &msg, &frame, &r));
                if violations.len() >= MAX_VIOLATIONS {
                    break;
                }
            }
        }
        if let Some(msg) = checker.defect.take() {
            defects += 1;
            if defect_examples.len() < 2 {
                defect_examples.push(report(idx, &kind, ifindex, &msg, &frame, &r));
            }
        }
        if let Some(v) = view(&frame) {
            checker.m.remember(&v);
        }
    }
    let mut summary = format!(
        "{test} ({}): {ran} frames run ({idx} generated), {:.1?} (load {:.1?}); outcomes {counts:?}; verdicts \
         {verdicts:?}; flows seen {}; defects {defects}",
        prog.name(),
        started.elapsed(),
        loaded,
        checker.m.forward.len(),
    );
    if !refused.is_empty() {
        let _ = write!(summary, "; refused by the kernel (EINVAL, not run): {refused:?}");
    }
    let counters = [
        Counter::Packets,
        Counter::NewFlows,
        Counter::ServicePackets,
        Counter::ReplyPackets,
        Counter::RejectNoEndpoint,
        Counter::IcmpRelated,
        Counter::FragmentsTranslated,
        Counter::DropUnparsable,
        Counter::DropFragment,
        Counter::DropTcpInvalid,
        Counter::DropSourceRange,
        Counter::DropNoLocalEndpoint,
        Counter::DropNoSnatPort,
        Counter::DropRewrite,
        Counter::Masqueraded,
        Counter::PortRemapped,
        Counter::HalfRestored,
        Counter::FwdRedirect,
        Counter::FwdNeigh,
        Counter::FwdXdpTx,
        Counter::StackNoRoute,
        Counter::StackLocal,
        Counter::StackTtl,
    ];
    let _ = write!(summary, "\n  counters:");
    for c in counters {
        let _ = write!(summary, " {c:?}={}", common::counter(&h.ebpf, c));
    }
    println!("{summary}");
    assert!(violations.is_empty(), "{} invariant violation(s):\n{}", violations.len(), violations.join("\n\n"));
    assert!(
        defects == 0,
        "{defects} frame(s) replying to tracked flows load-balanced, rejected or dropped instead of reverse-NATed, \
         e.g.:\n{}",
        defect_examples.join("\n\n")
    );
    if frames >= COVERAGE_FRAMES && prog != Prog::UplinkDeliver {
        // The fuzz reached every kind of translation (else a broken setup would pass).
        for class in [Out::Dnat, Out::ReverseNat, Out::Fragment, Out::IcmpRelated, Out::Reject, Out::DroppedUntouched] {
            assert!(counts.get(&class).copied().unwrap_or(0) > 0, "{test}: no {class:?} outcome in {frames} frames");
        }
    }
}

#[test]
fn fuzz_pod_ingress() {
    fuzz(Prog::PodIngress, "fuzz_pod_ingress");
}

#[test]
fn fuzz_host_egress() {
    fuzz(Prog::HostEgress, "fuzz_host_egress");
}

#[test]
fn fuzz_uplink_xdp() {
    fuzz(Prog::Uplink, "fuzz_uplink_xdp");
}

#[test]
fn fuzz_uplink_deliver() {
    fuzz(Prog::UplinkDeliver, "fuzz_uplink_deliver");
}
