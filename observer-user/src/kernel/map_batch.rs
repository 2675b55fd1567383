//! Reading a whole per-CPU hash map with `BPF_MAP_LOOKUP_BATCH`: a few system calls for
//! thousands of entries, where iterating key by key costs two (next key, then lookup) per
//! entry. The dedup map holds up to 16 Ki edges and is read four times a second while
//! repeats are held; key by key that was most of the daemon's CPU time in a storm of new
//! edges.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` in the kernel's `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per call; doubled when one hash bucket holds more (`ENOSPC`).
const FIRST_CHUNK: usize = 1024;

/// Every entry of the per-CPU hash map `fd` whose values are `V`, with one value per
/// possible CPU (`cpus`). Entries added or evicted while it reads may or may not be seen,
/// as with any walk of a live map.
pub fn per_cpu_entries<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    cpus: usize,
) -> io::Result<Vec<(K, Vec<V>)>> {
    // The kernel lays out each key's per-CPU values 8-byte aligned.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut chunk = FIRST_CHUNK;
    let mut entries = Vec::new();
    // The position to resume from: an opaque token (a bucket index for hash maps).
    let mut token = [0u64; 1];
    let mut next = [0u64; 1];
    let mut started = false;
    loop {
        let mut keys = vec![0u8; chunk * size_of::<K>()];
        let mut values = vec![0u8; chunk * cpus * stride];
        let mut attr = BatchAttr {
            in_batch: if started { token.as_ptr() as u64 } else { 0 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and `count × cpus` values of
        // the map's sizes and at 8-byte tokens, all alive across the call; the kernel
        // writes at most that much.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // One bucket holds more entries than asked for: nothing was read; ask for more.
            Some(libc::ENOSPC) if chunk < (1 << 20) => {
                chunk *= 2;
                continue;
            }
            // ENOENT: the walk reached the end; `count` says what this last call read.
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        let read = (attr.count as usize).min(chunk);
        for i in 0..read {
            let key = read_pod::<K>(&keys[i * size_of::<K>()..]);
            let per_cpu = (0..cpus)
                .map(|cpu| read_pod::<V>(&values[(i * cpus + cpu) * stride..]))
                .collect();
            entries.push((key, per_cpu));
        }
        if error.is_some() {
            return Ok(entries);
        }
        token = next;
        started = true;
    }
}

fn read_pod<T: Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: `T: Pod` is valid for any bytes, and the slice holds at least size_of::<T>().
    unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
}

#[cfg(test)]
mod tests {
    //! Against a real map (root, as the daemon runs), with aya's key-by-key walk as the
    //! oracle.

    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

    use aya::maps::{IterableMap as _, Map, MapData, PerCpuHashMap, PerCpuValues};
    use observer_common::{DedupKey, DedupState};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

    fn lru_per_cpu_map(max_entries: u32) -> PerCpuHashMap<MapData, DedupKey, DedupState> {
        // map_type, key_size, value_size, max_entries, map_flags: the leading fields of
        // `union bpf_attr` for BPF_MAP_CREATE; the kernel takes the rest as zero.
        let attr: [u32; 5] = [
            BPF_MAP_TYPE_LRU_PERCPU_HASH,
            size_of::<DedupKey>() as u32,
            size_of::<DedupState>() as u32,
            max_entries,
            0,
        ];
        // SAFETY: `attr` is valid for the size passed; the fd returned is ours.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let data = MapData::from_fd(fd).expect("the map's info");
        PerCpuHashMap::try_from(Map::PerCpuLruHashMap(data)).expect("a per-CPU hash map")
    }

    fn state(i: u64, cpu: u64) -> DedupState {
        DedupState {
            last_report_ns: 1_000_000 + i,
            first_ns: i * 3 + cpu,
            last_ns: i * 5 + cpu,
            suppressed: i * 100 + cpu,
        }
    }

    fn sorted(mut entries: Vec<(DedupKey, Vec<DedupState>)>) -> Vec<(DedupKey, Vec<DedupState>)> {
        entries.sort_by_key(|(k, _)| (k.cgroup_id, k.hash));
        entries
    }

    #[test]
    fn a_batched_read_returns_every_entry_on_every_cpu_exactly_as_a_walk_key_by_key() {
        let cpus = aya::util::nr_cpus().unwrap();
        let mut map = lru_per_cpu_map(16_384);
        // More entries than one call asks for, so the walk resumes from its token.
        let count = 5_000u64;
        let mut expected = Vec::new();
        for i in 0..count {
            let key = DedupKey {
                cgroup_id: 4_000 + i % 7,
                hash: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            };
            let values: Vec<DedupState> = (0..cpus as u64).map(|cpu| state(i, cpu)).collect();
            map.insert(key, PerCpuValues::try_from(values.clone()).unwrap(), 0)
                .unwrap();
            expected.push((key, values));
        }
        let fd = map.map().fd().as_fd();
        let batched = sorted(per_cpu_entries::<DedupKey, DedupState>(fd, cpus).unwrap());
        assert_eq!(batched.len() as u64, count);
        assert_eq!(batched, sorted(expected));
        let walked = sorted(
            map.iter()
                .map(|entry| {
                    let (key, values) = entry.unwrap();
                    (key, values.iter().copied().collect())
                })
                .collect(),
        );
        assert_eq!(batched, walked);
    }

    #[test]
    fn an_empty_map_reads_as_no_entries() {
        let cpus = aya::util::nr_cpus().unwrap();
        let map = lru_per_cpu_map(64);
        let entries = per_cpu_entries::<DedupKey, DedupState>(map.map().fd().as_fd(), cpus);
        assert_eq!(entries.unwrap(), Vec::new());
    }
}
