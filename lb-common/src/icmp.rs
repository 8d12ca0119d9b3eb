//! The ICMP "port unreachable" a REJECT sends (SEMANTICS E1: kube-proxy's `reject` answers
//! new connections to a service without endpoints with ICMP type 3 code 3, also for TCP), and
//! the rewrite of the packet an ICMP error quotes when the error belongs to a translated flow
//! ([`quoted_checksums`]: netfilter's RELATED translation).
//!
//! Pure and allocation-free: the datapath copies the offending packet's IPv4 header and first
//! 8 payload bytes into [`ORIG_LEN`] bytes and gets back the whole IPv4 packet to send, with
//! both checksums computed. Only option-less IPv4 headers are answered (IHL 5); the datapath
//! drops the rare packet with options instead.

use crate::csum;

/// The quoted part of the offending packet: its 20-byte IPv4 header and 8 bytes of payload.
pub const ORIG_LEN: usize = 28;
/// The reply: IPv4 header (20) + ICMP header (8) + the quote.
pub const REPLY_LEN: usize = 20 + 8 + ORIG_LEN;

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;

/// The IPv4 packet answering `orig` (addresses swapped: the frontend the client addressed is
/// the source, the client the destination).
#[inline(always)]
pub fn port_unreachable(orig: &[u8; ORIG_LEN]) -> [u8; REPLY_LEN] {
    let mut out = [0u8; REPLY_LEN];
    out[0] = 0x45;
    out[1] = 0xc0; // precedence "internetwork control", as the kernel's icmp_send
    out[2..4].copy_from_slice(&(REPLY_LEN as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1; // ICMP
    out[12..16].copy_from_slice(&orig[16..20]);
    out[16..20].copy_from_slice(&orig[12..16]);
    let ip_check = csum::checksum(&out[..20], 0);
    out[10..12].copy_from_slice(&ip_check.to_be_bytes());
    out[20] = ICMP_DEST_UNREACH;
    out[21] = ICMP_PORT_UNREACH;
    out[28..].copy_from_slice(orig);
    let icmp_check = csum::checksum(&out[20..], 0);
    out[22..24].copy_from_slice(&icmp_check.to_be_bytes());
    out
}

/// ICMP errors that quote the packet they are about and that netfilter translates as RELATED
/// to its connection: destination unreachable (fragmentation needed among them), time
/// exceeded, parameter problem.
#[inline(always)]
pub const fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB)
}

pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;
/// Destination unreachable, "fragmentation needed and DF set" (path MTU discovery).
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// The endpoints of a quoted packet: addresses and ports as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// The checksums of an ICMP error whose quote changes endpoints (values as read from the wire,
/// `u16::from_be_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedChecks {
    /// The quoted IPv4 header's checksum.
    pub ip: u16,
    /// The quoted transport checksum, when the quote reaches it (TCP bytes 16–17, UDP 6–7).
    pub l4: Option<u16>,
    /// The ICMP checksum.
    pub icmp: u16,
}

/// The checksums after the quote's endpoints change from `old` to `new`: the quoted header's,
/// the quoted transport checksum's (pseudo-header and ports; a UDP checksum of 0, "none",
/// stays 0), and the ICMP checksum updated for every 16-bit word that changed (addresses,
/// ports and both quoted checksums; the ICMP checksum has no pseudo-header, so the outer
/// addresses do not enter it).
#[inline(always)]
pub fn quoted_checksums(old: &Tuple, new: &Tuple, c: QuotedChecks, udp: bool) -> QuotedChecks {
    let be = u16::from_be_bytes;
    let (os, od, ns, nd) = (be(old.sport), be(old.dport), be(new.sport), be(new.dport));
    let ip = csum::update32(csum::update32(c.ip, old.src, new.src), old.dst, new.dst);
    let mut icmp = csum::update32(csum::update32(c.icmp, old.src, new.src), old.dst, new.dst);
    icmp = csum::update16(csum::update16(csum::update16(icmp, c.ip, ip), os, ns), od, nd);
    let l4 = match c.l4 {
        Some(0) if udp => Some(0),
        Some(old_l4) => {
            let mut l4 = csum::update32(csum::update32(old_l4, old.src, new.src), old.dst, new.dst);
            l4 = csum::update16(csum::update16(l4, os, ns), od, nd);
            if udp {
                l4 = csum::udp_wire(l4);
            }
            icmp = csum::update16(icmp, old_l4, l4);
            Some(l4)
        }
        None => None,
    };
    QuotedChecks { ip, l4, icmp }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, Ipv4Slice, PacketBuilder};

    #[test]
    fn reply_is_valid_icmp_port_unreachable_quoting_the_packet() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 2], [172, 30, 0, 41], 64)
            .tcp(43210, 80, 7, 1024)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        let ip = &frame[14..];
        let orig: [u8; ORIG_LEN] = ip[..ORIG_LEN].try_into().unwrap();
        let reply = port_unreachable(&orig);

        let parsed = etherparse::SlicedPacket::from_ip(&reply).unwrap();
        let net = match parsed.net.unwrap() {
            etherparse::NetSlice::Ipv4(v4) => v4,
            _ => panic!("not IPv4"),
        };
        let h = net.header();
        assert_eq!(h.source(), [172, 30, 0, 41]);
        assert_eq!(h.destination(), [10, 0, 0, 2]);
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        let ipv4 = Ipv4Slice::from_slice(&reply).unwrap();
        let icmp = etherparse::Icmpv4Slice::from_slice(ipv4.payload().payload).unwrap();
        assert!(matches!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)));
        assert_eq!(csum::checksum(&reply[20..], 0), 0, "ICMP checksum verifies");
        assert_eq!(&reply[28..], &orig[..], "quotes the header and 8 bytes (the ports)");
    }

    /// An ICMP error (`icmp_type`) from `router` quoting the whole of `quoted` (an IPv4 packet).
    fn error_quoting(router: [u8; 4], to: [u8; 4], icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
        let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0xdc];
        icmp.extend_from_slice(quoted);
        let c = csum::checksum(&icmp, 0);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut out = Vec::new();
        PacketBuilder::ipv4(router, to, 64).write(&mut out, etherparse::IpNumber::ICMP, &icmp).unwrap();
        out
    }

    fn ip_packet(tcp: bool, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let b = PacketBuilder::ipv4(src, dst, 63);
        if tcp {
            b.tcp(sport, dport, 1000, 4096).ack(77).write(&mut out, payload).unwrap();
        } else {
            b.udp(sport, dport).write(&mut out, payload).unwrap();
        }
        out
    }

    /// Applies `quoted_checksums` to an ICMP error (an IPv4 packet, option-less outer header)
    /// the way the datapath does.
    fn translate(err: &mut [u8], udp: bool, to: &Tuple) {
        let inner = 28;
        let l4 = inner + 20;
        let check_off = l4 + if udp { 6 } else { 16 };
        let be = |o: usize, e: &[u8]| u16::from_be_bytes([e[o], e[o + 1]]);
        let old = Tuple {
            src: err[inner + 12..inner + 16].try_into().unwrap(),
            dst: err[inner + 16..inner + 20].try_into().unwrap(),
            sport: err[l4..l4 + 2].try_into().unwrap(),
            dport: err[l4 + 2..l4 + 4].try_into().unwrap(),
        };
        let checks = QuotedChecks {
            ip: be(inner + 10, err),
            l4: (err.len() >= check_off + 2).then(|| be(check_off, err)),
            icmp: be(22, err),
        };
        let c = quoted_checksums(&old, to, checks, udp);
        err[inner + 12..inner + 16].copy_from_slice(&to.src);
        err[inner + 16..inner + 20].copy_from_slice(&to.dst);
        err[l4..l4 + 2].copy_from_slice(&to.sport);
        err[l4 + 2..l4 + 4].copy_from_slice(&to.dport);
        err[inner + 10..inner + 12].copy_from_slice(&c.ip.to_be_bytes());
        if let Some(v) = c.l4 {
            err[check_off..check_off + 2].copy_from_slice(&v.to_be_bytes());
        }
        err[22..24].copy_from_slice(&c.icmp.to_be_bytes());
    }

    #[test]
    fn a_quoted_packet_is_rewritten_with_every_checksum_valid() {
        // (tcp, payload, quote length): the whole packet quoted (its transport checksum can be
        // verified), or only the header and 8 bytes (RFC 792's minimum: no transport checksum
        // for TCP), for TCP and UDP.
        let cases = [
            (true, 0usize, usize::MAX),
            (true, 100, usize::MAX),
            (true, 0, 28),
            (false, 0, usize::MAX),
            (false, 333, usize::MAX),
            (false, 0, 28),
        ];
        let to = Tuple { src: [10, 244, 1, 10], sport: 40000u16.to_be_bytes(), dst: [10, 96, 0, 10], dport: 80u16.to_be_bytes() };
        for (tcp, payload, quote) in cases {
            let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
            let orig = ip_packet(tcp, [192, 168, 0, 2], 61000, [10, 244, 2, 11], 8080, &body);
            let quoted = &orig[..orig.len().min(quote)];
            let mut err = error_quoting([192, 168, 9, 1], [192, 168, 0, 2], ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, quoted);
            translate(&mut err, !tcp, &to);

            assert_eq!(csum::checksum(&err[20..], 0), 0, "ICMP checksum verifies ({tcp} {payload} {quote})");
            let inner = &err[28..];
            let ih = etherparse::Ipv4HeaderSlice::from_slice(inner).unwrap();
            assert_eq!((ih.source(), ih.destination()), (to.src, to.dst));
            assert_eq!(ih.to_header().calc_header_checksum(), ih.header_checksum(), "quoted IP checksum");
            assert_eq!(&inner[20..24], &[to.sport, to.dport].concat()[..]);
            // The expected packet, built from scratch with the new endpoints.
            let want = ip_packet(tcp, to.src, 40000, to.dst, 80, &body);
            if quote == usize::MAX {
                assert_eq!(inner, &want[..], "the whole quoted packet is what the client sent");
            } else if !tcp {
                assert_eq!(inner, &want[..28], "UDP: header and 8 bytes, checksum included");
            } else {
                assert_eq!(&inner[..24], &want[..24]);
            }
        }
    }

    #[test]
    fn a_udp_quote_without_checksum_keeps_none_and_errors_are_classified() {
        let mut orig = ip_packet(false, [192, 168, 0, 2], 61000, [10, 244, 2, 11], 5353, b"hi");
        orig[26] = 0;
        orig[27] = 0;
        let mut err = error_quoting([10, 244, 2, 11], [192, 168, 0, 2], ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, &orig);
        let to = Tuple { src: [10, 244, 1, 10], sport: 40000u16.to_be_bytes(), dst: [10, 96, 0, 10], dport: 53u16.to_be_bytes() };
        translate(&mut err, true, &to);
        assert_eq!(&err[28 + 26..28 + 28], &[0, 0], "no checksum stays no checksum");
        assert_eq!(csum::checksum(&err[20..], 0), 0);
        for (t, e) in [(0u8, false), (3, true), (5, false), (8, false), (11, true), (12, true), (13, false)] {
            assert_eq!(is_error(t), e, "type {t}");
        }
    }
}
