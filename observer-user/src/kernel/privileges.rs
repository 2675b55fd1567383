//! The capabilities the observer runs with, and what each one is for. Checked before the
//! probes are loaded, so that a missing one is named instead of surfacing as the kernel's
//! bare EPERM on the first map or program.

use std::fs;

/// Bits of the capabilities the observer uses (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
pub fn effective() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The capabilities loading and attaching the probes needs that `caps` lacks: CAP_BPF
/// (maps, programs) and CAP_PERFMON (tracepoint attachment, reading kernel memory), or
/// CAP_SYS_ADMIN, which includes both.
pub fn missing_for_probes(caps: u64) -> Vec<&'static str> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect()
}

/// Capabilities without which the observer runs with less: each with what is lost.
pub fn missing_for_processes(caps: u64) -> Vec<(&'static str, &'static str)> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_PTRACE) {
        missing.push((
            "CAP_SYS_PTRACE",
            "executables, working directories and open files of processes with other credentials cannot be read through /proc (no exe, unresolved relative paths, no build-ids)",
        ));
    }
    if !has(CAP_DAC_READ_SEARCH) {
        missing.push((
            "CAP_DAC_READ_SEARCH",
            "executables other users cannot read get no build-id",
        ));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_need_bpf_and_perfmon_or_sys_admin() {
        let bit = |cap: u32| 1u64 << cap;
        assert_eq!(missing_for_probes(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_for_probes(bit(CAP_PERFMON)), ["CAP_BPF"]);
        assert_eq!(missing_for_probes(bit(CAP_BPF)), ["CAP_PERFMON"]);
        assert!(missing_for_probes(bit(CAP_BPF) | bit(CAP_PERFMON)).is_empty());
        assert!(missing_for_probes(bit(CAP_SYS_ADMIN)).is_empty());
    }

    #[test]
    fn the_kubernetes_set_loses_nothing() {
        let caps = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]
            .iter()
            .fold(0u64, |acc, cap| acc | 1 << cap);
        assert!(missing_for_probes(caps).is_empty());
        assert!(missing_for_processes(caps).is_empty());
        let without_ptrace = caps & !(1 << CAP_SYS_PTRACE);
        assert_eq!(missing_for_processes(without_ptrace)[0].0, "CAP_SYS_PTRACE");
    }
}
