//! The datapath: tc programs (and, later, XDP) that load-balance Service traffic.
//!
//! One module per concern: [`parse`] (bounds-checked header parsing), [`maps`] (the map
//! definitions), [`service`] (frontend lookup and Maglev selection), [`conntrack`] (flow state),
//! [`nat`] (address/port rewrite with checksums), [`stats`] (per-CPU counters) and [`lb`] (the
//! per-packet decision that ties them together); [`noop`] holds the benchmark floor. No
//! per-packet logging, no panics.
#![no_std]
#![no_main]

mod conntrack;
mod lb;
mod maps;
mod nat;
mod noop;
mod parse;
mod pktgen;
mod service;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};

/// Ingress on pod-facing interfaces: Service DNAT for packets from pods, reverse NAT for
/// replies from backends. Everything else passes byte-for-byte untouched.
#[classifier]
pub fn lb_pod_ingress(ctx: TcContext) -> i32 {
    match lb::pod_ingress(&ctx) {
        lb::Verdict::Pass => TC_ACT_OK as i32,
        lb::Verdict::Drop => TC_ACT_SHOT as i32,
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
