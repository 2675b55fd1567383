use super::*;
use observer_common::{flags, SOCKADDR_CAPACITY};
use std::collections::BTreeSet;
use zastava_testing::records::{bytes_of, Task};

/// The task every test record describes.
pub(crate) fn task() -> Task {
    Task {
        tid: 4243,
        uid: 1000,
        gid: 1001,
        ..Task::new(4242, 77, "test")
    }
}

const BOOT_NS: u64 = 1_000_000_123;

pub(crate) fn header(kind: EventKind) -> EventHeader {
    task().header(kind, BOOT_NS)
}

pub(crate) fn exec_record(filename: &[u8], args: &[&[u8]], tail_size: usize) -> Vec<u8> {
    task().exec(BOOT_NS, filename, args, tail_size)
}

pub(crate) fn open_record(path: &[u8], result: i64, flags: u32) -> Vec<u8> {
    task().open(BOOT_NS, path, result, flags)
}

pub(crate) fn connect_record(sockaddr: &[u8], result: i64) -> Vec<u8> {
    task().connect(BOOT_NS, sockaddr, result)
}

pub(crate) use zastava_testing::records::{sockaddr_in, with_flags};

#[test]
fn exec_record_decodes_filename_and_argv() {
    let data = exec_record(b"/usr/bin/echo", &[b"echo", b"hello world", b""], 1024);
    let KernelEvent::Exec(e) = decode(&data).unwrap() else {
        panic!("not exec")
    };
    assert_eq!(e.filename, b"/usr/bin/echo");
    let args: Vec<&[u8]> = e.args.iter().collect();
    assert_eq!(args, vec![&b"echo"[..], b"hello world", b""]);
    assert_eq!(e.header.tgid, 4242);
    assert_eq!(e.old_tid, 4243);
    assert_eq!(&e.header.comm[..5], b"test\0");
}

#[test]
fn exec_without_args_has_none() {
    let data = exec_record(b"/bin/true", &[], 1024);
    let KernelEvent::Exec(e) = decode(&data).unwrap() else {
        panic!("not exec")
    };
    assert!(e.args.is_empty());
    assert_eq!(e.args.iter().count(), 0);
}

#[test]
fn truncated_last_argument_is_kept_partially() {
    // The kernel cut the last argument at the byte limit: no trailing NUL.
    let mut data = exec_record(b"/bin/x", &[b"x"], 0);
    let base = size_of::<ExecRecord>() + b"/bin/x".len();
    data.truncate(base);
    data.extend_from_slice(b"x\0partial");
    let mut record: ExecRecord = read(&data, "t").unwrap().0;
    record.args_len = 9;
    record.header.flags = flags::ARGS_TRUNCATED;
    data[..size_of::<ExecRecord>()].copy_from_slice(&bytes_of(&record));
    let KernelEvent::Exec(e) = decode(&data).unwrap() else {
        panic!("not exec")
    };
    let args: Vec<&[u8]> = e.args.iter().collect();
    assert_eq!(args, vec![&b"x"[..], b"partial"]);
}

#[test]
fn exec_with_lengths_beyond_the_record_is_rejected() {
    let mut data = exec_record(b"/bin/true", &[b"true"], 0);
    let mut record: ExecRecord = read(&data, "t").unwrap().0;
    record.args_len = 10_000;
    data[..size_of::<ExecRecord>()].copy_from_slice(&bytes_of(&record));
    assert_eq!(
        decode(&data).unwrap_err(),
        DecodeError::BadLength {
            what: "exec",
            field: "args",
            claimed: 10_000,
            available: 5
        }
    );
    record.filename_len = u32::MAX;
    data[..size_of::<ExecRecord>()].copy_from_slice(&bytes_of(&record));
    assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
}

#[test]
fn open_record_decodes() {
    let data = open_record(b"/etc/hostname", 3, libc::O_RDONLY as u32);
    let KernelEvent::Open(e) = decode(&data).unwrap() else {
        panic!("not open")
    };
    assert_eq!(e.path.path, Some(&b"/etc/hostname"[..]));
    assert_eq!(e.requested, b"/etc/hostname");
    assert_eq!(e.base, observer_common::open_base::FILE);
    assert_eq!(e.result, 3);
    assert_eq!(e.dfd, -100);
    assert_eq!(e.mode, 0o644);
}

#[test]
fn open_path_longer_than_record_is_rejected() {
    let mut data = open_record(b"/x", -2, 0);
    let mut record: OpenRecord = read(&data, "t").unwrap().0;
    record.path_len = 257;
    data[..size_of::<OpenRecord>()].copy_from_slice(&bytes_of(&record));
    assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
}

#[test]
fn every_truncation_of_every_record_is_an_error_not_a_panic() {
    let records = [
        exec_record(b"/bin/echo", &[b"echo", b"hi"], 1024),
        open_record(b"/tmp/file", 4, 0),
        connect_record(&sockaddr_in([127, 0, 0, 1], 80), 0),
        bytes_of(&ForkRecord {
            header: header(EventKind::Fork),
            child_tgid: 9,
            _pad: 0,
            clone_flags: 17,
        }),
        bytes_of(&ExitRecord {
            header: header(EventKind::Exit),
        }),
        cgroup_record(EventKind::CgroupMkdir, 9, b"/a/b"),
    ];
    for record in &records {
        assert!(decode(record).is_ok());
        for len in 0..size_of::<EventHeader>() + 8 {
            let cut = &record[..len.min(record.len())];
            if cut.len() == record.len() {
                continue;
            }
            let err = decode(cut).unwrap_err();
            assert_eq!(err.reason(), "too_short", "len {len}: {err}");
        }
    }
}

#[test]
fn unknown_kind_and_garbage_are_errors() {
    let mut data = open_record(b"/x", 0, 0);
    data[0..4].copy_from_slice(&99u32.to_ne_bytes());
    assert_eq!(decode(&data).unwrap_err(), DecodeError::UnknownKind(99));
    // Pseudo-random garbage of many lengths never panics.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = decode(&bytes);
    }
}

#[test]
fn any_byte_of_a_valid_record_changed_to_anything_is_decoded_or_refused_never_a_panic() {
    // Garbage rarely gets past the kind; corrupting one byte of a well-formed record
    // reaches every length, count and offset check behind it.
    let records = [
        exec_record(b"/bin/echo", &[b"echo", b"hi", b"there"], 1024),
        open_record(b"/tmp/file", 4, 0),
        connect_record(&sockaddr_in([127, 0, 0, 1], 80), 0),
        cgroup_record(EventKind::CgroupMkdir, 9, b"/a/b"),
    ];
    for record in &records {
        let (mut decoded, mut refused) = (0, BTreeSet::new());
        for at in 0..record.len() {
            for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bad = record.clone();
                bad[at] = value;
                match decode(&bad) {
                    Ok(_) => decoded += 1,
                    Err(err) => {
                        refused.insert(err.reason());
                    }
                }
            }
        }
        // Most bytes are payload (a changed path is still a record); the header's kind
        // and the lengths are checked.
        assert!(decoded > 0, "{refused:?}");
        assert!(refused.contains("unknown_kind"), "{refused:?}");
        assert!(
            refused.len() >= 2,
            "only {refused:?} for kind {}",
            record[0]
        );
    }
}

pub(crate) fn cgroup_record(kind: EventKind, id: u64, path: &[u8]) -> Vec<u8> {
    task().cgroup(BOOT_NS, kind, id, path)
}

#[test]
fn cgroup_records_decode() {
    let data = cgroup_record(EventKind::CgroupMkdir, 4242, b"/kubepods/besteffort/pod1");
    let KernelEvent::Cgroup(e) = decode(&data).unwrap() else {
        panic!("not cgroup")
    };
    assert!(e.created);
    assert_eq!(
        (e.id, e.level, e.path),
        (4242, 3, &b"/kubepods/besteffort/pod1"[..])
    );
    let data = cgroup_record(EventKind::CgroupRmdir, 7, b"/x");
    assert_eq!(decode(&data).unwrap().kind(), EventKind::CgroupRmdir);
    let mut data = cgroup_record(EventKind::CgroupMkdir, 1, b"/y");
    let mut record: CgroupRecord = read(&data, "t").unwrap().0;
    record.path_len = 300;
    data[..size_of::<CgroupRecord>()].copy_from_slice(&bytes_of(&record));
    assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
}

#[test]
fn fork_and_exit_records_decode() {
    let fork = bytes_of(&ForkRecord {
        header: header(EventKind::Fork),
        child_tgid: 31337,
        _pad: 0,
        clone_flags: 0x11,
    });
    assert_eq!(
        decode(&fork).unwrap(),
        KernelEvent::Fork(ForkEvent {
            header: header(EventKind::Fork),
            child_tgid: 31337,
            clone_flags: 0x11
        })
    );
    let exit = bytes_of(&ExitRecord {
        header: header(EventKind::Exit),
    });
    assert_eq!(decode(&exit).unwrap().kind(), EventKind::Exit);
}

#[test]
fn connect_inet_and_inet6() {
    let data = connect_record(&sockaddr_in([10, 1, 2, 3], 8443), -111);
    let KernelEvent::Connect(e) = decode(&data).unwrap() else {
        panic!("not connect")
    };
    assert_eq!(
        e.address,
        SocketAddress::Inet {
            address: Ipv4Addr::new(10, 1, 2, 3),
            port: 8443
        }
    );
    assert_eq!(e.result, -111);

    let mut v6 = AF_INET6.to_ne_bytes().to_vec();
    v6.extend_from_slice(&443u16.to_be_bytes());
    v6.extend_from_slice(&0u32.to_ne_bytes());
    v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    v6.extend_from_slice(&3u32.to_ne_bytes());
    assert_eq!(
        parse_sockaddr(&v6),
        SocketAddress::Inet6 {
            address: Ipv6Addr::LOCALHOST,
            port: 443,
            scope_id: 3
        }
    );
}

#[test]
fn connect_unix_path_abstract_unnamed_and_short() {
    let mut un = AF_UNIX.to_ne_bytes().to_vec();
    un.extend_from_slice(b"/run/containerd/containerd.sock\0");
    assert_eq!(
        parse_sockaddr(&un),
        SocketAddress::UnixPath(b"/run/containerd/containerd.sock")
    );
    let mut abs = AF_UNIX.to_ne_bytes().to_vec();
    abs.extend_from_slice(b"\0my-abstract");
    assert_eq!(
        parse_sockaddr(&abs),
        SocketAddress::UnixAbstract(b"my-abstract")
    );
    assert_eq!(
        parse_sockaddr(&AF_UNIX.to_ne_bytes()),
        SocketAddress::UnixUnnamed
    );
    // An AF_INET address cut short is unreadable, not a panic.
    assert_eq!(
        parse_sockaddr(&sockaddr_in([1, 2, 3, 4], 1)[..5]),
        SocketAddress::Unreadable
    );
    assert_eq!(parse_sockaddr(&[2]), SocketAddress::Unreadable);
    assert_eq!(
        parse_sockaddr(&16u16.to_ne_bytes()),
        SocketAddress::Other { family: 16 }
    );
    assert_eq!(
        parse_sockaddr(&AF_UNSPEC.to_ne_bytes()),
        SocketAddress::Unspecified
    );
}

#[test]
fn connect_with_sockaddr_len_beyond_capacity_is_rejected() {
    let mut data = connect_record(&sockaddr_in([1, 1, 1, 1], 53), 0);
    let mut record: ConnectRecord = read(&data, "t").unwrap().0;
    record.sockaddr_len = SOCKADDR_CAPACITY as u32 + 1;
    data[..size_of::<ConnectRecord>()].copy_from_slice(&bytes_of(&record));
    assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
}

#[test]
fn connect_flagged_unreadable() {
    let mut data = connect_record(&[], -14);
    let mut record: ConnectRecord = read(&data, "t").unwrap().0;
    record.header.flags = flags::ADDR_MISSING;
    data[..size_of::<ConnectRecord>()].copy_from_slice(&bytes_of(&record));
    let KernelEvent::Connect(e) = decode(&data).unwrap() else {
        panic!("not connect")
    };
    assert_eq!(e.address, SocketAddress::Unreadable);
}
