//! Incremental CRC32c (SCTP's checksum, RFC 4960 appendix B) for a changed port.
//!
//! A CRC is linear over GF(2): for two messages of the same length, `crc(a) ^ crc(b)` equals
//! the raw CRC (zero initial value, no final xor) of `a ^ b`. When the datapath rewrites an
//! SCTP port, `a ^ b` is zero except for the two port bytes, so the checksum changes by the raw
//! CRC of those two bytes followed by the rest of the packet's length in zero bytes; running
//! a CRC over `n` zero bytes is a multiplication by `x^(8n)` modulo the polynomial (as zlib's
//! `crc32_combine`). No packet byte is read beyond the port: constant work, no loop over the
//! payload, which keeps the eBPF verifier happy.

/// CRC32c's polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` in the reflected representation (`1 << 31` is x^0).
#[inline(always)]
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut i = 0;
    while i < 32 {
        if a & (1 << (31 - i)) != 0 {
            p ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        i += 1;
    }
    p
}

/// `x^(8 n) mod P`: the effect of `n` zero bytes.
#[inline(always)]
const fn zero_bytes_operator(n: u32) -> u32 {
    let mut result = 1 << 31; // x^0
    let mut base = 1 << (31 - 8); // x^8
    let mut i = 0;
    while i < 16 {
        if n & (1 << i) != 0 {
            result = mult_mod_p(result, base);
        }
        base = mult_mod_p(base, base);
        i += 1;
    }
    result
}

/// Raw CRC (register starting at 0) of two bytes.
#[inline(always)]
const fn raw_crc_2(bytes: [u8; 2]) -> u32 {
    let mut crc = 0u32;
    let mut i = 0;
    while i < 2 {
        crc ^= bytes[i] as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        i += 1;
    }
    crc
}

/// The value to XOR into an SCTP packet's CRC32c (as its little-endian `u32`) when the two
/// bytes at `offset` change from `old` to `new` in a packet of `len` bytes (`offset + 2 <=
/// len <= 65535`).
#[inline(always)]
pub const fn two_byte_change(offset: u32, old: [u8; 2], new: [u8; 2], len: u32) -> u32 {
    let delta = raw_crc_2([old[0] ^ new[0], old[1] ^ new[1]]);
    let trailing = len.saturating_sub(offset + 2);
    mult_mod_p(zero_bytes_operator(trailing), delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC32c (iSCSI/SCTP), bitwise, as the reference.
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn reference_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn updating_a_port_equals_recomputing() {
        for len in [12usize, 13, 28, 100, 1480, 9000] {
            let mut pkt: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            pkt[8..12].copy_from_slice(&[0; 4]); // the checksum field is zero while computing
            let before = crc32c(&pkt);
            for (offset, new) in [(0usize, [0x1f, 0x90]), (2, [0xab, 0xcd]), (2, [0, 0])] {
                let old = [pkt[offset], pkt[offset + 1]];
                let mut changed = pkt.clone();
                changed[offset..offset + 2].copy_from_slice(&new);
                let want = crc32c(&changed);
                assert_eq!(before ^ two_byte_change(offset as u32, old, new, len as u32), want, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn zero_bytes_operator_is_a_power_of_x() {
        // Running the raw CRC register through n zero bytes == multiplying by x^(8n).
        for n in [0u32, 1, 2, 7, 300, 65535] {
            let mut reg = 0xdead_beefu32;
            for _ in 0..n * 8 {
                reg = if reg & 1 != 0 { (reg >> 1) ^ POLY } else { reg >> 1 };
            }
            assert_eq!(mult_mod_p(zero_bytes_operator(n), 0xdead_beef), reg, "n = {n}");
        }
    }
}
