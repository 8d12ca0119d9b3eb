//! Packet tests of external traffic: the real `lb_uplink` (XDP) and `lb_host_egress` (tc egress)
//! and `lb_pod_ingress` programs through BPF_PROG_TEST_RUN on crafted frames, with maps
//! programmed by the agent's translation, flag resolution and writer. Output bytes and
//! checksums are checked with etherparse (an independent implementation).

use std::{collections::BTreeSet, net::Ipv4Addr};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use etherparse::PacketBuilder;
use lb_common::{ct_dir, ct_flags, ip_to_map, port_to_map, Counter, CtEntry, CtKey};
mod common;

use common::{counter, handed_to_tc, run_tc, run_xdp, run_xdp_meta, tcp};
use lb_tests::privileges::require_root;
use lb_userspace::{
    config::ProxyFlags,
    dataplane::{
        attach::{load_tc_program, load_xdp_program},
        load_object, names,
        writer::Writer,
        Capacity, MapSet,
    },
    manifests,
    model::{translate, NodeInfo, Protocol, TranslateOptions},
    packet::{self, summarize},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 50);
const LB_IP: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);

/// cluster: NodePort 30080, eTP=Cluster, backends local .11 and remote .21.
/// local: NodePort 30081, eTP=Local, same backends. empty: NodePort 30082, no endpoints.
/// lb: LoadBalancer 1.2.3.4:80 with loadBalancerSourceRanges 203.0.113.0/25.
/// lbempty: LoadBalancer 1.2.3.5:80 (NodePort 30084), the same ranges, no endpoints.
/// sticky: ClusterIP 10.96.0.50:80 with ClientIP affinity.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: cluster}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP},
          {name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}]
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
metadata: {namespace: ns, name: empty}
spec:
  type: NodePort
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 80, nodePort: 30082, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.13
  loadBalancerSourceRanges: [203.0.113.0/25]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30083, protocol: TCP}]
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: lbempty}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.14
  loadBalancerSourceRanges: [203.0.113.0/25]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30084, protocol: TCP}]
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.5}]
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: sticky}
spec:
  clusterIP: 10.96.0.50
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"#;

/// A slice of three endpoints; `not_ready` is listed but not ready (not in any usable set).
fn slice(service: &str, ports: &str, not_ready: Option<&str>) -> String {
    let endpoints: String = [("10.244.1.11", "node1"), ("10.244.2.21", "node2"), ("10.244.2.22", "node2")]
        .into_iter()
        .map(|(ip, node)| {
            let ready = Some(ip) != not_ready;
            format!("- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: {ready}}}}}\n")
        })
        .collect();
    format!(
        r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: ns
  name: {service}-1
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: {ports}
endpoints:
{endpoints}"#
    )
}

/// The translated manifests; the `sticky` service's endpoint `sticky_not_ready` not ready.
fn desired(sticky_not_ready: Option<&str>) -> lb_userspace::model::DesiredState {
    let mut yaml = MANIFESTS.to_string();
    let http = "[{name: http, port: 8080, protocol: TCP}]";
    yaml.push_str(&slice("cluster", "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]", None));
    yaml.push_str(&slice("local", http, None));
    yaml.push_str(&slice("lb", http, None));
    yaml.push_str(&slice("sticky", http, sticky_not_ready));
    let report = manifests::parse_str(&yaml, "test.yaml");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = NodeInfo { name: "node1".into(), labels: Default::default() };
    let (desired, errors) = translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    desired
}

struct Harness {
    ebpf: Ebpf,
    writer: Writer,
}

impl Harness {
    fn new() -> Harness {
        let desired = desired(None);
        let flags =
            ProxyFlags { cluster_cidr: vec!["10.244.0.0/16".parse().unwrap()], node_ip: vec![NODE], ..Default::default() };
        let node_net = flags.node_net(None, &[NODE]).unwrap();
        let cap = Capacity {
            max_frontends: 1024,
            max_service_ports: 64,
            max_backends: 1024,
            conntrack_entries: 8192,
            ..Capacity::default()
        };
        let mut ebpf = load_object(&cap, None).expect("load object");
        let maps = MapSet::take(&mut ebpf, &cap, None).expect("maps");
        let mut writer = Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT).unwrap();
        writer.set_node(&node_net).unwrap();
        let report = writer.apply(&desired);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        load_xdp_program(&mut ebpf).expect("verifier accepts lb_uplink");
        load_tc_program(&mut ebpf, names::PROG_HOST_EGRESS).expect("verifier accepts lb_host_egress");
        load_tc_program(&mut ebpf, names::PROG_POD_INGRESS).expect("verifier accepts lb_pod_ingress");
        Harness { ebpf, writer }
    }

    fn apply(&mut self, desired: &lb_userspace::model::DesiredState) {
        let report = self.writer.apply(desired);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    fn xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_xdp(&mut self.ebpf, names::PROG_UPLINK, frame)
    }

    fn tc(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        run_tc(&mut self.ebpf, prog, frame)
    }

    fn counter(&self, c: Counter) -> u64 {
        counter(&self.ebpf, c)
    }

    fn ct(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, dir: u8) -> Option<CtEntry> {
        let map: HashMap<&MapData, CtKey, CtEntry> = HashMap::try_from(self.ebpf.map(names::CT).unwrap()).unwrap();
        let key =
            CtKey::new(ip_to_map(src.octets()), ip_to_map(dst.octets()), port_to_map(sport), port_to_map(dport), proto, dir);
        map.get(&key, 0).ok()
    }
}

fn assert_valid(out: &[u8]) -> packet::FrameSummary {
    let s = summarize(out).unwrap();
    assert!(s.ip_checksum_ok, "IPv4 checksum");
    assert!(s.l4_checksum_ok, "L4 checksum");
    s
}

const BACKENDS: [&str; 3] = ["10.244.1.11", "10.244.2.21", "10.244.2.22"];

/// H2 + the reply path: an external client's SYN to a NodePort (eTP=Cluster) is DNATed to a
/// backend and masqueraded to the node's address with a port from the masquerade range; the
/// backend's reply to that port is restored to NodePort → client. Valid checksums both ways,
/// for TCP and UDP, on the XDP program.
#[test]
fn xdp_nodeport_dnat_masquerade_and_reply_restore() {
    if !require_root("xdp_nodeport_dnat_masquerade_and_reply_restore") {
        return;
    }
    let mut h = Harness::new();
    let mut backends = BTreeSet::new();
    for sport in 40000..40040u16 {
        let input = tcp(EXTERNAL, sport, NODE, 30080, true);
        let (rc, out) = h.xdp(&input);
        assert_eq!(rc, XDP_PASS);
        let s = assert_valid(&out);
        assert!(BACKENDS.contains(&s.dst.to_string().as_str()), "{s:?}");
        assert_eq!(s.dport, 8080);
        assert_eq!(s.src, NODE, "masqueraded to the node address");
        // The client's port is in the node's ephemeral range (Linux's default 32768–60999, the
        // harness's configuration): not kept; a port of the search range outside it.
        assert!(s.sport >= 1024 && !(32_768..=60_999).contains(&s.sport), "masquerade port {} in range", s.sport);
        assert_eq!(&out[..14], &input[..14], "Ethernet untouched (the kernel routes it)");
        backends.insert(s.dst);
        let fwd = h.ct(EXTERNAL, sport, NODE, 30080, 6, ct_dir::FORWARD).expect("forward entry");
        assert!(fwd.flags & ct_flags::SNAT != 0);

        // The backend answers the masquerade address.
        let reply = tcp(s.dst, 8080, NODE, s.sport, false);
        let (rc, back) = h.xdp(&reply);
        assert_eq!(rc, XDP_PASS);
        let r = assert_valid(&back);
        assert_eq!((r.src, r.sport, r.dst, r.dport), (NODE, 30080, EXTERNAL, sport), "reply restored");
    }
    assert_eq!(backends.len(), 3, "local and remote backends: {backends:?}");

    // A client port outside the node's ephemeral range is kept when its tuple is free.
    let input = tcp(EXTERNAL, 62_000, NODE, 30080, true);
    let (_, out) = h.xdp(&input);
    let s = assert_valid(&out);
    assert_eq!((s.src, s.sport), (NODE, 62_000), "the client's own port, masqueraded");

    // A client whose source port is the number of a NodePort (its own, or another): the port
    // is kept, and the backend's answer to NODE:30080 is the flow's reply — conntrack comes
    // before the frontend lookup, as in netfilter — never a new connection to the NodePort.
    for nodeport in [30080u16, 30053] {
        let input = tcp(EXTERNAL, nodeport, NODE, 30080, true);
        let (_, out) = h.xdp(&input);
        let s = assert_valid(&out);
        assert_eq!((s.src, s.sport), (NODE, nodeport), "the client's own port, masqueraded");
        let new_flows = h.counter(Counter::NewFlows);
        let reply = tcp(s.dst, 8080, NODE, nodeport, false);
        let (rc, back) = h.xdp(&reply);
        assert_eq!(rc, XDP_PASS);
        let r = assert_valid(&back);
        assert_eq!((r.src, r.sport, r.dst, r.dport), (NODE, 30080, EXTERNAL, nodeport), "reply to NODE:{nodeport} restored");
        assert_eq!(h.counter(Counter::NewFlows), new_flows, "the reply started no flow");
    }

    let input = packet::build(Protocol::Udp, EXTERNAL, 5555, NODE, 30053, b"question");
    let (rc, out) = h.xdp(&input);
    assert_eq!(rc, XDP_PASS);
    let s = assert_valid(&out);
    assert_eq!((s.src, s.dport), (NODE, 5353));
    let reply = packet::build(Protocol::Udp, s.dst, 5353, NODE, s.sport, b"answer");
    let (_, back) = h.xdp(&reply);
    let r = assert_valid(&back);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (NODE, 30053, EXTERNAL, 5555));
}

/// Masquerade ports never collide: many clients using the same source port towards the same
/// NodePort get pairwise distinct post-NAT tuples.
#[test]
fn masquerade_ports_are_unique_per_post_nat_tuple() {
    if !require_root("masquerade_ports_are_unique_per_post_nat_tuple") {
        return;
    }
    let mut h = Harness::new();
    let mut tuples = BTreeSet::new();
    for i in 0..300u32 {
        let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + i);
        let (rc, out) = h.xdp(&tcp(client, 1234, NODE, 30080, true));
        assert_eq!(rc, XDP_PASS);
        let s = assert_valid(&out);
        assert!(tuples.insert((s.src, s.sport, s.dst, s.dport)), "post-NAT tuple reused: {s:?}");
    }
}

/// H3 for external clients: eTP=Local uses only this node's endpoint and keeps the client's
/// address; a pod (inside --cluster-cidr) short-circuits to every endpoint, unmasqueraded.
#[test]
fn external_traffic_policy_local() {
    if !require_root("external_traffic_policy_local") {
        return;
    }
    let mut h = Harness::new();
    for sport in 41000..41030u16 {
        let (rc, out) = h.xdp(&tcp(EXTERNAL, sport, NODE, 30081, true));
        assert_eq!(rc, XDP_PASS);
        let s = assert_valid(&out);
        assert_eq!((s.src, s.sport, s.dst.to_string()), (EXTERNAL, sport, "10.244.1.11".to_string()), "local only, client kept");
    }
    let mut seen = BTreeSet::new();
    for sport in 42000..42060u16 {
        let (rc, out) = h.tc(names::PROG_POD_INGRESS, &tcp(POD, sport, NODE, 30081, true));
        assert_eq!(rc, TC_ACT_OK);
        let s = assert_valid(&out);
        assert_eq!(s.src, POD, "pods are not masqueraded (short-circuit)");
        seen.insert(s.dst);
    }
    assert_eq!(seen.len(), 3, "pods reach every endpoint: {seen:?}");
}

/// E1 on the uplink: a NodePort without endpoints is answered with an ICMP port unreachable
/// handed to the uplink's tc program (XDP_PASS with the hand-off in the XDP metadata) to send
/// back to the client: the frame stays addressed as the kernel received it.
#[test]
fn xdp_rejects_nodeport_without_endpoints() {
    if !require_root("xdp_rejects_nodeport_without_endpoints") {
        return;
    }
    let mut h = Harness::new();
    let syn = tcp(EXTERNAL, 43000, NODE, 30082, true);
    let (rc, meta, out) = run_xdp_meta(&mut h.ebpf, names::PROG_UPLINK, &syn, 0);
    assert_eq!((rc, meta), (XDP_PASS, handed_to_tc(lb_common::xdp_meta::ORIGINATED)));
    assert!(packet::is_port_unreachable(&out), "ICMP port unreachable with valid checksums");
    assert_eq!(&out[..12], &syn[..12], "Ethernet addresses kept: the kernel routes it");
    assert_eq!(&out[14 + 12..14 + 16], &NODE.octets(), "from the NodePort address");
    assert_eq!(&out[14 + 16..14 + 20], &EXTERNAL.octets());
    assert_eq!(h.counter(Counter::RejectNoEndpoint), 1);
}

/// D7: loadBalancerSourceRanges on the LB IP only; the NodePort of the same service bypasses it.
#[test]
fn load_balancer_source_ranges() {
    if !require_root("load_balancer_source_ranges") {
        return;
    }
    let mut h = Harness::new();
    let (rc, out) = h.xdp(&tcp(Ipv4Addr::new(203, 0, 113, 2), 44000, LB_IP, 80, true));
    assert_eq!(rc, XDP_PASS);
    assert_eq!(assert_valid(&out).dport, 8080, "inside the range: DNAT");
    let (rc, _) = h.xdp(&tcp(Ipv4Addr::new(203, 0, 113, 130), 44001, LB_IP, 80, true));
    assert_eq!(rc, XDP_DROP, "outside the range: DROP");
    assert_eq!(h.counter(Counter::DropSourceRange), 1);
    let (rc, out) = h.xdp(&tcp(Ipv4Addr::new(203, 0, 113, 130), 44002, NODE, 30083, true));
    assert_eq!(rc, XDP_PASS);
    assert_eq!(assert_valid(&out).dport, 8080, "the NodePort bypasses the ranges");
}

/// D7 before E1: on an LB IP with loadBalancerSourceRanges and no endpoints, a source outside
/// the ranges is dropped without an answer (kube-proxy's nftables firewall check runs before
/// its no-endpoint reject); a source inside gets the REJECT, and so does anyone on the NodePort.
#[test]
fn source_ranges_drop_before_the_no_endpoint_reject() {
    if !require_root("source_ranges_drop_before_the_no_endpoint_reject") {
        return;
    }
    let mut h = Harness::new();
    let lb_empty = Ipv4Addr::new(1, 2, 3, 5);
    let outside = Ipv4Addr::new(203, 0, 113, 130);
    let (rc, _) = h.xdp(&tcp(outside, 44100, lb_empty, 80, true));
    assert_eq!(rc, XDP_DROP, "outside the ranges, no endpoints: DROP, no ICMP answer");
    assert_eq!((h.counter(Counter::DropSourceRange), h.counter(Counter::RejectNoEndpoint)), (1, 0));

    let inside = Ipv4Addr::new(203, 0, 113, 2);
    let (rc, meta, out) = run_xdp_meta(&mut h.ebpf, names::PROG_UPLINK, &tcp(inside, 44101, lb_empty, 80, true), 0);
    assert_eq!((rc, meta), (XDP_PASS, handed_to_tc(lb_common::xdp_meta::ORIGINATED)));
    assert!(packet::is_port_unreachable(&out), "inside the ranges: ICMP port unreachable");
    assert_eq!(&out[14 + 12..14 + 16], &lb_empty.octets(), "from the LB IP");

    let (rc, meta, out) = run_xdp_meta(&mut h.ebpf, names::PROG_UPLINK, &tcp(outside, 44102, NODE, 30084, true), 0);
    assert_eq!((rc, meta), (XDP_PASS, handed_to_tc(lb_common::xdp_meta::ORIGINATED)));
    assert!(packet::is_port_unreachable(&out), "the NodePort bypasses the ranges: REJECT");
    assert_eq!((h.counter(Counter::DropSourceRange), h.counter(Counter::RejectNoEndpoint)), (1, 2));
}

/// F1/F2: with ClientIP affinity every new connection of a client goes to the same endpoint.
#[test]
fn session_affinity_pins_a_client_to_one_endpoint() {
    if !require_root("session_affinity_pins_a_client_to_one_endpoint") {
        return;
    }
    let mut h = Harness::new();
    let vip = Ipv4Addr::new(10, 96, 0, 50);
    let mut seen = BTreeSet::new();
    for sport in 45000..45040u16 {
        let (rc, out) = h.tc(names::PROG_POD_INGRESS, &tcp(POD, sport, vip, 80, true));
        assert_eq!(rc, TC_ACT_OK);
        seen.insert(assert_valid(&out).dst);
    }
    assert_eq!(seen.len(), 1, "one endpoint for one client: {seen:?}");
    assert_eq!(h.counter(Counter::AffinityHits), 39);
    // Another client gets its own (possibly different) endpoint, also sticky.
    let other = Ipv4Addr::new(10, 244, 1, 51);
    let firsts: BTreeSet<Ipv4Addr> = (46000..46020u16)
        .map(|sport| assert_valid(&h.tc(names::PROG_POD_INGRESS, &tcp(other, sport, vip, 80, true)).1).dst)
        .collect();
    assert_eq!(firsts.len(), 1);

    // F3: the affine endpoint leaves the usable set (still listed, not ready: its backend entry
    // stays): the next connection picks another one, which is sticky from then on.
    let gone = seen.into_iter().next().unwrap();
    h.apply(&desired(Some(&gone.to_string())));
    let after: BTreeSet<Ipv4Addr> = (47000..47020u16)
        .map(|sport| assert_valid(&h.tc(names::PROG_POD_INGRESS, &tcp(POD, sport, vip, 80, true)).1).dst)
        .collect();
    assert_eq!(after.len(), 1, "sticky again: {after:?}");
    assert!(!after.contains(&gone), "never the endpoint that left");
}

/// The node's own connection (tc egress): a ClusterIP is DNATed (and, with a detector,
/// masqueraded, H1), then handed to the kernel to route to the backend.
#[test]
fn host_egress_balances_the_nodes_own_connections() {
    if !require_root("host_egress_balances_the_nodes_own_connections") {
        return;
    }
    let mut h = Harness::new();
    let (rc, out) = h.tc(names::PROG_HOST_EGRESS, &tcp(NODE, 47000, Ipv4Addr::new(10, 96, 0, 10), 80, true));
    assert!(matches!(rc, TC_ACT_OK | TC_ACT_REDIRECT), "rc {rc}");
    let s = assert_valid(&out);
    assert!(BACKENDS.contains(&s.dst.to_string().as_str()));
    assert_eq!((s.src, s.dport), (NODE, 8080));
    let fwd = h.ct(NODE, 47000, Ipv4Addr::new(10, 96, 0, 10), 80, 6, ct_dir::FORWARD).expect("tracked");
    assert!(fwd.flags & ct_flags::SNAT != 0, "node → ClusterIP is masqueraded when a detector is configured");
    // No endpoint: REJECT, delivered back to the sender (redirect to ingress).
    let (rc, out) = h.tc(names::PROG_HOST_EGRESS, &tcp(NODE, 47001, Ipv4Addr::new(10, 96, 0, 12), 80, true));
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert!(packet::is_port_unreachable(&out));
}

/// An ICMP error from `from` to `to` quoting `quote` (an IPv4 packet, cut to `len` bytes).
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, icmp_type: etherparse::Icmpv4Type, quote: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(packet::SRC_MAC, packet::DST_MAC)
        .ipv4(from.octets(), to.octets(), 64)
        .icmpv4(icmp_type)
        .write(&mut out, &quote[..quote.len().min(len)])
        .unwrap();
    out
}

fn frag_needed() -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1000,
    })
}

/// The outer addresses and the quote of an ICMP error frame, every checksum checked with
/// etherparse (outer IPv4 header, ICMP over its payload, the quoted IPv4 header).
fn icmp_summary(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4") };
    let h = ip.header();
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum(), "outer IPv4 checksum");
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else { panic!("not ICMP") };
    let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
    assert_eq!(icmp.checksum(), want.checksum, "ICMP checksum");
    let quote = icmp.payload().to_vec();
    let qh = etherparse::Ipv4HeaderSlice::from_slice(&quote).unwrap();
    assert_eq!(qh.to_header().calc_header_checksum(), qh.header_checksum(), "quoted IPv4 checksum");
    (Ipv4Addr::from(h.source()), Ipv4Addr::from(h.destination()), quote)
}

/// ICMP errors about translated flows (netfilter's RELATED) are translated both ways: a router's
/// "fragmentation needed" for a masqueraded NodePort flow's packet reaches the external client
/// from the NodePort address, quoting what the client sent; one for the backend's reply reaches
/// the backend, quoting what it sent; a UDP backend's port unreachable reaches a pod client
/// from the ClusterIP. With the whole packet quoted, the quote is byte for byte the original
/// (transport checksum included); with 8 bytes quoted, the headers are. An error that matches
/// no flow, and an echo request to a ClusterIP, pass byte-identical.
#[test]
fn icmp_errors_of_translated_flows_are_translated() {
    if !require_root("icmp_errors_of_translated_flows_are_translated") {
        return;
    }
    let mut h = Harness::new();
    let router = Ipv4Addr::new(192, 168, 0, 99);
    // External client → NodePort (masqueraded) and the backend's reply.
    let input = tcp(EXTERNAL, 40500, NODE, 30080, true);
    let (_, out) = h.xdp(&input);
    let s = assert_valid(&out);
    let reply = tcp(s.dst, 8080, NODE, s.sport, false);
    let (_, back) = h.xdp(&reply);
    assert_valid(&back);

    for len in [usize::MAX, 28] {
        // A router between the node and the backend cannot forward the translated packet.
        let err = icmp_error(router, NODE, frag_needed(), &out[14..], len);
        let (rc, t) = h.xdp(&err);
        assert_ne!(rc, XDP_DROP);
        let (src, dst, quote) = icmp_summary(&t);
        assert_eq!((src, dst), (NODE, EXTERNAL), "from the NodePort address to the client");
        let n = quote.len();
        assert_eq!(&quote[..], &input[14..14 + n], "the quote is what the client sent ({len})");

        // A router on the client's side cannot forward the reverse-NATed reply.
        let err = icmp_error(router, NODE, frag_needed(), &back[14..], len);
        let (_, t) = h.xdp(&err);
        let (src, dst, quote) = icmp_summary(&t);
        assert_eq!((src, dst), (NODE, s.dst), "from the masquerade address to the backend");
        let n = quote.len();
        assert_eq!(&quote[..], &reply[14..14 + n], "the quote is what the backend sent ({len})");
    }
    assert_eq!(h.counter(Counter::IcmpRelated), 4);

    // A pod's UDP flow to a ClusterIP; the backend's port is closed.
    let q = packet::build(Protocol::Udp, POD, 5555, Ipv4Addr::new(10, 96, 0, 10), 53, b"question");
    let (_, out) = h.tc(names::PROG_POD_INGRESS, &q);
    let s = assert_valid(&out);
    assert_eq!((s.src, s.dport), (POD, 5353));
    let unreach = etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let err = icmp_error(s.dst, POD, unreach.clone(), &out[14..], usize::MAX);
    let (_, t) = h.tc(names::PROG_POD_INGRESS, &err);
    let (src, dst, quote) = icmp_summary(&t);
    assert_eq!((src, dst), (Ipv4Addr::new(10, 96, 0, 10), POD), "from the ClusterIP to the client");
    assert_eq!(&quote[..], &q[14..], "quoting the client's datagram");
    assert_eq!(h.counter(Counter::IcmpRelated), 5);

    // No flow: untouched. An echo request to a ClusterIP: untouched (iptables mode routes it).
    let stray = icmp_error(router, NODE, unreach, &tcp(NODE, 1111, EXTERNAL, 2222, false)[14..], usize::MAX);
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(packet::SRC_MAC, packet::DST_MAC)
        .ipv4(POD.octets(), [10, 96, 0, 10], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    for frame in [stray, echo] {
        let (rc, t) = h.tc(names::PROG_POD_INGRESS, &frame);
        assert_eq!((rc, &t[..]), (TC_ACT_OK, &frame[..]), "passed byte-identical");
    }
    assert_eq!(h.counter(Counter::IcmpRelated), 5);
}
