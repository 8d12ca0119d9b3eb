//! Helpers shared by the packet test files (`mod common;`): running a loaded program through
//! BPF_PROG_TEST_RUN, reading counters, building TCP frames.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::PacketBuilder;
use lb_common::Counter;
use lb_userspace::{dataplane::names, packet};

/// Runs `frame` through the loaded tc program `name`: (return code, output frame).
pub fn run_tc(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
    test_run(prog, frame)
}

/// Runs `frame` through the loaded XDP program `name`: (return code, output frame without the
/// XDP metadata).
pub fn run_xdp(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let (rc, _, out) = run_xdp_meta(ebpf, name, frame, 0);
    (rc, out)
}

/// The XDP metadata a frame handed to the uplink's tc program carries: `kind`, or none on a
/// kernel whose XDP has no `bpf_xdp_adjust_meta` (the frame then goes to the stack, counted
/// as `stack_no_xdp_metadata`).
pub fn handed_to_tc(kind: u32) -> Option<u32> {
    lb_userspace::dataplane::sys::xdp_has_metadata().then_some(kind)
}

/// Runs `frame` through the loaded XDP program `name` as if it arrived on `ingress` (0: the
/// loopback): (return code, the 4-byte XDP metadata the program left if any, output frame).
pub fn run_xdp_meta(ebpf: &mut Ebpf, name: &str, frame: &[u8], ingress: u32) -> (u32, Option<u32>, Vec<u8>) {
    isolate_netns();
    let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u32; 6];
    ctx[1] = frame.len() as u32;
    ctx[3] = ingress;
    let ctx_in: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let (rc, mut out, ctx_out) = test_run_ctx(prog, frame, &ctx_in);
    // The output starts at the metadata; xdp_md.data is its length.
    let meta_len = u32::from_ne_bytes(ctx_out[0..4].try_into().unwrap()) as usize;
    let meta = (meta_len == 4).then(|| u32::from_ne_bytes(out[..4].try_into().unwrap()));
    out.drain(..meta_len);
    (rc, meta, out)
}

/// One test run of `frame` with the context `ctx_in` (`struct __sk_buff` for tc, `struct
/// xdp_md` for XDP): (return code, output frame, the context as the program left it).
pub fn test_run_ctx<P>(prog: &mut P, frame: &[u8], ctx_in: &[u8]) -> (u32, Vec<u8>, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    isolate_netns();
    let mut ctx_out = vec![0u8; ctx_in.len()];
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out, ctx_out)
}

/// Moves the calling test's thread into a network namespace of its own (once per thread):
/// BPF_PROG_TEST_RUN runs the programs in the caller's namespace, where their FIB lookups
/// decide how a translated packet is delivered. A fresh namespace has no routes and
/// forwarding off, so every delivery falls back to the stack (TC_ACT_OK / XDP_PASS) whatever
/// the machine's own routes are; tests of delivery build the routes they need in it
/// (commands started from this thread run in it too).
pub fn isolate_netns() {
    thread_local!(static ISOLATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    ISOLATED.with(|done| {
        if !done.get() {
            // SAFETY: unshare affects only the calling thread's namespaces.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            done.set(true);
        }
    });
}

fn test_run<P>(prog: &mut P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    isolate_netns();
    // Room for a frame that grows (a REJECT reply is 70 bytes).
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::new() })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// A datapath counter summed over CPUs.
pub fn counter(ebpf: &Ebpf, c: Counter) -> u64 {
    let map: PerCpuArray<&MapData, lb_common::Counters> = PerCpuArray::try_from(ebpf.map(names::STATS).unwrap()).unwrap();
    lb_userspace::dataplane::inspect::sum_counters(&map).unwrap()[c as usize]
}

/// A TCP segment with `flags` (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04), sequence and
/// acknowledgment numbers, no payload.
#[allow(dead_code)]
pub fn tcp_seg(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(packet::SRC_MAC, packet::DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, seq, 1000);
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(ack);
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// A TCP frame with a 5-byte payload: a SYN, or an ACK.
pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(packet::SRC_MAC, packet::DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 7, 1000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, b"hello").unwrap();
    out
}
