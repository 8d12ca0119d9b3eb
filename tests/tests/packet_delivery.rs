//! Delivery packet tests: the programs deliver what they translate themselves (FIB lookup,
//! MACs, TTL, redirect / XDP_TX), and fall back to the kernel's stack only where a redirect
//! cannot be right, each case counted. Run through BPF_PROG_TEST_RUN in a network namespace
//! of the test's own (`common::isolate_netns`) whose routes and neighbours the test sets up;
//! checksums and TTLs are checked with etherparse.

use std::{net::Ipv4Addr, process::Command};

use aya::{maps::Array, programs::SchedClassifier, Ebpf};
use etherparse::{Ethernet2Header, Ipv4Header};
use lb_common::{iface_flags, iface_slot, xdp_meta, Counter, IfaceEntry, MARK_DELIVERED};
use lb_tests::privileges::require_root;
use lb_userspace::{
    dataplane::{
        attach::{load_pod_program, load_tc_program, load_xdp_program},
        load_object, names,
        writer::{NodeNet, Writer},
        Capacity, MapSet,
    },
    manifests,
    model::{translate, NodeInfo, Protocol, TranslateOptions},
    packet::{self, summarize},
};

mod common;
use common::{counter, isolate_netns, run_xdp_meta, test_run_ctx};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 100);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 1);
const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x11];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x10];
const EXTERNAL_MAC: [u8; 6] = [0x02, 0xe0, 0, 0, 0, 0x64];

const YAML: &str = r#"apiVersion: v1
kind: Service
metadata: {namespace: ns, name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: ns
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.1.11]
  nodeName: node1
"#;

fn ip(args: &str) {
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

fn mac_of(name: &str) -> [u8; 6] {
    let out = Command::new("ip").args(["-o", "link", "show", name]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap();
    let b: Vec<u8> = mac.split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    b.try_into().unwrap()
}

/// The test's namespace: `pods` (veth, 10.244.1.1/24: the client and the backend, with
/// permanent neighbours) and `wan` (veth, 192.168.7.1/24: the external client), forwarding on.
struct Net {
    pods: u32,
    wan: u32,
}

fn network() -> Net {
    isolate_netns();
    ip("link set lo up");
    ip("link add pods type veth peer name pods-peer");
    ip("link add wan type veth peer name wan-peer");
    for i in ["pods", "pods-peer", "wan", "wan-peer"] {
        ip(&format!("link set {i} up"));
    }
    ip("addr add 10.244.1.1/24 dev pods");
    ip("addr add 192.168.7.1/24 dev wan");
    ip("neigh replace 10.244.1.11 lladdr 02:be:00:00:00:11 dev pods nud permanent");
    ip("neigh replace 10.244.1.10 lladdr 02:c1:00:00:00:10 dev pods nud permanent");
    ip("neigh replace 192.168.7.100 lladdr 02:e0:00:00:00:64 dev wan nud permanent");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    Net { pods: ifindex("pods"), wan: ifindex("wan") }
}

struct Harness {
    ebpf: Ebpf,
    _writer: Writer,
}

fn harness() -> Harness {
    let cap =
        Capacity { max_frontends: 256, max_service_ports: 16, max_backends: 256, conntrack_entries: 1024, ..Capacity::default() };
    let mut ebpf = load_object(&cap, None).expect("load object");
    let maps = MapSet::take(&mut ebpf, &cap, None).expect("maps");
    let mut writer = Writer::new(maps, cap.max_table_size, cap.max_service_ports, lb_common::Config::DEFAULT).unwrap();
    writer
        .set_node(&NodeNet { nodeport_ips: vec![NODE], local_ips: vec![NODE], snat_ip: Some(NODE), ..NodeNet::default() })
        .unwrap();
    let report = manifests::parse_str(YAML, "test.yaml");
    let node = NodeInfo { name: "node1".into(), labels: Default::default() };
    let (state, errors) = translate(&report.objects.services, &report.objects.slices, &node, &TranslateOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(writer.apply(&state).errors.is_empty());
    load_pod_program(&mut ebpf).unwrap();
    load_tc_program(&mut ebpf, names::PROG_HOST_EGRESS).unwrap();
    load_xdp_program(&mut ebpf).unwrap();
    Harness { ebpf, _writer: writer }
}

impl Harness {
    fn counter(&self, c: Counter) -> u64 {
        counter(&self.ebpf, c)
    }

    fn set_iface(&mut self, ifindex: u32, flags: u32) {
        let mut m: Array<_, IfaceEntry> = Array::try_from(self.ebpf.map_mut(names::IFACES).unwrap()).unwrap();
        m.set(iface_slot(ifindex), IfaceEntry { ifindex, flags }, 0).unwrap();
    }

    /// Runs a tc program with an `__sk_buff` context: (rc, frame, mark after the run).
    fn tc(&mut self, prog: &str, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        // struct __sk_buff: mark is at offset 8; the kernel accepts mark, priority, ifindex,
        // cb, tstamp, wire_len, gso_* in the context it is given.
        let mut ctx_in = [0u8; 192];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let (rc, out, ctx_out) = test_run_ctx(p, frame, &ctx_in);
        (rc, out, u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap()))
    }

    /// Runs the uplink's XDP program as if `frame` arrived on `ingress`: (rc, metadata, frame).
    fn xdp(&mut self, frame: &[u8], ingress: u32) -> (u32, Option<u32>, Vec<u8>) {
        run_xdp_meta(&mut self.ebpf, names::PROG_UPLINK, frame, ingress)
    }
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    packet::build(Protocol::Tcp, src, sport, dst, dport, b"delivery")
}

/// MACs, TTL and checksums of a delivered frame.
fn check_delivered(out: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6], ttl: u8) {
    let (eth, rest) = Ethernet2Header::from_slice(out).unwrap();
    assert_eq!(eth.destination, dst_mac, "next hop's MAC");
    assert_eq!(eth.source, src_mac, "egress interface's MAC");
    let (ip, _) = Ipv4Header::from_slice(rest).unwrap();
    assert_eq!(ip.time_to_live, ttl, "TTL");
    let s = summarize(out).unwrap();
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "checksums after delivery");
}

#[test]
fn pod_ingress_redirects_translated_packets_to_the_next_hop() {
    if !require_root("pod_ingress_redirects_translated_packets_to_the_next_hop") {
        return;
    }
    let net = network();
    let mut h = harness();
    let pods_mac = mac_of("pods");

    // New flow to the ClusterIP: DNAT, then out of `pods` to the backend's MAC, TTL 63. `pods`
    // is not one of our interfaces yet: the packet leaves unmarked.
    let (rc, out, mark) = h.tc(names::PROG_POD_INGRESS, &tcp(CLIENT, 40000, VIP, 80), 0);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let s = summarize(&out).unwrap();
    assert_eq!((s.dst, s.dport), (BACKEND, 8080));
    check_delivered(&out, BACKEND_MAC, pods_mac, 63);
    assert_eq!(mark, 0, "no mark towards an interface our egress program does not run on");
    assert_eq!(h.counter(Counter::FwdRedirect), 1);
    // Once it is ours: marked for our egress program there to let it pass.
    h.set_iface(net.pods, iface_flags::MANAGED);
    let (rc, _, mark) = h.tc(names::PROG_POD_INGRESS, &tcp(CLIENT, 40000, VIP, 80), 0);
    assert_eq!((rc, mark), (TC_ACT_REDIRECT, MARK_DELIVERED));

    // The reply: reverse NAT, then to the client's MAC. With `pods` known as a pod veth, the
    // delivery goes straight into the pod (bpf_redirect_peer), unmarked.
    h.set_iface(net.pods, iface_flags::POD_VETH | iface_flags::MANAGED);
    let (rc, out, mark) = h.tc(names::PROG_POD_INGRESS, &tcp(BACKEND, 8080, CLIENT, 40000), 0);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let s = summarize(&out).unwrap();
    assert_eq!((s.src, s.sport), (VIP, 80));
    check_delivered(&out, CLIENT_MAC, pods_mac, 63);
    assert_eq!(mark, 0);
    assert_eq!(h.counter(Counter::FwdPeer), 1);

    // The flow caches its next hop in its conntrack entry: the FIB is asked again once a
    // second. A route change (a blackhole for the backend) shows once the cache is refreshed.
    let ack = tcp(CLIENT, 40000, VIP, 80);
    let (rc, out, _) = h.tc(names::PROG_POD_INGRESS, &ack, 0);
    assert_eq!(rc, TC_ACT_REDIRECT);
    check_delivered(&out, BACKEND_MAC, pods_mac, 63);
    ip("route add blackhole 10.244.1.11/32");
    let (rc, out, _) = h.tc(names::PROG_POD_INGRESS, &ack, 0);
    assert_eq!(rc, TC_ACT_REDIRECT, "within the second: the cached next hop");
    check_delivered(&out, BACKEND_MAC, pods_mac, 63);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (rc, _, _) = h.tc(names::PROG_POD_INGRESS, &ack, 0);
    assert_eq!(rc, TC_ACT_OK, "after the refresh: the FIB's answer (no route: the stack)");
    assert_eq!(h.counter(Counter::StackNoRoute), 1);
    ip("route del blackhole 10.244.1.11/32");

    // Our egress program lets a packet marked by an ingress program go untouched (and clears
    // the mark); an unmarked one to a service is processed.
    let frame = tcp(CLIENT, 40001, VIP, 80);
    let (rc, out, mark) = h.tc(names::PROG_HOST_EGRESS, &frame, MARK_DELIVERED);
    assert_eq!((rc, &out, mark), (TC_ACT_OK, &frame, 0));
    let packets = h.counter(Counter::Packets);
    let (_, out, _) = h.tc(names::PROG_HOST_EGRESS, &frame, 0);
    assert_eq!(summarize(&out).unwrap().dst, BACKEND);
    assert_eq!(h.counter(Counter::Packets), packets + 1);
}

#[test]
fn delivery_falls_back_to_the_stack_only_where_a_redirect_cannot_be_right() {
    if !require_root("delivery_falls_back_to_the_stack_only_where_a_redirect_cannot_be_right") {
        return;
    }
    let _net = network();
    let mut h = harness();

    // Unresolved neighbour: redirected with the neighbour left to the kernel.
    ip("neigh del 10.244.1.11 dev pods");
    let (rc, out, _) = h.tc(names::PROG_POD_INGRESS, &tcp(CLIENT, 41000, VIP, 80), 0);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(h.counter(Counter::FwdNeigh), 1);
    let (_, rest) = Ethernet2Header::from_slice(&out).unwrap();
    assert_eq!(Ipv4Header::from_slice(rest).unwrap().0.time_to_live, 63);
    ip("neigh replace 10.244.1.11 lladdr 02:be:00:00:00:11 dev pods nud permanent");

    // TTL expiring here: translated, handed to the stack (which answers "time exceeded").
    let mut frame = tcp(CLIENT, 41001, VIP, 80);
    let (mut hdr, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    hdr.time_to_live = 1;
    hdr.header_checksum = hdr.calc_header_checksum();
    frame[14..34].copy_from_slice(&hdr.to_bytes());
    let (rc, out, _) = h.tc(names::PROG_POD_INGRESS, &frame, 0);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(summarize(&out).unwrap().dst, BACKEND);
    assert_eq!(h.counter(Counter::StackTtl), 1);

    // Larger than the egress MTU: the stack fragments or answers "fragmentation needed".
    ip("link set pods mtu 1280");
    let big = packet::build(Protocol::Tcp, CLIENT, 41002, VIP, 80, &[7u8; 1400]);
    let (rc, _, _) = h.tc(names::PROG_POD_INGRESS, &big, 0);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(h.counter(Counter::StackMtu), 1);
    ip("link set pods mtu 1500");

    // No route to the backend.
    ip("route add blackhole 10.244.1.11/32");
    let (rc, _, _) = h.tc(names::PROG_POD_INGRESS, &tcp(CLIENT, 41003, VIP, 80), 0);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(h.counter(Counter::StackNoRoute), 1);
    ip("route del blackhole 10.244.1.11/32");
}

#[test]
fn uplink_xdp_transmits_what_leaves_where_it_came_in_and_hands_pods_to_tc() {
    if !require_root("uplink_xdp_transmits_what_leaves_where_it_came_in_and_hands_pods_to_tc") {
        return;
    }
    let net = network();
    let mut h = harness();
    let wan_mac = mac_of("wan");

    // External client → NodePort: DNAT to the local backend (masqueraded: eTP=Cluster), which
    // XDP cannot transmit into a pod: passed up, with the hand-off in the XDP metadata, for
    // the uplink's tc program to deliver. (The test run's output starts at the metadata.)
    let (rc, meta, out) = h.xdp(&tcp(EXTERNAL, 50000, NODE, 30080), net.wan);
    assert_eq!(rc, XDP_PASS);
    assert_eq!(meta, common::handed_to_tc(xdp_meta::FORWARDED), "hand-off metadata");
    let s = summarize(&out).unwrap();
    assert_eq!((s.dst, s.dport, s.src), (BACKEND, 8080, NODE));
    assert_eq!(h.counter(Counter::FwdXdpTx), 0);
    assert_eq!(
        h.counter(Counter::StackNoRoute) + h.counter(Counter::StackLocal) + h.counter(Counter::StackMtu),
        0,
        "handed to tc, not to the stack"
    );

    // The backend's reply arrives on the uplink (as from a remote node): reverse NAT, then
    // back out of the uplink to the external client with XDP_TX.
    let (rc, meta, out) = h.xdp(&tcp(BACKEND, 8080, NODE, s.sport), net.wan);
    assert_eq!((rc, meta), (XDP_TX, None));
    let r = summarize(&out).unwrap();
    assert_eq!((r.src, r.sport, r.dst, r.dport), (NODE, 30080, EXTERNAL, 50000));
    check_delivered(&out, EXTERNAL_MAC, wan_mac, 63);
    assert_eq!(h.counter(Counter::FwdXdpTx), 1);
}
