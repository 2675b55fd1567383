//! Handing heap the daemon freed back to the system.
//!
//! glibc keeps freed pages for reuse unless told otherwise, and raises the size it trims
//! at on its own after large frees, so the heap of a burst — a thousand containers' first
//! edges held for the reorder window, a storm's records — would stay in the resident set
//! long after it was freed. Once a second the daemon looks at how much the allocator
//! holds free; when that has grown by [`RETURN_AFTER`] since its lowest point (what was
//! in use and has been freed since, so resident), it asks for it to be returned.

/// Freed heap beyond which it is returned: small next to the ring buffer, large enough
/// that a steady daemon does not trim.
const RETURN_AFTER: usize = 4 << 20;

/// What the allocator held free when last looked at, and at its lowest since the last
/// return.
#[derive(Debug)]
pub(super) struct FreedHeap {
    lowest: usize,
}

impl FreedHeap {
    /// Starts watching from what is free now (start-up returned what it freed already).
    pub(super) fn start() -> FreedHeap {
        FreedHeap {
            lowest: free_bytes().unwrap_or(0),
        }
    }

    /// Returns the freed heap if it grew by `RETURN_AFTER` since its lowest point; says
    /// whether it did.
    pub(super) fn check(&mut self) -> bool {
        let Some(free) = free_bytes() else {
            return false;
        };
        if !self.due(free) {
            return false;
        }
        return_freed();
        true
    }

    /// With `free` bytes free now: whether enough was freed since the lowest point to
    /// return it. Returned pages stay on the allocator's free lists, so once it is due,
    /// what counts from there is what is taken from them and freed again.
    fn due(&mut self, free: usize) -> bool {
        self.lowest = self.lowest.min(free);
        if free - self.lowest < RETURN_AFTER {
            return false;
        }
        self.lowest = free;
        true
    }
}

/// Bytes the allocator holds free (in its free lists and at the top of its heaps).
fn free_bytes() -> Option<usize> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics (under its locks).
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// Hands every whole free page of the heap back to the system.
pub(super) fn return_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn heap_freed_after_a_burst_leaves_the_resident_set() {
        let mut freed = FreedHeap::start();
        // A burst: 48 MiB in blocks small enough to come from the heap, not from mmap,
        // each touched, then all freed but one at the end that keeps the heap from
        // shrinking at its top by itself.
        let mut blocks: Vec<Box<[u8]>> = (0..6144).map(|_| vec![1u8; 8192].into()).collect();
        let keep = vec![2u8; 8192];
        let held = resident_bytes();
        blocks.clear();
        blocks.shrink_to_fit();
        let before = resident_bytes();
        assert!(freed.check(), "48 MiB freed was not returned");
        let after = resident_bytes();
        assert_eq!(keep[8191], 2);
        // Other tests of this binary allocate meanwhile: the figure is only a floor.
        assert!(
            before.saturating_sub(after) >= 32 << 20,
            "resident {held} bytes while held, {before} after the free, {after} after returning it"
        );
    }

    #[test]
    fn what_counts_is_what_was_freed_since_the_lowest_point() {
        const MIB: usize = 1 << 20;
        let mut freed = FreedHeap { lowest: 10 * MIB };
        // Growing free space by less than the threshold: kept.
        assert!(!freed.due(13 * MIB));
        // Taken for use (the low point falls), then freed again: 5 MiB freed since.
        assert!(!freed.due(2 * MIB));
        assert!(freed.due(7 * MIB));
        // Returned: the same free space is not due again.
        assert!(!freed.due(7 * MIB));
        assert!(!freed.due(10 * MIB));
        assert!(freed.due(11 * MIB));
    }
}
