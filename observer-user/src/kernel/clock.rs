//! Converting the probes' boot-time clock (`bpf_ktime_get_boot_ns`) to UTC.
//!
//! CLOCK_BOOTTIME keeps running across suspend, so `realtime - boottime` is constant except
//! when the wall clock is stepped or slewed; [`BootClock::resync`] is called periodically.

use crate::record::Timestamp;

/// Maps boot-time nanoseconds to UTC.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// realtime_ns - boottime_ns.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every supported kernel.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn new() -> Self {
        let mut clock = BootClock { offset_ns: 0 };
        clock.resync();
        clock
    }

    /// A clock with a known offset (for tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        BootClock { offset_ns }
    }

    /// Measures the offset again, keeping the sample with the tightest bracket.
    pub fn resync(&mut self) {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let before = clock_ns(libc::CLOCK_BOOTTIME);
            let real = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_BOOTTIME);
            let gap = after - before;
            let offset = real - (before + gap / 2);
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, offset));
            }
        }
        if let Some((_, offset)) = best {
            self.offset_ns = offset;
        }
    }

    pub fn to_utc(&self, boot_ns: u64) -> Timestamp {
        Timestamp::from_unix_ns(i128::from(boot_ns) + self.offset_ns)
    }

    /// Boot-time nanoseconds now.
    pub fn boot_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_maps_now_to_now() {
        let clock = BootClock::new();
        let boot = BootClock::boot_now_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mapped = clock.to_utc(boot).unix_ns();
        // Same instant measured two ways: they agree to well under a second.
        assert!((mapped - real).abs() < 500_000_000, "{mapped} vs {real}");
    }
}
