//! IPv4 fragments (TCP and UDP; Cilium's fragment map is the model).
//!
//! Only a datagram's first fragment carries the L4 header; the later ones carry payload. A
//! first fragment leaves its ports in `LB_FRAGS`, keyed by the datagram as it arrived
//! (addresses, protocol, IPv4 identification), and then goes through the datapath like any
//! packet. A later fragment of the same datagram takes the ports back and is translated as
//! its first fragment was, from the same conntrack entry: its addresses and IP checksum are
//! rewritten, its payload is not (the transport checksum, in the first fragment, covers the
//! whole datagram and was updated there). A later fragment never creates or changes a flow:
//! it carries no flags and no sequence number; its first fragment stood for the datagram.
//!
//! A later fragment whose first fragment was not seen (lost, reordered behind it) or whose
//! flow is gone is dropped when it is addressed to a service (counted), and passes untouched
//! otherwise. SCTP segments itself and is not fragmented in practice; its fragments are
//! dropped at service addresses (`parse`: the CRC32c update of a port rewrite needs the whole
//! packet's length).

use lb_common::{ct_dir, ct_flags, Counter, CtKey, FragKey, FragPorts, FRAG_TIMEOUT_NS, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    conntrack,
    frame::Frame,
    fwd::{Fwd, Hop},
    maps::LB_FRAGS,
    nat::{self, Side},
    parse::Ipv4Packet,
    service,
    stats::Stats,
    verdict::Verdict,
};

#[inline(always)]
fn key(pkt: &Ipv4Packet) -> FragKey {
    FragKey { saddr: pkt.saddr, daddr: pkt.daddr, id: pkt.id, proto: pkt.proto, _pad: 0 }
}

/// Records a first fragment's ports for the fragments that follow it (before it is
/// translated: they arrive with the same addresses it arrived with).
#[inline(always)]
pub fn remember(pkt: &Ipv4Packet) {
    if pkt.has_l4 && matches!(pkt.proto, PROTO_TCP | PROTO_UDP) {
        record(&key(pkt), pkt.l4.sport, pkt.l4.dport);
    }
}

#[inline(never)]
fn record(k: &FragKey, sport: u16, dport: u16) {
    let v = FragPorts { seen_ns: conntrack::now(), sport, dport, _pad: 0 };
    let _ = LB_FRAGS.insert(k, &v, 0);
}

/// A fragment after the first: translated as its first fragment was, or dropped (to a
/// service) or passed (anything else) when that cannot be known.
///
/// A separate BPF function: the verifier checks it once instead of once per path of the
/// pipeline the other packets take.
#[inline(never)]
pub fn later<F: Frame>(f: &F, st: &Stats, out: &mut Fwd, pkt: &Ipv4Packet) -> Verdict {
    let ports = if matches!(pkt.proto, PROTO_TCP | PROTO_UDP) { lookup(&key(pkt)) } else { 0 };
    let (sport, dport) = ((ports >> 16) as u16, ports as u16);
    let now = conntrack::now();
    if ports != 0 && service::lookup(pkt.daddr, dport, pkt.proto).is_some() {
        let fwd_key = CtKey::new(pkt.saddr, pkt.daddr, sport, dport, pkt.proto, ct_dir::FORWARD);
        if let Some(e) = conntrack::lookup(&fwd_key, now) {
            // SAFETY: a map value pointer, copied out at once.
            let entry = unsafe { *e };
            let saddr = if entry.flags & ct_flags::SNAT != 0 { entry.nat_addr } else { pkt.saddr };
            if nat::rewrite_addr(f, Side::Dst, pkt.daddr, entry.peer_addr).is_err()
                || nat::rewrite_addr(f, Side::Src, pkt.saddr, saddr).is_err()
            {
                st.inc(Counter::DropRewrite);
                return Verdict::RewriteFailed;
            }
            st.inc(Counter::FragmentsTranslated);
            *out = Fwd { saddr, daddr: entry.peer_addr, proto: pkt.proto, tot_len: pkt.tot_len, hop: Hop::UNKNOWN };
            return Verdict::Translated;
        }
    }
    // Conntrack before the frontend lookup (as `lb::dispatch`): a reply to node:port where
    // port is a NodePort's number is the flow's reply.
    if ports != 0 {
        let reply_key = CtKey::new(pkt.saddr, pkt.daddr, sport, dport, pkt.proto, ct_dir::REPLY);
        if let Some(e) = conntrack::lookup(&reply_key, now) {
            // SAFETY: a map value pointer, copied out at once.
            let entry = unsafe { *e };
            let daddr = if entry.flags & ct_flags::SNAT != 0 { entry.nat_addr } else { pkt.daddr };
            if nat::rewrite_addr(f, Side::Src, pkt.saddr, entry.peer_addr).is_err()
                || nat::rewrite_addr(f, Side::Dst, pkt.daddr, daddr).is_err()
            {
                st.inc(Counter::DropRewrite);
                return Verdict::RewriteFailed;
            }
            st.inc(Counter::FragmentsTranslated);
            *out = Fwd { saddr: entry.peer_addr, daddr, proto: pkt.proto, tot_len: pkt.tot_len, hop: Hop::UNKNOWN };
            return Verdict::Translated;
        }
    }
    // Of a datagram we cannot translate: never delivered un-NATed to a service.
    if matches!(pkt.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && service::is_service_addr(pkt.daddr) {
        st.inc(Counter::DropFragment);
        return Verdict::Drop;
    }
    Verdict::Pass
}

/// The live entry's ports as `1 << 32 | sport << 16 | dport`, 0 if there is none (a scalar:
/// a BPF function returns one register).
#[inline(never)]
fn lookup(k: &FragKey) -> u64 {
    let Some(p) = LB_FRAGS.get_ptr(k) else { return 0 };
    // SAFETY: a map value pointer, copied out at once.
    let p = unsafe { *p };
    if conntrack::now().saturating_sub(p.seen_ns) > FRAG_TIMEOUT_NS {
        return 0;
    }
    1 << 32 | (p.sport as u64) << 16 | p.dport as u64
}
