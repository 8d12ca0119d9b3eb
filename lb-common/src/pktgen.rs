//! The packet generator's configuration (map `LB_PKTGEN_CONFIG`) and its per-frame stamping,
//! shared by the XDP program (`lb_pktgen`, run with `BPF_F_TEST_XDP_LIVE_FRAMES`) and user
//! space (template building and tests).
//!
//! Live frames come from a page pool whose pages are recycled without being re-initialised, and
//! whatever rewrote a frame on its way (netfilter DNAT, forwarding's TTL and MAC rewrite, our
//! own stamping) is still in the page the next time it is used. So the program copies the whole
//! header template back over every frame, then stamps the flow fields (source address and port
//! derived from a per-CPU counter) and both checksums, computed from sums precomputed here over
//! the template with those fields zeroed: every frame leaves with valid IPv4 and L4 checksums
//! (frames built by XDP are CHECKSUM_NONE, and netfilter skips NAT on a bad TCP checksum).

use bytemuck::{Pod, Zeroable};

/// Header bytes copied from the template over every frame (Ethernet + IPv4 + TCP = 54, UDP 42,
/// rounded up to whole u64 words; the rest is constant payload). Frames are at least this long.
pub const TEMPLATE_LEN: usize = 64;
/// Offsets in the frame (Ethernet II, IPv4 without options).
pub const OFF_IP_CSUM: usize = 14 + 10;
pub const OFF_SADDR: usize = 14 + 12;
pub const OFF_SPORT: usize = 14 + 20;
pub const OFF_TCP_CSUM: usize = 14 + 20 + 16;
pub const OFF_UDP_CSUM: usize = 14 + 20 + 6;

/// XDP actions the generator may return for each frame.
pub const ACTION_DROP: u32 = 1;
pub const ACTION_TX: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PktgenConfig {
    /// The first [`TEMPLATE_LEN`] bytes of the frame (source address and port as for flow 0).
    pub template: [u8; TEMPLATE_LEN],
    /// Unfolded one's complement sum of the IPv4 header with checksum and source address zero.
    pub ip_sum: u32,
    /// Unfolded sum of the pseudo-header and the whole L4 segment with checksum, source
    /// address and source port zero.
    pub l4_sum: u32,
    /// First source address (host byte order).
    pub src_base: u32,
    /// Distinct flows: frame `k` is flow `k % flows` (0: every frame a new flow, up to 2^32).
    pub flows: u32,
    /// [`ACTION_TX`] (transmit on the interface the run is bound to) or [`ACTION_DROP`].
    pub action: u32,
    /// First source port (host byte order).
    pub sport_base: u16,
    /// Source ports per source address: flow `f` uses port `sport_base + f % sport_span` and
    /// address `src_base + f / sport_span`.
    pub sport_span: u16,
    /// IP protocol of the template: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub _pad: [u8; 7],
}

/// What is stamped on frame number `counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Source address, host byte order.
    pub saddr: u32,
    /// Source port, host byte order.
    pub sport: u16,
    /// IPv4 header checksum as read in network byte order.
    pub ip_csum: u16,
    /// TCP/UDP checksum as read in network byte order.
    pub l4_csum: u16,
}

#[inline(always)]
const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

impl PktgenConfig {
    /// The flow fields and checksums of frame number `counter`.
    #[inline(always)]
    pub fn stamp(&self, counter: u64) -> Stamp {
        let k = counter as u32;
        let flow = match k.checked_rem(self.flows) {
            Some(f) => f,
            None => k,
        };
        let span = self.sport_span as u32;
        let (port_off, addr_off) = match (flow.checked_rem(span), flow.checked_div(span)) {
            (Some(p), Some(a)) => (p, a),
            _ => (0, flow),
        };
        let sport = self.sport_base.wrapping_add(port_off as u16);
        let saddr = self.src_base.wrapping_add(addr_off);
        let addr_sum = (saddr >> 16) + (saddr & 0xffff);
        let ip_csum = !fold(fold(self.ip_sum) as u32 + addr_sum);
        let mut l4_csum = !fold(fold(self.l4_sum) as u32 + addr_sum + sport as u32);
        if self.proto == 17 && l4_csum == 0 {
            l4_csum = 0xffff;
        }
        Stamp { saddr, sport, ip_csum, l4_csum }
    }

    /// Offset of the L4 checksum for this template's protocol.
    pub const fn l4_csum_offset(&self) -> usize {
        if self.proto == 17 {
            OFF_UDP_CSUM
        } else {
            OFF_TCP_CSUM
        }
    }
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::PktgenConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<PktgenConfig>(), 96);
        assert_eq!(core::mem::offset_of!(PktgenConfig, ip_sum), 64);
        assert_eq!(core::mem::offset_of!(PktgenConfig, sport_base), 84);
        assert_eq!(core::mem::offset_of!(PktgenConfig, proto), 88);
    }

    #[test]
    fn flows_cycle_over_ports_then_addresses() {
        let cfg = PktgenConfig { src_base: 0x0a00_0001, sport_base: 1000, sport_span: 10, flows: 25, ..Zeroable::zeroed() };
        assert_eq!((cfg.stamp(0).saddr, cfg.stamp(0).sport), (0x0a00_0001, 1000));
        assert_eq!((cfg.stamp(9).saddr, cfg.stamp(9).sport), (0x0a00_0001, 1009));
        assert_eq!((cfg.stamp(10).saddr, cfg.stamp(10).sport), (0x0a00_0002, 1000));
        assert_eq!((cfg.stamp(24).saddr, cfg.stamp(24).sport), (0x0a00_0003, 1004));
        assert_eq!(cfg.stamp(25), cfg.stamp(0));
        let unlimited = PktgenConfig { flows: 0, ..cfg };
        assert_eq!((unlimited.stamp(25).saddr, unlimited.stamp(25).sport), (0x0a00_0003, 1005));
        let no_span = PktgenConfig { sport_span: 0, ..cfg };
        assert_eq!((no_span.stamp(7).saddr, no_span.stamp(7).sport), (0x0a00_0008, 1000));
    }
}
