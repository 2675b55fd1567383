use super::*;

/// The running kernel's BTF (every machine this runs on has it: the kernel view needs it).
fn kernel_types(data: &[u8]) -> Types<'_> {
    let mut wanted: Vec<&'static str> = TABLE.iter().map(|(_, name, _, _)| *name).collect();
    wanted.extend(["task_struct", "qstr"]);
    Types::parse(data, VMLINUX_BTF, &wanted).expect("the kernel's BTF parses")
}

#[test]
fn every_member_the_probes_read_resolves_with_its_shape() {
    let data = std::fs::read(VMLINUX_BTF).expect("the kernel publishes its BTF");
    let types = kernel_types(&data);
    let members = members(&types).expect("every member resolves");
    assert_eq!(members.len(), TABLE.len());
    let offsets = offsets(&members).expect("the layouts are the ones the probes assume");
    // Members reached through anonymous unions and structs.
    let len = types.member("qstr", &["len"]).unwrap();
    assert_eq!((len.offset, len.shape), (4, Shape::Int(4)));
    assert_eq!(types.member("qstr", &["hash"]).unwrap().offset, 0);
    // Nested embedded structs add up.
    let nested = types.member("mount", &["mnt", "mnt_root"]).unwrap();
    assert_eq!(nested.offset, offsets.mount_mnt + offsets.vfsmount_mnt_root);
    assert_eq!(nested.shape, Shape::Ptr);
    // The dentry window holds the name's fields.
    assert!(offsets.win_name + 8 <= 32 && offsets.win_len + 4 <= 32);
    assert_ne!(offsets.task_fs, offsets.task_files);
    // files_struct.count is an atomic_t: a struct whose int the probes read.
    let count = types.member("files_struct", &["count"]).unwrap();
    assert_eq!(count.shape, Shape::Aggregate(4));
    let counter = types.member("files_struct", &["count", "counter"]).unwrap();
    assert_eq!(
        (counter.offset, counter.shape),
        (count.offset, Shape::Int(4))
    );
    assert_eq!(offsets.files_count, counter.offset);
}

#[test]
fn bit_fields_missing_members_and_pointers_are_refused_by_name() {
    let data = std::fs::read(VMLINUX_BTF).expect("the kernel publishes its BTF");
    let types = kernel_types(&data);
    let err = types
        .member("task_struct", &["no_such_member"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the kernel's BTF has no member `task_struct.no_such_member`"
    );
    // task_struct.fs is a pointer: its members are not part of task_struct.
    let err = types.member("task_struct", &["fs", "root"]).unwrap_err();
    assert!(matches!(err, BtfError::NoMember(_)), "{err}");
    let err = types.member("no_such_struct", &["x"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the kernel's BTF has no struct `no_such_struct`"
    );
    // task_struct has bit fields (sched_reset_on_fork and friends).
    let err = types
        .member("task_struct", &["sched_reset_on_fork"])
        .unwrap_err();
    assert!(matches!(err, BtfError::Bitfield(_)), "{err}");
    // A shape that is not what the probes read is named.
    let bad = [("x", "task_struct", &["fs"][..], Want::Int(4))];
    let found = types.member(bad[0].1, bad[0].2).unwrap();
    assert!(!fits(found.shape, bad[0].3));
}

#[test]
fn a_file_that_is_not_btf_is_a_named_error() {
    let err = Types::parse(b"not btf at all", "/tmp/x", &[])
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("the kernel's BTF at /tmp/x cannot be parsed"),
        "{err}"
    );
    let err = resolve(Path::new("/nonexistent/vmlinux")).err().unwrap();
    assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
}
