//! Loading the eBPF object, attaching its programs, and reading the kernel-side counters.
//!
//! The object holds two sets of exec, open and connect programs: with the kernel view
//! (struct offsets from BTF: paths walked from the kernel's objects, argv from the new
//! image, addresses from the socket), and without it, for kernels without BTF (strings and
//! addresses from the caller's memory). The loader loads and attaches one of them, and the
//! programs both share.

use std::os::fd::AsFd as _;

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{trace_point::TracePointLink, ProgramError, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use observer_common::{DedupKey, DedupState, KernelOffsets, TracepointOffsets, COUNTER_SLOTS};

use super::{map_batch, KernelCounters};

/// The probes, built by `cargo xtask build-ebpf` and embedded at compile time.
pub static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zastava-probes.o"));

/// Smallest and largest ring buffer the loader accepts.
pub const MIN_RING_BYTES: u32 = 4096;
pub const MAX_RING_BYTES: u32 = 1 << 30;
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Which program attaches where. Program names are the function names in `observer-ebpf`.
#[derive(Clone, Copy, Debug)]
pub struct Attachment {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
}

const fn at(program: &'static str, category: &'static str) -> Attachment {
    Attachment {
        program,
        category,
        tracepoint: program,
    }
}

/// A program of the set without the kernel view: `compat_<tracepoint>`.
const fn compat(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
) -> Attachment {
    Attachment {
        program,
        category,
        tracepoint,
    }
}

/// Programs both sets share.
pub const COMMON: [Attachment; 4] = [
    at("cgroup_mkdir", "cgroup"),
    at("cgroup_rmdir", "cgroup"),
    at("sched_process_exit", "sched"),
    at("task_newtask", "task"),
];

/// The kernel view: one program per event at the point where the kernel's objects say
/// what happened (exec: the name kept at `sched_process_exec`, sent at the syscall's exit;
/// listed exit first, so that when attaching stops half way no name is kept for nothing).
pub const KERNEL_VIEW: [Attachment; 9] = [
    at("sys_exit_execve", "syscalls"),
    at("sys_exit_execveat", "syscalls"),
    at("sys_enter_execveat", "syscalls"),
    at("sched_process_exec", "sched"),
    at("sys_exit_openat", "syscalls"),
    at("sys_exit_openat2", "syscalls"),
    at("sys_exit_open", "syscalls"),
    at("sys_exit_creat", "syscalls"),
    at("sys_exit_connect", "syscalls"),
];

/// Without BTF: entry and exit pairs, listed exit first, so that when attaching stops half
/// way no entry is left recording state that nothing consumes.
pub const WITHOUT_KERNEL_VIEW: [Attachment; 15] = [
    compat("compat_sched_process_exec", "sched", "sched_process_exec"),
    compat("compat_sys_exit_execve", "syscalls", "sys_exit_execve"),
    compat("compat_sys_exit_execveat", "syscalls", "sys_exit_execveat"),
    compat("compat_sys_enter_execve", "syscalls", "sys_enter_execve"),
    compat(
        "compat_sys_enter_execveat",
        "syscalls",
        "sys_enter_execveat",
    ),
    compat("compat_sys_exit_openat", "syscalls", "sys_exit_openat"),
    compat("compat_sys_exit_openat2", "syscalls", "sys_exit_openat2"),
    compat("compat_sys_enter_openat", "syscalls", "sys_enter_openat"),
    compat("compat_sys_enter_openat2", "syscalls", "sys_enter_openat2"),
    compat("compat_sys_exit_open", "syscalls", "sys_exit_open"),
    compat("compat_sys_exit_creat", "syscalls", "sys_exit_creat"),
    compat("compat_sys_enter_open", "syscalls", "sys_enter_open"),
    compat("compat_sys_enter_creat", "syscalls", "sys_enter_creat"),
    compat("compat_sys_exit_connect", "syscalls", "sys_exit_connect"),
    compat("compat_sys_enter_connect", "syscalls", "sys_enter_connect"),
];

/// The programs loaded with (or without) the kernel view.
pub fn attachments(kernel_view: bool) -> impl Iterator<Item = &'static Attachment> {
    let set: &'static [Attachment] = if kernel_view {
        &KERNEL_VIEW
    } else {
        &WITHOUT_KERNEL_VIEW
    };
    COMMON.iter().chain(set)
}

/// Why the probes could not be loaded or attached. A message says what failed, never its
/// cause again (the cause is its source; a rejected program's carries the verifier's log).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "ring buffer size {0} is invalid: it must be a power of two between {MIN_RING_BYTES} and {MAX_RING_BYTES} bytes"
    )]
    RingSize(u64),
    #[error("cannot load the eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("the kernel rejected program `{program}`")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot attach `{program}` to {category}:{tracepoint}")]
    Attach {
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot use map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Settings fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub ring_buffer_bytes: u32,
    /// The process whose activity the probes ignore (the daemon).
    pub self_tgid: u32,
    pub offsets: TracepointOffsets,
    /// An `observer_common::filter` mode.
    pub filter_mode: u32,
    /// In-kernel dedup window in nanoseconds (0: off).
    pub dedup_window_ns: u64,
    /// Struct offsets from the kernel's BTF: the kernel view. `None` loads the programs
    /// without it.
    pub kernel: Option<KernelOffsets>,
}

/// Checks a ring buffer size: the kernel wants a power-of-two multiple of the page size.
pub fn validate_ring_size(bytes: u64) -> Result<u32, ProbeError> {
    let page = page_size();
    if !(u64::from(MIN_RING_BYTES)..=u64::from(MAX_RING_BYTES)).contains(&bytes)
        || !bytes.is_power_of_two()
        || bytes < page
    {
        return Err(ProbeError::RingSize(bytes));
    }
    u32::try_from(bytes).map_err(|_| ProbeError::RingSize(bytes))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// How much unread data wakes the daemon: an eighth of the ring, at most 256 KiB. Between
/// wakeups the daemon drains on its timer (see `daemon::ATTRIBUTION_TICK`), so a ring that
/// fills faster than that still wakes it long before it is full.
pub fn wakeup_bytes(ring_buffer_bytes: u32) -> u64 {
    (u64::from(ring_buffer_bytes) / 8).min(256 * 1024)
}

/// Loaded (and, after [`Probes::attach`], attached) probes.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<TracePointLink>,
    kernel_view: bool,
}

impl Probes {
    /// Loads the object and verifies every program, without attaching anything.
    pub fn load(object: &[u8], config: &ProbeConfig) -> Result<Self, ProbeError> {
        validate_ring_size(u64::from(config.ring_buffer_bytes))?;
        let wakeup_bytes = wakeup_bytes(config.ring_buffer_bytes);
        let mut ebpf = EbpfLoader::new()
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("SELF_TGID", &config.self_tgid, true)
            .override_global("OFFSETS", &config.offsets, true)
            .override_global("FILTER_MODE", &config.filter_mode, true)
            .override_global("DEDUP_WINDOW_NS", &config.dedup_window_ns, true)
            .override_global("KOFFSETS", &config.kernel.unwrap_or_default(), true)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(object)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let kernel_view = config.kernel.is_some();
        for attachment in attachments(kernel_view) {
            let program: &mut TracePoint = ebpf
                .program_mut(attachment.program)
                .ok_or(ProbeError::MissingProgram(attachment.program))?
                .try_into()
                .map_err(|source| ProbeError::ProgramLoad {
                    program: attachment.program,
                    source: Box::new(source),
                })?;
            program.load().map_err(|source| ProbeError::ProgramLoad {
                program: attachment.program,
                source: Box::new(source),
            })?;
        }
        Ok(Probes {
            ebpf,
            links: Vec::new(),
            kernel_view,
        })
    }

    /// Attaches every program. On error, what was attached stays attached until
    /// [`Probes::detach`] or drop.
    pub fn attach(&mut self) -> Result<(), ProbeError> {
        for attachment in attachments(self.kernel_view) {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(attachment.program)
                .ok_or(ProbeError::MissingProgram(attachment.program))?
                .try_into()
                .map_err(|source| ProbeError::ProgramLoad {
                    program: attachment.program,
                    source: Box::new(source),
                })?;
            let attach_error = |source| ProbeError::Attach {
                program: attachment.program,
                category: attachment.category,
                tracepoint: attachment.tracepoint,
                source: Box::new(source),
            };
            let id = program
                .attach(attachment.category, attachment.tracepoint)
                .map_err(attach_error)?;
            let link = program.take_link(id).map_err(attach_error)?;
            self.links.push(link);
        }
        Ok(())
    }

    /// Whether the kernel-view programs are loaded.
    pub fn kernel_view(&self) -> bool {
        self.kernel_view
    }

    /// Number of attached programs.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// Detaches every program; the ring buffer keeps what was already submitted.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// Takes the ring buffer out of the object (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Marks a cgroup for the namespace filter: events of tasks in it or below it are
    /// dropped (exclude mode) or kept (include mode) in the kernel.
    pub fn mark_cgroup(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut("CGROUP_FILTER")
            .ok_or(ProbeError::MissingMap("CGROUP_FILTER"))?;
        let map_error = |source| ProbeError::Map {
            name: "CGROUP_FILTER",
            source,
        };
        let mut filter: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(map).map_err(map_error)?;
        filter.insert(cgroup_id, 1, 0).map_err(map_error)
    }

    /// The in-kernel dedup map: every edge's state on every CPU that has one.
    pub fn dedup_entries(&self) -> Result<Vec<(DedupKey, u32, DedupState)>, ProbeError> {
        let map = self
            .ebpf
            .map("DEDUP")
            .ok_or(ProbeError::MissingMap("DEDUP"))?;
        let map_error = |source| ProbeError::Map {
            name: "DEDUP",
            source,
        };
        let mut entries = Vec::new();
        let mut push = |key: DedupKey, per_cpu: &[DedupState]| {
            for (cpu, state) in per_cpu.iter().enumerate() {
                if state.suppressed > 0 || state.last_report_ns > 0 {
                    entries.push((key, u32::try_from(cpu).unwrap_or(u32::MAX), *state));
                }
            }
        };
        // In batches where the kernel has them (5.6 and later); else key by key.
        let batched = match (map, aya::util::nr_cpus()) {
            (Map::PerCpuLruHashMap(data) | Map::PerCpuHashMap(data), Ok(cpus)) => {
                map_batch::per_cpu_entries::<DedupKey, DedupState>(data.fd().as_fd(), cpus)
                    .map_err(|err| {
                        static ONCE: std::sync::Once = std::sync::Once::new();
                        ONCE.call_once(|| {
                            tracing::info!(
                                "the kernel offers no batch lookup of the dedup map ({err}): \
                                 it is read key by key, which costs more CPU"
                            );
                        });
                    })
                    .ok()
            }
            _ => None,
        };
        if let Some(batch) = batched {
            for (key, per_cpu) in batch {
                push(key, &per_cpu);
            }
            return Ok(entries);
        }
        let dedup: PerCpuHashMap<_, DedupKey, DedupState> =
            PerCpuHashMap::try_from(map).map_err(map_error)?;
        for entry in dedup.iter() {
            // An entry evicted while iterating is gone; what it held is reconciled later.
            let Ok((key, per_cpu)) = entry else { continue };
            push(key, &per_cpu);
        }
        Ok(entries)
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(ProbeError::MissingMap("COUNTERS"))?;
        let map_error = |source| ProbeError::Map {
            name: "COUNTERS",
            source,
        };
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_error)?;
        let mut totals = KernelCounters::default();
        for index in 0..COUNTER_SLOTS {
            let per_cpu = array.get(&index, 0).map_err(map_error)?;
            totals.set(index, per_cpu.iter().sum());
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_in_the_object_is_in_exactly_one_set() {
        let object = aya_obj::Object::parse(PROBES_OBJECT).expect("parse the embedded object");
        let mut in_object: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        let mut in_table: Vec<&str> = COMMON
            .iter()
            .chain(&KERNEL_VIEW)
            .chain(&WITHOUT_KERNEL_VIEW)
            .map(|a| a.program)
            .collect();
        in_object.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(in_object, in_table);
        let mut deduped = in_table.clone();
        deduped.dedup();
        assert_eq!(deduped, in_table, "a program is listed twice");
        // Both sets cover the same tracepoints' events: exec, the four opens, connect.
        for set in [&KERNEL_VIEW[..], &WITHOUT_KERNEL_VIEW[..]] {
            for tracepoint in [
                "sched_process_exec",
                "sys_exit_openat",
                "sys_exit_openat2",
                "sys_exit_open",
                "sys_exit_creat",
                "sys_exit_connect",
            ] {
                assert!(
                    set.iter().any(|a| a.tracepoint == tracepoint),
                    "{tracepoint}"
                );
            }
        }
    }

    #[test]
    fn ring_sizes_must_be_powers_of_two_of_at_least_a_page() {
        assert!(validate_ring_size(4096).is_ok());
        assert!(validate_ring_size(u64::from(DEFAULT_RING_BYTES)).is_ok());
        assert!(validate_ring_size(2048).is_err());
        assert!(validate_ring_size(4096 * 3).is_err());
        assert!(validate_ring_size(u64::from(MAX_RING_BYTES) * 2).is_err());
    }
}
