//! The datapath: tc and XDP programs that load-balance Service traffic.
//!
//! One module per concern: [`frame`] (packet access over tc and XDP), [`parse`]
//! (bounds-checked header parsing), [`maps`] (the map definitions), [`service`] (frontend
//! lookup, source classification, Maglev selection), [`conntrack`] (flow state),
//! [`affinity`] (sessionAffinity ClientIP), [`nat`] (address/port rewrite with checksums),
//! [`reject`] (ICMP port unreachable), [`route`] (re-routing on host egress), [`stats`]
//! (per-CPU counters) and [`lb`] (the per-packet decision that ties them together); [`noop`]
//! holds the benchmark floor. No per-packet logging, no panics.
//!
//! | program | hook | traffic |
//! |---|---|---|
//! | `lb_pod_ingress` | tc ingress, pod-facing interfaces | pods → services; replies of pod backends |
//! | `lb_uplink` | XDP, uplinks | external clients → services; replies of remote backends; REJECTs routed back by the kernel |
//! | `lb_host_egress` | tc egress, uplinks, pod-facing interfaces, `lo` | the node's own connections to services; replies of host-network backends |
#![no_std]
#![no_main]

mod affinity;
mod conntrack;
mod frame;
mod lb;
mod maps;
mod nat;
mod noop;
mod parse;
mod pktgen;
mod reject;
mod route;
mod service;
mod stats;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb::Verdict;

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading the program's own skb.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Ingress on pod-facing interfaces: Service DNAT for packets from pods, reverse NAT for
/// replies from backends; REJECTs go back out of the interface they came in on.
#[classifier]
pub fn lb_pod_ingress(ctx: TcContext) -> i32 {
    match lb::process(&ctx) {
        Verdict::Pass | Verdict::Translated => TC_ACT_OK as i32,
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Reject => {
            if !lb::build_reject(&ctx, true) {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(ifindex(&ctx), 0) as i32 }
        }
    }
}

/// Egress (the node's own traffic): connections from host processes to services, re-routed
/// to the chosen backend; REJECTs are delivered back to the sending socket.
#[classifier]
pub fn lb_host_egress(ctx: TcContext) -> i32 {
    match lb::process(&ctx) {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Translated => route::redirect(&ctx),
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Reject => {
            if !lb::build_reject(&ctx, true) {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(ifindex(&ctx), BPF_F_INGRESS as u64) as i32 }
        }
    }
}

/// XDP on uplinks: external clients to NodePorts, ExternalIPs, LoadBalancer IPs (and routed
/// ClusterIPs); replies from remote backends. REJECTs are handed to the kernel to route back.
#[xdp]
pub fn lb_uplink(ctx: XdpContext) -> u32 {
    match lb::process(&ctx) {
        Verdict::Pass | Verdict::Translated => XDP_PASS,
        Verdict::Drop => XDP_DROP,
        Verdict::Reject => {
            if lb::build_reject(&ctx, false) || lb::kernel_can_reject(&ctx) {
                XDP_PASS
            } else {
                XDP_DROP
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
