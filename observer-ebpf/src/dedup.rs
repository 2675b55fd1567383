//! In-kernel dedup of repeated edges. An edge (a path opened the same way, an address
//! connected to with the same result) reported by a cgroup less than the dedup window ago
//! is not sent again: the probe counts it in the per-CPU `DEDUP` state before it reserves
//! any ring buffer space, so repeats never cross the ring buffer and are counted even while
//! the ring is full. The count of held-back
//! repeats only grows; the next report of the edge carries it, and the daemon also reads
//! it from the map for edges that went quiet, reporting in both cases only what it has not
//! reported before. Nothing is lost: it is reported in fewer records.

use aya_ebpf::helpers::generated::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id};
use observer_common::{Counter, DedupKey, DedupState, EventKind, Repeats, FNV_OFFSET, FNV_PRIME};

use crate::{
    maps::{DEDUP, DEDUP_WINDOW_NS},
    record::count,
};

/// FNV-1a over `len` bytes at `data`, at most `MAX`, continuing from `hash`.
///
/// # Safety
/// `data` must point to at least `MAX` readable bytes (ring buffer or map memory).
#[inline(always)]
pub unsafe fn hash_bytes<const MAX: usize>(mut hash: u64, data: *const u8, len: usize) -> u64 {
    for i in 0..MAX {
        if i >= len {
            break;
        }
        hash ^= u64::from(unsafe { *data.add(i) });
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

#[inline(always)]
pub fn hash_u64(mut hash: u64, value: u64) -> u64 {
    for shift in [0u32, 8, 16, 24, 32, 40, 48, 56] {
        hash ^= (value >> shift) & 0xff;
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Mixes one 64-bit word in: one multiply per word, for keys made of kernel pointers and
/// numbers (the kernel-view probes), where a byte-at-a-time hash would cost eight.
#[inline(always)]
pub fn hash_word(hash: u64, value: u64) -> u64 {
    let mixed = (hash ^ value).wrapping_mul(FNV_PRIME);
    mixed ^ (mixed >> 29)
}

/// [`hash_word`] over exactly `WORDS` words at `data`, continuing from `hash`. Straight-line
/// code, no branch: the caller zeroes what follows the bytes that matter, so the hash
/// depends on them alone.
///
/// # Safety
/// `data` must be 8-byte aligned and point to at least `WORDS * 8` readable bytes of map
/// memory.
#[inline(always)]
pub unsafe fn hash_block<const WORDS: usize>(mut hash: u64, data: *const u8) -> u64 {
    let words = data.cast::<u64>();
    for i in 0..WORDS {
        hash = hash_word(hash, unsafe { words.add(i).read() });
    }
    hash
}

#[inline(always)]
pub fn seed(kind: EventKind) -> u64 {
    hash_u64(FNV_OFFSET, kind as u64)
}

/// Whether to report this edge now (saying what was held back since the last report), or
/// to hold it back (`None`).
#[inline(always)]
pub fn report(kind: EventKind, cgroup_id: u64, hash: u64, now: u64) -> Option<Repeats> {
    let window = DEDUP_WINDOW_NS.load();
    if window == 0 {
        return Some(Repeats::default());
    }
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let key = DedupKey { cgroup_id, hash };
    let Some(state) = DEDUP.get_ptr_mut(key) else {
        let fresh = DedupState {
            last_report_ns: now,
            first_ns: 0,
            last_ns: 0,
            suppressed: 0,
        };
        // If the map cannot take it, the edge is simply not deduplicated.
        let _ = DEDUP.insert(key, fresh, 0);
        return Some(Repeats {
            hash,
            cpu,
            ..Repeats::default()
        });
    };
    // Per-CPU value: no other CPU touches it, and tracing programs do not nest on a CPU.
    let state = unsafe { &mut *state };
    if now.wrapping_sub(state.last_report_ns) < window {
        if state.first_ns == 0 {
            state.first_ns = now;
        }
        state.last_ns = now;
        state.suppressed += 1;
        count(Counter::Deduplicated, kind);
        return None;
    }
    let repeats = Repeats {
        hash,
        cumulative: state.suppressed,
        first_ns: state.first_ns,
        last_ns: state.last_ns,
        cpu,
        _pad: 0,
    };
    state.last_report_ns = now;
    state.first_ns = 0;
    state.last_ns = 0;
    Some(repeats)
}

/// Undoes a [`report`] whose record did not reach the ring buffer (it was full, and the
/// loss is counted): the edge's next occurrence is reported again, carrying the repeats
/// this one would have. Without this, the edge's repeats would be held back for a window
/// on behalf of a record the daemon never saw.
#[inline(always)]
pub fn unreport(repeats: &Repeats) {
    if DEDUP_WINDOW_NS.load() == 0 {
        return;
    }
    let key = DedupKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        hash: repeats.hash,
    };
    if let Some(state) = DEDUP.get_ptr_mut(key) {
        // Per-CPU, and nothing ran on this CPU between the report and now.
        let state = unsafe { &mut *state };
        state.last_report_ns = 0;
        state.first_ns = repeats.first_ns;
        state.last_ns = repeats.last_ns;
    }
}
