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

/// Runs `frame` through the loaded XDP program `name`.
pub fn run_xdp(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
    test_run(prog, frame)
}

fn test_run<P>(prog: &mut P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
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
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(ebpf.map(names::STATS).unwrap()).unwrap();
    map.get(&(c as u32), 0).unwrap().iter().sum()
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
