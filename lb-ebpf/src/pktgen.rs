//! The benchmark's packet generator and sink (not part of the datapath).
//!
//! `lb_pktgen` runs under `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: every frame of the
//! run gets the header template copied back over it (recycled pages keep earlier rewrites),
//! the flow fields of frame number `counter` (a per-CPU counter) and both checksums (see
//! `lb_common::pktgen`), and is then transmitted (`XDP_TX` on the interface of the run) or
//! dropped (the generator's own floor). `lb_pktgen_sink` (XDP) and `lb_pktgen_sink_tc`
//! (tc ingress, for packets delivered with bpf_redirect_peer, which skip XDP) count and drop
//! the IPv4 frames that arrive at a backend (everything else, ARP included, passes).

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
        TC_ACT_OK, TC_ACT_SHOT,
    },
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::pktgen::{PktgenConfig, OFF_IP_CSUM, OFF_SADDR, OFF_SPORT, OFF_TCP_CSUM, OFF_UDP_CSUM, TEMPLATE_LEN};

/// The generator's configuration (one element, written by user space before a run).
#[btf_map]
static LB_PKTGEN_CONFIG: Array<PktgenConfig, 1> = Array::new();

/// Frames generated so far on each CPU (user space sets the start of a run).
#[btf_map]
static LB_PKTGEN_COUNTER: PerCpuArray<u64, 1> = PerCpuArray::new();

/// What the sink saw: [packets, bytes] per CPU.
#[btf_map]
static LB_PKTGEN_SINK: PerCpuArray<u64, 2> = PerCpuArray::new();

#[inline(always)]
unsafe fn put16(data: usize, off: usize, v: u16) {
    ((data + off) as *mut [u8; 2]).write_unaligned(v.to_be_bytes());
}

#[xdp]
pub fn lb_pktgen(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + TEMPLATE_LEN > end {
        return XDP_ABORTED;
    }
    let Some(cfg) = LB_PKTGEN_CONFIG.get(0) else { return XDP_ABORTED };
    let Some(counter) = LB_PKTGEN_COUNTER.get_ptr_mut(0) else { return XDP_ABORTED };
    // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
    let k = unsafe {
        let k = *counter;
        *counter = k + 1;
        k
    };
    let src = cfg.template.as_ptr() as *const [u8; 8];
    let dst = data as *mut [u8; 8];
    for i in 0..TEMPLATE_LEN / 8 {
        // SAFETY: data + TEMPLATE_LEN <= data_end was checked; the template is TEMPLATE_LEN long.
        unsafe { dst.add(i).write_unaligned(src.add(i).read_unaligned()) };
    }
    let s = cfg.stamp(k);
    // SAFETY: every offset written is below TEMPLATE_LEN (checked above).
    unsafe {
        ((data + OFF_SADDR) as *mut [u8; 4]).write_unaligned(s.saddr.to_be_bytes());
        put16(data, OFF_SPORT, s.sport);
        put16(data, OFF_IP_CSUM, s.ip_csum);
        if cfg.proto == 17 {
            put16(data, OFF_UDP_CSUM, s.l4_csum);
        } else {
            put16(data, OFF_TCP_CSUM, s.l4_csum);
        }
    }
    cfg.action
}

/// Counts an IPv4 frame of `len` bytes in the sink; false for anything else (ARP: the
/// namespace must still answer for the address the node forwards to).
#[inline(always)]
fn sink_count(data: usize, end: usize) -> bool {
    if data + 14 > end {
        return false;
    }
    // SAFETY: the Ethernet header is within the packet (checked above).
    let ethertype = unsafe { ((data + 12) as *const [u8; 2]).read_unaligned() };
    if ethertype != [0x08, 0x00] {
        return false;
    }
    let len = (end - data) as u64;
    if let Some(p) = LB_PKTGEN_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    if let Some(p) = LB_PKTGEN_SINK.get_ptr_mut(1) {
        // SAFETY: per-CPU slot.
        unsafe { *p += len };
    }
    true
}

#[xdp]
pub fn lb_pktgen_sink(ctx: XdpContext) -> u32 {
    if sink_count(ctx.data(), ctx.data_end()) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// The same sink at tc ingress: packets delivered into the namespace with bpf_redirect_peer
/// skip the veth's XDP hook and are counted here.
#[classifier]
pub fn lb_pktgen_sink_tc(ctx: TcContext) -> i32 {
    if sink_count(ctx.data(), ctx.data_end()) {
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_OK as i32
    }
}
