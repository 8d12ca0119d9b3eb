//! The ICMP "port unreachable" a REJECT sends (SEMANTICS E1: kube-proxy's `reject` answers
//! new connections to a service without endpoints with ICMP type 3 code 3, also for TCP).
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
}
