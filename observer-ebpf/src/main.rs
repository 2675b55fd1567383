//! Zastava kernel probes.
//!
//! One module per probe family. Every program filters out the daemon itself, never panics,
//! and counts each failure in the per-CPU `COUNTERS` map (see `observer_common::counters`).
//! The exec, open and connect programs read the kernel's own objects at offsets the loader
//! takes from BTF ([`kmem`], [`walk`]); [`compat`] holds their counterparts for kernels
//! without BTF.
#![no_std]
#![no_main]

mod cgroup;
mod compat;
mod connect;
mod dedup;
mod exec;
mod exit;
mod fork;
mod kmem;
mod maps;
mod open;
mod record;
mod walk;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a verified program: the code has no panicking paths, and the verifier
    // would reject this loop if any call to it survived optimisation.
    loop {}
}

// The probes use GPL-only helpers (bpf_probe_read_user*, bpf_get_current_cgroup_id).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
