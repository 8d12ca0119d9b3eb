//! Per-CPU counters: no atomics, no contention; user space sums the CPUs.

use lb_common::Counter;

use crate::maps::LB_STATS;

#[inline(always)]
pub fn add(counter: Counter, value: u64) {
    if let Some(p) = LB_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += value };
    }
}

#[inline(always)]
pub fn inc(counter: Counter) {
    add(counter, 1)
}
