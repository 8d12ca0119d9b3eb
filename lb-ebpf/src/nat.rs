//! Address/port rewrite with checksum updates, for both program types.
//!
//! The IPv4 header checksum is updated with `lb_common::csum::update32` (RFC 1624); the TCP/UDP
//! checksum through [`Frame::l4_csum_replace`] (the kernel helper on tc, RFC 1624 on XDP). UDP
//! datagrams without a checksum (0) keep 0. SCTP's CRC32c does not cover the IP header, so an
//! address rewrite leaves it valid; a port rewrite updates it incrementally
//! (`lb_common::crc32c`, constant work whatever the packet length).

use lb_common::{crc32c, csum, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    frame::{load, store, Frame},
    parse::{Ipv4Packet, ETH_HLEN},
};

const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

pub struct RewriteFailed;

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (DNAT, and restoring a masqueraded client).
    Dst,
    /// Source address and port (reverse NAT of replies, masquerade).
    Src,
}

#[inline(always)]
fn l4_check_off(pkt: &Ipv4Packet) -> Option<(usize, bool)> {
    match pkt.proto {
        PROTO_TCP => Some((pkt.l4_off + 16, false)),
        PROTO_UDP => Some((pkt.l4_off + 6, true)),
        _ => None,
    }
}

/// Rewrites one side of the packet from `old_addr:old_port` to `addr:port` (map
/// representation, i.e. network order).
#[inline(always)]
pub fn rewrite<F: Frame>(
    f: &F,
    pkt: &Ipv4Packet,
    side: Side,
    old_addr: u32,
    old_port: u16,
    addr: u32,
    port: u16,
) -> Result<(), RewriteFailed> {
    let (addr_off, port_off) = match side {
        Side::Dst => (IP_DADDR_OFF, pkt.l4_off + 2),
        Side::Src => (IP_SADDR_OFF, pkt.l4_off),
    };
    if old_addr != addr {
        if let Some((check_off, udp)) = l4_check_off(pkt) {
            f.l4_csum_replace(check_off, old_addr, addr, 4, true, udp).map_err(|_| RewriteFailed)?;
        }
        let old_check: u16 = load(f, IP_CHECK_OFF).ok_or(RewriteFailed)?;
        let new_check = csum::update32(u16::from_be(old_check), old_addr.to_ne_bytes(), addr.to_ne_bytes()).to_be();
        store(f, addr_off, addr).map_err(|_| RewriteFailed)?;
        store(f, IP_CHECK_OFF, new_check).map_err(|_| RewriteFailed)?;
    }
    if old_port != port {
        if let Some((check_off, udp)) = l4_check_off(pkt) {
            f.l4_csum_replace(check_off, old_port as u32, port as u32, 2, false, udp).map_err(|_| RewriteFailed)?;
        }
        if pkt.proto == PROTO_SCTP {
            sctp_port_crc(f, pkt, port_off - pkt.l4_off, old_port, port)?;
        }
        store(f, port_off, port).map_err(|_| RewriteFailed)?;
    }
    Ok(())
}

/// Rewrites one address of a fragment after the first (no L4 header: the transport checksum,
/// in the first fragment, covers the whole datagram and was updated there) and the IP header
/// checksum.
#[inline(always)]
pub fn rewrite_addr<F: Frame>(f: &F, side: Side, old_addr: u32, addr: u32) -> Result<(), RewriteFailed> {
    if old_addr == addr {
        return Ok(());
    }
    let addr_off = if side == Side::Dst { IP_DADDR_OFF } else { IP_SADDR_OFF };
    let old_check: u16 = load(f, IP_CHECK_OFF).ok_or(RewriteFailed)?;
    let new_check = csum::update32(u16::from_be(old_check), old_addr.to_ne_bytes(), addr.to_ne_bytes()).to_be();
    store(f, addr_off, addr).map_err(|_| RewriteFailed)?;
    store(f, IP_CHECK_OFF, new_check).map_err(|_| RewriteFailed)
}

/// Updates the SCTP CRC32c for a port that changes at `offset` in the SCTP packet.
///
/// A zero CRC field is left alone: a locally generated SCTP packet whose CRC is offloaded
/// (CHECKSUM_PARTIAL with `csum_not_inet`: veth, NICs with SCTP CRC offload) carries 0 there
/// until the device or `skb_crc32c_csum_help` computes it over the packet as it leaves, our
/// rewrite included; an incremental update would turn the 0 into a wrong value. (A packet
/// whose real CRC is 0, one in 2^32, then goes out with a stale CRC and is dropped by the
/// receiver like a corrupted one.)
#[inline(always)]
fn sctp_port_crc<F: Frame>(f: &F, pkt: &Ipv4Packet, offset: usize, old: u16, new: u16) -> Result<(), RewriteFailed> {
    let crc_off = pkt.l4_off + 8;
    let len = (pkt.tot_len as usize).saturating_sub(pkt.l4_off - ETH_HLEN) as u32;
    let stored: [u8; 4] = load(f, crc_off).ok_or(RewriteFailed)?;
    if stored == [0; 4] {
        return Ok(());
    }
    let delta = crc32c::two_byte_change(offset as u32, old.to_ne_bytes(), new.to_ne_bytes(), len);
    let updated = u32::from_le_bytes(stored) ^ delta;
    store(f, crc_off, updated.to_le_bytes()).map_err(|_| RewriteFailed)
}
