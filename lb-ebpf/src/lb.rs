//! The per-packet decision, shared by every hook (pod-facing tc ingress, host tc egress,
//! uplink XDP).
//!
//! 1. Parse; anything that is not IPv4 passes untouched. A first fragment leaves its ports for
//!    the later ones, which are translated as it was (`frag`).
//! 2. A packet to a service frontend (ClusterIP, NodePort, ExternalIP, LoadBalancer IP): find
//!    its flow in conntrack; if it is new (or its backend is gone, or is a UDP backend that
//!    stopped serving): REJECT when the service port has no usable endpoint, DROP a source
//!    outside loadBalancerSourceRanges, decide endpoint set and masquerade
//!    (`lb_common::policy`), pick the backend (affinity, else Maglev), reserve a masquerade
//!    port if needed and record both directions; then DNAT (and SNAT).
//! 3. Otherwise, a reply of a tracked flow (backend → client or → masquerade address):
//!    restore the frontend as source (and the client as destination). An ICMP error about a
//!    tracked flow is translated like the packet it quotes (`related`).
//! 4. Otherwise pass untouched.
//!
//! A translated packet's new addresses (and, for a tracked flow, its next hop from the
//! conntrack entry, `fwd::flow_hop`) go into the caller's `Fwd`, and the program delivers it
//! (`fwd`).

use aya_ebpf::{
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, BPF_F_CURRENT_NETNS},
    helpers::{bpf_loop, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use aya_log_ebpf::warn;
use lb_common::{
    backend_flags, config_flags, ct_dir, ct_flags,
    flow::{self, Dir},
    hash::flow_hash,
    policy::{self, EndpointSet, Source},
    port_from_map, port_to_map, svc_flags, Backend, Config, Counter, CtEntry, CtKey, ServiceValue, PROTO_ICMP, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    affinity,
    conntrack::{self, Claim},
    frag,
    frame::Frame,
    fwd::{self, Fwd, Hop},
    nat::{self, Side},
    parse::{self, Ipv4Packet, Parsed, FRAG_LATER, FRAG_NONE, L4},
    reject, related, service,
    stats::Stats,
    verdict::Verdict,
};

#[inline(always)]
pub fn process<F: Frame>(f: &F, st: &Stats, out: &mut Fwd) -> Verdict {
    let pkt = match parse::parse(f) {
        Parsed::Ipv4(p) => p,
        Parsed::Other => return Verdict::Pass,
    };
    st.inc(Counter::Packets);
    st.add(Counter::Bytes, f.len() as u64);
    out.proto = pkt.proto;
    // Fragments are dealt with here and nothing below looks at them again (the verifier would
    // otherwise explore the whole pipeline once more for them).
    if pkt.frag != FRAG_NONE {
        if pkt.frag == FRAG_LATER {
            return frag::later(f, st, out, &pkt);
        }
        if pkt.proto == PROTO_ICMP {
            return Verdict::Pass;
        }
        frag::remember(&pkt);
    }
    dispatch(f, st, out, &pkt)
}

#[inline(always)]
fn dispatch<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet) -> Verdict {
    if !pkt.has_l4 {
        if pkt.proto == PROTO_ICMP {
            // Echo requests to a frontend pass untouched, as under kube-proxy's iptables mode
            // (nothing answers a ClusterIP ping); errors about a translated flow are translated.
            return related::process(f, st, out, pkt);
        }
        // Truncated headers (and SCTP fragments) cannot be translated consistently: never let
        // them reach a service address un-NATed.
        if matches!(pkt.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && service::is_service_addr(pkt.daddr) {
            st.inc(Counter::DropUnparsable);
            return Verdict::Drop;
        }
        return Verdict::Pass;
    }
    let l4 = &pkt.l4;

    if let Some(svc) = service::lookup(pkt.daddr, l4.dport, pkt.proto) {
        let a = FlowArgs { pkt, svc: &svc };
        // The established path and the new-flow path are separate BPF functions, called one
        // after the other from here: the verifier limits the stack of a call chain (512
        // bytes), and each needs a good part of it.
        match forward(f, st, out, &a) {
            // Conntrack before the NAT rules, as in netfilter: a packet to a frontend can be a
            // tracked flow's reply (a masqueraded flow whose source port is the number of a
            // NodePort: the backend answers node:port), never a new connection to it. (One
            // call of `reply` for both cases: the verifier checks it once per call site.)
            Verdict::NewFlow if !is_reply(pkt, l4) => return new_flow(f, st, out, &a),
            Verdict::NewFlow => {}
            v => return v,
        }
    }
    reply(f, st, out, pkt, l4)
}

/// Client → frontend, on a tracked flow; [`Verdict::NewFlow`] when there is none (or it has
/// to be replaced).
#[inline(never)]
fn forward<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, a: &FlowArgs) -> Verdict {
    let (pkt, svc, now) = (a.pkt, a.svc, conntrack::now());
    let l4 = &pkt.l4;
    let key = a.key();
    let tcp = pkt.proto == PROTO_TCP;

    if let Some(e) = conntrack::lookup(&key, now) {
        // SAFETY: a map value pointer, read in place (valid for the program's run).
        let entry = unsafe { &*e };
        if tcp && flow::reopens(entry.state, l4.tcp_flags) {
            // A new connection on a closed tuple: a fresh backend choice and fresh NAT.
            st.inc(Counter::Reopened);
            conntrack::remove_flow(&key, entry);
        } else if tcp && l4.tcp_flags & flow::TCP_RST != 0 && !conntrack::rst_believed(entry, Dir::Original, l4) {
            st.inc(Counter::DropTcpInvalid);
            return Verdict::Drop;
        } else {
            // The backend comes from the entry. Whether it may still serve the flow is checked
            // on every UDP packet (a UDP flow leaves a backend that stopped serving at once,
            // I1) and once a second for TCP and SCTP, with the last_seen refresh (kube-proxy
            // never moves those; we re-select when the endpoint is gone, within a second).
            let due = conntrack::refresh_due(entry, now);
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
                conntrack::on_packet(st, e, &key, Dir::Original, l4, now);
                return translate(f, st, out, pkt, l4, to, hop);
            }
            st.inc(Counter::Reselected);
            conntrack::remove_flow(&key, entry);
        }
    } else if tcp && !flow::tcp_may_create(l4.tcp_flags) {
        // An RST without a connection (netfilter: INVALID, never NATed).
        st.inc(Counter::DropTcpInvalid);
        return Verdict::Drop;
    }
    Verdict::NewFlow
}

/// A packet to a frontend and the frontend's service port (one small stack argument: a BPF
/// call takes at most five arguments and a call chain 512 bytes of stack).
struct FlowArgs<'a> {
    pkt: &'a Ipv4Packet,
    svc: &'a ServiceValue,
}

impl FlowArgs<'_> {
    /// The flow's forward conntrack key.
    #[inline(always)]
    fn key(&self) -> CtKey {
        let (p, l4) = (self.pkt, &self.pkt.l4);
        CtKey::new(p.saddr, p.daddr, l4.sport, l4.dport, p.proto, ct_dir::FORWARD)
    }
}

/// A new connection: policy, backend, NAT reservation, both conntrack halves, translation.
///
/// A separate BPF function: the verifier explores the delivery that follows once per verdict
/// it returns instead of once per path through it (the many outcomes of the policy and the
/// port search would otherwise multiply the whole program's states past its limit).
#[inline(never)]
fn new_flow<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, a: &FlowArgs) -> Verdict {
    let (pkt, svc, now) = (a.pkt, a.svc, conntrack::now());
    let l4 = &pkt.l4;
    let key = &a.key();
    // D7 before E1: a source outside loadBalancerSourceRanges is dropped even without endpoints.
    if svc.flags & svc_flags::SOURCE_RANGES != 0 && !service::source_allowed(svc.id, pkt.saddr) {
        st.inc(Counter::DropSourceRange);
        return Verdict::Drop;
    }
    if svc.flags & svc_flags::NO_ENDPOINTS != 0 {
        st.inc(Counter::RejectNoEndpoint);
        return Verdict::Reject;
    }
    let Some(cfg) = service::config() else {
        st.inc(Counter::DropNoBackend);
        return Verdict::Drop;
    };
    let source = service::classify(pkt.saddr, cfg);
    let decision = policy::decide(
        svc.flags,
        source,
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

    // The new entries live in a per-CPU scratch map: the stack is too small for them next to
    // the delivery's FIB query.
    let Some(scratch) = crate::maps::LB_SCRATCH.get_ptr_mut(0) else {
        st.inc(Counter::CtInsertFailed);
        return Verdict::Drop;
    };
    // SAFETY: this CPU's scratch value; nothing else uses it while the program runs. It is
    // only reached through this raw pointer (the port search's callback writes it too).
    let entry = unsafe { &raw mut (*scratch).forward };
    // SAFETY: as above.
    unsafe {
        *entry = CtEntry {
            last_seen_ns: now,
            backend_id,
            svc_id: svc.id,
            peer_addr: b.addr,
            peer_port: b.port,
            flags: 0,
            state: if pkt.proto == PROTO_TCP { flow::tcp_initial(l4.tcp_flags) } else { flow::UNREPLIED },
            nat_addr: 0,
            nat_port: 0,
            _pad2: [0; 2],
            hop_ifindex: 0,
            hop_dmac: [0; 6],
            hop_smac: [0; 6],
            seq: l4.seq,
            _pad3: 0,
        }
    };

    // Source NAT: from the node's address when masqueraded, else from the client's own
    // address (only if its tuple clashes with another flow's). The client's port is kept
    // when the post-NAT tuple is free.
    let masquerade = (decision.masquerade || policy::hairpin(pkt.saddr, b.addr)) && cfg.snat_addr != 0;
    let nat_addr = if masquerade { cfg.snat_addr } else { pkt.saddr };
    let on_node = masquerade || source == Source::Host;
    let r = Reservation { pkt, l4, b: &b, key, cfg, nat_addr, masquerade, on_node, now };
    if !reserve(f, &r) {
        st.inc(Counter::DropNoSnatPort);
        return Verdict::Drop;
    }
    // SAFETY: the scratch value, written by the reservation.
    let entry = unsafe { &*entry };
    if masquerade {
        st.inc(Counter::Masqueraded);
    } else if entry.flags & ct_flags::SNAT != 0 {
        st.inc(Counter::PortRemapped);
    }

    // The forward half last: once it exists, replies find theirs.
    let mut to = Dnat {
        backend_addr: entry.peer_addr,
        backend_port: entry.peer_port,
        snat: (entry.flags & ct_flags::SNAT != 0).then_some((entry.nat_addr, entry.nat_port)),
    };
    match conntrack::claim(key, entry, key, false, now) {
        Claim::Won => {}
        Claim::Same(e) => {
            // Another CPU created this connection at the same time: one backend, one NAT —
            // its. Our reservation goes if it is not the one it uses.
            // SAFETY: a map value pointer, read in place.
            let theirs = unsafe { &*e };
            // SAFETY: the scratch value (the reservation's key).
            let ours = unsafe { &(*scratch).search.out };
            if flow::partner_key(key, theirs) != *ours {
                let _ = crate::maps::LB_CT.remove(ours);
            }
            to = Dnat {
                backend_addr: theirs.peer_addr,
                backend_port: theirs.peer_port,
                snat: (theirs.flags & ct_flags::SNAT != 0).then_some((theirs.nat_addr, theirs.nat_port)),
            };
        }
        Claim::Taken => st.inc(Counter::CtInsertFailed),
    }
    st.inc(Counter::NewFlows);
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

/// What [`reserve`] needs to know about a new flow (one stack argument: a BPF call takes
/// at most five).
struct Reservation<'a> {
    pkt: &'a Ipv4Packet,
    l4: &'a L4,
    b: &'a Backend,
    key: &'a CtKey,
    cfg: &'a Config,
    nat_addr: u32,
    masquerade: bool,
    on_node: bool,
    now: u64,
}

/// Reserves the new flow's post-NAT tuple (backend ← `nat_addr`:port) by inserting its reply
/// half, sets the forward entry's source NAT accordingly (both entries are in `LB_SCRATCH`)
/// and writes the reply half's key to `out`. The client's port is tried first (kept unless it
/// is in the node's ephemeral range and `nat_addr` is the node's); then up to `SNAT_TRIES`
/// ports of the configured range outside the node's ephemeral range ([`try_port`], run by
/// `bpf_loop`: the verifier checks its body once, not once per port). On the node's address a
/// port a local socket holds for the tuple (`bpf_sk_lookup_*`: a connection to the backend,
/// or a listener) is skipped. A closed TCP connection's tuple is taken over by a SYN when no free one was found ([`may_take_over`]). False
/// if every candidate was taken.
#[inline(always)]
fn reserve<F: Frame>(f: &F, r: &Reservation) -> bool {
    let (pkt, l4, b, cfg) = (r.pkt, r.l4, r.b, r.cfg);
    let Some(sc) = crate::maps::LB_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's scratch value (see `new_flow`); reached through the raw pointer only
    // (the callback writes it during bpf_loop).
    unsafe {
        let state = (*sc).forward.state;
        (*sc).search = PortSearch {
            key: *r.key,
            out: CtKey::new(0, 0, 0, 0, 0, 0),
            now: r.now,
            hash: flow_hash(pkt.saddr, b.addr, l4.sport, b.port, pkt.proto),
            nat_addr: r.nat_addr,
            client_addr: pkt.saddr,
            backend_addr: b.addr,
            backend_port: b.port,
            client_port: l4.sport,
            ports: [cfg.snat_port_min, cfg.snat_port_max, cfg.local_port_min, cfg.local_port_max],
            next: 0,
            port: l4.sport,
            proto: pkt.proto,
            syn: (pkt.proto == PROTO_TCP && state == flow::tcp::SYN_SENT) as u8,
            result: SEARCH_NONE,
            masquerade: r.masquerade as u8,
            seq: l4.seq,
        };
    }
    let keep = !r.on_node || flow::may_keep_port(port_from_map(l4.sport), cfg.local_port_min, cfg.local_port_max);
    if keep && !(r.on_node && socket_holds(f, pkt.proto, b, r.nat_addr, l4.sport)) {
        try_candidate(l4.sport);
    }
    // Rounds: a port a local socket holds sends the search on from the next port.
    for _ in 0..SOCKET_ROUNDS {
        // SAFETY: as above.
        let (result, next) = unsafe { ((*sc).search.result, (*sc).search.next) };
        if result == SEARCH_NONE {
            // SAFETY: a callback of the bpf_loop signature; it finds its state in LB_SCRATCH.
            unsafe { bpf_loop(SNAT_TRIES.saturating_sub(next), try_port as *mut _, core::ptr::null_mut(), 0) };
        }
        // SAFETY: as above.
        let (result, port) = unsafe { ((*sc).search.result, (*sc).search.port) };
        if result == SEARCH_NONE {
            return false;
        }
        if !(r.on_node && socket_holds(f, pkt.proto, b, r.nat_addr, port)) {
            break;
        }
        if result == SEARCH_WON {
            // SAFETY: as above.
            let _ = crate::maps::LB_CT.remove(unsafe { &(*sc).search.out });
        }
        // SAFETY: as above.
        unsafe { (*sc).search.result = SEARCH_NONE };
    }
    // SAFETY: as above.
    let s = unsafe { &(*sc).search };
    match s.result {
        SEARCH_WON => true,
        // The candidate's holder expired, is closed (a SYN takes its tuple over) or is this
        // very connection (created by another CPU at the same time).
        // SAFETY: as above.
        SEARCH_SETTLE => {
            !matches!(conntrack::claim(&s.out, unsafe { &(*sc).reply }, r.key, may_take_over(s), r.now), Claim::Taken)
        }
        _ => false,
    }
}

/// Whether the candidate may take a closed connection's tuple over: a SYN, and only once the
/// client's own port and the first half of the tries found no free tuple. The backend may
/// still hold that tuple's socket in TIME_WAIT, which accepts a new SYN only if its sequence
/// number or timestamp is newer, so a free tuple is always preferred.
#[inline(always)]
fn may_take_over(s: &PortSearch) -> bool {
    s.syn != 0 && s.next > SNAT_TRIES / 2
}

/// How many ports of the source NAT range a new flow tries after the client's own.
const SNAT_TRIES: u32 = 64;
/// How many times a port held by a local socket restarts the search.
const SOCKET_ROUNDS: u32 = 3;

const SEARCH_NONE: u8 = 0;
/// The candidate's tuple was free and is ours.
const SEARCH_WON: u8 = 1;
/// The candidate's tuple is held by an expired or closed connection, or by this one.
const SEARCH_SETTLE: u8 = 2;

/// The port search's state (in `LB_SCRATCH`: the `bpf_loop` callback finds it there).
#[repr(C)]
pub struct PortSearch {
    /// The new connection's forward key.
    key: CtKey,
    /// The candidate's reply key.
    pub out: CtKey,
    now: u64,
    hash: u32,
    nat_addr: u32,
    client_addr: u32,
    backend_addr: u32,
    backend_port: u16,
    client_port: u16,
    /// Source NAT range, then the excluded ephemeral range (host order).
    ports: [u16; 4],
    /// The next attempt.
    next: u32,
    /// The candidate (map representation).
    port: u16,
    proto: u8,
    syn: u8,
    result: u8,
    /// Masqueraded: the flow is source-NATed even when the node's address and the client's
    /// port are what the client sent (a node client: kube-proxy marks it all the same).
    masquerade: u8,
    seq: u32,
}

/// One attempt of the port search (a `bpf_loop` callback): 1 stops the loop.
#[inline(never)]
extern "C" fn try_port(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(sc) = crate::maps::LB_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's scratch value (see `reserve`).
    let port = unsafe {
        let s = &mut (*sc).search;
        let attempt = s.next;
        s.next += 1;
        let [min, max, ex_min, ex_max] = s.ports;
        port_to_map(flow::snat_port_candidate(s.hash, attempt, min, max, ex_min, ex_max))
    };
    (try_candidate(port) != SEARCH_NONE) as i64
}

/// Tries one port: writes the candidate's entries and key into `LB_SCRATCH` and inserts the
/// reply half if the tuple is free.
#[inline(always)]
fn try_candidate(port: u16) -> u8 {
    let Some(sc) = crate::maps::LB_SCRATCH.get_ptr_mut(0) else { return SEARCH_NONE };
    // SAFETY: this CPU's scratch value (see `reserve`).
    let (s, entry, reply) = unsafe { (&mut (*sc).search, &mut (*sc).forward, &mut (*sc).reply) };
    s.port = port;
    let translated = s.masquerade != 0 || s.nat_addr != s.client_addr || port != s.client_port;
    entry.flags = if translated { ct_flags::SNAT } else { 0 };
    entry.nat_addr = if translated { s.nat_addr } else { 0 };
    entry.nat_port = if translated { port } else { 0 };
    s.out = CtKey::new(s.backend_addr, s.nat_addr, s.backend_port, port, s.proto, ct_dir::REPLY);
    *reply = flow::partner_entry(&s.key, entry);
    // An RST answering the SYN must acknowledge it.
    reply.seq = if s.syn != 0 { s.seq.wrapping_add(1) } else { 0 };
    s.result = if conntrack::insert_new(&s.out, reply) {
        SEARCH_WON
    } else if conntrack::holder_keeps(&s.out, &s.key, may_take_over(s), s.now) {
        SEARCH_NONE
    } else {
        SEARCH_SETTLE
    };
    s.result
}

/// Whether a socket of this node would receive the backend's replies to `nat_addr:port`
/// (a connection to the backend from that port, or a listener on it): the tuple is not
/// ours to take. Only TCP and UDP have socket lookups; SCTP is not checked.
#[inline(always)]
fn socket_holds<F: Frame>(f: &F, proto: u8, b: &Backend, nat_addr: u32, port: u16) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 { saddr: b.addr, daddr: nat_addr, sport: b.port, dport: port },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the program's own context and a stack tuple of the size given; a socket found
    // is released before anything else happens.
    let sk = unsafe {
        match proto {
            PROTO_TCP => bpf_sk_lookup_tcp(f.as_ptr(), &mut tuple, size, netns, 0),
            PROTO_UDP => bpf_sk_lookup_udp(f.as_ptr(), &mut tuple, size, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket reference from the lookup above.
    unsafe { bpf_sk_release(sk as *mut _) };
    true
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

/// Whether the packet is a reply of a live tracked flow.
#[inline(never)]
fn is_reply(pkt: &Ipv4Packet, l4: &L4) -> bool {
    let key = CtKey::new(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto, ct_dir::REPLY);
    conntrack::lookup(&key, conntrack::now()).is_some()
}

/// Backend → client: restore the frontend as the source (and a source-NATed client as the
/// destination).
#[inline(never)]
fn reply<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet, l4: &L4) -> Verdict {
    let key = CtKey::new(pkt.saddr, pkt.daddr, l4.sport, l4.dport, pkt.proto, ct_dir::REPLY);
    let now = conntrack::now();
    let Some(e) = conntrack::lookup(&key, now) else { return Verdict::Pass };
    // SAFETY: a map value pointer, read in place (valid for the program's run).
    let entry = unsafe { &*e };
    if pkt.proto == PROTO_TCP && l4.tcp_flags & flow::TCP_RST != 0 && !conntrack::rst_believed(entry, Dir::Reply, l4) {
        st.inc(Counter::DropTcpInvalid);
        return Verdict::Drop;
    }
    let daddr = if entry.flags & ct_flags::SNAT != 0 { entry.nat_addr } else { pkt.daddr };
    let addrs = Fwd { saddr: entry.peer_addr, daddr, proto: pkt.proto, tot_len: pkt.tot_len, hop: Hop::UNKNOWN };
    let hop = fwd::flow_hop(f, e, conntrack::refresh_due(entry, now), &addrs);
    conntrack::on_packet(st, e, &key, Dir::Reply, l4, now);
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
/// (A separate BPF function: the reply it builds does not share a stack frame with the
/// new-flow path's.)
#[inline(never)]
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
