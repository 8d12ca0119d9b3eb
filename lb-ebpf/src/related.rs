//! ICMP errors about a translated flow (netfilter's RELATED packets): destination unreachable
//! (port unreachable, fragmentation needed), time exceeded, parameter problem.
//!
//! An error quotes the packet it is about, as that packet was on the wire where it failed,
//! i.e. translated. Two cases, told apart by the conntrack half the quote matches:
//! - about a client's packet after DNAT (and SNAT): the quote is `nat source → backend`, the
//!   reply half of the flow. The client must see an error from the frontend it addressed,
//!   quoting what it sent: outer `frontend → client`, quote `client → frontend`.
//! - about a reply after reverse NAT: the quote is `frontend → client`, the forward half. The
//!   backend must see an error quoting what it sent: outer `nat source → backend`, quote
//!   `backend → nat source`.
//!
//! netfilter rewrites the outer source the same way (the manip of the connection's reverse
//! tuple), so a "fragmentation needed" from a router on either side lowers the path MTU of the
//! right socket, and a backend's port unreachable reaches the client's connected UDP socket.
//! The quote's header and transport checksums and the ICMP checksum are updated
//! (`lb_common::icmp::quoted_checksums`); a quote with IP options, a quote of a non-first
//! fragment and an error that matches no flow pass untouched.

use lb_common::{
    ct_dir, ct_flags,
    icmp::{self, QuotedChecks, Tuple},
    Counter, CtKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack,
    frame::{load, store, Frame},
    fwd::{Fwd, Hop},
    nat::{self, Side},
    parse::{self, Ipv4Packet},
    stats::Stats,
    verdict::Verdict,
};

const ICMP_HLEN: usize = 8;

/// Translates `pkt` (ICMP, not a fragment) if it is an error about a tracked flow.
///
/// Only scalars live on its stack (the verifier allows 512 bytes for the whole call chain):
/// the quote's fields are loaded one by one and stored back one by one.
#[inline(never)]
pub fn process<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet) -> Verdict {
    let icmp_off = pkt.l4_off;
    let inner = icmp_off + ICMP_HLEN;
    let l4_off = inner + 20;
    // The outer and inner headers and the quoted transport header up to its checksum.
    let want = (l4_off + 18).min(f.len() as usize);
    parse::pull(f, want);
    let Some(icmp_type) = load::<F, u8>(f, icmp_off) else { return Verdict::Pass };
    if !icmp::is_error(icmp_type) {
        return Verdict::Pass;
    }
    let (Some(vihl), Some(frag), Some(proto)) =
        (load::<F, u8>(f, inner), load::<F, u16>(f, inner + 6), load::<F, u8>(f, inner + 9))
    else {
        return Verdict::Pass;
    };
    // Option-less quotes of TCP/UDP/SCTP packets that carry their ports (not a later fragment).
    if vihl != 0x45 || !matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) || u16::from_be(frag) & 0x1fff != 0 {
        return Verdict::Pass;
    }
    let (Some(i_src), Some(i_dst), Some(i_sport), Some(i_dport)) =
        (load::<F, u32>(f, inner + 12), load::<F, u32>(f, inner + 16), load::<F, u16>(f, l4_off), load::<F, u16>(f, l4_off + 2))
    else {
        return Verdict::Pass;
    };
    let now = conntrack::now();
    // The half of the flow a packet going the other way would match: the quote reversed.
    // (new quote source, its port, new quote destination, its port, new outer source, new
    // outer destination)
    let (qs, qsp, qd, qdp, o_src, o_dst) =
        if let Some(e) = conntrack::lookup(&CtKey::new(i_dst, i_src, i_dport, i_sport, proto, ct_dir::REPLY), now) {
            // SAFETY: a map value pointer, read in place.
            let e = unsafe { &*e };
            // About the client's packet: the reply half holds the frontend and the client.
            let (c, cp) = if e.flags & ct_flags::SNAT != 0 { (e.nat_addr, e.nat_port) } else { (i_src, i_sport) };
            (c, cp, e.peer_addr, e.peer_port, e.peer_addr, c)
        } else if let Some(e) = conntrack::lookup(&CtKey::new(i_dst, i_src, i_dport, i_sport, proto, ct_dir::FORWARD), now) {
            // SAFETY: as above.
            let e = unsafe { &*e };
            // About a reply: the forward half holds the backend and the source NAT.
            let (n, np) = if e.flags & ct_flags::SNAT != 0 { (e.nat_addr, e.nat_port) } else { (i_dst, i_dport) };
            (e.peer_addr, e.peer_port, n, np, n, e.peer_addr)
        } else {
            return Verdict::Pass;
        };

    let check_off = match proto {
        PROTO_TCP => l4_off + 16,
        PROTO_UDP => l4_off + 6,
        _ => 0,
    };
    let (Some(ip_check), Some(icmp_check)) = (load::<F, u16>(f, inner + 10), load::<F, u16>(f, icmp_off + 2)) else {
        return Verdict::Pass;
    };
    let l4_check = if check_off != 0 { load::<F, u16>(f, check_off).map(u16::from_be) } else { None };
    let old =
        Tuple { src: i_src.to_ne_bytes(), dst: i_dst.to_ne_bytes(), sport: i_sport.to_ne_bytes(), dport: i_dport.to_ne_bytes() };
    let new = Tuple { src: qs.to_ne_bytes(), dst: qd.to_ne_bytes(), sport: qsp.to_ne_bytes(), dport: qdp.to_ne_bytes() };
    let checks = QuotedChecks { ip: u16::from_be(ip_check), l4: l4_check, icmp: u16::from_be(icmp_check) };
    let c = icmp::quoted_checksums(&old, &new, checks, proto == PROTO_UDP);
    if store(f, inner + 12, qs).is_err()
        || store(f, inner + 16, qd).is_err()
        || store(f, inner + 10, c.ip.to_be()).is_err()
        || store(f, l4_off, qsp).is_err()
        || store(f, l4_off + 2, qdp).is_err()
        || c.l4.is_some_and(|v| store(f, check_off, v.to_be()).is_err())
        || store(f, icmp_off + 2, c.icmp.to_be()).is_err()
        || nat::rewrite(f, pkt, Side::Src, pkt.saddr, 0, o_src, 0).is_err()
        || nat::rewrite(f, pkt, Side::Dst, pkt.daddr, 0, o_dst, 0).is_err()
    {
        st.inc(Counter::DropRewrite);
        return Verdict::RewriteFailed;
    }
    st.inc(Counter::IcmpRelated);
    *out = Fwd { saddr: o_src, daddr: o_dst, proto: pkt.proto, tot_len: pkt.tot_len, hop: Hop::UNKNOWN };
    Verdict::Translated
}
