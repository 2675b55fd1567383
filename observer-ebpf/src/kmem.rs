//! Reads of kernel memory at BTF-derived offsets, and the lookups the kernel-view probes
//! share: the current task, its root and working directory, a descriptor's `struct file`,
//! and the syscall's arguments from the registers saved at entry.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_current_task, bpf_get_current_task_btf, bpf_task_pt_regs},
};

use crate::maps::koff;

/// Reads a `T` at kernel address `addr`.
#[inline(always)]
pub fn rd<T: Copy>(addr: u64) -> Result<T, ()> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| ())
}

/// Reads a pointer; NULL is an error.
#[inline(always)]
pub fn rd_ptr(addr: u64) -> Result<u64, ()> {
    match rd::<u64>(addr) {
        Ok(0) | Err(()) => Err(()),
        Ok(p) => Ok(p),
    }
}

/// `current`, as an address.
#[inline(always)]
pub fn task() -> u64 {
    unsafe { bpf_get_current_task() }
}

/// A `struct path`: `{ struct vfsmount *mnt; struct dentry *dentry; }`.
#[derive(Clone, Copy)]
pub struct KPath {
    pub mnt: u64,
    pub dentry: u64,
}

/// Reads a `struct path` (its layout is checked by the loader) in one read.
#[inline(always)]
pub fn rd_path(addr: u64) -> Result<KPath, ()> {
    let [mnt, dentry] = rd::<[u64; 2]>(addr)?;
    if mnt == 0 || dentry == 0 {
        return Err(());
    }
    Ok(KPath { mnt, dentry })
}

/// `task->fs->root`: where the task's paths start (a container's root inside a container).
#[inline(always)]
pub fn task_root(task: u64) -> Result<KPath, ()> {
    let fs = rd_ptr(task + koff!(task_fs))?;
    rd_path(fs + koff!(fs_root))
}

/// `task->fs->pwd`: the working directory.
#[inline(always)]
pub fn task_pwd(task: u64) -> Result<KPath, ()> {
    let fs = rd_ptr(task + koff!(task_fs))?;
    rd_path(fs + koff!(fs_pwd))
}

/// `task->files->fdt->fd[fd]`: the `struct file` of a descriptor, and whether another task
/// shares the descriptor table (`files->count > 1`: a thread, or a child cloned with
/// `CLONE_FILES`). No lock is held, so such a task could have replaced the slot (close,
/// dup2) after the syscall returned, and the file is then another one's: callers mark what
/// they report from it. The count is read before the slot: only a task already sharing
/// the table can add a sharer, so a table unshared then stays unshared through the read.
/// A count that cannot be read counts as shared.
#[inline(always)]
pub fn fd_file(task: u64, fd: i64) -> Result<(u64, bool), ()> {
    if fd < 0 {
        return Err(());
    }
    let files = rd_ptr(task + koff!(task_files))?;
    let shared = rd::<i32>(files + koff!(files_count)).map_or(true, |count| count > 1);
    let fdt = rd_ptr(files + koff!(files_fdt))?;
    // struct fdtable { unsigned int max_fds; struct file **fd; ... } (checked by the loader).
    let [max_fds, fds] = rd::<[u64; 2]>(fdt)?;
    if fd as u64 >= u64::from(max_fds as u32) || fds == 0 {
        return Err(());
    }
    Ok((rd_ptr(fds + (fd as u64) * 8)?, shared))
}

/// The user registers saved at syscall entry.
#[inline(always)]
pub fn user_regs() -> Result<u64, ()> {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return Err(());
    }
    Ok(regs)
}

/// Syscall arguments 0..3 (x86_64: di, si, dx, r10). At syscall exit they still hold the
/// values the call was made with (syscalls that replace the registers, like a successful
/// exec, are not read this way).
#[inline(always)]
pub fn syscall_args(regs: u64) -> Result<[u64; 4], ()> {
    Ok([
        rd::<u64>(regs + koff!(regs_di))?,
        rd::<u64>(regs + koff!(regs_si))?,
        rd::<u64>(regs + koff!(regs_dx))?,
        rd::<u64>(regs + koff!(regs_r10))?,
    ])
}

/// Whether another task uses the current task's address space (`mm->mm_users > 1`: a
/// thread, a `vfork` child, or briefly a reader of `/proc/<pid>/mem`): it could then have
/// rewritten what the caller passed after the kernel read it. Read errors count as shared.
#[inline(always)]
pub fn memory_shared(task: u64) -> bool {
    let Ok(mm) = rd_ptr(task + koff!(task_mm)) else {
        return true;
    };
    rd::<i32>(mm + koff!(mm_users)).map_or(true, |users| users > 1)
}
