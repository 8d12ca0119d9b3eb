//! Reading a running datapath's pinned maps for metrics: counters summed over CPUs and map
//! fill levels.

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use lb_common::{Backend, Counter, Counters, CtEntry, CtKey, ServiceKey, ServiceValue};

use super::{names, pin::PinDir};
use crate::http::DatapathSnapshot;

fn max_entries(map: &Map) -> u64 {
    let data = match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) | Map::ArrayOfMaps(d) | Map::PerCpuArray(d) => d,
        _ => return 0,
    };
    data.info().map(|i| i.max_entries() as u64).unwrap_or(0)
}

fn fill<K: aya::Pod, V: aya::Pod>(pins: &PinDir, name: &str) -> Result<(String, u64, u64)> {
    let map = pins.open(name)?;
    let max = max_entries(&map);
    let typed: HashMap<MapData, K, V> = HashMap::try_from(map)?;
    Ok((name.to_string(), typed.keys().filter(|k| k.is_ok()).count() as u64, max))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the datapath's `bpf_ktime_get_coarse_ns`
/// (conntrack's `last_seen_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Every entry of a conntrack table, each once. The kernel's key iteration restarts from the
/// beginning when the key it stands on disappears (an LRU eviction, the datapath replacing a
/// flow, a garbage collection), so a walk over a busy table can see an entry twice and, under
/// a flood, never end: the walk dedups and stops after twice the table's capacity.
/// `capacity` is the table's `max_entries` ([`open_ct`]).
pub fn ct_entries<T: std::borrow::Borrow<MapData>>(map: &HashMap<T, CtKey, CtEntry>, capacity: u64) -> Vec<(CtKey, CtEntry)> {
    let mut seen = std::collections::HashMap::new();
    for item in map.iter().take(capacity.max(1) as usize * 2) {
        if let Ok((k, e)) = item {
            seen.insert(k, e);
        }
    }
    seen.into_iter().collect()
}

/// The conntrack table pinned under `pins`, and its capacity.
pub fn open_ct(pins: &PinDir) -> Result<(HashMap<MapData, CtKey, CtEntry>, u64)> {
    let map = pins.open(names::CT)?;
    let max = max_entries(&map);
    Ok((HashMap::try_from(map).context("the conntrack table")?, max))
}

/// Every datapath counter summed over CPUs, indexed by `Counter` (`LB_STATS`: one block of
/// counters per CPU).
pub fn sum_counters<T: std::borrow::Borrow<MapData>>(stats: &PerCpuArray<T, Counters>) -> Result<[u64; Counter::COUNT as usize]> {
    let mut sum = [0u64; Counter::COUNT as usize];
    for cpu in stats.get(&0, 0).context("reading LB_STATS")?.iter() {
        for (s, v) in sum.iter_mut().zip(cpu.v) {
            *s = s.wrapping_add(v);
        }
    }
    Ok(sum)
}

/// Counters and fill levels of the datapath pinned under `pins`.
pub fn datapath_snapshot(pins: &PinDir) -> Result<DatapathSnapshot> {
    let stats: PerCpuArray<MapData, Counters> = PerCpuArray::try_from(pins.open(names::STATS)?)?;
    let sums = sum_counters(&stats)?;
    let counters = Counter::ALL.iter().map(|c| (c.name().to_string(), sums[*c as usize])).collect();
    let map_entries = vec![
        fill::<ServiceKey, ServiceValue>(pins, names::SERVICES)?,
        fill::<u32, Backend>(pins, names::BACKENDS)?,
        fill::<CtKey, CtEntry>(pins, names::CT)?,
    ];
    Ok(DatapathSnapshot { counters, map_entries })
}
