//! tracefs: where it is mounted, which tracepoints exist, and the field layout of each.
//!
//! Field offsets of the scheduler and task tracepoints differ between kernel versions, so
//! they are read from `events/<category>/<name>/format` at load time (see
//! `observer_common::offsets`). Syscall tracepoints have a fixed layout that is checked here
//! so that a kernel that changed it fails loudly instead of producing garbage.

use std::{
    fs,
    path::{Path, PathBuf},
};

use observer_common::{offsets::syscall_arg_offset, TracepointOffsets};

/// Candidate mount points, in the order the kernel documentation recommends them.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// Where tracefs is mounted when it is missing (the first mount point above).
const MOUNT_TARGET: &std::ffi::CStr = c"/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing); \
         mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    NotMounted,
    #[error(
        "tracefs is not mounted and mounting it at {target} failed ({source}); \
         mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    MountFailed {
        target: &'static str,
        source: std::io::Error,
    },
    #[error("tracepoint {category}:{name} does not exist on this kernel ({path}): {source}")]
    MissingTracepoint {
        category: String,
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint}: {problem}")]
    Layout { tracepoint: String, problem: String },
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs.
    pub fn find() -> Result<Self, TracefsError> {
        MOUNT_POINTS
            .iter()
            .map(Path::new)
            .find(|root| root.join("events").is_dir())
            .map(|root| Tracefs {
                root: root.to_owned(),
            })
            .ok_or(TracefsError::NotMounted)
    }

    /// Finds tracefs, mounting it at `/sys/kernel/tracing` if it is not mounted anywhere.
    pub fn find_or_mount() -> Result<(Self, bool), TracefsError> {
        if let Ok(found) = Self::find() {
            return Ok((found, false));
        }
        let (source, fstype) = (c"tracefs", c"tracefs");
        // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                MOUNT_TARGET.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(TracefsError::MountFailed {
                target: MOUNT_POINTS[0],
                source: std::io::Error::last_os_error(),
            });
        }
        Self::find().map(|found| (found, true))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses the format of `category:name`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::MissingTracepoint {
            category: category.to_owned(),
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(Format {
            tracepoint: format!("{category}:{name}"),
            fields: parse_fields(&text),
        })
    }
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The declaration as written, e.g. `__data_loc char[] filename`.
    pub declaration: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint.
#[derive(Clone, Debug)]
pub struct Format {
    pub tracepoint: String,
    pub fields: Vec<Field>,
}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    fn layout_error(&self, problem: String) -> TracefsError {
        TracefsError::Layout {
            tracepoint: self.tracepoint.clone(),
            problem,
        }
    }

    /// Offset of a required field, checking its size.
    pub fn offset_of(&self, name: &str, size: u32) -> Result<u32, TracefsError> {
        let field = self
            .field(name)
            .ok_or_else(|| self.layout_error(format!("field `{name}` is missing")))?;
        if field.size != size {
            return Err(self.layout_error(format!(
                "field `{name}` has size {} (expected {size})",
                field.size
            )));
        }
        if field.offset == 0 {
            return Err(self.layout_error(format!("field `{name}` has offset 0")));
        }
        Ok(field.offset)
    }

    /// Offset of a `__data_loc` string field.
    pub fn data_loc_offset(&self, name: &str) -> Result<u32, TracefsError> {
        let offset = self.offset_of(name, 4)?;
        match self.field(name) {
            Some(f) if f.declaration.starts_with("__data_loc") => Ok(offset),
            _ => Err(self.layout_error(format!("field `{name}` is not a __data_loc string"))),
        }
    }

    /// Checks that syscall argument `index` is named `name` at the fixed syscall layout.
    pub fn expect_syscall_arg(&self, index: usize, name: &str) -> Result<(), TracefsError> {
        let expected = syscall_arg_offset(index) as u32;
        let offset = self.offset_of(name, 8)?;
        if offset != expected {
            return Err(self.layout_error(format!(
                "argument `{name}` is at offset {offset}, the probes read it at {expected}"
            )));
        }
        Ok(())
    }
}

fn parse_fields(text: &str) -> Vec<Field> {
    text.lines().filter_map(parse_field_line).collect()
}

/// Parses `\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;`.
fn parse_field_line(line: &str) -> Option<Field> {
    let line = line.trim();
    let rest = line.strip_prefix("field:")?;
    let mut parts = rest.split(';').map(str::trim);
    let declaration = parts.next()?.to_owned();
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    // The name is the last word of the declaration, without any array suffix.
    let last = declaration.split_whitespace().last()?;
    let name = last.split('[').next()?.to_owned();
    Some(Field {
        name,
        declaration,
        offset: offset?,
        size: size?,
    })
}

/// Reads every offset the probes need and checks the fixed syscall layouts.
pub fn probe_offsets(tracefs: &Tracefs) -> Result<TracepointOffsets, TracefsError> {
    let exec = tracefs.format("sched", "sched_process_exec")?;
    let exit = tracefs.format("sched", "sched_process_exit")?;
    let newtask = tracefs.format("task", "task_newtask")?;
    let mkdir = tracefs.format("cgroup", "cgroup_mkdir")?;
    let rmdir = tracefs.format("cgroup", "cgroup_rmdir")?;

    let exit_group_dead = match exit.field("group_dead") {
        Some(_) => exit.offset_of("group_dead", 1)?,
        None => 0,
    };
    let offsets = TracepointOffsets {
        exec_filename: exec.data_loc_offset("filename")?,
        exec_old_pid: exec.offset_of("old_pid", 4)?,
        exit_group_dead,
        newtask_pid: newtask.offset_of("pid", 4)?,
        newtask_clone_flags: newtask.offset_of("clone_flags", 8)?,
        cgroup_root: mkdir.offset_of("root", 4)?,
        cgroup_level: mkdir.offset_of("level", 4)?,
        cgroup_id: mkdir.offset_of("id", 8)?,
        cgroup_path: mkdir.data_loc_offset("path")?,
        _pad: 0,
    };
    // One program reads both with the same offsets.
    for field in ["root", "level", "id", "path"] {
        if mkdir.field(field) != rmdir.field(field) {
            return Err(TracefsError::Layout {
                tracepoint: rmdir.tracepoint,
                problem: format!("field `{field}` differs from cgroup:cgroup_mkdir"),
            });
        }
    }

    for (name, args) in SYSCALL_ARGS {
        let format = tracefs.format("syscalls", name)?;
        for (index, arg) in args.iter().enumerate() {
            format.expect_syscall_arg(index, arg)?;
        }
    }
    for name in SYSCALL_EXITS {
        let format = tracefs.format("syscalls", name)?;
        if format.offset_of("ret", 8)? != observer_common::offsets::SYSCALL_RET_OFFSET as u32 {
            return Err(TracefsError::Layout {
                tracepoint: format.tracepoint,
                problem: "`ret` is not at offset 16".into(),
            });
        }
    }
    Ok(offsets)
}

/// Syscall entry tracepoints and the arguments the probes read, in order.
const SYSCALL_ARGS: [(&str, &[&str]); 7] = [
    ("sys_enter_execve", &["filename", "argv"]),
    ("sys_enter_execveat", &["fd", "filename", "argv"]),
    ("sys_enter_openat", &["dfd", "filename", "flags", "mode"]),
    ("sys_enter_openat2", &["dfd", "filename", "how"]),
    ("sys_enter_open", &["filename", "flags", "mode"]),
    ("sys_enter_creat", &["pathname", "mode"]),
    ("sys_enter_connect", &["fd", "uservaddr", "addrlen"]),
];

const SYSCALL_EXITS: [&str; 7] = [
    "sys_exit_execve",
    "sys_exit_execveat",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_open",
    "sys_exit_creat",
    "sys_exit_connect",
];

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC_FORMAT: &str = "name: sched_process_exec\nID: 310\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n\
\n\
print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid\n";

    fn format(text: &str) -> Format {
        Format {
            tracepoint: "test:test".into(),
            fields: parse_fields(text),
        }
    }

    #[test]
    fn parses_fields_with_data_loc_and_arrays() {
        let f = format(EXEC_FORMAT);
        assert_eq!(f.fields.len(), 7);
        assert_eq!(f.data_loc_offset("filename").unwrap(), 8);
        assert_eq!(f.offset_of("old_pid", 4).unwrap(), 16);
        let exit = format("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;");
        assert_eq!(exit.field("comm").unwrap().size, 16);
        assert_eq!(exit.offset_of("group_dead", 1).unwrap(), 32);
    }

    #[test]
    fn wrong_size_or_missing_field_is_a_named_error() {
        let f = format(EXEC_FORMAT);
        let err = f.offset_of("old_pid", 8).unwrap_err().to_string();
        assert!(err.contains("`old_pid` has size 4 (expected 8)"), "{err}");
        let err = f.offset_of("nope", 4).unwrap_err().to_string();
        assert!(err.contains("field `nope` is missing"), "{err}");
        let err = f.data_loc_offset("pid").unwrap_err().to_string();
        assert!(err.contains("not a __data_loc"), "{err}");
    }

    #[test]
    fn syscall_argument_at_an_unexpected_offset_is_rejected() {
        let f = format("\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int fd;\toffset:24;\tsize:8;\tsigned:0;");
        let err = f.expect_syscall_arg(0, "fd").unwrap_err().to_string();
        assert!(err.contains("offset 24, the probes read it at 16"), "{err}");
    }

    #[test]
    fn garbage_lines_are_ignored() {
        let f =
            format("field:\nfield:int x;\toffset:abc;\tsize:4;\nfield:;offset:1;size:1;\nrandom");
        assert!(f.fields.is_empty(), "{:?}", f.fields);
    }
}
