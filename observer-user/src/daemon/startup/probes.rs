//! Loading the probes: the capabilities they need (named before the kernel refuses), tracefs
//! and the tracepoints' layouts, the kernel view's struct offsets from BTF as
//! `observer.kernel_view` asks, then the eBPF object with its load-time settings. Hands on
//! the loaded (not yet attached) probes and their ring buffer.

use std::path::Path;

use aya::maps::{MapData, RingBuf};
use observer_common::KernelOffsets;
use tracing::{info, warn};

use super::namespace_filter;
use crate::{
    config::{Config, KernelView},
    daemon::{memory, RunError},
    kernel::{
        btf::{self, VMLINUX_BTF},
        privileges,
        probes::{validate_ring_size, ProbeConfig, PROBES_OBJECT},
        tracefs::{self, Tracefs},
        Probes,
    },
};

/// Loaded probes, and their ring buffer apart from them.
pub(super) type Loaded = (Probes, RingBuf<MapData>);

/// Loads the probes (not attached yet); their ring buffer is returned separately.
pub(super) fn load(config: &Config, observe_self: bool) -> Result<Loaded, RunError> {
    // Named here, before the kernel's EPERM on the first map says nothing of why.
    if let Some(caps) = privileges::effective() {
        let missing = privileges::missing_for_probes(caps);
        if !missing.is_empty() {
            return Err(RunError::Privileges { caps, missing });
        }
        for (cap, lost) in privileges::missing_for_processes(caps) {
            warn!("running without {cap}: {lost}");
        }
    }
    let (tracefs, mounted) = Tracefs::find_or_mount()?;
    if mounted {
        info!("mounted tracefs at {}", tracefs.root().display());
    }
    let offsets = tracefs::probe_offsets(&tracefs)?;
    let kernel = kernel_offsets(config.observer.kernel_view)?;
    let mut probes = Probes::load(
        PROBES_OBJECT,
        &ProbeConfig {
            ring_buffer_bytes: validate_ring_size(config.observer.ring_buffer_bytes)?,
            self_tgid: if observe_self { 0 } else { std::process::id() },
            offsets,
            filter_mode: namespace_filter(config).kernel_mode(),
            dedup_window_ns: u64::try_from(config.observer.kernel_dedup_window.as_nanos())
                .unwrap_or(u64::MAX),
            kernel,
        },
    )?;
    let ring = probes.take_ring()?;
    return_freed_memory();
    Ok((probes, ring))
}

/// Parsing the kernel's BTF (ours for the offsets, the loader's for relocations) takes
/// tens of MiB of heap that is free once the programs are loaded; the allocator keeps
/// freed pages unless told, and they would count in the daemon's resident set for good.
fn return_freed_memory() {
    memory::return_freed();
}

/// The struct offsets of the kernel view, as `observer.kernel_view` asks.
fn kernel_offsets(view: KernelView) -> Result<Option<KernelOffsets>, RunError> {
    if view == KernelView::Off {
        warn!("observer.kernel_view = off: paths, argv and addresses come from the caller's memory, and edges say so");
        return Ok(None);
    }
    match btf::resolve(Path::new(VMLINUX_BTF)) {
        Ok(resolved) => {
            info!(
                members = resolved.members.len(),
                "kernel view: struct offsets from {VMLINUX_BTF}"
            );
            Ok(Some(resolved.offsets))
        }
        Err(err) if view == KernelView::Auto => {
            warn!("{err}: running without the kernel view; paths, argv and addresses come from the caller's memory, and edges say so (`zastava-observer doctor` explains)");
            Ok(None)
        }
        Err(err) => Err(RunError::KernelView(err)),
    }
}
