//! Packet tests: the real lb_pod_ingress program through BPF_PROG_TEST_RUN on crafted frames,
//! with maps programmed by the agent's own translation and writer. Output bytes are compared
//! field by field and checksums are verified with etherparse (an independent implementation).

use std::net::Ipv4Addr;

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use etherparse::{IpNumber, Ipv4Header, Ipv4Options, PacketBuilder};
use lb_common::{
    hash::flow_hash,
    ip_to_map,
    maglev::{build_table, table_size, MaglevBackend},
    port_to_map, Counter, CtEntry, CtKey,
};
mod common;

use common::{counter, run_tc, tcp, tcp_seg};
use lb_tests::privileges::require_root;
use lb_userspace::{
    dataplane::{attach::load_pod_program, load_object, names, writer::Writer, Capacity, MapSet},
    manifests,
    model::{translate, DesiredState, EndpointAddr, NodeInfo, Protocol, ServicePortName, TranslateOptions},
    packet::{self, summarize},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);

fn service_yaml(endpoints: &[(&str, bool, bool, bool)]) -> String {
    let mut eps = String::new();
    for (ip, ready, serving, terminating) in endpoints {
        eps.push_str(&format!(
            "  - addresses: [{ip}]\n    conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n    nodeName: node1\n"
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{namespace: ns, name: web}}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}
  - {{name: sctp, port: 9, targetPort: 9999, protocol: SCTP}}
---
apiVersion: v1
kind: Service
metadata: {{namespace: ns, name: empty}}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {{name: http, port: 80, protocol: TCP}}
---
apiVersion: v1
kind: Service
metadata: {{namespace: ns, name: alias}}
spec:
  clusterIP: 10.96.0.30
  ports:
  - {{name: http, port: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: ns
  name: alias-1
  labels: {{kubernetes.io/service-name: alias}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
- addresses: [10.244.1.11]
  conditions: {{ready: true}}
  nodeName: node1
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: ns
  name: web-1
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
- {{name: sctp, port: 9999, protocol: SCTP}}
endpoints:
{eps}"#
    )
}

fn desired(endpoints: &[(&str, bool, bool, bool)]) -> DesiredState {
    let report = manifests::parse_str(&service_yaml(endpoints), "test.yaml");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = NodeInfo { name: "node1".into(), labels: Default::default() };
    let (state, errors) = translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    state
}

const THREE: [(&str, bool, bool, bool); 3] =
    [("10.244.1.11", true, true, false), ("10.244.1.12", true, true, false), ("10.244.1.13", true, true, false)];

struct Harness {
    ebpf: Ebpf,
    writer: Writer,
}

impl Harness {
    fn new(endpoints: &[(&str, bool, bool, bool)]) -> Harness {
        let cap = Capacity {
            max_frontends: 1024,
            max_service_ports: 64,
            max_backends: 1024,
            conntrack_entries: 4096,
            ..Capacity::default()
        };
        let mut ebpf = load_object(&cap, None).expect("load object");
        let maps = MapSet::take(&mut ebpf, &cap, None).expect("maps");
        let mut writer =
            Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT).expect("writer");
        let report = writer.apply(&desired(endpoints));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        load_pod_program(&mut ebpf).expect("verifier accepts lb_pod_ingress");
        Harness { ebpf, writer }
    }

    fn apply(&mut self, endpoints: &[(&str, bool, bool, bool)]) {
        let report = self.writer.apply(&desired(endpoints));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_tc(&mut self.ebpf, names::PROG_POD_INGRESS, frame)
    }

    fn counter(&self, c: Counter) -> u64 {
        counter(&self.ebpf, c)
    }

    fn ct(&self) -> HashMap<&MapData, CtKey, CtEntry> {
        HashMap::try_from(self.ebpf.map(names::CT).unwrap()).unwrap()
    }
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    packet::build(Protocol::Udp, src, sport, dst, dport, b"question")
}

/// The bytes of `input` with only the expected fields replaced by those of `output`: every
/// other byte must be identical.
fn assert_only_changed(input: &[u8], output: &[u8], ranges: &[std::ops::Range<usize>]) {
    assert_eq!(input.len(), output.len(), "length changed");
    for (i, (a, b)) in input.iter().zip(output).enumerate() {
        if !ranges.iter().any(|r| r.contains(&i)) {
            assert_eq!(a, b, "byte {i} changed ({a:#04x} -> {b:#04x})");
        }
    }
}

/// The Maglev choice user space predicts for a flow (lb-common's hash and table).
fn predict(h: &Harness, sport: u16, backends: &[&str], port: u16, proto: u8) -> String {
    let name = ServicePortName {
        namespace: "ns".into(),
        name: "web".into(),
        port_name: if proto == 6 { "http".into() } else { "dns".into() },
        protocol: if proto == 6 { Protocol::Tcp } else { Protocol::Udp },
    };
    let members: Vec<MaglevBackend> = backends
        .iter()
        .map(|ip| {
            let ep = EndpointAddr { ip: ip.parse().unwrap(), port };
            MaglevBackend { name: ep.to_string(), id: h.writer.backend_id(&name, &ep).expect("programmed") }
        })
        .collect();
    let m = table_size(members.len(), lb_common::maglev::DEFAULT_MAX_TABLE_SIZE);
    let table = build_table(&members, m);
    let vport = if proto == 6 { 80 } else { 53 };
    let hash = flow_hash(ip_to_map(CLIENT.octets()), ip_to_map(VIP.octets()), port_to_map(sport), port_to_map(vport), proto);
    let id = table[(hash % m) as usize];
    let ip = members.iter().find(|b| b.id == id).unwrap().name.clone();
    ip
}

#[test]
fn tcp_syn_to_clusterip_is_dnated_with_valid_checksums_and_predicted_backend() {
    if !require_root("tcp_syn_to_clusterip_is_dnated_with_valid_checksums_and_predicted_backend") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40060u16 {
        let input = tcp(CLIENT, sport, VIP, 80, true);
        let (rc, out) = h.run(&input);
        assert_eq!(rc, TC_ACT_OK);
        let s = summarize(&out).unwrap();
        assert!(s.ip_checksum_ok, "IPv4 checksum");
        assert!(s.l4_checksum_ok, "TCP checksum");
        assert_eq!((s.src, s.sport, s.dport), (CLIENT, sport, 8080));
        let got = format!("{}:{}", s.dst, s.dport);
        assert_eq!(got, predict(&h, sport, &["10.244.1.11", "10.244.1.12", "10.244.1.13"], 8080, 6), "Maglev choice");
        // eth 0..14, ip 14..34 (check 24..26, daddr 30..34), tcp 34.. (dport 36..38, check 50..52)
        assert_only_changed(&input, &out, &[24..26, 30..34, 36..38, 50..52]);
        seen.insert(got);
    }
    assert_eq!(seen.len(), 3, "60 flows reach all 3 backends: {seen:?}");
    assert_eq!(h.counter(Counter::NewFlows), 60);
}

#[test]
fn reply_is_reverse_nated_and_established_flow_keeps_its_backend() {
    if !require_root("reply_is_reverse_nated_and_established_flow_keeps_its_backend") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let (_, out) = h.run(&tcp(CLIENT, 41000, VIP, 80, true));
    let first = summarize(&out).unwrap();

    // The backend's SYN-ACK comes back through its own interface: source restored to VIP:80.
    let reply = tcp(first.dst, 8080, CLIENT, 41000, false);
    let (rc, out) = h.run(&reply);
    assert_eq!(rc, TC_ACT_OK);
    let s = summarize(&out).unwrap();
    assert_eq!((s.src, s.sport, s.dst, s.dport), (VIP, 80, CLIENT, 41000));
    assert!(s.ip_checksum_ok && s.l4_checksum_ok);
    assert_only_changed(&reply, &out, &[24..26, 26..30, 34..36, 50..52]);
    assert_eq!(h.counter(Counter::ReplyPackets), 1);

    // The table changes (a fourth backend joins): the established flow stays put.
    h.apply(&[THREE[0], THREE[1], THREE[2], ("10.244.1.14", true, true, false)]);
    for _ in 0..3 {
        let (rc, out) = h.run(&tcp(CLIENT, 41000, VIP, 80, false));
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(summarize(&out).unwrap().dst, first.dst);
    }
    assert_eq!(h.counter(Counter::NewFlows), 1);
    // Both directions are tracked.
    let dirs: Vec<u8> = h.ct().keys().map(|k| k.unwrap().dir).collect();
    assert_eq!(dirs.len(), 2, "forward and reply entries");
}

#[test]
fn udp_checksums_including_zero_checksum() {
    if !require_root("udp_checksums_including_zero_checksum") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let input = udp(CLIENT, 5000, VIP, 53);
    let (rc, out) = h.run(&input);
    assert_eq!(rc, TC_ACT_OK);
    let s = summarize(&out).unwrap();
    assert!(s.ip_checksum_ok && s.l4_checksum_ok);
    assert_eq!(s.dport, 5353);
    assert_ne!(u16::from_be_bytes([out[40], out[41]]), 0, "UDP checksum present");
    assert_only_changed(&input, &out, &[24..26, 30..34, 36..38, 40..42]);

    // A datagram sent without a checksum keeps "no checksum".
    let mut zero = udp(CLIENT, 5001, VIP, 53);
    zero[40] = 0;
    zero[41] = 0;
    let (rc, out) = h.run(&zero);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(&out[40..42], &[0, 0], "zero UDP checksum stays zero");
    let s = summarize(&out).unwrap();
    assert!(s.ip_checksum_ok);
    assert_eq!(s.dport, 5353);

    // UDP replies are reverse-NATed too.
    let reply = udp(s.dst, 5353, CLIENT, 5001);
    let (_, out) = h.run(&reply);
    let r = summarize(&out).unwrap();
    assert_eq!((r.src, r.sport), (VIP, 53));
    assert!(r.l4_checksum_ok && r.ip_checksum_ok);
}

/// SCTP with a targetPort different from the port: the address rewrite leaves the CRC32c
/// valid (it does not cover the IP header) and the port rewrite updates it incrementally, both
/// ways, whatever the packet length (checked by recomputing it with the `crc` crate).
#[test]
fn sctp_port_rewrite_keeps_crc32c_valid_both_ways() {
    if !require_root("sctp_port_rewrite_keeps_crc32c_valid_both_ways") {
        return;
    }
    let mut h = Harness::new(&THREE);
    for (i, size) in [1usize, 5, 64, 1000, 1400].into_iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        let sport = 7000 + i as u16;
        let input = packet::build(Protocol::Sctp, CLIENT, sport, VIP, 9, &payload);
        assert!(summarize(&input).unwrap().l4_checksum_ok);
        let (rc, out) = h.run(&input);
        assert_eq!(rc, TC_ACT_OK);
        let s = summarize(&out).unwrap();
        assert!(s.ip_checksum_ok, "IPv4 checksum");
        assert!(s.l4_checksum_ok, "CRC32c after the port rewrite ({size} bytes of payload)");
        assert_eq!((s.sport, s.dport), (sport, 9999));
        assert!(s.dst.octets()[..3] == [10, 244, 1]);

        let reply = packet::build(Protocol::Sctp, s.dst, 9999, CLIENT, sport, &payload);
        let (_, back) = h.run(&reply);
        let r = summarize(&back).unwrap();
        assert_eq!((r.src, r.sport), (VIP, 9), "reply restored");
        assert!(r.l4_checksum_ok, "CRC32c after the reverse port rewrite");
    }
}

#[test]
fn non_service_traffic_passes_byte_for_byte() {
    if !require_root("non_service_traffic_passes_byte_for_byte") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let arp: Vec<u8> = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&packet::SRC_MAC);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    };
    let ipv6 = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(packet::SRC_MAC, packet::DST_MAC)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1, 2)
            .write(&mut out, b"x")
            .unwrap();
        out
    };
    let frames = vec![
        tcp(CLIENT, 1234, "10.244.1.11".parse().unwrap(), 8080, true), // straight to a pod
        tcp(CLIENT, 1234, VIP, 81, true),                              // VIP, undefined port
        udp(CLIENT, 1234, VIP, 80),                                    // VIP, wrong protocol
        arp,
        ipv6,
    ];
    for f in frames {
        let (rc, out) = h.run(&f);
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(out, f, "untouched");
    }
    assert_eq!(h.counter(Counter::NewFlows), 0);
}

fn ipv4_frame(header: Ipv4Header, l4: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::Ethernet2Header {
        source: packet::SRC_MAC,
        destination: packet::DST_MAC,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    header.write(&mut out).unwrap();
    out.extend_from_slice(l4);
    out
}

#[test]
fn ip_options_are_skipped_to_find_the_ports() {
    if !require_root("ip_options_are_skipped_to_find_the_ports") {
        return;
    }
    let mut h = Harness::new(&THREE);
    // A TCP SYN behind 8 bytes of IP options (NOP padding + router alert).
    let plain = tcp(CLIENT, 42000, VIP, 80, true);
    let tcp_bytes = plain[34..].to_vec();
    let mut ip = Ipv4Header::new(tcp_bytes.len() as u16, 64, IpNumber::TCP, CLIENT.octets(), VIP.octets()).unwrap();
    ip.options = Ipv4Options::try_from(&[0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00][..]).unwrap();
    ip.total_len = (ip.header_len() + tcp_bytes.len()) as u16;
    ip.header_checksum = ip.calc_header_checksum();
    let input = ipv4_frame(ip, &tcp_bytes);
    let (rc, out) = h.run(&input);
    assert_eq!(rc, TC_ACT_OK);
    let s = summarize(&out).unwrap();
    assert!(s.ip_checksum_ok && s.l4_checksum_ok);
    assert_eq!(s.dport, 8080);
    assert_only_changed(&input, &out, &[24..26, 30..34, 44..46, 58..60]);
}

/// Splits the IPv4 payload of `frame` (no IP options) into fragments of the given payload
/// lengths (multiples of 8 but the last), with identification `id`.
fn fragment(frame: &[u8], id: u16, sizes: &[usize]) -> Vec<Vec<u8>> {
    let (ip, payload) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    for (i, len) in sizes.iter().enumerate() {
        let last = i + 1 == sizes.len();
        let len = if last { payload.len() - at } else { *len };
        let mut h = ip.clone();
        h.identification = id;
        h.more_fragments = !last;
        h.fragment_offset = etherparse::IpFragOffset::try_new((at / 8) as u16).unwrap();
        h.set_payload_len(len).unwrap();
        h.header_checksum = h.calc_header_checksum();
        out.push(ipv4_frame(h, &payload[at..at + len]));
        at += len;
    }
    out
}

/// The datagram the fragments make (by their offsets), as one unfragmented frame, for an
/// independent check of its transport checksum; also checks every fragment's IP checksum
/// and that all carry the same addresses.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut first = None;
    for f in frags {
        let (h, data) = Ipv4Header::from_slice(&f[14..]).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum(), "IP checksum of a fragment");
        let at = h.fragment_offset.byte_offset() as usize;
        payload.resize(payload.len().max(at + data.len()), 0);
        payload[at..at + data.len()].copy_from_slice(data);
        let first = first.get_or_insert(h.clone());
        assert_eq!((h.source, h.destination), (first.source, first.destination), "same addresses on every fragment");
    }
    let mut h = first.unwrap();
    h.more_fragments = false;
    h.fragment_offset = etherparse::IpFragOffset::ZERO;
    h.set_payload_len(payload.len()).unwrap();
    h.header_checksum = h.calc_header_checksum();
    ipv4_frame(h, &payload)
}

#[test]
fn fragments_are_translated_like_their_first_fragment_both_ways() {
    if !require_root("fragments_are_translated_like_their_first_fragment_both_ways") {
        return;
    }
    let mut h = Harness::new(&THREE);
    // A 100-byte UDP datagram to VIP:53 in three fragments (UDP header + 24, 32, the rest).
    let body: Vec<u8> = (0..100u8).collect();
    let whole = packet::build(Protocol::Udp, CLIENT, 5000, VIP, 53, &body);
    let frags = fragment(&whole, 0x1234, &[32, 32, 0]);
    let mut outs = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        let (rc, out) = h.run(f);
        assert_eq!(rc, TC_ACT_OK, "fragment {i}");
        // Every fragment: destination address and IP checksum; the first also the port and
        // the UDP checksum (eth 0..14, ip 14..34: check 24..26, daddr 30..34; udp dport 36..38,
        // check 40..42).
        assert_only_changed(f, &out, if i == 0 { &[24..26, 30..34, 36..38, 40..42] } else { &[24..26, 30..34] });
        outs.push(out);
    }
    let s = summarize(&reassemble(&outs)).unwrap();
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "the datagram's UDP checksum, over all fragments");
    assert_eq!((s.src, s.sport, s.dport), (CLIENT, 5000, 5353));
    let backend = s.dst;
    assert!(THREE.iter().any(|(ip, ..)| backend.to_string() == *ip));
    assert_eq!(h.counter(Counter::FragmentsTranslated), 2);
    assert_eq!(h.counter(Counter::NewFlows), 1);

    // A 2nd datagram of the flow, its fragments out of order: a later fragment before its
    // first is dropped (counted), the rest go through.
    let frags2 = fragment(&whole, 0x1235, &[32, 32, 0]);
    let (rc, out) = h.run(&frags2[2]);
    assert_eq!((rc, &out), (TC_ACT_SHOT, &frags2[2]), "a later fragment before its first");
    assert_eq!(h.counter(Counter::DropFragment), 1);
    for f in &frags2[..2] {
        let (rc, out) = h.run(f);
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(Ipv4Addr::new(out[30], out[31], out[32], out[33]), backend, "the same backend");
    }

    // The reply, fragmented by the backend: the source becomes VIP:53 on every fragment.
    let answer: Vec<u8> = (0..200u8).rev().collect();
    let reply = packet::build(Protocol::Udp, backend, 5353, CLIENT, 5000, &answer);
    let rfrags = fragment(&reply, 0x0777, &[48, 64, 0]);
    let mut routs = Vec::new();
    for (i, f) in rfrags.iter().enumerate() {
        let (rc, out) = h.run(f);
        assert_eq!(rc, TC_ACT_OK, "reply fragment {i}");
        // saddr 26..30; the first also sport 34..36 and the UDP checksum.
        assert_only_changed(f, &out, if i == 0 { &[24..26, 26..30, 34..36, 40..42] } else { &[24..26, 26..30] });
        routs.push(out);
    }
    let s = summarize(&reassemble(&routs)).unwrap();
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "the reply's UDP checksum");
    assert_eq!((s.src, s.sport, s.dst, s.dport), (VIP, 53, CLIENT, 5000));
    assert_eq!(h.counter(Counter::FragmentsTranslated), 2 + 1 + 2);

    // TCP: a segment in two fragments, on a tracked flow.
    let (_, syn) = h.run(&tcp(CLIENT, 43100, VIP, 80, true));
    let tcp_backend = summarize(&syn).unwrap().dst;
    let seg = tcp_seg(CLIENT, 43100, VIP, 80, 0x18, 1001, 1);
    let mut seg_data = seg.clone();
    seg_data.extend_from_slice(&[7u8; 40]);
    let total = (seg_data.len() - 14) as u16;
    seg_data[16..18].copy_from_slice(&total.to_be_bytes());
    let seg_data = {
        // Recompute the checksums of the longer segment.
        let (ip, rest) = Ipv4Header::from_slice(&seg_data[14..]).unwrap();
        let (mut t, payload) = etherparse::TcpHeader::from_slice(rest).unwrap();
        t.checksum = t.calc_checksum_ipv4(&ip, payload).unwrap();
        let mut ip = ip.clone();
        ip.header_checksum = ip.calc_header_checksum();
        let mut l4 = t.to_bytes().to_vec();
        l4.extend_from_slice(payload);
        ipv4_frame(ip, &l4)
    };
    let tfrags = fragment(&seg_data, 0x0999, &[24, 0]);
    let mut touts = Vec::new();
    for f in &tfrags {
        let (rc, out) = h.run(f);
        assert_eq!(rc, TC_ACT_OK);
        touts.push(out);
    }
    let s = summarize(&reassemble(&touts)).unwrap();
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "the TCP checksum over both fragments");
    assert_eq!((s.dst, s.dport), (tcp_backend, 8080));

    // Not for a service and of no translated datagram: passed untouched; SCTP fragments to a
    // service are dropped (never translated half).
    let other: Ipv4Addr = "10.244.1.11".parse().unwrap();
    for f in fragment(&packet::build(Protocol::Udp, CLIENT, 5001, other, 53, &body), 0x4242, &[32, 0]) {
        let (rc, out) = h.run(&f);
        assert_eq!((rc, &out), (TC_ACT_OK, &f), "fragment elsewhere");
    }
    let sctp = packet::build(Protocol::Sctp, CLIENT, 5002, VIP, 9, &body);
    let sfrag = &fragment(&sctp, 0x4343, &[40, 0])[0];
    let (rc, out) = h.run(sfrag);
    assert_eq!((rc, &out), (TC_ACT_SHOT, sfrag), "SCTP first fragment to VIP");
}

#[test]
fn truncated_headers_to_a_service_are_dropped_elsewhere_passed() {
    if !require_root("truncated_headers_to_a_service_are_dropped_elsewhere_passed") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let other: Ipv4Addr = "10.244.1.11".parse().unwrap();
    // TCP header cut after 4 bytes (ports readable, the rest missing).
    let full = tcp(CLIENT, 43000, VIP, 80, true);
    let mut cut = full[..38].to_vec();
    let total = (cut.len() - 14) as u16;
    cut[16..18].copy_from_slice(&total.to_be_bytes());
    let (rc, _) = h.run(&cut);
    assert_eq!(rc, TC_ACT_SHOT, "truncated TCP header to VIP");
    let mut cut_other = tcp(CLIENT, 43000, other, 80, true)[..38].to_vec();
    cut_other[16..18].copy_from_slice(&total.to_be_bytes());
    let (rc, out) = h.run(&cut_other);
    assert_eq!((rc, &out), (TC_ACT_OK, &cut_other), "truncated TCP elsewhere passes untouched");

    // IHL < 5: passed for the kernel to drop. (A frame whose IPv4 header is cut short cannot
    // be fed to BPF_PROG_TEST_RUN at all: the kernel refuses it with EINVAL before the program
    // runs; the parser's bounds checks cover it the same way as the truncated L4 header.)
    let mut short = full.clone();
    short[14] = 0x44;
    let (rc, out) = h.run(&short);
    assert_eq!((rc, &out), (TC_ACT_OK, &short));
    assert!(h.counter(Counter::DropUnparsable) >= 1);
    assert_eq!(h.counter(Counter::NewFlows), 0);
}

#[test]
fn endpoint_changes_terminating_and_removed_backends() {
    if !require_root("endpoint_changes_terminating_and_removed_backends") {
        return;
    }
    let mut h = Harness::new(&THREE);
    // One TCP and one UDP flow on each backend.
    let mut tcp_flows = std::collections::BTreeMap::new();
    let mut udp_flows = std::collections::BTreeMap::new();
    for sport in 30000..30100u16 {
        let (_, out) = h.run(&tcp(CLIENT, sport, VIP, 80, true));
        tcp_flows.entry(summarize(&out).unwrap().dst).or_insert(sport);
        let (_, out) = h.run(&udp(CLIENT, sport, VIP, 53));
        udp_flows.entry(summarize(&out).unwrap().dst).or_insert(sport);
    }
    assert_eq!(tcp_flows.len(), 3);
    let c: Ipv4Addr = "10.244.1.13".parse().unwrap();

    // backend-c terminating but serving: established flows stay, new flows avoid it.
    h.apply(&[THREE[0], THREE[1], ("10.244.1.13", false, true, true)]);
    let (_, out) = h.run(&tcp(CLIENT, tcp_flows[&c], VIP, 80, false));
    assert_eq!(summarize(&out).unwrap().dst, c, "TCP flow keeps its terminating backend");
    let (_, out) = h.run(&udp(CLIENT, udp_flows[&c], VIP, 53));
    assert_eq!(summarize(&out).unwrap().dst, c, "UDP flow keeps its serving terminating backend");
    for sport in 31000..31100u16 {
        let (_, out) = h.run(&tcp(CLIENT, sport, VIP, 80, true));
        assert_ne!(summarize(&out).unwrap().dst, c, "new flow sent to a terminating backend");
    }

    // backend-c removed: its UDP flow moves to a live backend at once (TCP flows within a
    // second: their backend is re-checked with the once-a-second conntrack refresh).
    h.apply(&THREE[..2]);
    let (_, out) = h.run(&udp(CLIENT, udp_flows[&c], VIP, 53));
    let moved = summarize(&out).unwrap().dst;
    assert_ne!(moved, c);
    assert!(h.counter(Counter::Reselected) >= 1);
    let (_, out) = h.run(&udp(CLIENT, udp_flows[&c], VIP, 53));
    assert_eq!(summarize(&out).unwrap().dst, moved, "re-selected flow is sticky again");

    // Only terminating endpoints left: they serve new flows (SEMANTICS C1 fallback).
    h.apply(&[("10.244.1.11", false, true, true)]);
    let (_, out) = h.run(&tcp(CLIENT, 32000, VIP, 80, true));
    assert_eq!(summarize(&out).unwrap().dst, "10.244.1.11".parse::<Ipv4Addr>().unwrap());
    // Not serving: never used for new flows; the service has no usable endpoint: REJECT.
    h.apply(&[("10.244.1.11", false, false, true)]);
    let (rc, out) = h.run(&tcp(CLIENT, 32001, VIP, 80, true));
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert!(packet::is_port_unreachable(&out));
}

/// SEMANTICS E1: a new connection to a service without usable endpoints gets an ICMP port
/// unreachable, sent back out of the interface it came in on (TC_ACT_REDIRECT), quoting the
/// packet, with valid checksums; TCP and UDP alike.
#[test]
fn service_without_endpoints_rejects_new_connections_with_icmp_port_unreachable() {
    if !require_root("service_without_endpoints_rejects_new_connections_with_icmp_port_unreachable") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let empty: Ipv4Addr = "10.96.0.20".parse().unwrap();
    let syn = tcp(CLIENT, 1000, empty, 80, true);
    let (rc, out) = h.run(&syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 14 + 56, "Ethernet + IPv4 + ICMP + quoted header and 8 bytes");
    assert_eq!(&out[..6], &syn[6..12], "back to the sender's MAC");
    assert_eq!(&out[6..12], &syn[..6]);
    let ip = Ipv4Header::from_slice(&out[14..]).unwrap().0;
    assert_eq!(ip.source, empty.octets(), "from the address the client connected to");
    assert_eq!(ip.destination, CLIENT.octets());
    assert_eq!(ip.protocol, IpNumber::ICMP);
    assert_eq!(ip.calc_header_checksum(), ip.header_checksum);
    assert!(packet::is_port_unreachable(&out), "type 3 code 3, ICMP checksum valid");
    assert_eq!(&out[14 + 28..], &syn[14..14 + 28], "quotes the IP header and the ports");
    assert_eq!(h.counter(Counter::RejectNoEndpoint), 1);

    // UDP to a TCP-only service port is not a frontend: untouched.
    let (rc, out) = h.run(&udp(CLIENT, 1001, empty, 80));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(summarize(&out).unwrap().dst, empty);
}

const ALIAS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

impl Harness {
    /// The state of both halves of the flow client:sport → frontend (forward key), as names.
    fn states(&self, sport: u16, frontend: Ipv4Addr, fport: u16, proto: u8) -> (String, String) {
        let ct = self.ct();
        let key = CtKey::new(
            ip_to_map(CLIENT.octets()),
            ip_to_map(frontend.octets()),
            port_to_map(sport),
            port_to_map(fport),
            proto,
            0,
        );
        let fwd = ct.get(&key, 0).expect("forward half");
        let reply = ct.get(&lb_common::flow::partner_key(&key, &fwd), 0).expect("reply half");
        (lb_common::flow::state_name(proto, fwd.state).into(), lb_common::flow::state_name(proto, reply.state).into())
    }

    /// Sends a segment client → VIP:80 and returns the translated summary.
    fn client(&mut self, sport: u16, flags: u8, seq: u32, ack: u32) -> (u32, Option<packet::FrameSummary>) {
        let (rc, out) = self.run(&tcp_seg(CLIENT, sport, VIP, 80, flags, seq, ack));
        (rc, summarize(&out).ok())
    }

    /// Sends a segment backend:8080 → client:sport.
    fn backend(&mut self, backend: Ipv4Addr, sport: u16, flags: u8, seq: u32, ack: u32) -> (u32, Option<packet::FrameSummary>) {
        let (rc, out) = self.run(&tcp_seg(backend, 8080, CLIENT, sport, flags, seq, ack));
        (rc, summarize(&out).ok())
    }
}

/// netfilter's TCP states, both halves together, through a whole connection; then a SYN on
/// the closed tuple starts a new connection.
#[test]
fn tcp_states_follow_netfilter_and_a_syn_reopens_a_closed_tuple() {
    if !require_root("tcp_states_follow_netfilter_and_a_syn_reopens_a_closed_tuple") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let sport = 41_000;
    let (rc, s) = h.client(sport, SYN, 1000, 0);
    assert_eq!(rc, TC_ACT_OK);
    let s = s.unwrap();
    assert!(s.l4_checksum_ok);
    let backend = s.dst;
    let st = |h: &Harness| h.states(sport, VIP, 80, 6);
    assert_eq!(st(&h), ("SYN_SENT".into(), "SYN_SENT".into()));
    let steps: [(bool, u8, u32, u32, &str); 7] = [
        (false, SYN | ACK, 5000, 1001, "SYN_RECV"),
        (true, ACK, 1001, 5001, "ESTABLISHED"),
        (true, FIN | ACK, 1001, 5001, "FIN_WAIT"),
        (false, ACK, 5001, 1002, "CLOSE_WAIT"),
        (false, FIN | ACK, 5001, 1002, "LAST_ACK"),
        (true, ACK, 1002, 5002, "TIME_WAIT"),
        (true, ACK, 1002, 5002, "TIME_WAIT"),
    ];
    for (from_client, flags, seq, ack, want) in steps {
        let (rc, out) = if from_client { h.client(sport, flags, seq, ack) } else { h.backend(backend, sport, flags, seq, ack) };
        assert_eq!(rc, TC_ACT_OK, "{want}");
        let out = out.unwrap();
        assert!(out.ip_checksum_ok && out.l4_checksum_ok, "{want}");
        if from_client {
            assert_eq!((out.dst, out.dport), (backend, 8080));
        } else {
            assert_eq!((out.src, out.sport, out.dst, out.dport), (VIP, 80, CLIENT, sport));
        }
        assert_eq!(st(&h), (want.to_string(), want.to_string()), "after flags {flags:#x}");
    }
    assert_eq!(h.counter(Counter::NewFlows), 1);
    // The client reuses its port: a new connection (fresh backend choice, fresh state).
    let (rc, _) = h.client(sport, SYN, 90_000, 0);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(h.counter(Counter::Reopened), 1);
    assert_eq!(h.counter(Counter::NewFlows), 2);
    assert_eq!(st(&h), ("SYN_SENT".into(), "SYN_SENT".into()));
    // A SYN in the middle of a live connection is not a new one.
    let (rc, _) = h.client(sport, SYN, 90_000, 0);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(h.counter(Counter::NewFlows), 2);
}

/// An RST is believed only when it belongs to the flow; one without a flow is dropped.
#[test]
fn rst_must_belong_to_its_flow() {
    if !require_root("rst_must_belong_to_its_flow") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let (rc, _) = h.client(42_000, RST, 7, 0);
    assert_eq!(rc, TC_ACT_SHOT, "an RST without a connection is INVALID");
    assert_eq!(h.counter(Counter::NewFlows), 0);
    assert_eq!(h.counter(Counter::DropTcpInvalid), 1);

    let sport = 42_001;
    let (_, s) = h.client(sport, SYN, 1000, 0);
    let backend = s.unwrap().dst;
    // The backend refuses: its RST must acknowledge the SYN (1001).
    let (rc, _) = h.backend(backend, sport, RST | ACK, 0, 999);
    assert_eq!(rc, TC_ACT_SHOT, "an RST that does not acknowledge the SYN");
    assert_eq!(h.states(sport, VIP, 80, 6).0, "SYN_SENT");
    let (rc, out) = h.backend(backend, sport, RST | ACK, 0, 1001);
    assert_eq!(rc, TC_ACT_OK);
    let out = out.unwrap();
    assert_eq!((out.src, out.sport), (VIP, 80), "the refusal reaches the client");
    assert_eq!(h.states(sport, VIP, 80, 6), ("CLOSE".into(), "CLOSE".into()));

    // Established: an RST far outside the window is dropped, one in it closes.
    let sport = 42_002;
    let (_, s) = h.client(sport, SYN, 1000, 0);
    let backend = s.unwrap().dst;
    h.backend(backend, sport, SYN | ACK, 5000, 1001);
    h.client(sport, ACK, 1001, 5001);
    let (rc, _) = h.client(sport, RST, 1001u32.wrapping_add(0x8000_0000), 0);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(h.states(sport, VIP, 80, 6).0, "ESTABLISHED");
    let (rc, _) = h.client(sport, RST, 1001 + 10_000, 0);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(h.states(sport, VIP, 80, 6).0, "CLOSE");
    assert_eq!(h.counter(Counter::DropTcpInvalid), 3);
}

/// One backend behind two frontends, the same client port to both: the second connection's
/// source port is remapped (its post-NAT tuple would be the first's), and each reply carries
/// its own frontend.
#[test]
fn one_backend_behind_two_frontends_remaps_the_clashing_source_port() {
    if !require_root("one_backend_behind_two_frontends_remaps_the_clashing_source_port") {
        return;
    }
    let one = [("10.244.1.11", true, true, false)];
    let mut h = Harness::new(&one);
    let backend: Ipv4Addr = "10.244.1.11".parse().unwrap();
    let sport = 43_000;
    let (rc, out) = h.run(&tcp_seg(CLIENT, sport, VIP, 80, SYN, 1, 0));
    assert_eq!(rc, TC_ACT_OK);
    let a = summarize(&out).unwrap();
    assert_eq!((a.src, a.sport, a.dst, a.dport), (CLIENT, sport, backend, 8080), "the first keeps its port");
    let (rc, out) = h.run(&tcp_seg(CLIENT, sport, ALIAS, 8080, SYN, 1, 0));
    assert_eq!(rc, TC_ACT_OK);
    let b = summarize(&out).unwrap();
    assert!(b.ip_checksum_ok && b.l4_checksum_ok);
    assert_eq!((b.src, b.dst, b.dport), (CLIENT, backend, 8080));
    assert_ne!(b.sport, sport, "the clashing connection gets another source port");
    assert_eq!(h.counter(Counter::PortRemapped), 1);
    // Replies: each to its own client port, from its own frontend.
    let (_, out) = h.run(&tcp_seg(backend, 8080, CLIENT, sport, SYN | ACK, 9, 2));
    let r = summarize(&out).unwrap();
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, 80, CLIENT, sport));
    let (_, out) = h.run(&tcp_seg(backend, 8080, CLIENT, b.sport, SYN | ACK, 9, 2));
    let r = summarize(&out).unwrap();
    assert!(r.ip_checksum_ok && r.l4_checksum_ok);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (ALIAS, 8080, CLIENT, sport));
    // And the second connection's later packets keep the remapped port.
    let (_, out) = h.run(&tcp_seg(CLIENT, sport, ALIAS, 8080, ACK, 2, 10));
    assert_eq!(summarize(&out).unwrap().sport, b.sport);
}

/// UDP: unreplied until the first reply (netfilter's 30 s), replied after (120 s), in both
/// halves.
#[test]
fn udp_flows_are_unreplied_until_a_reply() {
    if !require_root("udp_flows_are_unreplied_until_a_reply") {
        return;
    }
    let mut h = Harness::new(&THREE);
    let (_, out) = h.run(&udp(CLIENT, 44_000, VIP, 53));
    let s = summarize(&out).unwrap();
    assert_eq!(h.states(44_000, VIP, 53, 17), ("UNREPLIED".into(), "UNREPLIED".into()));
    h.run(&udp(CLIENT, 44_000, VIP, 53));
    assert_eq!(h.states(44_000, VIP, 53, 17).0, "UNREPLIED", "more requests are not a reply");
    let (_, back) = h.run(&udp(s.dst, 5353, CLIENT, 44_000));
    assert_eq!(summarize(&back).unwrap().src, VIP);
    assert_eq!(h.states(44_000, VIP, 53, 17), ("REPLIED".into(), "REPLIED".into()));
}

/// The agent's conntrack garbage collector (`dataplane::gc`) removes exactly the entries whose
/// state's timeout has passed, by the datapath's own rule: flows the program created are aged
/// by moving their `last_seen` back.
#[test]
fn garbage_collection_removes_expired_entries_only() {
    use lb_userspace::dataplane::{gc, inspect::monotonic_ns};
    if !require_root("garbage_collection_removes_expired_entries_only") {
        return;
    }
    let mut h = Harness::new(&THREE);
    // Three TCP flows in SYN_SENT (120 s) and two UDP flows, unreplied (30 s).
    for sport in [41_000u16, 41_001, 41_002] {
        h.run(&tcp(CLIENT, sport, VIP, 80, true));
    }
    for sport in [5_001u16, 5_002] {
        h.run(&udp(CLIENT, sport, VIP, 53));
    }
    let timeouts = lb_common::Config::DEFAULT.timeouts;
    let now = monotonic_ns();
    const S: u64 = 1_000_000_000;
    let mut ct: HashMap<&mut MapData, CtKey, CtEntry> = HashMap::try_from(h.ebpf.map_mut(names::CT).unwrap()).unwrap();
    let all: Vec<(CtKey, CtEntry)> = ct.iter().map(Result::unwrap).collect();
    assert_eq!(all.len(), 10, "two halves per flow");
    // Age: TCP 41000 by 121 s (expired), 41001 by 119 s (live); UDP 5001 by 31 s (expired).
    let age = |k: &CtKey| -> u64 {
        let port = |p: u16| [k.sport, k.dport].contains(&port_to_map(p));
        if port(41_000) || port(5_001) {
            if k.proto == 6 {
                121
            } else {
                31
            }
        } else if port(41_001) {
            119
        } else {
            0
        }
    };
    for (k, mut e) in all {
        e.last_seen_ns = now - age(&k) * S;
        ct.insert(k, e, 0).unwrap();
    }
    let pass = gc::collect(&mut ct, 4096, &timeouts, now);
    assert_eq!(pass, gc::Pass { live: 6, deleted: 4 });
    let left: Vec<CtKey> = ct.keys().map(Result::unwrap).collect();
    assert!(left.iter().all(|k| ![41_000u16, 5_001].iter().any(|p| [k.sport, k.dport].contains(&port_to_map(*p)))));
    // Nothing left to do on a second pass.
    assert_eq!(gc::collect(&mut ct, 4096, &timeouts, now), gc::Pass { live: 6, deleted: 0 });
}
