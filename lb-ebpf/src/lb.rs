//! The per-packet decision, shared by every hook (pod-facing tc ingress, host tc egress,
//! uplink XDP).
//!
//! 1. Parse; anything that is not IPv4 passes untouched.
//! 2. A packet to a service frontend (ClusterIP, NodePort, ExternalIP, LoadBalancer IP): find
//!    its flow in conntrack; if it is new (or its backend is gone, or is a UDP backend that
//!    stopped serving): REJECT when the service port has no usable endpoint, DROP a source
//!    outside loadBalancerSourceRanges, decide endpoint set and masquerade
//!    (`lb_common::policy`), pick the backend (affinity, else Maglev), reserve a masquerade
//!    port if needed and record both directions; then DNAT (and SNAT).
//! 3. Otherwise, a reply of a tracked flow (backend → client or → masquerade address):
//!    restore the frontend as source (and the client as destination).
//! 4. Otherwise pass untouched.
//!
//! A translated packet's new addresses (and, for a tracked flow, its next hop from the
//! conntrack entry, `fwd::flow_hop`) go into the caller's `Fwd`, and the program delivers it
//! (`fwd`).

use aya_log_ebpf::warn;
use lb_common::{
    backend_flags, config_flags, ct_dir, ct_flags,
    hash::flow_hash,
    icmp::snat_port_candidate,
    policy::{self, EndpointSet},
    port_to_map, svc_flags, Backend, Counter, CtEntry, CtKey, ServiceValue, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    affinity, conntrack,
    frame::Frame,
    fwd::{self, Fwd, Hop},
    nat::{self, Side},
    parse::{self, Ipv4Packet, Parsed, L4},
    reject, service,
    stats::Stats,
};

pub enum Verdict {
    /// Let the packet continue (translated or not).
    Pass,
    /// A service packet or a reply was translated to the addresses `process` wrote into its
    /// `out`: the caller delivers it (`fwd`).
    Translated,
    Drop,
    /// Dropped: a rewrite helper refused the packet (logged by the program).
    RewriteFailed,
    /// The frame was rewritten into an ICMP port unreachable for its sender.
    Reject,
}

/// How many masquerade ports a new flow tries before giving up.
const SNAT_TRIES: u32 = 16;

#[inline(always)]
pub fn process<F: Frame>(f: &F, st: &Stats, out: &mut Fwd) -> Verdict {
    let pkt = match parse::parse(f) {
        Parsed::Ipv4(p) => p,
        Parsed::Other => return Verdict::Pass,
    };
    st.inc(Counter::Packets);
    st.add(Counter::Bytes, f.len() as u64);
    out.proto = pkt.proto;

    let Some(l4) = pkt.l4 else {
        // Fragments and truncated headers cannot be translated consistently: never let them
        // reach a service address un-NATed.
        if matches!(pkt.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && service::is_service_addr(pkt.daddr) {
            st.inc(Counter::DropUnparsable);
            return Verdict::Drop;
        }
        return Verdict::Pass;
    };

    if let Some(svc) = service::lookup(pkt.daddr, l4.dport, pkt.proto) {
        return forward(f, st, out, &pkt, &l4, &svc);
    }
    reply(f, st, out, &pkt, &l4)
}

/// Client → frontend.
#[inline(always)]
fn forward<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet, l4: &L4, svc: &ServiceValue) -> Verdict {
    let now = conntrack::now();
    let key = CtKey::new(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto, ct_dir::FORWARD);

    if let Some(e) = conntrack::lookup(&key, now) {
        // SAFETY: a map value pointer; the fields are copied out.
        let entry = unsafe { *e };
        // The backend comes from the entry. Whether it may still serve the flow is checked on
        // every UDP packet (a UDP flow leaves a backend that stopped serving at once, I1) and
        // once a second for TCP and SCTP, with the last_seen refresh (kube-proxy never moves
        // those; we re-select when the endpoint is gone, within a second).
        let due = conntrack::refresh_due(&entry, now);
        if entry.svc_id == svc.id
            && ((pkt.proto != PROTO_UDP && !due)
                || service::backend(entry.backend_id).is_some_and(|b| usable_for_established(&b, svc.id, pkt.proto)))
        {
            let snat = (entry.flags & ct_flags::SNAT != 0).then_some((entry.nat_addr, entry.nat_port));
            let to = Dnat { backend_addr: entry.peer_addr, backend_port: entry.peer_port, snat };
            let addrs = Fwd {
                saddr: snat.map_or(pkt.saddr, |(a, _)| a),
                daddr: entry.peer_addr,
                proto: pkt.proto,
                tot_len: pkt.tot_len,
                hop: Hop::UNKNOWN,
            };
            let hop = fwd::flow_hop(f, e, due, &addrs);
            conntrack::touch(e, now, l4.tcp_flags);
            return translate(f, st, out, pkt, l4, to, hop);
        }
        st.inc(Counter::Reselected);
    }
    new_flow(f, st, out, pkt, l4, svc, &key, now)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn new_flow<F: Frame>(
    f: &F,
    st: &Stats,
    out: &mut Fwd,
    pkt: &Ipv4Packet,
    l4: &L4,
    svc: &ServiceValue,
    key: &CtKey,
    now: u64,
) -> Verdict {
    // D7 before E1: a source outside loadBalancerSourceRanges is dropped even without endpoints.
    if svc.flags & svc_flags::SOURCE_RANGES != 0 && !service::source_allowed(svc.id, pkt.saddr) {
        st.inc(Counter::DropSourceRange);
        return Verdict::Drop;
    }
    if svc.flags & svc_flags::NO_ENDPOINTS != 0 {
        st.inc(Counter::RejectNoEndpoint);
        return Verdict::Reject;
    }
    let cfg = service::config();
    let decision = policy::decide(
        svc.flags,
        service::classify(pkt.saddr, &cfg),
        cfg.flags & config_flags::MASQUERADE_ALL != 0,
        cfg.flags & config_flags::DETECT_LOCAL != 0,
    );
    let (table, member) = match decision.set {
        EndpointSet::Cluster => (svc.cluster_table, backend_flags::IN_CLUSTER_SET),
        EndpointSet::Local => (svc.local_table, backend_flags::IN_LOCAL_SET),
    };

    let Some((backend_id, b)) = choose(st, pkt, l4, svc, table, member, now) else {
        st.inc(if decision.set == EndpointSet::Local { Counter::DropNoLocalEndpoint } else { Counter::DropNoBackend });
        return Verdict::Drop;
    };

    let mut entry = CtEntry {
        last_seen_ns: now,
        backend_id,
        svc_id: svc.id,
        peer_addr: b.addr,
        peer_port: b.port,
        flags: 0,
        _pad: 0,
        nat_addr: 0,
        nat_port: 0,
        _pad2: [0; 2],
        hop_ifindex: 0,
        hop_dmac: [0; 6],
        hop_smac: [0; 6],
    };
    conntrack::touch(&mut entry, now, l4.tcp_flags);

    let masquerade = (decision.masquerade || policy::hairpin(pkt.saddr, b.addr)) && cfg.snat_addr != 0;
    let snat = if masquerade {
        let Some(port) = reserve_snat_port(pkt, l4, &b, &entry, cfg.snat_addr, cfg.snat_port_min, cfg.snat_port_max, now) else {
            st.inc(Counter::DropNoSnatPort);
            return Verdict::Drop;
        };
        st.inc(Counter::Masqueraded);
        entry.flags |= ct_flags::SNAT;
        entry.nat_addr = cfg.snat_addr;
        entry.nat_port = port;
        Some((cfg.snat_addr, port))
    } else {
        let reply_key = CtKey::new(b.addr, pkt.saddr, b.port, l4.sport, pkt.proto, ct_dir::REPLY);
        // Reply entry first: once the forward entry exists, replies must find theirs.
        if !conntrack::insert(&reply_key, &reply_entry(&entry, pkt, l4)) {
            st.inc(Counter::CtInsertFailed);
        }
        None
    };
    if !conntrack::insert(key, &entry) {
        st.inc(Counter::CtInsertFailed);
    }
    st.inc(Counter::NewFlows);
    let to = Dnat { backend_addr: b.addr, backend_port: b.port, snat };
    // The next hop is cached from the flow's second packet on.
    translate(f, st, out, pkt, l4, to, Hop::UNKNOWN)
}

/// The backend for a new connection: the affine one if it is still in the chosen set, else
/// Maglev over the chosen table.
#[inline(always)]
fn choose(st: &Stats, pkt: &Ipv4Packet, l4: &L4, svc: &ServiceValue, table: u32, member: u8, now: u64) -> Option<(u32, Backend)> {
    let affinity = svc.flags & svc_flags::AFFINITY != 0;
    if affinity {
        if let Some(id) = affinity::lookup(pkt.saddr, svc.id, svc.affinity_timeout, now) {
            if let Some(b) = service::backend(id) {
                if b.svc_id == svc.id && b.flags & member != 0 {
                    st.inc(Counter::AffinityHits);
                    affinity::update(pkt.saddr, svc.id, id, now);
                    return Some((id, b));
                }
            }
        }
    }
    let hash = flow_hash(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto);
    let id = service::maglev_select(table, hash)?;
    let b = service::backend(id)?;
    if affinity {
        affinity::update(pkt.saddr, svc.id, id, now);
    }
    Some((id, b))
}

/// Reserves a masquerade source port: the reply entry keyed by the post-NAT tuple is inserted
/// only if no live flow holds that tuple. Returns the port (map representation).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reserve_snat_port(
    pkt: &Ipv4Packet,
    l4: &L4,
    b: &Backend,
    entry: &CtEntry,
    snat_addr: u32,
    min: u16,
    max: u16,
    now: u64,
) -> Option<u16> {
    let mut reply = reply_entry(entry, pkt, l4);
    reply.flags |= ct_flags::SNAT;
    reply.nat_addr = pkt.saddr;
    reply.nat_port = l4.sport;
    let hash = flow_hash(pkt.saddr, b.addr, l4.sport, b.port, pkt.proto);
    for attempt in 0..SNAT_TRIES {
        let port = port_to_map(snat_port_candidate(hash, attempt, min, max));
        let key = CtKey::new(b.addr, snat_addr, b.port, port, pkt.proto, ct_dir::REPLY);
        if conntrack::insert_new(&key, &reply, now) {
            return Some(port);
        }
    }
    None
}

/// The reply entry of a new flow whose forward entry is `forward`: the frontend the client
/// addressed, to restore as the source of replies.
#[inline(always)]
fn reply_entry(forward: &CtEntry, pkt: &Ipv4Packet, l4: &L4) -> CtEntry {
    CtEntry { peer_addr: pkt.daddr, peer_port: l4.dport, ..*forward }
}

/// A backend keeps its established flows while it is in the service port's endpoint list,
/// terminating or not (kube-proxy never flushes TCP, SEMANTICS I2); UDP flows move off a
/// backend that stopped serving (I1).
#[inline(always)]
fn usable_for_established(b: &Backend, svc_id: u32, proto: u8) -> bool {
    b.svc_id == svc_id && (proto != PROTO_UDP || b.flags & backend_flags::SERVING != 0)
}

/// Where a service packet goes: the backend, and the masquerade source when `snat` is set.
#[derive(Clone, Copy)]
struct Dnat {
    backend_addr: u32,
    backend_port: u16,
    snat: Option<(u32, u16)>,
}

/// DNAT to the backend, and masquerade when `snat` is set.
#[inline(always)]
fn translate<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet, l4: &L4, to: Dnat, hop: Hop) -> Verdict {
    let Dnat { backend_addr, backend_port, snat } = to;
    if nat::rewrite(f, pkt, Side::Dst, pkt.daddr, l4.dport, backend_addr, backend_port).is_err() {
        return rewrite_failed(st);
    }
    let mut saddr = pkt.saddr;
    if let Some((addr, port)) = snat {
        if nat::rewrite(f, pkt, Side::Src, pkt.saddr, l4.sport, addr, port).is_err() {
            return rewrite_failed(st);
        }
        saddr = addr;
    }
    st.inc(Counter::ServicePackets);
    st.add(Counter::ServiceBytes, f.len() as u64);
    *out = Fwd { saddr, daddr: backend_addr, proto: pkt.proto, tot_len: pkt.tot_len, hop };
    Verdict::Translated
}

#[inline(always)]
fn rewrite_failed(st: &Stats) -> Verdict {
    st.inc(Counter::DropRewrite);
    Verdict::RewriteFailed
}

/// Logs a packet dropped because a rewrite helper refused it. Cold path only (never logged
/// per packet otherwise); called by the programs once their verdict is final, so that no
/// value is live across the log call.
#[inline(never)]
pub fn log_rewrite_failed<F: Frame>(f: &F, proto: u8) {
    warn!(f, "lb: rewrite failed (proto {}), packet dropped", proto);
}

/// Backend → client: restore the frontend as the source (and a masqueraded client as the
/// destination).
#[inline(always)]
fn reply<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet, l4: &L4) -> Verdict {
    let key = CtKey::new(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto, ct_dir::REPLY);
    let now = conntrack::now();
    let Some(e) = conntrack::lookup(&key, now) else { return Verdict::Pass };
    // SAFETY: a map value pointer; the fields are copied out.
    let entry = unsafe { *e };
    let daddr = if entry.flags & ct_flags::SNAT != 0 { entry.nat_addr } else { pkt.daddr };
    let addrs = Fwd { saddr: entry.peer_addr, daddr, proto: pkt.proto, tot_len: pkt.tot_len, hop: Hop::UNKNOWN };
    let hop = fwd::flow_hop(f, e, conntrack::refresh_due(&entry, now), &addrs);
    conntrack::touch(e, now, l4.tcp_flags);
    if nat::rewrite(f, pkt, Side::Src, pkt.saddr, l4.sport, entry.peer_addr, entry.peer_port).is_err() {
        return rewrite_failed(st);
    }
    if entry.flags & ct_flags::SNAT != 0
        && nat::rewrite(f, pkt, Side::Dst, pkt.daddr, l4.dport, entry.nat_addr, entry.nat_port).is_err()
    {
        return rewrite_failed(st);
    }
    st.inc(Counter::ReplyPackets);
    *out = Fwd { hop, ..addrs };
    Verdict::Translated
}

/// When a REJECT reply cannot be built in an XDP frame (a frame shorter than the reply, on a
/// driver without tailroom: native XDP on veth), whether the kernel can answer instead: the
/// destination is one of the node's own addresses (a NodePort, a local LB IP), where no socket
/// listens on a service's port, so the kernel itself sends the port unreachable (UDP) or a
/// reset (TCP). Anything else is dropped, never routed un-NATed.
#[inline(always)]
pub fn kernel_can_reject<F: Frame>(f: &F) -> bool {
    let Parsed::Ipv4(pkt) = parse::parse(f) else { return false };
    service::is_node_addr(pkt.daddr)
}

/// Rewrites the frame into the REJECT reply; false (drop it) if that is impossible.
#[inline(always)]
pub fn build_reject<F: Frame>(f: &F, swap_macs: bool) -> bool {
    let Parsed::Ipv4(pkt) = parse::parse(f) else { return false };
    reject::build(f, &pkt, swap_macs).is_ok()
}

/// The addresses of a frame to deliver (one the XDP program already translated or built).
#[inline(always)]
pub fn addresses<F: Frame>(f: &F) -> Option<Fwd> {
    match parse::parse(f) {
        Parsed::Ipv4(p) => Some(Fwd { saddr: p.saddr, daddr: p.daddr, proto: p.proto, tot_len: p.tot_len, hop: Hop::UNKNOWN }),
        Parsed::Other => None,
    }
}
