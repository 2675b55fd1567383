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

/// Byte offsets of the kernel structures the probes read, resolved by the loader from the
/// kernel's BTF (`/sys/kernel/btf/vmlinux`) and handed to the programs in the read-only
/// `KOFFSETS` global, where the verifier sees each one as a constant. Struct layouts differ
/// between kernels and builds, so none is compiled in. Each is the offset of a member in
/// its struct, anonymous unions and structs folded in, unless its comment says otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.fs`, `.files`, `.mm`.
    pub task_fs: u32,
    pub task_files: u32,
    pub task_mm: u32,
    /// `fs_struct.root`, `.pwd` (each a `struct path`: `{ mnt, dentry }`, checked).
    pub fs_root: u32,
    pub fs_pwd: u32,
    /// `dentry.d_hash.pprev`: NULL when the dentry is unhashed (the file was unlinked).
    pub dentry_d_hash_pprev: u32,
    /// Where a 32-byte window of a dentry starts that holds `d_parent` and `d_name`, and
    /// where in that window `d_parent`, `d_name.hash`, `d_name.len` and `d_name.name` are:
    /// one read per path component.
    pub dentry_win: u32,
    pub win_parent: u32,
    pub win_hash: u32,
    pub win_len: u32,
    pub win_name: u32,
    /// `mount.mnt` (the embedded `struct vfsmount`), `.mnt_parent`, `.mnt_mountpoint`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `files_struct.fdt` (`fdtable` is `{ max_fds @0, fd @8 }`, checked), `.count` (the
    /// tasks using the descriptor table: above 1, another task can replace a descriptor).
    pub files_fdt: u32,
    pub files_count: u32,
    /// `file.f_path`, `.f_inode`, `.private_data`.
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    /// `inode.i_mode`, `.i_ino`.
    pub inode_i_mode: u32,
    pub inode_i_ino: u32,
    /// `mm_struct.exe_file`, `.arg_start`, `.arg_end`, `.mm_users` (the tasks using the
    /// address space: above 1, another thread can write the caller's memory).
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_users: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock_common.skc_family`, `.skc_daddr`, `.skc_dport`, `.skc_v6_daddr`
    /// (`sock.__sk_common` is at offset 0, checked).
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_dport: u32,
    pub skc_v6_daddr: u32,
    /// `unix_sock.addr`, `.peer` (`unix_sock.sk` is at offset 0, checked).
    pub unix_sock_addr: u32,
    pub unix_sock_peer: u32,
    /// `unix_address.len`, `.name` (a `struct sockaddr_un`).
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `pt_regs.di`, `.si`, `.dx`, `.r10`: the first four syscall arguments (x86_64).
    pub regs_di: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_r10: u32,
    pub _pad: u32,
}
