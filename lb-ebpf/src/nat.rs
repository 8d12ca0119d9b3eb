//! Address/port rewrite with checksum updates.
//!
//! The IPv4 header checksum is updated with `lb_common::csum::update32` (RFC 1624). TCP/UDP
//! checksums go through the kernel's `bpf_l4_csum_replace`, which also handles
//! CHECKSUM_PARTIAL skbs (locally generated traffic on veths, where the field holds only the
//! pseudo-header sum): a hand-rolled update would corrupt those. UDP datagrams without a
//! checksum (0) keep 0 (`BPF_F_MARK_MANGLED_0`). SCTP's CRC32c does not cover the IP header,
//! so an address rewrite leaves it valid; a port rewrite would need a CRC32c recompute
//! (not done: see the README's known differences).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::{csum, PROTO_TCP, PROTO_UDP};

use crate::parse::{Ipv4Packet, ETH_HLEN};

const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

pub struct RewriteFailed;

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (DNAT).
    Dst,
    /// Source address and port (reverse NAT of replies, SNAT).
    Src,
}

#[inline(always)]
fn l4_check_off(pkt: &Ipv4Packet) -> Option<(usize, u64)> {
    match pkt.proto {
        PROTO_TCP => Some((pkt.l4_off + 16, 0)),
        PROTO_UDP => Some((pkt.l4_off + 6, BPF_F_MARK_MANGLED_0 as u64)),
        _ => None,
    }
}

/// Rewrites one side of the packet to `addr:port` (map representation, i.e. network order).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Ipv4Packet, side: Side, old_port: u16, addr: u32, port: u16) -> Result<(), RewriteFailed> {
    let (addr_off, port_off, old_addr) = match side {
        Side::Dst => (IP_DADDR_OFF, pkt.l4_off + 2, pkt.daddr),
        Side::Src => (IP_SADDR_OFF, pkt.l4_off, pkt.saddr),
    };
    if old_addr != addr {
        if let Some((check_off, flags)) = l4_check_off(pkt) {
            ctx.l4_csum_replace(check_off, old_addr as u64, addr as u64, flags | BPF_F_PSEUDO_HDR as u64 | 4)
                .map_err(|_| RewriteFailed)?;
        }
        let old_check: u16 = ctx.load(IP_CHECK_OFF).map_err(|_| RewriteFailed)?;
        let new_check = csum::update32(u16::from_be(old_check), old_addr.to_ne_bytes(), addr.to_ne_bytes()).to_be();
        ctx.store(addr_off, &addr, 0).map_err(|_| RewriteFailed)?;
        ctx.store(IP_CHECK_OFF, &new_check, 0).map_err(|_| RewriteFailed)?;
    }
    if old_port != port {
        if let Some((check_off, flags)) = l4_check_off(pkt) {
            ctx.l4_csum_replace(check_off, old_port as u64, port as u64, flags | 2).map_err(|_| RewriteFailed)?;
        }
        ctx.store(port_off, &port, 0).map_err(|_| RewriteFailed)?;
    }
    Ok(())
}
