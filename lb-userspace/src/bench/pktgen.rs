//! The packet generator: `BPF_PROG_RUN` of the XDP program `lb_pktgen` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, bound to an interface (a veth in a generator namespace), so
//! every frame is really transmitted (`XDP_TX`) and received by the peer veth. This kernel has
//! no pktgen module (`/proc/net/pktgen`); where it exists it could drive the same topology.
//!
//! The frame template (a TCP SYN or a UDP datagram of the configured size, destination MAC the
//! receiving veth's) is built here with [`crate::packet`]; the program re-stamps the header from
//! the template on every frame, with the flow fields (source address and port) taken from a
//! per-CPU counter and both checksums recomputed (`lb_common::pktgen`). Frame `k` of a run
//! belongs to flow `k % flows` (`flows` = 0: every frame a new flow, for the first-packet
//! figures).
//!
//! The receiving side needs native XDP (or GRO) on the peer veth for `XDP_TX` to reach it
//! (veth's NAPI); [`XdpAttachment`] attaches `lb_noop_xdp` (pass) or `lb_pktgen_sink` (count
//! and drop) in a namespace.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    util::nr_cpus,
    Ebpf,
};
use lb_common::pktgen::{PktgenConfig, ACTION_DROP, ACTION_TX, OFF_SADDR, OFF_SPORT, TEMPLATE_LEN};

use crate::{
    dataplane::{load_object, Capacity},
    model::Protocol,
    packet,
};

pub const PROG_GENERATOR: &str = "lb_pktgen";
pub const PROG_SINK: &str = "lb_pktgen_sink";
/// The sink at tc ingress (attached with the XDP sink, sharing its counters).
pub const PROG_SINK_TC: &str = "lb_pktgen_sink_tc";
pub const PROG_NOOP: &str = "lb_noop_xdp";
const MAP_CONFIG: &str = "LB_PKTGEN_CONFIG";
const MAP_COUNTER: &str = "LB_PKTGEN_COUNTER";
const MAP_SINK: &str = "LB_PKTGEN_SINK";

/// What to generate.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// TCP (SYN) or UDP.
    pub proto: Protocol,
    pub src_mac: [u8; 6],
    /// The receiving veth's MAC.
    pub dst_mac: [u8; 6],
    /// Source address and port of flow 0.
    pub src: Ipv4Addr,
    pub sport: u16,
    /// Source ports per source address before the address is incremented.
    pub sport_span: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// Whole frame length (Ethernet header to end of payload, no FCS), at least 64.
    pub frame_len: usize,
    /// Distinct flows (0: every frame a new flow).
    pub flows: u32,
}

impl Default for FrameSpec {
    fn default() -> Self {
        FrameSpec {
            proto: Protocol::Tcp,
            src_mac: packet::SRC_MAC,
            dst_mac: packet::DST_MAC,
            src: Ipv4Addr::new(10, 190, 0, 1),
            sport: 1024,
            sport_span: 60_000,
            dst: Ipv4Addr::new(10, 96, 0, 1),
            dport: 80,
            frame_len: 64,
            flows: 1024,
        }
    }
}

const ETH_IP_LEN: usize = 14 + 20;

/// Header lengths (Ethernet + IPv4 + L4) for `proto`.
fn headers_len(proto: Protocol) -> Result<usize> {
    Ok(ETH_IP_LEN
        + match proto {
            Protocol::Tcp => 20,
            Protocol::Udp => 8,
            Protocol::Sctp => bail!("the generator builds TCP and UDP frames"),
        })
}

/// The frame of flow 0 and the generator's configuration for `spec`.
pub fn template(spec: &FrameSpec, action: u32) -> Result<(Vec<u8>, PktgenConfig)> {
    let hdrs = headers_len(spec.proto)?;
    ensure!(spec.frame_len >= TEMPLATE_LEN, "frames are at least {TEMPLATE_LEN} bytes (asked {})", spec.frame_len);
    ensure!(spec.frame_len <= 1514, "frames are at most 1514 bytes (asked {})", spec.frame_len);
    let payload: Vec<u8> = (0..spec.frame_len - hdrs).map(|i| (i % 251) as u8).collect();
    let mut frame = packet::build(spec.proto, spec.src, spec.sport, spec.dst, spec.dport, &payload);
    frame[0..6].copy_from_slice(&spec.dst_mac);
    frame[6..12].copy_from_slice(&spec.src_mac);
    ensure!(frame.len() == spec.frame_len, "built {} bytes, wanted {}", frame.len(), spec.frame_len);

    // Sums over the frame with the varied fields (and the checksums) zeroed.
    let mut zeroed = frame.clone();
    zeroed[OFF_SADDR..OFF_SADDR + 4].fill(0);
    zeroed[OFF_SPORT..OFF_SPORT + 2].fill(0);
    zeroed[14 + 10..14 + 12].fill(0);
    let proto = spec.proto.number();
    let l4_csum = if proto == 17 { 14 + 20 + 6 } else { 14 + 20 + 16 };
    zeroed[l4_csum..l4_csum + 2].fill(0);
    let ip_sum = lb_common::csum::sum_bytes(&zeroed[14..ETH_IP_LEN], 0);
    let l4 = &zeroed[ETH_IP_LEN..];
    let pseudo = lb_common::csum::pseudo_header_sum([0; 4], spec.dst.octets(), proto, l4.len() as u16);
    let l4_sum = lb_common::csum::sum_bytes(l4, pseudo);

    let mut cfg = PktgenConfig {
        template: [0; TEMPLATE_LEN],
        ip_sum,
        l4_sum,
        src_base: u32::from(spec.src),
        flows: spec.flows,
        action,
        sport_base: spec.sport,
        sport_span: spec.sport_span,
        proto,
        _pad: [0; 7],
    };
    cfg.template.copy_from_slice(&frame[..TEMPLATE_LEN]);
    Ok((frame, cfg))
}

/// What the XDP program does to a frame (the same steps, in Rust; the tests check the program
/// against it and both against an independent checksum implementation).
pub fn stamp(cfg: &PktgenConfig, frame: &mut [u8], counter: u64) {
    frame[..TEMPLATE_LEN].copy_from_slice(&cfg.template);
    let s = cfg.stamp(counter);
    frame[OFF_SADDR..OFF_SADDR + 4].copy_from_slice(&s.saddr.to_be_bytes());
    frame[OFF_SPORT..OFF_SPORT + 2].copy_from_slice(&s.sport.to_be_bytes());
    frame[14 + 10..14 + 12].copy_from_slice(&s.ip_csum.to_be_bytes());
    let off = cfg.l4_csum_offset();
    frame[off..off + 2].copy_from_slice(&s.l4_csum.to_be_bytes());
}

/// Runs `f` on a new thread that joined the network namespace `netns` (`None`: this one).
pub fn in_netns<T: Send>(netns: Option<&str>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(ns) = netns {
                let path = format!("/run/netns/{ns}");
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on this thread only, with an fd we own.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    })
}

/// The ifindex of `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(idx != 0, "no interface {ifname}: {}", std::io::Error::last_os_error());
    Ok(idx)
}

/// The MAC address of `ifname` in `netns`.
pub fn mac_of(netns: Option<&str>, ifname: &str) -> Result<[u8; 6]> {
    in_netns(netns, || {
        ensure!(ifname.len() < libc::IFNAMSIZ, "interface name too long");
        // SAFETY: a plain socket for the ioctl, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: ifreq is plain data; the name fits (checked above).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of our ifreq.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
        let err = std::io::Error::last_os_error();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        ensure!(rc == 0, "SIOCGIFHWADDR {ifname}: {err}");
        // SAFETY: the union member SIOCGIFHWADDR writes.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        Ok(std::array::from_fn(|i| data[i] as u8))
    })
}

/// CPU time (user + system) of the calling thread, ns: with tick-based accounting the softirq
/// work done in its context (veth delivery, the node's forwarding, the sink) is included.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// CPU time of `ksoftirqd/<cpu>` (softirq work the kernel deferred from the generator's CPU), ns.
pub fn ksoftirqd_cpu_ns(cpu: usize) -> u64 {
    let want = format!("ksoftirqd/{cpu}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    for e in dir.flatten() {
        let p = e.path();
        if std::fs::read_to_string(p.join("comm")).map(|c| c.trim() == want).unwrap_or(false) {
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            // Fields after the ") ": state is field 3; utime and stime are fields 14 and 15.
            let rest = stat.rsplit_once(") ").map(|r| r.1).unwrap_or("");
            let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            return (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * (1_000_000_000 / hz);
        }
    }
    0
}

fn small_capacity() -> Capacity {
    Capacity { max_frontends: 16, max_service_ports: 8, max_backends: 16, conntrack_entries: 1024, ..Capacity::default() }
}

/// One generator run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RunStats {
    pub frames: u64,
    /// Wall-clock time of the BPF_PROG_RUN call.
    pub elapsed_ns: u64,
    /// The kernel's own figure: mean time per frame (generation, and with XDP_TX the
    /// transmission and whatever the softirqs it raises did).
    pub kernel_ns_per_frame: u64,
    /// CPU time of the generator thread (whose softirqs carry the frames through the node and
    /// into the sink) plus its CPU's ksoftirqd, during the run.
    pub cpu_ns: u64,
}

/// The generator: the eBPF object with `lb_pktgen` loaded and configured.
pub struct Generator {
    ebpf: Ebpf,
    pub spec: FrameSpec,
    pub config: PktgenConfig,
    pub frame: Vec<u8>,
}

impl Generator {
    /// Loads the object and configures the generator: `transmit` (XDP_TX) or drop every frame.
    pub fn new(spec: FrameSpec, transmit: bool) -> Result<Generator> {
        let (frame, config) = template(&spec, if transmit { ACTION_TX } else { ACTION_DROP })?;
        let mut ebpf = load_object(&small_capacity(), None)?;
        {
            let prog: &mut Xdp = ebpf.program_mut(PROG_GENERATOR).context("lb_pktgen missing")?.try_into()?;
            prog.load().context("loading lb_pktgen")?;
        }
        let mut g = Generator { ebpf, spec, config, frame };
        g.write_config()?;
        Ok(g)
    }

    fn write_config(&mut self) -> Result<()> {
        let mut cfg: Array<_, PktgenConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_CONFIG).context("LB_PKTGEN_CONFIG missing")?)?;
        cfg.set(0, self.config, 0)?;
        Ok(())
    }

    /// Changes the flow fields (first source, flows) and rewrites the configuration.
    pub fn reconfigure(&mut self, spec: FrameSpec, transmit: bool) -> Result<()> {
        let (frame, config) = template(&spec, if transmit { ACTION_TX } else { ACTION_DROP })?;
        (self.spec, self.frame, self.config) = (spec, frame, config);
        self.write_config()
    }

    fn set_counter(&mut self, start: u64) -> Result<()> {
        let mut c: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut(MAP_COUNTER).context("LB_PKTGEN_COUNTER missing")?)?;
        let n = nr_cpus().map_err(|(_, e)| e)?;
        c.set(0, PerCpuValues::try_from(vec![start; n])?, 0)?;
        Ok(())
    }

    /// Sends `count` frames (frame numbers `start..start + count`) out of `ifname` in `netns`,
    /// `batch` frames per kernel batch (≤ 256), from a thread pinned to `cpu`.
    pub fn run(&mut self, netns: Option<&str>, ifname: &str, count: u32, batch: u32, start: u64, cpu: usize) -> Result<RunStats> {
        self.set_counter(start)?;
        let (frame, config) = (self.frame.clone(), self.config);
        let prog: &mut Xdp = self.ebpf.program_mut(PROG_GENERATOR).context("lb_pktgen missing")?.try_into()?;
        in_netns(netns, move || {
            // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            let idx = ifindex(ifname)?;
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
            let md: [u32; 6] = [0, frame.len() as u32, 0, idx, 0, 0];
            let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
            if !live_frames_refused() {
                let cpu0 = thread_cpu_ns() + ksoftirqd_cpu_ns(cpu);
                let t = Instant::now();
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&ctx),
                    repeat: count,
                    attrs: TestRunAttrs::new().xdp_live_frames(batch),
                    ..TestRunOptions::new()
                });
                match r {
                    Ok(r) => {
                        return Ok(RunStats {
                            frames: count as u64,
                            elapsed_ns: t.elapsed().as_nanos() as u64,
                            kernel_ns_per_frame: r.duration.as_nanos() as u64,
                            cpu_ns: (thread_cpu_ns() + ksoftirqd_cpu_ns(cpu)).saturating_sub(cpu0),
                        })
                    }
                    Err(e) if refused(&e) => {
                        LIVE_FRAMES_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
                        eprintln!("lb-pktgen: this kernel refuses BPF_F_TEST_XDP_LIVE_FRAMES ({e}): sending with AF_PACKET");
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")),
                }
            }
            af_packet::send(idx, &config, &frame, count, batch, start, config.action == ACTION_TX, cpu)
        })
    }
}

static LIVE_FRAMES_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the kernel refused a live-frames run (some builds do: EPERM, EOPNOTSUPP); from then
/// on the generator sends with [`af_packet`].
pub fn live_frames_refused() -> bool {
    LIVE_FRAMES_REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The engine the generator used (for the report).
pub fn engine_name() -> &'static str {
    if live_frames_refused() {
        "af-packet"
    } else {
        "xdp-live-frames"
    }
}

fn refused(e: &aya::programs::ProgramError) -> bool {
    let text = format!("{e:?}");
    ["Operation not permitted", "Operation not supported", "os error 1)", "os error 95)", "os error 524)"]
        .iter()
        .any(|m| text.contains(m))
}

/// The fallback engine for kernels without live frames: the same frames, stamped here with
/// [`stamp`] (what `lb_pktgen` does per frame), sent from user space through an AF_PACKET
/// socket bound to the interface with `PACKET_QDISC_BYPASS`, `batch` frames per `sendmmsg`.
/// veth delivers on the sending CPU, so the node's work and the sink still run in the softirqs
/// of this thread; the per-frame figure is the wall time of the sends over the frames (it
/// includes the system calls: compare with the floor measured the same way, never across
/// engines). Hand-written: no maintained crate wraps AF_PACKET transmission alone.
mod af_packet {
    use std::time::Instant;

    use anyhow::{ensure, Result};
    use lb_common::pktgen::PktgenConfig;

    use super::{ksoftirqd_cpu_ns, stamp, thread_cpu_ns, RunStats};

    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        ifindex: u32,
        cfg: &PktgenConfig,
        template: &[u8],
        count: u32,
        batch: u32,
        start: u64,
        transmit: bool,
        cpu: usize,
    ) -> Result<RunStats> {
        let batch = batch.clamp(1, 256) as usize;
        let len = template.len();
        let mut bufs = vec![template.to_vec(); batch];
        // SAFETY: a plain socket; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let close = Fd(fd);
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with an int; bind with a sockaddr_ll of the right size.
        unsafe {
            libc::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&one as *const libc::c_int).cast(), 4);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32);
            ensure!(rc == 0, "binding AF_PACKET to ifindex {ifindex}: {}", std::io::Error::last_os_error());
        }
        let cpu0 = thread_cpu_ns() + ksoftirqd_cpu_ns(cpu);
        let t = Instant::now();
        let mut sent = 0u64;
        while sent < count as u64 {
            let n = (count as u64 - sent).min(batch as u64) as usize;
            for (i, b) in bufs.iter_mut().take(n).enumerate() {
                stamp(cfg, b, start + sent + i as u64);
            }
            if transmit {
                let mut iov: Vec<libc::iovec> =
                    bufs.iter_mut().take(n).map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: len }).collect();
                // SAFETY: msghdrs pointing at live iovecs of live buffers.
                let mut msgs: Vec<libc::mmsghdr> = iov
                    .iter_mut()
                    .map(|v| {
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_iov = v;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                let mut done = 0usize;
                while done < n {
                    // SAFETY: the vector holds n - done valid headers from `done`.
                    let rc = unsafe { libc::sendmmsg(fd, msgs[done..].as_mut_ptr(), (n - done) as u32, 0) };
                    if rc < 0 {
                        let err = std::io::Error::last_os_error();
                        // A full device queue: try again (veth without a qdisc).
                        if matches!(err.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                            std::thread::yield_now();
                            continue;
                        }
                        anyhow::bail!("sendmmsg: {err}");
                    }
                    done += rc as usize;
                }
            }
            sent += n as u64;
        }
        let elapsed = t.elapsed().as_nanos() as u64;
        drop(close);
        Ok(RunStats {
            frames: count as u64,
            elapsed_ns: elapsed,
            kernel_ns_per_frame: elapsed / u64::from(count.max(1)),
            cpu_ns: (thread_cpu_ns() + ksoftirqd_cpu_ns(cpu)).saturating_sub(cpu0),
        })
    }

    struct Fd(i32);
    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: our descriptor.
            unsafe { libc::close(self.0) };
        }
    }
}

/// An XDP program of the object attached (native mode) to an interface in a namespace:
/// `lb_noop_xdp` (pass everything; enables veth NAPI so XDP_TX frames reach the peer) or
/// `lb_pktgen_sink` (count and drop). Detached on drop (the attachment is a BPF link).
pub struct XdpAttachment {
    ebpf: Ebpf,
}

impl XdpAttachment {
    pub fn attach(netns: Option<&str>, ifname: &str, program: &str) -> Result<XdpAttachment> {
        let mut ebpf = load_object(&small_capacity(), None)?;
        {
            let prog: &mut Xdp = ebpf.program_mut(program).with_context(|| format!("program {program}"))?.try_into()?;
            prog.load().with_context(|| format!("loading {program}"))?;
            in_netns(netns, || {
                prog.attach(ifname, XdpMode::Driver).with_context(|| format!("attaching {program} to {ifname} (native)"))?;
                Ok(())
            })?;
        }
        if program == PROG_SINK {
            // Packets delivered into the namespace with bpf_redirect_peer skip XDP: count them
            // at tc ingress too (a packet XDP dropped never reaches tc).
            let tc: &mut SchedClassifier = ebpf.program_mut(PROG_SINK_TC).context("program lb_pktgen_sink_tc")?.try_into()?;
            tc.load().context("loading lb_pktgen_sink_tc")?;
            in_netns(netns, || {
                tc.attach(ifname, TcAttachType::Ingress).with_context(|| format!("attaching {PROG_SINK_TC} to {ifname}"))?;
                Ok(())
            })?;
        }
        Ok(XdpAttachment { ebpf })
    }

    /// Packets and bytes the sink has counted (all CPUs).
    pub fn sink_counts(&self) -> Result<(u64, u64)> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(MAP_SINK).context("LB_PKTGEN_SINK missing")?)?;
        let p: u64 = m.get(&0, 0)?.iter().sum();
        let b: u64 = m.get(&1, 0)?.iter().sum();
        Ok((p, b))
    }
}

/// Waits until `f` returns a value that did not change for `settle`, at most `timeout`.
pub fn settle<T: PartialEq + Copy>(mut f: impl FnMut() -> Result<T>, settle: Duration, timeout: Duration) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = f()?;
    loop {
        std::thread::sleep(settle);
        let now = f()?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn spec(proto: Protocol, frame_len: usize, flows: u32) -> FrameSpec {
        FrameSpec { proto, frame_len, flows, sport_span: 1000, ..FrameSpec::default() }
    }

    #[test]
    fn the_template_is_a_valid_frame_of_the_configured_size() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            for len in [64, 128, 1514] {
                let (frame, cfg) = template(&spec(proto, len, 10), ACTION_TX).unwrap();
                assert_eq!(frame.len(), len);
                assert_eq!(&frame[..6], &packet::DST_MAC);
                let s = packet::summarize(&frame).unwrap();
                assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{proto:?} {len}: {s:?}");
                assert_eq!(
                    (s.src, s.sport, s.dst, s.dport),
                    (Ipv4Addr::new(10, 190, 0, 1), 1024, Ipv4Addr::new(10, 96, 0, 1), 80)
                );
                assert_eq!(&cfg.template[..], &frame[..TEMPLATE_LEN]);
                assert_eq!(cfg.proto, proto.number());
            }
        }
        assert!(template(&spec(Protocol::Tcp, 60, 1), ACTION_TX).is_err());
        assert!(template(&spec(Protocol::Sctp, 64, 1), ACTION_TX).is_err());
    }

    #[test]
    fn every_stamped_frame_has_valid_checksums_and_its_own_flow() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            for len in [64, 200, 1514] {
                let (frame, cfg) = template(&spec(proto, len, 2500), ACTION_TX).unwrap();
                let mut flows = BTreeSet::new();
                let mut buf = frame.clone();
                for k in 0..5000u64 {
                    stamp(&cfg, &mut buf, k);
                    let s = packet::summarize(&buf).unwrap();
                    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{proto:?} {len} frame {k}: {s:?}");
                    assert_eq!(&buf[TEMPLATE_LEN..], &frame[TEMPLATE_LEN..], "payload untouched");
                    flows.insert((s.src, s.sport));
                    // Netfilter or forwarding rewrote the recycled page: the next stamp restores it.
                    buf[14 + 16..14 + 20].copy_from_slice(&[10, 128, 0, 7]);
                    buf[14 + 8] -= 1;
                    buf[0..12].fill(0xee);
                }
                // 2500 flows: 1000 ports on each of three addresses, cycled twice.
                assert_eq!(flows.len(), 2500);
                let addrs: BTreeSet<Ipv4Addr> = flows.iter().map(|f| f.0).collect();
                assert_eq!(addrs.len(), 3);
            }
        }
    }

    #[test]
    fn checksums_hold_across_carries_and_udp_zero() {
        // Addresses and ports near 0xffff exercise the end-around carry.
        for (src, sport) in [
            (Ipv4Addr::new(255, 255, 255, 200), 65_000),
            (Ipv4Addr::new(0, 0, 0, 1), 1),
            (Ipv4Addr::new(10, 255, 255, 255), 65_535),
        ] {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let s = FrameSpec { proto, src, sport, sport_span: 500, flows: 0, ..FrameSpec::default() };
                let (mut buf, cfg) = template(&s, ACTION_TX).unwrap();
                for k in 0..3000u64 {
                    stamp(&cfg, &mut buf, k);
                    let sum = packet::summarize(&buf).unwrap();
                    assert!(sum.ip_checksum_ok && sum.l4_checksum_ok, "{proto:?} {src} {sport} frame {k}");
                    if proto == Protocol::Udp {
                        assert_ne!(u16::from_be_bytes([buf[40], buf[41]]), 0, "UDP checksum 0 means none");
                    }
                }
            }
        }
    }
}
