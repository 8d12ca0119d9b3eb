//! Sending a translated packet on from the host egress hook: the kernel routed it for the
//! frontend address, so it is routed again for the backend (FIB lookup) and redirected, with
//! the neighbour resolved by the kernel (`bpf_redirect_neigh`). A backend on this node
//! (a host-network endpoint) is delivered locally through the loopback's ingress.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_INGRESS,
        TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::{
    frame::store,
    parse::{self, Parsed},
};

const AF_INET: u8 = 2;
const LOOPBACK_IFINDEX: u32 = 1;

pub fn redirect(ctx: &TcContext) -> i32 {
    let Parsed::Ipv4(pkt) = parse::parse(ctx) else { return TC_ACT_OK as i32 };
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.proto;
    params.__bindgen_anon_1.tot_len = pkt.tot_len;
    // SAFETY: reading the program's own skb.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = pkt.saddr;
    params.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    // A forwarding-style lookup (`ifindex` is where the packet "comes from"): an output lookup
    // (BPF_FIB_LOOKUP_OUTPUT) would be bound to this interface and find its default route
    // instead of, say, a local pod's /32 on another interface.
    // SAFETY: params is a valid, fully sized bpf_fib_lookup.
    let rc = unsafe { fib_lookup(ctx.skb.skb.cast(), &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => {
            // SAFETY: no parameters: the kernel resolves the neighbour.
            unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => {
            // A local address: the loopback's (all-zero) MAC makes it PACKET_HOST there.
            if store(ctx, 0, [0u8; 6]).is_err() {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS as u64) as i32 }
        }
        _ => TC_ACT_OK as i32,
    }
}
