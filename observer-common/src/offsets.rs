//! Field offsets of the non-syscall tracepoints, read by userspace from tracefs `format`
//! files at load time and handed to the probes as a global.
//!
//! These layouts change between kernels (6.x turned `sched_process_fork`'s comms into
//! `__data_loc` strings; `sched_process_exit` gained `group_dead`), so they are never
//! compiled in. Syscall tracepoints have a fixed layout (`__syscall_nr` at 8, then one
//! 8-byte slot per argument from 16); userspace checks that instead.

/// Offsets in bytes from the start of the tracepoint record. 0 means "field absent".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `sched:sched_process_exec` `__data_loc char[] filename`.
    pub exec_filename: u32,
    /// `sched:sched_process_exec` `pid_t old_pid`.
    pub exec_old_pid: u32,
    /// `sched:sched_process_exit` `bool group_dead`; 0 on kernels without it, where the
    /// probe falls back to "the exiting task is the thread group leader".
    pub exit_group_dead: u32,
    /// `task:task_newtask` `pid_t pid` (the new task).
    pub newtask_pid: u32,
    /// `task:task_newtask` `u64 clone_flags`.
    pub newtask_clone_flags: u32,
    /// `cgroup:cgroup_mkdir` (and `cgroup_rmdir`, same layout) `int root`: hierarchy id,
    /// 0 for the v2 hierarchy.
    pub cgroup_root: u32,
    /// `int level`.
    pub cgroup_level: u32,
    /// `u64 id`.
    pub cgroup_id: u32,
    /// `__data_loc char[] path`.
    pub cgroup_path: u32,
    pub _pad: u32,
}

/// Fixed layout of `syscalls:sys_enter_*`: argument `n` is at `16 + 8 * n`.
pub const fn syscall_arg_offset(n: usize) -> usize {
    16 + 8 * n
}

/// Fixed layout of `syscalls:sys_exit_*`: `long ret` at 16.
pub const SYSCALL_RET_OFFSET: usize = 16;
