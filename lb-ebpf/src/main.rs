//! The datapath: tc and XDP programs that load-balance Service traffic and deliver what they
//! translate themselves.
//!
//! One module per concern: [`frame`] (packet access over tc and XDP), [`parse`]
//! (bounds-checked header parsing), [`maps`] (the map definitions), [`service`] (frontend
//! lookup, source classification, Maglev selection), [`conntrack`] (flow state),
//! [`affinity`] (sessionAffinity ClientIP), [`nat`] (address/port rewrite with checksums),
//! [`reject`] (ICMP port unreachable), [`fwd`] (delivery: FIB lookup, redirects, XDP_TX),
//! [`stats`] (per-CPU counters) and [`lb`] (the per-packet decision that ties them together);
//! [`noop`] holds the benchmark floor. No per-packet logging, no panics.
//!
//! | program | hook | traffic |
//! |---|---|---|
//! | `lb_pod_ingress` | tc ingress, pod-facing interfaces (and uplinks in tc mode) | pods → services; replies of pod backends; external clients and remote backends' replies when the uplink runs no XDP |
//! | `lb_uplink` | XDP, uplinks | external clients → services; replies of remote backends |
//! | `lb_uplink_deliver` | tc ingress, uplinks running `lb_uplink` | delivers what `lb_uplink` translated but cannot transmit itself (to a pod on this node; unresolved neighbours; REJECTs) |
//! | `lb_host_egress` | tc egress, uplinks, pod-facing interfaces, `lo` | the node's own connections to services; replies of host-network backends |
#![no_std]
#![no_main]

mod affinity;
mod conntrack;
mod frag;
mod frame;
mod fwd;
mod lb;
mod maps;
mod nat;
mod noop;
mod parse;
mod pktgen;
mod reject;
mod related;
mod service;
mod stats;
mod verdict;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use frame::Frame;
use fwd::{Fwd, Origin, TcHook};
use lb_common::{xdp_meta, MARK_DELIVERED};
use stats::Stats;
use verdict::Verdict;

/// Ingress on pod-facing interfaces (and on uplinks without native XDP): Service DNAT for
/// packets from pods or clients, reverse NAT for replies of backends, each delivered to its
/// next hop; REJECTs go back out of the interface they came in on.
#[classifier]
pub fn lb_pod_ingress(ctx: TcContext) -> i32 {
    let st = Stats::get();
    let mut to = Fwd::EMPTY;
    match lb::process(&ctx, &st, &mut to) {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Translated => fwd::tc(&ctx, &st, &to, TcHook::Ingress, Origin::Forwarded),
        Verdict::Drop | Verdict::NewFlow => TC_ACT_SHOT as i32,
        Verdict::RewriteFailed => {
            lb::log_rewrite_failed(&ctx, to.proto);
            TC_ACT_SHOT as i32
        }
        Verdict::Reject => {
            if !lb::build_reject(&ctx, true) {
                return TC_ACT_SHOT as i32;
            }
            ctx.set_mark(MARK_DELIVERED);
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(ctx.ifindex(), 0) as i32 }
        }
    }
}

/// Egress (the node's own traffic): connections from host processes to services, sent to the
/// chosen backend; REJECTs are delivered back to the sending socket. Packets one of our
/// ingress programs already delivered here pass untouched.
#[classifier]
pub fn lb_host_egress(ctx: TcContext) -> i32 {
    // SAFETY: reading the program's own skb.
    if unsafe { (*ctx.skb.skb).mark } == MARK_DELIVERED {
        ctx.set_mark(0);
        return TC_ACT_OK as i32;
    }
    let st = Stats::get();
    let mut to = Fwd::EMPTY;
    match lb::process(&ctx, &st, &mut to) {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Translated => fwd::tc(&ctx, &st, &to, TcHook::Egress, Origin::Local),
        Verdict::Drop | Verdict::NewFlow => TC_ACT_SHOT as i32,
        Verdict::RewriteFailed => {
            lb::log_rewrite_failed(&ctx, to.proto);
            TC_ACT_SHOT as i32
        }
        Verdict::Reject => {
            if !lb::build_reject(&ctx, true) {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(ctx.ifindex(), BPF_F_INGRESS as u64) as i32 }
        }
    }
}

/// XDP on uplinks: external clients to NodePorts, ExternalIPs, LoadBalancer IPs (and routed
/// ClusterIPs); replies from remote backends. What leaves through the same uplink goes with
/// XDP_TX; the rest (a pod on this node, REJECTs) is handed to `lb_uplink_deliver`.
#[xdp]
pub fn lb_uplink(ctx: XdpContext) -> u32 {
    let st = Stats::get();
    let mut to = Fwd::EMPTY;
    match lb::process(&ctx, &st, &mut to) {
        Verdict::Pass => XDP_PASS,
        Verdict::Translated => fwd::xdp(&ctx, &st, &to),
        Verdict::Drop | Verdict::NewFlow => XDP_DROP,
        Verdict::RewriteFailed => {
            lb::log_rewrite_failed(&ctx, to.proto);
            XDP_DROP
        }
        Verdict::Reject => {
            if lb::build_reject(&ctx, false) {
                fwd::hand_to_tc(&ctx, &st, xdp_meta::ORIGINATED)
            } else if lb::kernel_can_reject(&ctx) {
                XDP_PASS
            } else {
                XDP_DROP
            }
        }
    }
}

/// tc ingress on uplinks that run `lb_uplink`: delivers the packets it handed over (XDP
/// metadata); everything else was already looked at by XDP and passes untouched.
#[classifier]
pub fn lb_uplink_deliver(ctx: TcContext) -> i32 {
    let origin = match fwd::take_meta(&ctx) {
        Some(xdp_meta::FORWARDED) => Origin::Forwarded,
        Some(xdp_meta::ORIGINATED) => Origin::Local,
        _ => return TC_ACT_OK as i32,
    };
    let Some(to) = lb::addresses(&ctx) else { return TC_ACT_OK as i32 };
    let st = Stats::get();
    fwd::tc(&ctx, &st, &to, TcHook::Ingress, origin)
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
