//! The live-frames packet generator (`lb_userspace::bench::pktgen`) sends real frames: run it
//! on a veth in a generator namespace and look at what the peer receives.
//!
//! - `frames_arrive_valid_varied_and_counted`: an AF_PACKET socket on the receiving veth
//!   captures every frame; each has valid IPv4 and TCP/UDP checksums (checked with etherparse),
//!   the receiving veth's MAC as destination, the configured size; the flows are the configured
//!   number of distinct (source address, source port) pairs; every frame sent arrives. Two runs
//!   per case, so the second uses recycled pages.
//! - `netfilter_nats_and_forwards_every_generated_frame`: through a node namespace with an
//!   nftables DNAT rule to a backend namespace, where `lb_pktgen_sink` counts: every frame of
//!   two runs (the second on pages netfilter already rewrote) is NATed and forwarded, which it
//!   would not be with a bad TCP checksum (netfilter skips NAT on those).

use std::{collections::BTreeSet, net::Ipv4Addr, os::fd::AsRawFd, time::Duration};

use lb_tests::{baseline::ScratchNetns, netns::ip_netns, privileges::require_root};
use lb_userspace::{
    bench::pktgen::{in_netns, mac_of, settle, FrameSpec, Generator, XdpAttachment, PROG_NOOP, PROG_SINK},
    model::Protocol,
    packet,
};

fn run(cmd: &str, args: &[&str]) {
    lb_tests::netns::run(cmd, args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Two namespaces joined by a veth: `gen`/`eth0` ↔ `rx`/`rx0`.
fn pair(tag: &str) -> (ScratchNetns, ScratchNetns) {
    let id = std::process::id();
    let gen = ScratchNetns::create(&format!("lbbench-{tag}{id}-g")).unwrap();
    let rx = ScratchNetns::create(&format!("lbbench-{tag}{id}-r")).unwrap();
    run("ip", &["link", "add", "eth0", "netns", gen.name(), "type", "veth", "peer", "name", "rx0", "netns", rx.name()]);
    for (ns, dev) in [(gen.name(), "eth0"), (rx.name(), "rx0")] {
        let _ = lb_tests::netns::sysctl_in(ns, &format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
        ip_netns(ns, &["link", "set", dev, "up"]).unwrap();
        ip_netns(ns, &["link", "set", "lo", "up"]).unwrap();
    }
    (gen, rx)
}

/// A raw AF_PACKET socket on `ifname` in `netns` (IPv4 frames), with a large buffer.
fn capture(netns: &str, ifname: &str) -> std::os::fd::OwnedFd {
    in_netns(Some(netns), || {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket calls on a socket we own.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = lb_userspace::bench::pktgen::ifindex(ifname)? as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let size: i32 = 256 << 20;
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size as *const _ as *const _, 4);
            let tv = libc::timeval { tv_sec: 0, tv_usec: 300_000 };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const _,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            Ok(fd)
        }
    })
    .unwrap()
}

/// Frames received until a read times out.
fn drain(fd: &std::os::fd::OwnedFd) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n <= 0 {
            return frames;
        }
        frames.push(buf[..n as usize].to_vec());
    }
}

#[test]
fn frames_arrive_valid_varied_and_counted() {
    if !require_root("pktgen::frames_arrive_valid_varied_and_counted") {
        return;
    }
    let (gen, rx) = pair("pg");
    let rx_mac = mac_of(Some(rx.name()), "rx0").unwrap();
    let _napi = XdpAttachment::attach(Some(rx.name()), "rx0", PROG_NOOP).unwrap();
    let sock = capture(rx.name(), "rx0");
    let dst = Ipv4Addr::new(10, 99, 0, 1);

    // (protocol, frame size, flows, frames per run)
    for (proto, size, flows, count) in
        [(Protocol::Tcp, 64, 500u32, 2000u32), (Protocol::Udp, 1514, 0, 1000), (Protocol::Tcp, 300, 37, 999)]
    {
        let spec = FrameSpec {
            proto,
            src_mac: mac_of(Some(gen.name()), "eth0").unwrap(),
            dst_mac: rx_mac,
            src: Ipv4Addr::new(10, 190, 0, 1),
            sport: 20_000,
            sport_span: 300,
            dst,
            dport: 80,
            frame_len: size,
            flows,
        };
        let mut g = Generator::new(spec, true).unwrap();
        let mut start = 0;
        for round in 0..2 {
            let stats = g.run(Some(gen.name()), "eth0", count, 64, start, 0).unwrap();
            start += count as u64;
            assert_eq!(stats.frames, count as u64);
            let frames: Vec<Vec<u8>> = drain(&sock).into_iter().filter(|f| f.len() >= 34 && f[30..34] == dst.octets()).collect();
            let case = format!("{proto:?} {size} B, {flows} flows, round {round}");
            assert_eq!(frames.len(), count as usize, "{case}: frames delivered");
            let mut seen = BTreeSet::new();
            for f in &frames {
                assert_eq!(f.len(), size, "{case}: frame size");
                assert_eq!(&f[..6], &rx_mac, "{case}: destination MAC");
                let s = packet::summarize(f).unwrap();
                assert!(s.ip_checksum_ok, "{case}: IPv4 checksum of {s:?}");
                assert!(s.l4_checksum_ok, "{case}: L4 checksum of {s:?}");
                assert_eq!((s.dst, s.dport), (dst, 80));
                seen.insert((s.src, s.sport));
            }
            let want = if flows == 0 { count as usize } else { flows.min(count) as usize };
            assert_eq!(seen.len(), want, "{case}: distinct flows");
            let addrs: BTreeSet<Ipv4Addr> = seen.iter().map(|f| f.0).collect();
            assert_eq!(addrs.len(), want.div_ceil(300), "{case}: source addresses");
        }
    }
}

#[test]
fn netfilter_nats_and_forwards_every_generated_frame() {
    if !require_root("pktgen::netfilter_nats_and_forwards_every_generated_frame") {
        return;
    }
    let (gen, node) = pair("pn");
    let back = ScratchNetns::create(&format!("lbbench-pn{}-b", std::process::id())).unwrap();
    run("ip", &["link", "add", "b0", "netns", node.name(), "type", "veth", "peer", "name", "eth0", "netns", back.name()]);
    ip_netns(node.name(), &["link", "set", "b0", "up"]).unwrap();
    ip_netns(node.name(), &["addr", "add", "10.98.0.1/24", "dev", "b0"]).unwrap();
    ip_netns(back.name(), &["link", "set", "eth0", "up"]).unwrap();
    ip_netns(back.name(), &["addr", "add", "10.98.0.2/24", "dev", "eth0"]).unwrap();
    for (k, v) in [("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.rx0.rp_filter", "0")] {
        lb_tests::netns::sysctl_in(node.name(), k, v).unwrap();
    }
    let nft = "add table ip t\nadd chain ip t pre { type nat hook prerouting priority -100 ; }\n\
               add rule ip t pre ip daddr 10.99.0.1 tcp dport 80 dnat to 10.98.0.2:8080\n";
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node.name(), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), nft.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f");

    let _napi = XdpAttachment::attach(Some(node.name()), "rx0", PROG_NOOP).unwrap();
    let sink = XdpAttachment::attach(Some(back.name()), "eth0", PROG_SINK).unwrap();
    let spec = FrameSpec {
        dst_mac: mac_of(Some(node.name()), "rx0").unwrap(),
        dst: Ipv4Addr::new(10, 99, 0, 1),
        flows: 100,
        frame_len: 100,
        ..FrameSpec::default()
    };
    let mut g = Generator::new(spec, true).unwrap();
    // Warm-up: ARP for the backend (the first frames wait in the neighbour queue); the first
    // count below waits until the sink's counters settle.
    g.run(Some(gen.name()), "eth0", 10, 64, 0, 0).unwrap();
    let count = |s: &XdpAttachment| settle(|| s.sink_counts(), Duration::from_millis(50), Duration::from_secs(3)).unwrap();
    for round in 0..2 {
        let (p0, b0) = count(&sink);
        g.run(Some(gen.name()), "eth0", 5000, 64, 10 + round * 5000, 0).unwrap();
        let (p1, b1) = count(&sink);
        assert_eq!(p1 - p0, 5000, "round {round}: frames NATed and forwarded to the backend");
        assert_eq!(b1 - b0, 5000 * 100, "round {round}: bytes");
    }
}
