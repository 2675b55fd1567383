//! cgroup v2 ids and paths, and which container a cgroup belongs to.
//!
//! A task's cgroup id (from the probes) is the inode number of its cgroup directory in the
//! v2 hierarchy. The map is filled by walking the hierarchy once after the probes attach
//! and kept current by the `cgroup_mkdir`/`cgroup_rmdir` records, which arrive before the
//! first event of any task placed in a new cgroup. Container runtimes name a container's
//! cgroup after the container id, which is how an id leads to a container.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Finds the cgroup v2 mount (`/sys/fs/cgroup` on v2 hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones) in a mounts table.
pub fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// The cgroup v2 hierarchy that `root` (`observer.cgroup_root`) names: `root` itself when
/// it is one, else the cgroup2 mount below it — a hybrid host's `/sys/fs/cgroup` is a
/// tmpfs of v1 hierarchies, with v2 at `unified/`, and a v1 directory's inode numbers are
/// not the cgroup ids the probes report. `None` if there is no v2 hierarchy there.
pub fn cgroup2_at_or_below(root: &Path, mounts: &str) -> Option<PathBuf> {
    let found = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .filter(|mount| mount.starts_with(root))
        .min_by_key(|mount| mount.components().count());
    // A directory inside a v2 hierarchy (not itself a mount) has the v2 interface files.
    found.or_else(|| {
        root.join("cgroup.controllers")
            .is_file()
            .then(|| root.to_path_buf())
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The container id a cgroup path names, from its last component:
/// `<64 hex>` (cgroupfs driver: containerd's `/k8s.io/<id>`, kubelet's
/// `/kubepods/.../<id>`, Docker's `/docker/<id>`) or `<runtime>-<64 hex>.scope` (systemd
/// driver: `cri-containerd-`, `crio-`, Docker's `docker-<id>.scope` in `system.slice`).
pub fn container_id_of(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let id = match last.strip_suffix(".scope") {
        Some(scope) => {
            let (prefix, id) = scope.rsplit_once('-')?;
            // conmon (CRI-O's monitor) lives beside the container, not in it.
            if prefix.ends_with("conmon") {
                return None;
            }
            id
        }
        None => last,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupEntry {
    /// Path relative to the hierarchy root, starting with `/`.
    pub path: String,
    /// The container this cgroup belongs to: its own, or that of the nearest ancestor
    /// named after one (a container may create cgroups below its own).
    pub container_id: Option<String>,
}

/// cgroup id → path and container.
#[derive(Debug, Default)]
pub struct CgroupMap {
    entries: HashMap<u64, CgroupEntry>,
    by_path: HashMap<String, u64>,
}

impl CgroupMap {
    /// Walks the hierarchy under `root`. Directories that vanish during the walk are skipped.
    pub fn scan(root: &Path) -> Self {
        let mut map = CgroupMap::default();
        let mut stack = vec![(root.to_path_buf(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            map.insert(meta.ino(), rel.clone());
            let Ok(children) = fs::read_dir(&dir) else {
                continue;
            };
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = child.file_name();
                    let child_rel = if rel == "/" {
                        format!("/{}", name.to_string_lossy())
                    } else {
                        format!("{rel}/{}", name.to_string_lossy())
                    };
                    stack.push((child.path(), child_rel));
                }
            }
        }
        map
    }

    /// Records a cgroup (from a walk or a `cgroup_mkdir` record).
    pub fn insert(&mut self, id: u64, path: String) {
        let container_id = self.container_for(&path);
        if let Some(old) = self.entries.get(&id) {
            self.by_path.remove(&old.path);
        }
        self.by_path.insert(path.clone(), id);
        self.entries.insert(id, CgroupEntry { path, container_id });
    }

    /// A cgroup was removed. Its entry is kept until `forget`, so that events already in
    /// flight from its last tasks still resolve.
    pub fn forget(&mut self, id: u64) {
        if let Some(old) = self.entries.remove(&id) {
            self.by_path.remove(&old.path);
        }
    }

    pub fn get(&self, id: u64) -> Option<&CgroupEntry> {
        self.entries.get(&id)
    }

    /// The id of the cgroup at `path`, if known.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The cgroup named after `container_id`.
    pub fn id_of_container(&self, container_id: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, e)| container_id_of(&e.path) == Some(container_id))
            .map(|(&id, _)| id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn container_for(&self, path: &str) -> Option<String> {
        let mut current = path;
        loop {
            if let Some(id) = container_id_of(current) {
                return Some(id.to_owned());
            }
            current = &current[..current.rfind('/')?];
            if current.is_empty() {
                return None;
            }
        }
    }
}

/// The parent of a cgroup path (`/a/b` → `/a`).
pub fn parent_path(path: &str) -> Option<&str> {
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2b6a9d7e8f00112233445566778899aabbccddeeff001122334455667788";

    #[test]
    fn container_ids_from_cgroupfs_and_systemd_paths() {
        assert_eq!(
            container_id_of(&format!("/kubepods/besteffort/pod1234/{ID}")),
            Some(ID)
        );
        assert_eq!(container_id_of(&format!("/k8s.io/{ID}")), Some(ID));
        assert_eq!(
            container_id_of(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"
            )),
            Some(ID)
        );
        assert_eq!(
            container_id_of(&format!("/kubepods.slice/crio-{ID}.scope")),
            Some(ID)
        );
        assert_eq!(
            container_id_of(&format!("/kubepods.slice/crio-conmon-{ID}.scope")),
            None
        );
        assert_eq!(container_id_of("/system.slice/sshd.service"), None);
        assert_eq!(container_id_of("/"), None);
        assert_eq!(container_id_of(&format!("/x/{}", &ID[..63])), None);
    }

    #[test]
    fn docker_layouts_name_their_container() {
        // cgroupfs driver (Docker's default without systemd), on v2 and hybrid hosts.
        assert_eq!(container_id_of(&format!("/docker/{ID}")), Some(ID));
        // systemd driver (Docker's default under systemd on cgroup v2).
        assert_eq!(
            container_id_of(&format!("/system.slice/docker-{ID}.scope")),
            Some(ID)
        );
        // Kubernetes through cri-dockerd with the systemd driver.
        assert_eq!(
            container_id_of(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/docker-{ID}.scope"
            )),
            Some(ID)
        );
        // Docker's own service and the slice are not containers.
        assert_eq!(container_id_of("/system.slice/docker.service"), None);
        assert_eq!(container_id_of("/docker"), None);
        assert_eq!(container_id_of("/system.slice/docker-.scope"), None);
        // Cgroups a container makes below its own (systemd inside, cgroupns) are its own.
        let mut map = CgroupMap::default();
        map.insert(20, format!("/system.slice/docker-{ID}.scope"));
        map.insert(21, format!("/system.slice/docker-{ID}.scope/init.scope"));
        map.insert(22, format!("/docker/{ID}/worker"));
        map.insert(23, "/system.slice/docker.service".into());
        for (cgroup, want) in [(20, Some(ID)), (21, Some(ID)), (22, Some(ID)), (23, None)] {
            assert_eq!(
                map.get(cgroup).unwrap().container_id.as_deref(),
                want,
                "{cgroup}"
            );
        }
        assert_eq!(map.id_of_container(ID), Some(20));
    }

    #[test]
    fn nested_cgroups_belong_to_their_container() {
        let mut map = CgroupMap::default();
        map.insert(10, format!("/kubepods/pod1/{ID}"));
        map.insert(11, format!("/kubepods/pod1/{ID}/init.scope"));
        map.insert(12, "/kubepods/pod1".into());
        assert_eq!(map.get(10).unwrap().container_id.as_deref(), Some(ID));
        assert_eq!(map.get(11).unwrap().container_id.as_deref(), Some(ID));
        assert_eq!(map.get(12).unwrap().container_id, None);
        assert_eq!(map.id_of_container(ID), Some(10));
        assert_eq!(map.id_of("/kubepods/pod1"), Some(12));
        map.forget(12);
        assert_eq!(map.id_of("/kubepods/pod1"), None);
        assert_eq!(
            parent_path(&format!("/kubepods/pod1/{ID}")),
            Some("/kubepods/pod1")
        );
        assert_eq!(parent_path("/kubepods"), Some("/"));
    }

    #[test]
    fn cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            find_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(find_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            find_cgroup2_mount("cgroup2 /host\\040root/cg cgroup2 rw 0 0"),
            Some(PathBuf::from("/host root/cg"))
        );
    }

    #[test]
    fn a_hybrid_hosts_cgroup_root_leads_to_its_v2_hierarchy() {
        // A hybrid node's cgroup tree mounted into the observer's container at /host.
        let hybrid = "tmpfs /host/sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup /host/sys/fs/cgroup/cpu cgroup ro 0 0\n\
                      cgroup2 /host/sys/fs/cgroup/unified cgroup2 ro 0 0\n\
                      cgroup2 /sys/fs/cgroup cgroup2 ro 0 0\n";
        assert_eq!(
            cgroup2_at_or_below(Path::new("/host/sys/fs/cgroup"), hybrid),
            Some(PathBuf::from("/host/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /host/sys/fs/cgroup cgroup2 ro 0 0\n";
        assert_eq!(
            cgroup2_at_or_below(Path::new("/host/sys/fs/cgroup"), unified),
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
        // Not a prefix by characters: /host/sys/fs/cgroupX is not below /host/sys/fs/cgroup.
        let elsewhere = "cgroup2 /host/sys/fs/cgroupX cgroup2 ro 0 0\n";
        assert_eq!(
            cgroup2_at_or_below(Path::new("/nonexistent/host/sys/fs/cgroup"), elsewhere),
            None
        );
    }

    #[test]
    fn scan_matches_inode_numbers_of_this_machine() {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let Some(root) = find_cgroup2_mount(&mounts) else {
            panic!("this machine has no cgroup2 mount; the observer needs one to attribute events");
        };
        let map = CgroupMap::scan(&root);
        let root_ino = fs::metadata(&root).unwrap().ino();
        assert_eq!(map.get(root_ino).unwrap().path, "/");
        assert!(!map.is_empty());
    }
}
