//! Bounds-checked parsing of Ethernet / IPv4 / TCP / UDP / SCTP headers.
//!
//! Policy for odd packets (documented in the README, tested in tests/packet.rs):
//! - not Ethernet+IPv4 (ARP, IPv6, VLAN-tagged): [`Parsed::Other`], passed untouched;
//! - IPv4 with a bad version or IHL < 5, or shorter than its header: [`Parsed::Other`], passed
//!   untouched (the kernel's IP stack drops it);
//! - IP options (IHL > 5): parsed, the L4 header is found after them;
//! - fragments: the first (MF set, offset 0) is parsed like any packet; a later one (offset
//!   > 0) has no L4 header (`has_l4` false: `frag` knows its first fragment's ports);
//! - truncated L4 headers: `has_l4` is false; the caller drops them if they are addressed to a
//!   service address (they could not be translated consistently) and passes them otherwise;
//! - ICMP: `has_l4` is false; errors about a translated flow are translated (`related`).

use lb_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::frame::{ptr_at, Frame};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;

#[repr(C)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// Ports and, for TCP, the flags byte and the sequence and acknowledgment numbers (host
/// order; 0 for other protocols).
#[derive(Clone, Copy)]
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
}

#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    /// Total length of the IPv4 packet (header field).
    pub tot_len: u16,
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// Offset of the L4 header (after IP options).
    pub l4_off: usize,
    /// The ports (and TCP fields); all zero unless `has_l4`. Not an `Option`: LLVM fills an
    /// absent payload with whatever a register holds, and the verifier rejects a pointer
    /// stored as a port.
    pub l4: L4,
    /// Whether `l4` holds the packet's ports: false for truncated L4 headers, protocols
    /// without ports, fragments after the first and SCTP fragments.
    pub has_l4: bool,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// The IPv4 identification as on the wire (what ties fragments together).
    pub id: u16,
}

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (MF set, offset 0): it carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment (non-zero offset): payload only.
pub const FRAG_LATER: u8 = 2;

impl L4 {
    pub const NONE: L4 = L4 { sport: 0, dport: 0, tcp_flags: 0, seq: 0, ack: 0 };
}

pub enum Parsed {
    Ipv4(Ipv4Packet),
    Other,
}

/// Makes the first `want` bytes linear when they are not (tc skbs can keep headers in paged
/// data; XDP frames are linear): only the header bytes the packet needs, so no payload is
/// copied into the head of a large (TSO/GRO) skb.
#[inline(always)]
pub(crate) fn pull<F: Frame>(ctx: &F, want: usize) {
    let linear = ctx.data_end() - ctx.data();
    if linear < want && (ctx.len() as usize) > linear {
        ctx.pull(want as u32);
    }
}

#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Parsed {
    pull(ctx, ETH_HLEN + 20);
    let Some(proto) = ptr_at::<F, u16>(ctx, 12) else { return Parsed::Other };
    // SAFETY: ptr_at checked the bounds.
    if u16::from_be(unsafe { *proto }) != ETH_P_IP {
        return Parsed::Other;
    }
    let Some(ip) = ptr_at::<F, Ipv4Hdr>(ctx, ETH_HLEN) else { return Parsed::Other };
    // SAFETY: ptr_at checked the bounds; the fields are copied out before any pull.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Parsed::Other;
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ihl < 5 {
        return Parsed::Other;
    }
    let l4_off = ETH_HLEN + ihl * 4;
    let frag_off = u16::from_be(ip.frag_off);
    let frag = if frag_off & 0x1fff != 0 {
        FRAG_LATER
    } else if frag_off & 0x2000 != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let mut pkt = Ipv4Packet {
        tot_len: u16::from_be(ip.tot_len),
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.proto,
        l4_off,
        l4: L4::NONE,
        has_l4: false,
        frag,
        id: ip.id,
    };
    let later = frag == FRAG_LATER;
    let l4_len = match pkt.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        _ => 0,
    };
    // IP options and the L4 header (not of later fragments: they have none).
    pull(ctx, if later { l4_off } else { l4_off + l4_len });
    // Options must be inside the packet too.
    if ptr_at::<F, u8>(ctx, l4_off - 1).is_none() {
        return Parsed::Other;
    }
    // (SCTP fragments too: a port rewrite's CRC32c update needs the whole packet's length.)
    if later || (frag == FRAG_FIRST && pkt.proto == PROTO_SCTP) {
        return Parsed::Ipv4(pkt);
    }
    let l4 = match pkt.proto {
        PROTO_TCP => ptr_at::<F, [u8; 20]>(ctx, l4_off).map(|h| {
            // SAFETY: ptr_at checked the bounds.
            let h = unsafe { &*h };
            L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags: h[13],
                seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            }
        }),
        PROTO_UDP => ptr_at::<F, [u8; 8]>(ctx, l4_off).map(|h| {
            // SAFETY: ptr_at checked the bounds.
            let h = unsafe { &*h };
            L4 { sport: u16::from_ne_bytes([h[0], h[1]]), dport: u16::from_ne_bytes([h[2], h[3]]), tcp_flags: 0, seq: 0, ack: 0 }
        }),
        PROTO_SCTP => ptr_at::<F, [u8; 12]>(ctx, l4_off).map(|h| {
            // SAFETY: ptr_at checked the bounds.
            let h = unsafe { &*h };
            L4 { sport: u16::from_ne_bytes([h[0], h[1]]), dport: u16::from_ne_bytes([h[2], h[3]]), tcp_flags: 0, seq: 0, ack: 0 }
        }),
        _ => None,
    };
    if let Some(l4) = l4 {
        pkt.l4 = l4;
        pkt.has_l4 = true;
    }
    Parsed::Ipv4(pkt)
}
