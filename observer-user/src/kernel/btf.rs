//! Struct offsets from the kernel's BTF. The kernel-view probes read the kernel's own
//! objects (a task's files and working directory, a file's path, a socket's peer), whose
//! layouts differ between kernels and builds; the loader resolves every member they read
//! from `/sys/kernel/btf/vmlinux` at start, checks its shape (a pointer where a pointer is
//! read, an integer of the size read, an embedded struct where one is walked into), and
//! refuses a kernel whose layout differs rather than let a probe read the wrong bytes.
//! Nothing of the parsed BTF is kept.

use std::{collections::HashMap, fmt, path::Path};

use ::btf::types::{Btf, BtfType};
use observer_common::KernelOffsets;

/// Where the kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel's BTF at {path} cannot be parsed: {reason}")]
    Parse { path: String, reason: String },
    #[error("the kernel's BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("the kernel's BTF has no member `{0}`")]
    NoMember(String),
    #[error("`{member}` is {found}, but the probes read {wanted} there")]
    Shape {
        member: String,
        found: Shape,
        wanted: Want,
    },
    #[error("`{0}` is a bit field; the probes read whole bytes")]
    Bitfield(String),
    #[error("`{member}` is at offset {offset}, but the probes need {expected}")]
    Layout {
        member: String,
        offset: u32,
        expected: &'static str,
    },
}

/// What a member turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Ptr,
    /// An integer or enum of this many bytes.
    Int(u32),
    /// A struct or union of this many bytes.
    Aggregate(u32),
    Array(u32),
    Other,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Ptr => write!(f, "a pointer"),
            Shape::Int(n) => write!(f, "a {n}-byte integer"),
            Shape::Aggregate(n) => write!(f, "a {n}-byte struct"),
            Shape::Array(n) => write!(f, "a {n}-byte array"),
            Shape::Other => write!(f, "something else"),
        }
    }
}

/// What a probe reads at a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Ptr,
    Int(u32),
    /// An embedded struct of at least this many bytes.
    Embedded(u32),
    /// Only the offset is used (a flexible array).
    Any,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Ptr => write!(f, "a pointer"),
            Want::Int(n) => write!(f, "a {n}-byte integer"),
            Want::Embedded(n) => write!(f, "a struct of at least {n} bytes"),
            Want::Any => write!(f, "anything"),
        }
    }
}

/// A resolved member: its byte offset from the start of the outermost struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub shape: Shape,
}

/// The parsed BTF, and the ids of the structs the probes read.
pub struct Types<'a> {
    btf: Btf<'a>,
    by_name: HashMap<&'static str, u32>,
}

impl<'a> Types<'a> {
    /// Parses `data` and finds the structs (or unions) named in `wanted`.
    pub fn parse(data: &'a [u8], path: &str, wanted: &[&'static str]) -> Result<Self, BtfError> {
        let btf = Btf::load_raw(data).map_err(|e| BtfError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut by_name = HashMap::new();
        for (id, ty) in btf.types().iter().enumerate() {
            if let BtfType::Struct(c) | BtfType::Union(c) = ty {
                // The first definition with members wins (forward declarations have none).
                if let Some(name) = wanted.iter().find(|w| **w == c.name) {
                    if !c.members.is_empty() {
                        by_name.entry(*name).or_insert(id as u32);
                    }
                }
            }
        }
        Ok(Types { btf, by_name })
    }

    /// The type a member's type id names, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> (u32, &BtfType<'_>) {
        for _ in 0..32 {
            match self.btf.type_by_id(id) {
                BtfType::Typedef(t) => id = t.type_id,
                BtfType::Const(t) => id = t.type_id,
                BtfType::Volatile(t) => id = t.type_id,
                BtfType::Restrict(t) => id = t.type_id,
                BtfType::TypeTag(t) => id = t.type_id,
                _ => break,
            }
        }
        (id, self.btf.type_by_id(id))
    }

    fn shape(&self, id: u32) -> Shape {
        let (id, ty) = self.resolve(id);
        let size = self.btf.get_size_of(id);
        match ty {
            BtfType::Ptr(_) => Shape::Ptr,
            BtfType::Int(_) | BtfType::Enum(_) | BtfType::Enum64(_) => Shape::Int(size),
            BtfType::Struct(_) | BtfType::Union(_) => Shape::Aggregate(size),
            BtfType::Array(_) => Shape::Array(size),
            _ => Shape::Other,
        }
    }

    /// Finds `name` among the members of the struct or union `id`, looking through
    /// anonymous members as C does; returns its bit offset and type id.
    fn find(&self, id: u32, name: &str, what: &str) -> Result<Option<(u32, u32)>, BtfError> {
        let (_, ty) = self.resolve(id);
        let (BtfType::Struct(c) | BtfType::Union(c)) = ty else {
            return Ok(None);
        };
        for m in &c.members {
            if m.name == name {
                if m.bit_size != 0 || m.bit_offset % 8 != 0 {
                    return Err(BtfError::Bitfield(what.to_owned()));
                }
                return Ok(Some((m.bit_offset, m.type_id)));
            }
            if m.name.is_empty() {
                if let Some((offset, type_id)) = self.find(m.type_id, name, what)? {
                    return Ok(Some((m.bit_offset + offset, type_id)));
                }
            }
        }
        Ok(None)
    }

    /// The member at `path` of struct `name` (nested embedded structs add up; pointers are
    /// never followed).
    pub fn member(&self, name: &str, path: &[&str]) -> Result<Member, BtfError> {
        let what = format!("{name}.{}", path.join("."));
        let mut id = *self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let mut bits = 0;
        for part in path {
            let (offset, type_id) = self
                .find(id, part, &what)?
                .ok_or_else(|| BtfError::NoMember(what.clone()))?;
            bits += offset;
            id = type_id;
        }
        Ok(Member {
            offset: bits / 8,
            shape: self.shape(id),
        })
    }
}

/// (field of `KernelOffsets`, struct, member path, what the probes read there).
pub const TABLE: &[(&str, &str, &[&str], Want)] = &[
    ("task_fs", "task_struct", &["fs"], Want::Ptr),
    ("task_files", "task_struct", &["files"], Want::Ptr),
    ("task_mm", "task_struct", &["mm"], Want::Ptr),
    ("fs_root", "fs_struct", &["root"], Want::Embedded(16)),
    ("fs_pwd", "fs_struct", &["pwd"], Want::Embedded(16)),
    (
        "dentry_d_hash_pprev",
        "dentry",
        &["d_hash", "pprev"],
        Want::Ptr,
    ),
    ("dentry_d_parent", "dentry", &["d_parent"], Want::Ptr),
    ("dentry_d_name", "dentry", &["d_name"], Want::Embedded(16)),
    ("qstr_hash", "qstr", &["hash"], Want::Int(4)),
    ("qstr_len", "qstr", &["len"], Want::Int(4)),
    ("qstr_name", "qstr", &["name"], Want::Ptr),
    ("mount_mnt", "mount", &["mnt"], Want::Embedded(8)),
    ("mount_mnt_parent", "mount", &["mnt_parent"], Want::Ptr),
    (
        "mount_mnt_mountpoint",
        "mount",
        &["mnt_mountpoint"],
        Want::Ptr,
    ),
    ("vfsmount_mnt_root", "vfsmount", &["mnt_root"], Want::Ptr),
    ("files_fdt", "files_struct", &["fdt"], Want::Ptr),
    (
        "files_count",
        "files_struct",
        &["count", "counter"],
        Want::Int(4),
    ),
    ("fdtable_max_fds", "fdtable", &["max_fds"], Want::Int(4)),
    ("fdtable_fd", "fdtable", &["fd"], Want::Ptr),
    ("file_f_path", "file", &["f_path"], Want::Embedded(16)),
    ("file_f_inode", "file", &["f_inode"], Want::Ptr),
    ("file_private_data", "file", &["private_data"], Want::Ptr),
    ("inode_i_mode", "inode", &["i_mode"], Want::Int(2)),
    ("inode_i_ino", "inode", &["i_ino"], Want::Int(8)),
    ("mm_exe_file", "mm_struct", &["exe_file"], Want::Ptr),
    ("mm_arg_start", "mm_struct", &["arg_start"], Want::Int(8)),
    ("mm_arg_end", "mm_struct", &["arg_end"], Want::Int(8)),
    (
        "mm_users",
        "mm_struct",
        &["mm_users", "counter"],
        Want::Int(4),
    ),
    ("path_mnt", "path", &["mnt"], Want::Ptr),
    ("path_dentry", "path", &["dentry"], Want::Ptr),
    ("socket_sk", "socket", &["sk"], Want::Ptr),
    (
        "sock_sk_common",
        "sock",
        &["__sk_common"],
        Want::Embedded(16),
    ),
    ("skc_family", "sock_common", &["skc_family"], Want::Int(2)),
    ("skc_daddr", "sock_common", &["skc_daddr"], Want::Int(4)),
    ("skc_dport", "sock_common", &["skc_dport"], Want::Int(2)),
    (
        "skc_v6_daddr",
        "sock_common",
        &["skc_v6_daddr"],
        Want::Embedded(16),
    ),
    ("unix_sock_sk", "unix_sock", &["sk"], Want::Embedded(16)),
    ("unix_sock_addr", "unix_sock", &["addr"], Want::Ptr),
    ("unix_sock_peer", "unix_sock", &["peer"], Want::Ptr),
    ("unix_address_len", "unix_address", &["len"], Want::Int(4)),
    ("unix_address_name", "unix_address", &["name"], Want::Any),
    ("regs_di", "pt_regs", &["di"], Want::Int(8)),
    ("regs_si", "pt_regs", &["si"], Want::Int(8)),
    ("regs_dx", "pt_regs", &["dx"], Want::Int(8)),
    ("regs_r10", "pt_regs", &["r10"], Want::Int(8)),
];

fn fits(shape: Shape, want: Want) -> bool {
    match (want, shape) {
        (Want::Ptr, Shape::Ptr) | (Want::Any, _) => true,
        (Want::Int(n), Shape::Int(m)) => n == m,
        (Want::Embedded(n), Shape::Aggregate(m)) => m >= n,
        _ => false,
    }
}

/// Every member in [`TABLE`], resolved and checked: `(field, member, offset)`.
pub fn members(types: &Types<'_>) -> Result<Vec<(&'static str, String, u32)>, BtfError> {
    TABLE
        .iter()
        .map(|&(field, name, path, want)| {
            let member = types.member(name, path)?;
            let what = format!("{name}.{}", path.join("."));
            if !fits(member.shape, want) {
                return Err(BtfError::Shape {
                    member: what,
                    found: member.shape,
                    wanted: want,
                });
            }
            Ok((field, what, member.offset))
        })
        .collect()
}

/// The offsets the probes read, from the members: the table's own values, the layouts the
/// probes assume (checked), and the dentry window they read in one go.
pub fn offsets(members: &[(&'static str, String, u32)]) -> Result<KernelOffsets, BtfError> {
    let get = |field: &str| -> u32 {
        members
            .iter()
            .find(|(f, _, _)| *f == field)
            .map_or(0, |(_, _, offset)| *offset)
    };
    let expect = |field: &'static str, offset: u32, expected: &'static str| {
        let found = get(field);
        if found == offset {
            Ok(())
        } else {
            Err(BtfError::Layout {
                member: field.to_owned(),
                offset: found,
                expected,
            })
        }
    };
    expect("path_mnt", 0, "struct path = { mnt, dentry }")?;
    expect("path_dentry", 8, "struct path = { mnt, dentry }")?;
    expect(
        "fdtable_max_fds",
        0,
        "struct fdtable = { max_fds, fd, ... }",
    )?;
    expect("fdtable_fd", 8, "struct fdtable = { max_fds, fd, ... }")?;
    expect(
        "sock_sk_common",
        0,
        "struct sock to start with its sock_common",
    )?;
    expect("unix_sock_sk", 0, "struct unix_sock to start with its sock")?;
    expect("qstr_hash", 0, "struct qstr = { hash, len, name }")?;
    expect("qstr_len", 4, "struct qstr = { hash, len, name }")?;
    // One 32-byte read at d_parent covers d_parent and d_name.{hash,len,name}.
    let window = get("dentry_d_parent");
    let name_at = get("dentry_d_name").checked_sub(window).unwrap_or(u32::MAX);
    let win_name = name_at.saturating_add(get("qstr_name"));
    if win_name.saturating_add(8) > 32 {
        return Err(BtfError::Layout {
            member: "dentry.d_name".into(),
            offset: get("dentry_d_name"),
            expected: "d_name within 32 bytes after d_parent",
        });
    }
    Ok(KernelOffsets {
        task_fs: get("task_fs"),
        task_files: get("task_files"),
        task_mm: get("task_mm"),
        fs_root: get("fs_root"),
        fs_pwd: get("fs_pwd"),
        dentry_d_hash_pprev: get("dentry_d_hash_pprev"),
        dentry_win: window,
        win_parent: 0,
        win_hash: name_at + get("qstr_hash"),
        win_len: name_at + get("qstr_len"),
        win_name,
        mount_mnt: get("mount_mnt"),
        mount_mnt_parent: get("mount_mnt_parent"),
        mount_mnt_mountpoint: get("mount_mnt_mountpoint"),
        vfsmount_mnt_root: get("vfsmount_mnt_root"),
        files_fdt: get("files_fdt"),
        files_count: get("files_count"),
        file_f_path: get("file_f_path"),
        file_f_inode: get("file_f_inode"),
        file_private_data: get("file_private_data"),
        inode_i_mode: get("inode_i_mode"),
        inode_i_ino: get("inode_i_ino"),
        mm_exe_file: get("mm_exe_file"),
        mm_arg_start: get("mm_arg_start"),
        mm_arg_end: get("mm_arg_end"),
        mm_users: get("mm_users"),
        socket_sk: get("socket_sk"),
        skc_family: get("skc_family"),
        skc_daddr: get("skc_daddr"),
        skc_dport: get("skc_dport"),
        skc_v6_daddr: get("skc_v6_daddr"),
        unix_sock_addr: get("unix_sock_addr"),
        unix_sock_peer: get("unix_sock_peer"),
        unix_address_len: get("unix_address_len"),
        unix_address_name: get("unix_address_name"),
        regs_di: get("regs_di"),
        regs_si: get("regs_si"),
        regs_dx: get("regs_dx"),
        regs_r10: get("regs_r10"),
        _pad: 0,
    })
}

/// What resolving the kernel's BTF found.
pub struct Resolved {
    pub offsets: KernelOffsets,
    /// `(field, member, offset)`, for `doctor`.
    pub members: Vec<(&'static str, String, u32)>,
}

/// Reads the BTF at `path` and resolves every offset the probes need.
pub fn resolve(path: &Path) -> Result<Resolved, BtfError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| BtfError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut wanted: Vec<&'static str> = TABLE.iter().map(|(_, name, _, _)| *name).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let types = Types::parse(&data, &shown, &wanted)?;
    let members = members(&types)?;
    let offsets = offsets(&members)?;
    Ok(Resolved { offsets, members })
}

#[cfg(test)]
mod tests;
