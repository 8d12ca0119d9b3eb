//! Maglev consistent hashing (Eisenbud et al., NSDI '16, section 3.4).
//!
//! Every node builds the same table for the same endpoint set: each backend's permutation comes
//! from seeded hashes of its "ip:port" name, and backends are sorted by that name before
//! population. The datapath indexes the table with [`crate::hash::flow_hash`] `% M`.

use crate::hash::hash_bytes;
use crate::BACKEND_NONE;

/// Table sizes: primes roughly doubling. A service gets the smallest that is > 100 × its
/// backends (the paper keeps imbalance ≤ 1% with M ≥ 100·N), capped by the configured maximum.
pub const TABLE_PRIMES: [u32; 11] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071, 262_139];

/// Default cap on the table size (as Cilium's default).
pub const DEFAULT_MAX_TABLE_SIZE: u32 = 16_381;

const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;

/// The table size for `backends` backends, capped at `max` (the largest listed prime ≤ max,
/// and never below the smallest).
pub fn table_size(backends: usize, max: u32) -> u32 {
    let cap = TABLE_PRIMES.iter().copied().filter(|&p| p <= max).max().unwrap_or(TABLE_PRIMES[0]);
    let want = (backends as u64).saturating_mul(100);
    TABLE_PRIMES.iter().copied().find(|&p| p as u64 > want).unwrap_or(cap).min(cap)
}

/// One backend to place: its stable name ("ip:port") and the id written into slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    pub name: String,
    pub id: u32,
}

/// Builds a table of `m` slots (m must be prime). Empty `backends` gives a table of
/// [`BACKEND_NONE`]. The result does not depend on the order of `backends`.
pub fn build_table(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    assert!(m >= 2, "maglev table size must be a prime ≥ 2");
    let mut table = vec![BACKEND_NONE; m as usize];
    if backends.is_empty() {
        return table;
    }
    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);

    let m64 = m as u64;
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = hash_bytes(b.name.as_bytes(), OFFSET_SEED) % m64;
            let skip = hash_bytes(b.name.as_bytes(), SKIP_SEED) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut filled = vec![false; m as usize];
    let mut placed = 0u32;
    'outer: loop {
        for (i, b) in sorted.iter().enumerate() {
            let (offset, skip) = perms[i];
            let mut c = (offset + next[i] * skip) % m64;
            while filled[c as usize] {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            filled[c as usize] = true;
            table[c as usize] = b.id;
            next[i] += 1;
            placed += 1;
            if placed == m {
                break 'outer;
            }
        }
    }
    table
}

/// Slot counts per backend id.
pub fn slot_counts(table: &[u32]) -> std::collections::BTreeMap<u32, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for &id in table {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Max slots of one backend over the mean (1.0 is perfect balance).
pub fn imbalance(table: &[u32], backends: usize) -> f64 {
    let counts = slot_counts(table);
    let max = counts.values().copied().max().unwrap_or(0) as f64;
    max / (table.len() as f64 / backends as f64)
}

/// Share of slots whose backend differs between two tables of the same size.
pub fn disruption(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend { name: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256), id: i + 1 })
            .collect()
    }

    #[test]
    fn sizes_follow_the_hundred_times_rule_and_cap() {
        assert_eq!(table_size(0, DEFAULT_MAX_TABLE_SIZE), 251);
        assert_eq!(table_size(1, DEFAULT_MAX_TABLE_SIZE), 251);
        assert_eq!(table_size(3, DEFAULT_MAX_TABLE_SIZE), 509);
        assert_eq!(table_size(10, DEFAULT_MAX_TABLE_SIZE), 1021);
        assert_eq!(table_size(100, DEFAULT_MAX_TABLE_SIZE), 16381);
        assert_eq!(table_size(1000, DEFAULT_MAX_TABLE_SIZE), 16381);
        assert_eq!(table_size(1000, 131_071), 131_071);
        assert_eq!(table_size(1000, 20_000), 16381);
        assert_eq!(table_size(10, 300), 251);
    }

    #[test]
    fn every_slot_is_filled_and_order_does_not_matter() {
        let b = backends(7);
        let t1 = build_table(&b, 509);
        let mut rev = b.clone();
        rev.reverse();
        let t2 = build_table(&rev, 509);
        assert_eq!(t1, t2);
        assert!(t1.iter().all(|&id| (1..=7).contains(&id)));
        assert_eq!(slot_counts(&t1).len(), 7);
    }

    #[test]
    fn empty_backends_give_empty_slots() {
        assert!(build_table(&[], 251).iter().all(|&s| s == BACKEND_NONE));
    }

    #[test]
    fn balance_100_backends_at_16381() {
        let t = build_table(&backends(100), 16381);
        let r = imbalance(&t, 100);
        println!("maglev balance: 100 backends, M=16381: max/avg = {r:.4}");
        assert!(r <= 1.01, "max/avg {r}");
    }

    #[test]
    fn disruption_when_one_backend_leaves_or_joins() {
        for n in [3u32, 10, 100] {
            let m = table_size(n as usize, DEFAULT_MAX_TABLE_SIZE).max(table_size(n as usize + 1, DEFAULT_MAX_TABLE_SIZE));
            let full = backends(n + 1);
            let before = build_table(&full[..n as usize], m);
            let after_join = build_table(&full, m);
            let mut left = full[..n as usize].to_vec();
            left.remove(n as usize / 2);
            let after_leave = build_table(&left, m);
            let join = disruption(&before, &after_join);
            let leave = disruption(&before, &after_leave);
            let ideal_join = 1.0 / (n + 1) as f64;
            let ideal_leave = 1.0 / n as f64;
            println!(
                "maglev disruption n={n} M={m}: join {join:.4} (ideal {ideal_join:.4}), leave {leave:.4} (ideal {ideal_leave:.4})"
            );
            // A slot moves at least when its owner leaves. Maglev trades a little extra movement
            // for balance (the paper's figure 13): at M/N ≈ 160 about 2.4× the ideal share moves.
            assert!(leave >= ideal_leave * 0.99 && leave <= ideal_leave * 3.0, "leave {leave} n={n}");
            assert!(join >= ideal_join * 0.99 && join <= ideal_join * 3.0, "join {join} n={n}");
        }
    }
}
