//! Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates).
//!
//! The checksum is handled as the 16-bit value that sits in the header, read in network byte
//! order (`u16::from_be_bytes`). The tc program uses the kernel's `bpf_l4_csum_replace` for
//! TCP/UDP (it must, for CHECKSUM_PARTIAL skbs) and these functions for the IPv4 header; XDP,
//! the packet generator and the test frame builders use them for everything.

/// One's complement sum of `data` (big-endian 16-bit words, odd byte padded), not folded.
pub fn sum_bytes(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        // keep headroom: fold whenever the top bit gets close
        if acc & 0x8000_0000 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add((*b as u32) << 8);
    }
    acc
}

/// Folds a 32-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum field value for `data` (plus an initial accumulator such as a pseudo-header).
pub fn checksum(data: &[u8], acc: u32) -> u16 {
    !fold(sum_bytes(data, acc))
}

/// Sum of the IPv4 TCP/UDP pseudo-header (addresses as on the wire).
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut acc = sum_bytes(&src, 0);
    acc = sum_bytes(&dst, acc);
    acc + proto as u32 + l4_len as u32
}

/// RFC 1624 eqn. 3: new checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// New checksum after a 32-bit field (an IPv4 address, as two big-endian halves) changed.
#[inline(always)]
pub const fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let o_hi = u16::from_be_bytes([old[0], old[1]]);
    let o_lo = u16::from_be_bytes([old[2], old[3]]);
    let n_hi = u16::from_be_bytes([new[0], new[1]]);
    let n_lo = u16::from_be_bytes([new[2], new[3]]);
    !fold((!check) as u32 + (!o_hi) as u32 + (!o_lo) as u32 + n_hi as u32 + n_lo as u32)
}

/// UDP's rule: a computed checksum of 0 is sent as 0xffff (0 means "no checksum").
#[inline(always)]
pub const fn udp_wire(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&40u16.to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn valid_header_sums_to_zero() {
        let h = ipv4_header([10, 0, 0, 1], [10, 96, 0, 10]);
        assert_eq!(fold(sum_bytes(&h, 0)), 0xffff);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let old = x.to_be_bytes();
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let new = x.to_be_bytes();
            let before = ipv4_header([10, 0, 0, 1], old);
            let after = ipv4_header([10, 0, 0, 1], new);
            let c_before = u16::from_be_bytes([before[10], before[11]]);
            let c_after = u16::from_be_bytes([after[10], after[11]]);
            // RFC 1624 can yield 0xffff where a full sum yields 0x0000 only for all-zero data;
            // for real headers they must agree exactly.
            assert_eq!(update32(c_before, old, new), c_after);
            let p_old = (x >> 16) as u16;
            let p_new = x as u16;
            let mut a = after;
            a[4..6].copy_from_slice(&p_old.to_be_bytes());
            a[10..12].copy_from_slice(&[0, 0]);
            let c1 = checksum(&a, 0);
            a[4..6].copy_from_slice(&p_new.to_be_bytes());
            let c2 = checksum(&a, 0);
            assert_eq!(update16(c1, p_old, p_new), c2);
        }
    }

    #[test]
    fn odd_length_is_padded() {
        assert_eq!(sum_bytes(&[0x01], 0), 0x0100);
        assert_eq!(sum_bytes(&[0x01, 0x02, 0x03], 0), 0x0102 + 0x0300);
    }

    /// Our sums against etherparse's (an independent implementation) on real TCP and UDP
    /// packets, and our incremental updates against etherparse's full recomputation after a
    /// DNAT-style rewrite of the destination address and port.
    #[test]
    fn agrees_with_etherparse() {
        use etherparse::{Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..500 {
            let src = next().to_be_bytes();
            let dst = next().to_be_bytes();
            let (sport, dport) = (next() as u16, next() as u16);
            let payload: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let mut frame = Vec::new();
            let b = PacketBuilder::ipv4(src, dst, 64);
            if round % 2 == 0 {
                b.tcp(sport, dport, next(), 1000).write(&mut frame, &payload).unwrap();
            } else {
                b.udp(sport, dport).write(&mut frame, &payload).unwrap();
            }
            let (ip, rest) = Ipv4Header::from_slice(&frame).unwrap();
            // Full sums.
            let mut hdr = frame[..20].to_vec();
            hdr[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(checksum(&hdr, 0), ip.header_checksum);
            let proto = if round % 2 == 0 { 6 } else { 17 };
            let mut l4 = rest.to_vec();
            let check_off = if proto == 6 { 16 } else { 6 };
            let wire = u16::from_be_bytes([l4[check_off], l4[check_off + 1]]);
            l4[check_off..check_off + 2].copy_from_slice(&[0, 0]);
            let ours = checksum(&l4, pseudo_header_sum(src, dst, proto, l4.len() as u16));
            assert_eq!(if proto == 17 { udp_wire(ours) } else { ours }, wire);

            // Incremental DNAT: new destination address and port.
            let new_dst = next().to_be_bytes();
            let new_dport = next() as u16;
            let ip_check = update32(ip.header_checksum, dst, new_dst);
            let l4_check = update16(update32(wire, dst, new_dst), dport, new_dport);
            let mut rebuilt = ip.clone();
            rebuilt.destination = new_dst;
            assert_eq!(ip_check, rebuilt.calc_header_checksum());
            let body = &rest[if proto == 6 { 20 } else { 8 }..];
            let expected = if proto == 6 {
                let (mut t, _) = TcpHeader::from_slice(rest).unwrap();
                t.destination_port = new_dport;
                t.calc_checksum_ipv4(&rebuilt, body).unwrap()
            } else {
                let (mut u, _) = UdpHeader::from_slice(rest).unwrap();
                u.destination_port = new_dport;
                u.calc_checksum_ipv4(&rebuilt, body).unwrap()
            };
            // One's complement has two zeros; both are valid on the wire for TCP.
            let norm = |c: u16| if c == 0xffff { 0 } else { c };
            assert_eq!(norm(l4_check), norm(expected), "round {round}");
        }
    }
}
