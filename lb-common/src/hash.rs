//! The flow hash (packet side) and the seeded byte hash (Maglev permutation).
//!
//! Both sides must compute exactly the same values: the eBPF program hashes a packet's 5-tuple
//! to pick a Maglev slot and user space uses the same function to predict that choice
//! (`lbctl trace`, tests).

/// The murmur3 64-bit finaliser: a full-avalanche mix of one 64-bit word.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Hash of a flow's 5-tuple. Addresses and ports are taken as they sit in the packet (network
/// byte order loaded into native integers), so user space must pass the same representation:
/// `u32::from_ne_bytes(ip.octets())` and `u16::from_ne_bytes(port.to_be_bytes())`.
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let a = ((saddr as u64) << 32) | daddr as u64;
    let b = ((sport as u64) << 32) | ((dport as u64) << 8) | proto as u64;
    let h = mix64(mix64(a ^ 0x9e37_79b9_7f4a_7c15) ^ b);
    (h ^ (h >> 32)) as u32
}

/// Seeded FNV-1a over bytes, finished with [`mix64`]. Used for the Maglev (offset, skip) of a
/// backend from its "ip:port" name.
pub const fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }

    #[test]
    fn flow_hash_spreads_source_ports() {
        // 16 buckets, 16k source ports: every bucket within 10% of the mean.
        let mut buckets = [0u32; 16];
        for p in 0..16384u16 {
            buckets[(flow_hash(0x0a00_0001, 0x0a60_000a, p, 80, 6) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((921..=1126).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn hash_bytes_is_seeded() {
        assert_ne!(hash_bytes(b"10.0.0.1:80", 1), hash_bytes(b"10.0.0.1:80", 2));
        assert_ne!(hash_bytes(b"10.0.0.1:80", 1), hash_bytes(b"10.0.0.2:80", 1));
    }
}
