use super::*;
use crate::record::{EdgeDetail, ProcessSnapshot};
use observer_common::identity::PodRef;

const C1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SB: &str = "5555555555555555555555555555555555555555555555555555555555555555";

fn event(seq: u64, cgroup_id: u64) -> EdgeEvent {
    EdgeEvent {
        seq,
        boot_ns: seq,
        cgroup_id,
        process: ProcessSnapshot {
            pid: 1,
            tid: 1,
            ppid: None,
            uid: 0,
            gid: 0,
            comm: [0; 16],
            image: Arc::default(),
            cwd: None,
        },
        detail: EdgeDetail::Open {
            syscall: "openat",
            path: "/x".into(),
            requested: None,
            path_resolved: true,
            path_truncated: false,
            path_deleted: false,
            from_caller: false,
            flags: 0,
            result: 3,
        },
        code_id: None,
        repeats: crate::record::HeldRepeats::default(),
        repeats_only: false,
        dedup_key: None,
        memory_shared: false,
        files_shared: false,
    }
}

fn pod(namespace: &str) -> Arc<PodInfo> {
    Arc::new(PodInfo::new(
        SB.into(),
        PodRef {
            name: "web-1".into(),
            namespace: namespace.into(),
            uid: "u-1".into(),
            labels: Default::default(),
        },
    ))
}

fn container(state: ContainerState, digest: bool) -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: C1.into(),
        name: "app".into(),
        pod: pod("shop"),
        image: ImageInfo {
            reference: "app:1".into(),
            digest: Some("sha256:abc".into()),
            digest_kind: if digest {
                DigestKind::Manifest
            } else {
                DigestKind::Config
            },
        },
        state,
        started_at_ns: 1,
        finished_at_ns: 2,
        exit_code: Some(0),
        init_pid: Some(10),
        entrypoint: None,
        entrypoint_code_id: None,
    })
}

fn attributor(filter: NamespaceFilter) -> Attributor {
    let mut cgroups = CgroupMap::default();
    cgroups.insert(100, "/kubepods/besteffort/podu-1".into());
    cgroups.insert(101, format!("/kubepods/besteffort/podu-1/{C1}"));
    cgroups.insert(102, format!("/kubepods/besteffort/podu-1/{SB}"));
    cgroups.insert(1, "/".into());
    Attributor::new(
        AttributionConfig {
            wait: Duration::from_millis(250),
            retention: Duration::from_secs(60),
            cri: true,
            namespaces: filter,
        },
        cgroups,
    )
}

fn edges(out: &[Output]) -> Vec<(u64, Enrichment, Option<String>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Edge(e, a) => Some((
                e.seq,
                a.enrichment,
                a.container_id.as_deref().map(str::to_owned),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn events_wait_for_their_container_and_keep_their_order() {
    let mut a = attributor(NamespaceFilter::default());
    let now = Instant::now();
    let mut out = Vec::new();
    a.on_event(event(1, 101), now, &mut out);
    a.on_event(event(2, 1), now, &mut out);
    a.on_event(event(3, 101), now, &mut out);
    // The host event leaves at once; the container's two wait, one request is made.
    assert_eq!(edges(&out), vec![(2, Enrichment::Host, None)]);
    assert_eq!(a.take_requests(), vec![C1.to_owned()]);
    assert_eq!(a.waiting_events(), 2);
    out.clear();
    a.on_container(container(ContainerState::Running, true), &mut out);
    assert!(matches!(
        out[0],
        Output::Lifecycle(Lifecycle::Start, _, Enrichment::Complete)
    ));
    assert_eq!(
        edges(&out),
        vec![
            (1, Enrichment::Complete, Some(C1.into())),
            (3, Enrichment::Complete, Some(C1.into()))
        ]
    );
    // Later events resolve immediately, without another request.
    out.clear();
    a.on_event(event(4, 101), now, &mut out);
    assert_eq!(
        edges(&out),
        vec![(4, Enrichment::Complete, Some(C1.into()))]
    );
    assert!(a.take_requests().is_empty());
}

#[test]
fn late_containers_get_pending_events_and_then_a_patch() {
    let mut a = attributor(NamespaceFilter::default());
    let start = Instant::now();
    let mut out = Vec::new();
    a.on_event(event(7, 101), start, &mut out);
    a.on_tick(start + Duration::from_millis(100), &mut out);
    assert!(out.is_empty(), "still within the wait");
    a.on_tick(start + Duration::from_millis(300), &mut out);
    assert_eq!(edges(&out), vec![(7, Enrichment::Pending, Some(C1.into()))]);
    out.clear();
    a.on_container(container(ContainerState::Exited, false), &mut out);
    // Start and stop (it already exited), then the patch; no digest → partial.
    assert!(matches!(
        out[0],
        Output::Lifecycle(Lifecycle::Start, _, Enrichment::Partial)
    ));
    assert!(matches!(
        out[1],
        Output::Lifecycle(Lifecycle::Stop, _, Enrichment::Partial)
    ));
    match &out[2] {
        Output::Patch(info, seqs, Enrichment::Partial) => {
            assert_eq!(info.id, C1);
            assert_eq!(seqs, &vec![7]);
        }
        other => panic!("expected a patch, got {other:?}"),
    }
    assert_eq!(a.stats().patched_events, 1);
    assert_eq!(a.stats().containers_without_digest, 1);
}

#[test]
fn a_container_the_runtime_does_not_know_leaves_partial_at_once() {
    let mut a = attributor(NamespaceFilter::default());
    let now = Instant::now();
    let mut out = Vec::new();
    a.on_event(event(1, 101), now, &mut out);
    a.on_resolve_failed(C1, false, now, &mut out);
    assert_eq!(edges(&out), vec![(1, Enrichment::Partial, Some(C1.into()))]);
    out.clear();
    a.on_event(event(2, 101), now, &mut out);
    assert_eq!(edges(&out), vec![(2, Enrichment::Partial, Some(C1.into()))]);
    assert!(a.take_requests().len() == 1, "asked once, then cooled down");
}

#[test]
fn a_container_the_runtime_does_not_know_yet_is_asked_about_again() {
    let mut a = attributor(NamespaceFilter::default());
    let start = Instant::now();
    let mut out = Vec::new();
    a.on_event(event(1, 101), start, &mut out);
    assert_eq!(a.take_requests().len(), 1);
    a.on_resolve_failed(C1, true, start, &mut out);
    assert!(out.is_empty(), "still waiting");
    a.on_tick(start + Duration::from_millis(100), &mut out);
    assert!(a.take_requests().is_empty(), "not before the retry delay");
    a.on_tick(start + Duration::from_millis(210), &mut out);
    assert_eq!(a.take_requests(), vec![C1.to_owned()]);
    a.on_container(container(ContainerState::Running, true), &mut out);
    assert_eq!(
        edges(&out),
        vec![(1, Enrichment::Complete, Some(C1.into()))]
    );
}

#[test]
fn with_a_filter_unknown_containers_wait_longer_and_include_mode_drops_them() {
    let mut a = attributor(NamespaceFilter {
        include: vec!["shop".into()],
        exclude: vec![],
    });
    let start = Instant::now();
    let mut out = Vec::new();
    a.on_event(event(1, 101), start, &mut out);
    a.on_tick(start + Duration::from_secs(1), &mut out);
    assert!(
        out.is_empty(),
        "a filter makes events wait up to FILTER_WAIT"
    );
    a.on_tick(start + FILTER_WAIT, &mut out);
    assert!(
        out.is_empty(),
        "not shown to be in an included namespace: dropped"
    );
    assert_eq!(a.stats().filtered_in_userspace, 1);
}

#[test]
fn excluded_namespaces_mark_the_pod_cgroup_and_drop_stragglers() {
    let mut a = attributor(NamespaceFilter {
        include: vec![],
        exclude: vec!["shop".into()],
    });
    let mut out = Vec::new();
    a.on_pod(pod("shop"), &mut out);
    assert_eq!(
        a.take_marks(),
        vec![100],
        "the pod's cgroup, not the sandbox's"
    );
    a.on_container(container(ContainerState::Running, true), &mut out);
    assert_eq!(a.take_marks(), vec![101]);
    assert!(
        out.is_empty(),
        "no lifecycle events for an excluded namespace"
    );
    a.on_event(event(1, 101), Instant::now(), &mut out);
    assert!(out.is_empty());
    assert_eq!(a.stats().filtered_in_userspace, 1);
}

#[test]
fn include_mode_drops_host_events_and_marks_wanted_pods() {
    let filter = NamespaceFilter {
        include: vec!["shop".into()],
        exclude: vec![],
    };
    assert_eq!(filter.kernel_mode(), observer_common::filter::INCLUDE);
    assert!(!filter.wants(None));
    assert!(filter.wants(Some("shop")));
    assert!(!filter.wants(Some("other")));
    let mut a = attributor(filter);
    let mut out = Vec::new();
    a.on_pod(pod("shop"), &mut out);
    assert_eq!(a.take_marks(), vec![100]);
    a.on_event(event(1, 1), Instant::now(), &mut out);
    assert!(out.is_empty());
    assert_eq!(a.stats().filtered_in_userspace, 1);
}

#[test]
fn a_sandbox_under_a_shared_parent_marks_only_itself() {
    let mut cgroups = CgroupMap::default();
    cgroups.insert(50, "/k8s.io".into());
    cgroups.insert(51, format!("/k8s.io/{SB}"));
    let mut a = Attributor::new(
        AttributionConfig {
            wait: Duration::from_millis(1),
            retention: Duration::from_secs(1),
            cri: true,
            namespaces: NamespaceFilter {
                include: vec![],
                exclude: vec!["shop".into()],
            },
        },
        cgroups,
    );
    a.on_pod(pod("shop"), &mut Vec::new());
    assert_eq!(a.take_marks(), vec![51]);
}

#[test]
fn a_container_restarted_under_its_id_gets_a_start_and_stop_per_run() {
    let mut a = attributor(NamespaceFilter::default());
    let mut out = Vec::new();
    let run = |state, started: i64, finished: i64, code: i32| {
        let mut info = ContainerInfo::clone(&container(state, true));
        info.started_at_ns = started;
        info.finished_at_ns = finished;
        info.exit_code = (state == ContainerState::Exited).then_some(code);
        Arc::new(info)
    };
    a.on_container(run(ContainerState::Running, 10, 0, 0), &mut out);
    a.on_container(run(ContainerState::Exited, 10, 20, 3), &mut out);
    // Described again in the same run: nothing new.
    a.on_container(run(ContainerState::Exited, 10, 20, 3), &mut out);
    a.on_container(run(ContainerState::Running, 30, 0, 0), &mut out);
    a.on_container(run(ContainerState::Exited, 30, 40, 0), &mut out);
    let lifecycle: Vec<(Lifecycle, i64, Option<i32>)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Lifecycle(l, c, _) => Some((*l, c.started_at_ns, c.exit_code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lifecycle,
        [
            (Lifecycle::Start, 10, None),
            (Lifecycle::Stop, 10, Some(3)),
            (Lifecycle::Start, 30, None),
            (Lifecycle::Stop, 30, Some(0)),
        ]
    );
}
