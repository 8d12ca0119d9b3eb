//! Per-CPU counters: no atomics, no contention; user space sums the CPUs. A packet looks its
//! CPU's block of counters up once ([`Stats::get`]) and increments fields of it.

use lb_common::{Counter, Counters};

use crate::maps::LB_STATS;

pub struct Stats(Option<*mut Counters>);

impl Stats {
    #[inline(always)]
    pub fn get() -> Stats {
        Stats(LB_STATS.get_ptr_mut(0))
    }

    #[inline(always)]
    pub fn add(&self, counter: Counter, value: u64) {
        if let Some(p) = self.0 {
            // SAFETY: this CPU's block; only this CPU writes it while the program runs. The
            // index is a constant below Counter::COUNT.
            unsafe { (*p).v[counter as usize] += value };
        }
    }

    #[inline(always)]
    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1)
    }
}
