//! The per-packet decision for pod-facing interfaces.
//!
//! 1. Parse; anything that is not IPv4 passes untouched.
//! 2. A packet to a service frontend (ClusterIP:port/proto): find its flow in conntrack; if the
//!    flow is new, or its backend is gone (or is a UDP backend that stopped serving), pick a
//!    backend with Maglev and record both directions; DNAT to the backend.
//! 3. Otherwise, a reply of a tracked flow (backend → client): restore the frontend as source.
//! 4. Otherwise pass untouched.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::warn;
use lb_common::{
    backend_flags, ct_dir, hash::flow_hash, scope, svc_flags, Backend, Counter, CtEntry, CtKey, ServiceValue, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack,
    nat::{self, Side},
    parse::{self, Ipv4Packet, Parsed, L4},
    service, stats,
};

pub enum Verdict {
    Pass,
    Drop,
}

#[inline(always)]
pub fn pod_ingress(ctx: &TcContext) -> Verdict {
    let pkt = match parse::parse(ctx) {
        Parsed::Ipv4(p) => p,
        Parsed::Other => return Verdict::Pass,
    };
    stats::inc(Counter::Packets);
    stats::add(Counter::Bytes, ctx.len() as u64);

    let Some(l4) = pkt.l4 else {
        // Fragments and truncated headers cannot be translated consistently: never let them
        // reach a service address un-NATed.
        if matches!(pkt.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && service::is_service_addr(pkt.daddr, scope::CLUSTER_IP) {
            stats::inc(Counter::DropUnparsable);
            return Verdict::Drop;
        }
        return Verdict::Pass;
    };

    if let Some(svc) = service::lookup(pkt.daddr, l4.dport, pkt.proto, scope::CLUSTER_IP) {
        return forward(ctx, &pkt, &l4, &svc);
    }
    reply(ctx, &pkt, &l4)
}

/// Client → frontend.
#[inline(always)]
fn forward(ctx: &TcContext, pkt: &Ipv4Packet, l4: &L4, svc: &ServiceValue) -> Verdict {
    let now = conntrack::now();
    let key = CtKey::new(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto, ct_dir::FORWARD);

    if let Some(e) = conntrack::lookup(&key, now) {
        // SAFETY: a map value pointer.
        let entry = unsafe { &*e };
        if entry.svc_id == svc.id {
            if let Some(b) = service::backend(entry.backend_id) {
                if usable_for_established(&b, svc.id, pkt.proto) {
                    conntrack::touch(e, now, l4.tcp_flags);
                    return dnat(ctx, pkt, l4, &b);
                }
            }
        }
        stats::inc(Counter::Reselected);
    }

    // A new flow (or one whose backend went away).
    if svc.flags & svc_flags::NO_ENDPOINTS != 0 {
        stats::inc(Counter::DropNoEndpoint);
        return Verdict::Drop;
    }
    let hash = flow_hash(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto);
    let Some(backend_id) = service::maglev_select(svc.table, hash) else {
        stats::inc(Counter::DropNoBackend);
        return Verdict::Drop;
    };
    let Some(b) = service::backend(backend_id) else {
        stats::inc(Counter::DropNoBackend);
        return Verdict::Drop;
    };

    let mut entry = CtEntry {
        last_seen_ns: now,
        backend_id,
        svc_id: svc.id,
        frontend_addr: pkt.daddr,
        frontend_port: l4.dport,
        flags: 0,
        _pad: 0,
        nat_addr: 0,
        nat_port: 0,
        _pad2: [0; 2],
    };
    conntrack::touch(&mut entry, now, l4.tcp_flags);
    let reply_key = CtKey::new(b.addr, pkt.saddr, b.port, l4.sport, pkt.proto, ct_dir::REPLY);
    // Reply entry first: once the forward entry exists, replies must find theirs.
    if !conntrack::insert(&reply_key, &entry) || !conntrack::insert(&key, &entry) {
        stats::inc(Counter::CtInsertFailed);
    }
    stats::inc(Counter::NewFlows);
    dnat(ctx, pkt, l4, &b)
}

/// A backend keeps its established flows while it is in the service port's endpoint list,
/// terminating or not (kube-proxy never flushes TCP, SEMANTICS I2); UDP flows move off a
/// backend that stopped serving (I1).
#[inline(always)]
fn usable_for_established(b: &Backend, svc_id: u32, proto: u8) -> bool {
    b.svc_id == svc_id && (proto != PROTO_UDP || b.flags & backend_flags::SERVING != 0)
}

#[inline(always)]
fn dnat(ctx: &TcContext, pkt: &Ipv4Packet, l4: &L4, b: &Backend) -> Verdict {
    if nat::rewrite(ctx, pkt, Side::Dst, l4.dport, b.addr, b.port).is_err() {
        stats::inc(Counter::DropRewrite);
        // Cold path only (a helper refused the skb): never logged per packet otherwise.
        warn!(ctx, "lb: DNAT rewrite failed (proto {}), packet dropped", pkt.proto);
        return Verdict::Drop;
    }
    stats::inc(Counter::ServicePackets);
    stats::add(Counter::ServiceBytes, ctx.len() as u64);
    Verdict::Pass
}

/// Backend → client: restore the frontend address and port as the source.
#[inline(always)]
fn reply(ctx: &TcContext, pkt: &Ipv4Packet, l4: &L4) -> Verdict {
    let key = CtKey::new(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto, ct_dir::REPLY);
    let now = conntrack::now();
    let Some(e) = conntrack::lookup(&key, now) else { return Verdict::Pass };
    // SAFETY: a map value pointer.
    let (addr, port) = unsafe { ((*e).frontend_addr, (*e).frontend_port) };
    conntrack::touch(e, now, l4.tcp_flags);
    if nat::rewrite(ctx, pkt, Side::Src, l4.sport, addr, port).is_err() {
        stats::inc(Counter::DropRewrite);
        warn!(ctx, "lb: reverse-NAT rewrite failed (proto {}), packet dropped", pkt.proto);
        return Verdict::Drop;
    }
    stats::inc(Counter::ReplyPackets);
    Verdict::Pass
}
