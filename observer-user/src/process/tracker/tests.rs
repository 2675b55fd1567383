use super::*;
use crate::{
    kernel::decode::{decode, tests as records, AF_UNIX},
    record::{Attribution, HostIdentity, Item, Record, RecordWriter, Timestamp},
};
use observer_common::{open_base, DedupState, Repeats};
use serde_json::{json, Value};

const BOOT_NS: u64 = 1_000_000_123;

fn tracker() -> Tracker {
    // A /proc with nothing in it: every process is unknown unless fork/exec said so.
    let empty = std::env::temp_dir().join(format!("zastava-empty-proc-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    Tracker::new(ProcessTable::new(empty))
}

/// The JSON a record becomes as a host event.
fn json_of(tracker: &mut Tracker, record: &[u8]) -> Option<Value> {
    let event = tracker.handle(&decode(record).unwrap())?;
    let host = HostIdentity::for_tests();
    let at = Timestamp::from_unix_ns(1_700_000_001_000_000_123).unix_ns();
    let item = Item::new(
        at,
        &host,
        Record::Edge {
            event,
            attribution: Attribution::host(),
        },
    );
    let mut json = Vec::new();
    RecordWriter::new(&host, "r1")
        .write(&mut json, &item)
        .unwrap();
    Some(serde_json::from_slice(&json).unwrap())
}

#[test]
fn exec_then_open_carry_the_new_image_as_the_kernel_has_it() {
    let mut t = tracker();
    // `/bin/server` is a symlink to the binary the kernel mapped.
    let exec = records::task().exec_seen(
        BOOT_NS,
        b"/bin/server",
        &[b"server", b"--port=8080"],
        Some(b"/opt/app/bin/server"),
        Some(b"/srv/app"),
    );
    let v = json_of(&mut t, &exec).unwrap();
    assert_eq!(
        v,
        json!({
            "schemaVersion": 1,
            "eventType": "edge",
            "eventId": "r1-1",
            "edgeType": "syscall",
            "timestamp": "2023-11-14T22:13:21.000000123Z",
            "node": "node-a",
            "hostId": "abc",
            "osRelease": "Test OS",
            "workloadId": "host:abc",
            "enrichment": "host",
            "cgroupId": 77,
            "process": {
                "pid": 4242, "tid": 4243, "ppid": null, "uid": 1000, "gid": 1001,
                "comm": "test", "exe": "/opt/app/bin/server", "args": ["server", "--port=8080"],
                "cwd": "/srv/app"
            },
            "syscall": "execve",
            "path": "/opt/app/bin/server",
            "requestedPath": "/bin/server",
            "args": ["server", "--port=8080"],
            "result": 0
        })
    );
    let open = records::open_record(
        b"/etc/app.conf",
        3,
        (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
    );
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(v["eventId"], "r1-2");
    assert_eq!(v["edgeType"], "fs");
    assert_eq!(v["path"], "/etc/app.conf");
    assert!(v.get("requestedPath").is_none(), "the same as path: {v}");
    assert_eq!(v["flags"], (libc::O_RDONLY | libc::O_CLOEXEC) as u32);
    assert_eq!(v["flagNames"], json!(["O_RDONLY", "O_CLOEXEC"]));
    assert_eq!(v["result"], 3);
    assert_eq!(v["process"]["exe"], "/opt/app/bin/server");
    assert_eq!(v["process"]["args"], json!(["server", "--port=8080"]));
    // The working directory belongs to the exec's moment, not to later events.
    assert!(v["process"].get("cwd").is_none(), "{v}");
    for absent in ["pathResolved", "pathFromCaller", "pathDeleted"] {
        assert!(v.get(absent).is_none(), "{absent} in {v}");
    }
    assert_eq!(t.stats().received(EventKind::Exec), 1);
    assert_eq!(t.stats().received(EventKind::Open), 1);
    assert_eq!(t.stats().unresolved_paths, 0);
}

#[test]
fn a_successful_open_is_the_file_the_kernel_opened_whatever_was_asked() {
    let mut t = tracker();
    let open = records::task().open_seen(
        BOOT_NS,
        b"../data/./link",
        open_base::FILE,
        Some(b"/var/lib/real/f2"),
        4,
        0,
    );
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(v["path"], "/var/lib/real/f2");
    assert_eq!(v["requestedPath"], "../data/./link");
    assert!(
        v.get("pathFromCaller").is_none() && v.get("pathResolved").is_none(),
        "{v}"
    );
}

#[test]
fn a_failed_relative_open_joins_the_directory_the_kernel_looked_it_up_from() {
    let mut t = tracker();
    let open = records::task().open_seen(
        BOOT_NS,
        b"./sub dir/../f2",
        open_base::CWD,
        Some(b"/tmp/work/data"),
        -2,
        0,
    );
    let v = json_of(&mut t, &open).unwrap();
    // `..` is kept: had "sub dir" been a symlink, its parent would be another directory.
    assert_eq!(v["path"], "/tmp/work/data/sub dir/../f2");
    assert_eq!(v["requestedPath"], "./sub dir/../f2");
    assert_eq!(v["process"]["cwd"], "/tmp/work/data");
    assert_eq!(v["pathFromCaller"], true);
    assert_eq!(v["result"], -2);
    assert!(v.get("pathResolved").is_none());

    // Relative to a directory descriptor: its path, and no cwd is claimed.
    let open =
        records::task().open_seen(BOOT_NS, b"f3", open_base::DIRFD, Some(b"/etc/app"), -13, 0);
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(v["path"], "/etc/app/f3");
    assert!(v["process"].get("cwd").is_none(), "{v}");
    assert_eq!(t.stats().paths_from_caller, 2);
}

#[test]
fn a_walk_that_did_not_reach_the_root_is_never_reported_as_a_path() {
    let mut t = tracker();
    // An open that worked, of a file whose path was too long to walk.
    let open = records::task().open_seen(BOOT_NS, b"deep/file", open_base::FILE, None, 3, 0);
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(v["path"], "deep/file");
    assert_eq!(v["pathResolved"], false);
    assert_eq!(v["pathTruncated"], true);
    assert_eq!(v["pathFromCaller"], true);
    assert_eq!(t.stats().unresolved_paths, 1);
    assert_eq!(t.stats().walks_truncated, 1);

    // A failed relative open with no directory to resolve it from (a bad dfd).
    let open = records::task().open_seen(BOOT_NS, b"x", open_base::NONE, None, -9, 0);
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(
        (v["path"].as_str(), v["pathResolved"].as_bool()),
        (Some("x"), Some(false))
    );
}

#[test]
fn bytes_that_are_not_utf8_are_kept_beside_their_text() {
    let mut t = tracker();
    let exec = records::task().exec_seen(
        BOOT_NS,
        b"./run-\xff",
        &[b"run-\xff", b"ok"],
        Some(b"/opt/run-\xff"),
        Some(b"/opt"),
    );
    let v = json_of(&mut t, &exec).unwrap();
    assert_eq!(v["path"], "/opt/run-\u{fffd}");
    assert_eq!(v["pathBytes"], "L29wdC9ydW4t/w==");
    assert_eq!(v["requestedPathBytes"], "Li9ydW4t/w==");
    assert_eq!(v["process"]["exeBytes"], "L29wdC9ydW4t/w==");
    assert_eq!(v["process"]["argsBytes"], json!(["cnVuLf8=", "b2s="]));
    assert_eq!(v["argsBytes"], json!(["cnVuLf8=", "b2s="]));
    assert!(v["process"].get("cwdBytes").is_none(), "/opt is UTF-8");

    let open = records::open_record(b"/d/bad-\xff-name", 3, 0);
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(v["path"], "/d/bad-\u{fffd}-name");
    assert_eq!(v["pathBytes"], "L2QvYmFkLf8tbmFtZQ==");
}

#[test]
fn without_the_kernel_view_edges_say_what_they_could_not_know() {
    let mut t = tracker();
    // An exec reported with the caller's strings only.
    let exec = records::exec_record(b"/usr/bin/tool", &[b"tool"], 1024);
    let v = json_of(&mut t, &exec).unwrap();
    assert_eq!(v["path"], "/usr/bin/tool");
    assert_eq!(v["pathResolved"], false);
    assert_eq!(v["process"]["exe"], Value::Null);
    // A relative open: nothing to resolve it against.
    let mut open = records::open_record(b"data/x.db", 3, 0);
    // Clear the kernel-view flag and the kernel path, as the programs without BTF write it.
    open = zastava_testing::records::without_kernel_view(&open);
    let v = json_of(&mut t, &open).unwrap();
    assert_eq!(v["path"], "data/x.db");
    assert_eq!(v["pathResolved"], false);
    assert_eq!(v["pathFromCaller"], true);
}

#[test]
fn a_failed_exec_is_the_callers_name_against_its_working_directory() {
    let mut t = tracker();
    let mut exec =
        records::task().exec_seen(BOOT_NS, b"./missing-tool", &[], None, Some(b"/srv/bin"));
    // The kernel-view probe sends a failed exec with its result and no executable.
    let result_at = std::mem::size_of::<observer_common::ExecRecord>() - 8;
    exec[result_at..result_at + 8].copy_from_slice(&(-i64::from(libc::ENOENT)).to_ne_bytes());
    let v = json_of(&mut t, &exec).unwrap();
    assert_eq!(v["path"], "/srv/bin/missing-tool");
    assert_eq!(v["requestedPath"], "./missing-tool");
    assert_eq!(v["result"], -libc::ENOENT);
    assert_eq!(v["pathFromCaller"], true);
    assert_eq!(v["process"]["cwd"], "/srv/bin");
    // The process did not change image: a later event still has its old one.
    assert_eq!(t.table().len(), 0, "a failed exec records no image");
}

#[test]
fn fexecve_of_a_process_already_gone_is_not_reported_as_resolved() {
    let mut t = tracker();
    let exec = records::exec_record(b"/dev/fd/3", &[b"app"], 1024);
    let v = json_of(&mut t, &exec).unwrap();
    assert_eq!(v["path"], "/dev/fd/3");
    assert_eq!(v["pathResolved"], false);
    assert!(
        v.get("code_id").is_none(),
        "no build-id from another process's fd 3: {v}"
    );
}

#[test]
fn connect_edges_for_each_family_and_source() {
    let mut t = tracker();
    let v = json_of(
        &mut t,
        &records::connect_record(&records::sockaddr_in([127, 0, 0, 1], 5432), -111),
    )
    .unwrap();
    assert_eq!(v["edgeType"], "net");
    assert_eq!(v["family"], "inet");
    assert_eq!(v["address"], "127.0.0.1");
    assert_eq!(v["port"], 5432);
    assert_eq!(v["result"], -111);
    // A refused connect leaves no address in the socket: it is the caller's.
    assert_eq!(v["addressFromCaller"], true);
    assert!(v.get("path").is_none());

    let mut un = AF_UNIX.to_ne_bytes().to_vec();
    un.extend_from_slice(b"\0abstract-\xfe");
    let v = json_of(&mut t, &records::connect_record(&un, 0)).unwrap();
    assert_eq!(v["family"], "unix");
    assert_eq!(v["path"], "@abstract-\u{fffd}");
    assert_eq!(v["pathBytes"], "QGFic3RyYWN0Lf4=");
    assert!(v.get("addressFromCaller").is_none(), "{v}");
    assert!(v.get("port").is_none());
    assert_eq!(t.stats().addresses_from_caller, 1);
}

#[test]
fn a_caller_sharing_its_memory_gets_no_requested_path_beside_the_kernels_file() {
    let mut t = tracker();
    // Another thread could have rewritten the string after the kernel read it.
    let opened = records::task().open_seen(
        BOOT_NS,
        b"./fake-file",
        open_base::FILE,
        Some(b"/srv/real-file"),
        4,
        0,
    );
    let v = json_of(&mut t, &records::with_flags(&opened, flags::MEMORY_SHARED)).unwrap();
    assert_eq!(v["path"], "/srv/real-file");
    assert!(v.get("requestedPath").is_none(), "{v}");
    assert_eq!(v["sharedMemory"], true);
    assert_eq!(t.stats().requested_paths_withheld, 1);

    // A failed open has only the caller's string: reported, with both marks.
    let failed = records::task().open_seen(
        BOOT_NS + 1,
        b"./missing",
        open_base::CWD,
        Some(b"/srv"),
        -2,
        0,
    );
    let v = json_of(&mut t, &records::with_flags(&failed, flags::MEMORY_SHARED)).unwrap();
    assert_eq!(v["path"], "/srv/missing");
    assert_eq!(v["requestedPath"], "./missing");
    assert_eq!(v["pathFromCaller"], true);
    assert_eq!(v["sharedMemory"], true);
    assert_eq!(t.stats().requested_paths_withheld, 1);

    // Without the mark, nothing is withheld.
    let v = json_of(&mut t, &opened).unwrap();
    assert_eq!(v["requestedPath"], "./fake-file");
    assert!(v.get("sharedMemory").is_none(), "{v}");
}

#[test]
fn repeats_of_an_edge_gone_quiet_are_its_last_report_without_what_was_asked_where() {
    let mut t = tracker();
    let open = records::task().open_seen(
        BOOT_NS,
        b"./f2",
        open_base::CWD,
        Some(b"/tmp/work/data"),
        -2,
        0,
    );
    let mut edge = t.handle(&decode(&open).unwrap()).unwrap();
    let repeats = Repeats {
        hash: 42,
        cumulative: 0,
        first_ns: 0,
        last_ns: 0,
        cpu: 0,
        _pad: 0,
    };
    t.deduplicated(&mut edge, repeats);
    // The report itself keeps what it was asked by and where.
    let EdgeDetail::Open { requested, .. } = &edge.detail else {
        panic!("{edge:?}")
    };
    assert_eq!(requested.as_ref().map(Raw::as_bytes), Some(&b"./f2"[..]));
    assert!(edge.process.cwd.is_some());

    let key = DedupKey {
        cgroup_id: edge.cgroup_id,
        hash: 42,
    };
    let state = DedupState {
        last_report_ns: BOOT_NS,
        first_ns: BOOT_NS + 200,
        last_ns: BOOT_NS + 300,
        suppressed: 3,
    };
    let (events, unnamed) = t.sweep_repeats(&[(key, 0, state)], BOOT_NS + 10_000, 0);
    assert_eq!(unnamed, 0);
    let mut expected = edge.clone();
    expected.seq = edge.seq + 1;
    expected.boot_ns = BOOT_NS + 300;
    expected.repeats = HeldRepeats {
        count: 3,
        first_ns: BOOT_NS + 200,
        last_ns: BOOT_NS + 300,
    };
    expected.repeats_only = true;
    expected.process.cwd = None;
    if let EdgeDetail::Open { requested, .. } = &mut expected.detail {
        *requested = None;
    }
    assert_eq!(events, vec![expected]);

    // An edge never reported is counted, not named.
    let other = DedupKey { hash: 43, ..key };
    let (events, unnamed) = t.sweep_repeats(&[(other, 1, state)], BOOT_NS + 10_000, 0);
    assert!(events.is_empty());
    assert_eq!(unnamed, 3);
}

#[test]
fn a_path_or_peer_read_from_a_shared_descriptor_table_says_so_and_so_do_its_repeats() {
    let mut t = tracker();
    let opened = records::task().open(BOOT_NS, b"/srv/file", 4, 0);
    let v = json_of(&mut t, &records::with_flags(&opened, flags::FILES_SHARED)).unwrap();
    assert_eq!(v["path"], "/srv/file");
    assert_eq!(v["filesShared"], true);
    assert!(v.get("sharedMemory").is_none(), "{v}");
    // Without the mark, the field is absent (never `false`).
    let v = json_of(&mut t, &opened).unwrap();
    assert!(v.get("filesShared").is_none(), "{v}");

    let connected =
        records::task().connect(BOOT_NS + 1, &records::sockaddr_in([127, 0, 0, 1], 5432), 0);
    let v = json_of(
        &mut t,
        &records::with_flags(&connected, flags::FILES_SHARED),
    )
    .unwrap();
    assert_eq!(
        (&v["address"], &v["port"]),
        (&json!("127.0.0.1"), &json!(5432))
    );
    assert_eq!(v["filesShared"], true);

    // Repeats of a marked edge, reported once it went quiet, carry the mark.
    let mut edge = t
        .handle(&decode(&records::with_flags(&opened, flags::FILES_SHARED)).unwrap())
        .unwrap();
    let repeats = Repeats {
        hash: 7,
        cumulative: 0,
        first_ns: 0,
        last_ns: 0,
        cpu: 0,
        _pad: 0,
    };
    t.deduplicated(&mut edge, repeats);
    let key = DedupKey {
        cgroup_id: edge.cgroup_id,
        hash: 7,
    };
    let state = DedupState {
        last_report_ns: BOOT_NS,
        first_ns: BOOT_NS + 200,
        last_ns: BOOT_NS + 300,
        suppressed: 2,
    };
    let (events, _) = t.sweep_repeats(&[(key, 0, state)], BOOT_NS + 10_000, 0);
    assert_eq!(events.len(), 1);
    assert!(
        events[0].repeats_only && events[0].files_shared,
        "{events:?}"
    );
}
