//! The kernel's `d_path()`, from a tracepoint: from a (vfsmount, dentry) pair up the
//! dentry parents to the task's root, crossing mount points through `struct mount`, so the
//! path is the one the task sees (a container's path inside a container).
//!
//! The path is built right to left in the per-CPU `WALK_BUF`, ending at `PATH_CAPACITY`, so
//! it is always `buf[pos..PATH_CAPACITY]` and never needs reversing:
//!
//! ```text
//!   0              pos                 4096              8192       +64
//!   |   unused     | "/usr/bin/true"   | NUL, slack ...  | WalkState |
//! ```
//!
//! Each name of `len` bytes goes to `[pos - len, pos)` after `len + 1 <= pos` is checked;
//! offsets are also masked to 4 KiB and sizes to 512 bytes, which changes no value at run
//! time but lets the verifier prove every write stays inside the first 8 KiB. The walk runs
//! as a `bpf_loop` callback, verified once whatever the number of steps, with its state in
//! the map value (not in registers, where the verifier would explore every history). The
//! bound, 4096 steps, exceeds the components of any path that fits `PATH_CAPACITY`.
//!
//! Like the kernel's own walk without its seqlocks, a rename or mount change during the walk
//! can make the result inconsistent; a name whose length changed while it was read is
//! reported as `READ_ERROR`. Anything short of the root is reported by its `walk` bit,
//! never as a path.

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_str};
use core::ptr::{read_volatile, write_volatile};
use observer_common::{walk as bits, NAME_MAX, PATH_CAPACITY};

use crate::{
    kmem::{rd, rd_ptr, KPath},
    maps::{koff, WALK_BUF},
};

const POS_MASK: u64 = PATH_CAPACITY as u64 - 1;
/// For the position after a name, which may be `PATH_CAPACITY` itself.
const END_MASK: u64 = 2 * PATH_CAPACITY as u64 - 1;
/// Names of up to `NAME_MAX` bytes, with their NUL.
const NAME_MASK: u64 = 0x1ff;
/// Where `WalkState` sits in the buffer.
const STATE_AT: usize = 2 * PATH_CAPACITY;
/// `bpf_loop` steps: one per component or mount crossing.
const MAX_STEPS: u32 = 4096;

/// The walk's loop-carried variables, kept in map memory (see the module comment).
#[repr(C)]
struct WalkState {
    dentry: u64,
    /// `struct vfsmount *` of the current mount, the `struct mount` that embeds it, and its
    /// root dentry.
    vfsmnt: u64,
    mnt: u64,
    mnt_root: u64,
    root_dentry: u64,
    root_mnt: u64,
    /// The path so far is `buf[pos..PATH_CAPACITY]`.
    pos: u64,
    /// `walk` bits; nonzero ends the walk.
    bits: u64,
}

/// A finished walk: the path is `WALK_BUF[pos..PATH_CAPACITY]` when `bits` say complete.
#[derive(Clone, Copy)]
pub struct Walked {
    pub pos: u64,
    pub bits: u32,
}

impl Walked {
    pub const NONE: Walked = Walked {
        pos: PATH_CAPACITY as u64,
        bits: bits::NONE,
    };

    /// Bytes of path (0 unless complete).
    #[inline(always)]
    pub fn len(&self) -> u64 {
        if bits::is_complete(self.bits) && self.pos <= PATH_CAPACITY as u64 {
            PATH_CAPACITY as u64 - self.pos
        } else {
            0
        }
    }
}

macro_rules! get {
    ($st:expr, $field:ident) => {
        unsafe { read_volatile(&raw const (*$st).$field) }
    };
}
macro_rules! set {
    ($st:expr, $field:ident, $value:expr) => {
        unsafe { write_volatile(&raw mut (*$st).$field, $value) }
    };
}

/// Ends the walk with `bit`; returns false (stop).
#[inline(always)]
fn end(st: *mut WalkState, bit: u32) -> bool {
    set!(st, bits, u64::from(bit));
    false
}

/// One step: one component, or one mount crossing. False when the walk ended.
#[inline(always)]
fn step(buf: *mut u8, st: *mut WalkState) -> bool {
    let dentry = get!(st, dentry);
    let vfsmnt = get!(st, vfsmnt);
    let mnt = get!(st, mnt);
    if dentry == get!(st, root_dentry) && vfsmnt == get!(st, root_mnt) {
        return end(st, bits::COMPLETE);
    }
    if dentry == get!(st, mnt_root) {
        // At the root of this mount: go on from where it is mounted.
        let Ok(parent) = rd_ptr(mnt + koff!(mount_mnt_parent)) else {
            return end(st, bits::READ_ERROR);
        };
        if parent == mnt {
            // The top of the mount tree, and the task's root was not met.
            return end(st, bits::OUTSIDE_ROOT);
        }
        let (Ok(mountpoint), Ok(parent_root)) = (
            rd_ptr(mnt + koff!(mount_mnt_mountpoint)),
            rd_ptr(parent + koff!(mount_mnt) + koff!(vfsmount_mnt_root)),
        ) else {
            return end(st, bits::READ_ERROR);
        };
        set!(st, dentry, mountpoint);
        set!(st, mnt, parent);
        set!(st, vfsmnt, parent + koff!(mount_mnt));
        set!(st, mnt_root, parent_root);
        return true;
    }
    // d_parent, d_name.len and d_name.name in one read; the loader checked that every
    // field lies inside the window.
    let Ok(window) = rd::<[u64; 4]>(dentry + koff!(dentry_win)) else {
        return end(st, bits::READ_ERROR);
    };
    let w = window.as_ptr().cast::<u8>();
    let parent = unsafe {
        w.add(koff!(win_parent) as usize)
            .cast::<u64>()
            .read_unaligned()
    };
    let len = unsafe {
        w.add(koff!(win_len) as usize)
            .cast::<u32>()
            .read_unaligned()
    };
    let name = unsafe {
        w.add(koff!(win_name) as usize)
            .cast::<u64>()
            .read_unaligned()
    };
    if parent == 0 || name == 0 {
        return end(st, bits::READ_ERROR);
    }
    if parent == dentry {
        return end(st, bits::DETACHED);
    }
    let len = u64::from(len);
    if len == 0 || len > NAME_MAX as u64 {
        return end(st, bits::BAD_NAME);
    }
    let pos = get!(st, pos);
    if pos > PATH_CAPACITY as u64 || len + 1 > pos {
        return end(st, bits::TRUNC_BUF);
    }
    // The name goes to [start, pos); its NUL lands on `pos`: the '/' of the component to
    // its right (written again below), or PATH_CAPACITY (outside the path).
    let start = pos - len;
    let copied = unsafe {
        bpf_probe_read_kernel_str(
            buf.add((start & POS_MASK) as usize).cast(),
            ((len + 1) & NAME_MASK) as u32,
            name as *const _,
        )
    };
    unsafe { *buf.add((pos & END_MASK) as usize) = b'/' };
    // start >= 1, checked above.
    let slash = (start - 1) & POS_MASK;
    unsafe { *buf.add(slash as usize) = b'/' };
    set!(st, pos, slash);
    if copied != (len + 1) as i64 {
        // The name changed while it was read (a concurrent rename).
        return end(st, bits::READ_ERROR);
    }
    set!(st, dentry, parent);
    true
}

/// The `bpf_loop` callback: 0 goes on, 1 stops. `bpf_loop` only passes a stack pointer or
/// NULL as context, so the state is found again through the per-CPU map.
#[inline(never)]
extern "C" fn walk_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(buf) = WALK_BUF.get_ptr_mut(0) else {
        return 1;
    };
    let buf = buf.cast::<u8>();
    let st = unsafe { buf.add(STATE_AT) }.cast::<WalkState>();
    if step(buf, st) {
        0
    } else {
        1
    }
}

/// Walks `start` up to the task's `root` into `WALK_BUF`.
#[inline(always)]
pub fn walk(start: KPath, root: KPath) -> Walked {
    let Some(buf) = WALK_BUF.get_ptr_mut(0) else {
        return Walked::NONE;
    };
    let buf = buf.cast::<u8>();
    let st = unsafe { buf.add(STATE_AT) }.cast::<WalkState>();
    set!(st, dentry, start.dentry);
    set!(st, vfsmnt, start.mnt);
    // struct mount embeds struct vfsmount: container_of.
    set!(st, mnt, start.mnt.wrapping_sub(koff!(mount_mnt)));
    let mnt_root = rd_ptr(start.mnt + koff!(vfsmount_mnt_root)).unwrap_or(0);
    set!(st, mnt_root, mnt_root);
    set!(st, root_dentry, root.dentry);
    set!(st, root_mnt, root.mnt);
    set!(st, pos, PATH_CAPACITY as u64);
    if mnt_root == 0 {
        return Walked {
            pos: PATH_CAPACITY as u64,
            bits: bits::READ_ERROR,
        };
    }
    set!(st, bits, 0);
    unsafe { bpf_loop(MAX_STEPS, walk_step as *mut _, core::ptr::null_mut(), 0) };
    finish(buf, st, start)
}

#[inline(always)]
fn finish(buf: *mut u8, st: *mut WalkState, start: KPath) -> Walked {
    let mut walked = get!(st, bits) as u32;
    if walked == 0 {
        walked = bits::TRUNC_DEPTH;
    }
    // d_unlinked(): unhashed, and not its own parent.
    if let (Ok(pprev), Ok(parent)) = (
        rd::<u64>(start.dentry + koff!(dentry_d_hash_pprev)),
        rd::<u64>(start.dentry + koff!(dentry_win) + koff!(win_parent)),
    ) {
        if pprev == 0 && parent != start.dentry {
            walked |= bits::DELETED;
        }
    }
    let mut pos = get!(st, pos);
    if pos > PATH_CAPACITY as u64 {
        // Cannot happen; keeps the bound visible to the verifier.
        return Walked {
            pos: PATH_CAPACITY as u64,
            bits: bits::READ_ERROR,
        };
    }
    if pos == PATH_CAPACITY as u64 && bits::is_complete(walked) {
        // The root itself.
        pos -= 1;
        unsafe { *buf.add((pos & POS_MASK) as usize) = b'/' };
    }
    Walked { pos, bits: walked }
}

/// Copies a complete walked path to `dst` (room for `PATH_CAPACITY` bytes); returns its
/// length, 0 when there is no path.
#[inline(always)]
pub fn copy_out(dst: *mut u8, walked: &Walked) -> u64 {
    let len = walked.len();
    if len == 0 || len > PATH_CAPACITY as u64 {
        return 0;
    }
    let Some(buf) = WALK_BUF.get_ptr(0) else {
        return 0;
    };
    let src = unsafe { buf.cast::<u8>().add((walked.pos & POS_MASK) as usize) };
    if unsafe { bpf_probe_read_kernel(dst.cast(), len as u32, src.cast()) } == 0 {
        len
    } else {
        0
    }
}
