use super::*;
use crate::record::{
    Attribution, ContainerState, EdgeDetail, EdgeEvent, HeldRepeats, Image, ImageInfo, Lifecycle,
    PodInfo, ProcessSnapshot,
};

fn container(id: &str, pod: &str) -> Arc<ContainerInfo> {
    use observer_common::identity::{DigestKind, PodRef};
    Arc::new(ContainerInfo {
        id: id.into(),
        name: "app".into(),
        pod: Arc::new(PodInfo::new(
            format!("sandbox-{pod}"),
            PodRef {
                name: pod.into(),
                namespace: "shop".into(),
                uid: format!("uid-{pod}"),
                labels: Default::default(),
            },
        )),
        image: ImageInfo {
            reference: "app:1".into(),
            digest: Some("sha256:ab".into()),
            digest_kind: DigestKind::Manifest,
        },
        state: ContainerState::Running,
        started_at_ns: 5,
        finished_at_ns: 0,
        exit_code: None,
        init_pid: Some(7),
        entrypoint: Some("/app".into()),
        entrypoint_code_id: None,
    })
}

fn edge(seq: u64, attribution: Attribution) -> Record {
    Record::Edge {
        event: EdgeEvent {
            seq,
            boot_ns: 0,
            cgroup_id: 9,
            process: ProcessSnapshot {
                pid: 3,
                tid: 3,
                ppid: Some(1),
                uid: 0,
                gid: 0,
                comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
                image: Arc::new(Image::default()),
                cwd: None,
            },
            detail: EdgeDetail::Open {
                syscall: "openat",
                path: format!("/data/{seq}").into(),
                requested: None,
                path_resolved: true,
                path_truncated: false,
                path_deleted: false,
                from_caller: false,
                flags: 0,
                result: 4,
            },
            code_id: None,
            repeats: HeldRepeats::default(),
            repeats_only: false,
            dedup_key: None,
            memory_shared: false,
            files_shared: false,
        },
        attribution,
    }
}

#[test]
fn records_of_alternating_workloads_carry_their_own_workload_fields() {
    let host = HostIdentity::for_tests();
    let (a, b) = (container("a1", "web"), container("b2", "db"));
    let known = |c: &Arc<ContainerInfo>, enrichment| Attribution {
        enrichment,
        container_id: Some(Arc::from(c.id.as_str())),
        container: Some(Arc::clone(c)),
    };
    let records = [
        edge(1, known(&a, Enrichment::Complete)),
        edge(2, known(&a, Enrichment::Complete)),
        edge(3, known(&b, Enrichment::Complete)),
        edge(4, Attribution::host()),
        edge(
            5,
            Attribution {
                enrichment: Enrichment::Pending,
                container_id: Some(Arc::from("c3")),
                container: None,
            },
        ),
        edge(6, known(&a, Enrichment::Partial)),
        Record::Lifecycle {
            lifecycle: Lifecycle::Start,
            container: Arc::clone(&b),
            enrichment: Enrichment::Complete,
        },
        Record::Patch {
            container: Arc::clone(&a),
            seqs: vec![5],
            enrichment: Enrichment::Complete,
        },
    ];
    let mut shared = RecordWriter::new(&host, "r");
    let mut seen = Vec::new();
    for record in records {
        let item = Item::new(1_000, &host, record);
        let mut out = Vec::new();
        shared.write(&mut out, &item).unwrap();
        // The same as a writer that has rendered nothing before.
        let mut alone = Vec::new();
        RecordWriter::new(&host, "r")
            .write(&mut alone, &item)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&alone)
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        seen.push((
            v["eventType"].as_str().unwrap().to_owned(),
            v["containerId"].as_str().unwrap_or("-").to_owned(),
            v["workloadId"].as_str().unwrap().to_owned(),
            v["enrichment"].as_str().unwrap().to_owned(),
        ));
    }
    let expect = [
        ("edge", "a1", "shop/web", "complete"),
        ("edge", "a1", "shop/web", "complete"),
        ("edge", "b2", "shop/db", "complete"),
        ("edge", "-", "host:abc", "host"),
        ("edge", "c3", "container:c3", "pending"),
        ("edge", "a1", "shop/web", "partial"),
        ("containerStart", "b2", "shop/db", "complete"),
        ("enrichmentPatch", "a1", "shop/web", "complete"),
    ];
    let seen: Vec<(&str, &str, &str, &str)> = seen
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
        .collect();
    assert_eq!(seen, expect);
}

#[test]
fn docker_containers_say_so_and_carry_their_compose_service() {
    let host = HostIdentity::for_tests();
    let labels = [
        ("com.docker.compose.project", "shop"),
        ("com.docker.compose.service", "api"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mut info = ContainerInfo::clone(&container("d1", "unused"));
    info.name = "shop_api_1".into();
    info.pod = Arc::new(PodInfo::docker_container("d1".into(), "shop_api_1", labels));
    let docker = Arc::new(info);
    let record = Record::Lifecycle {
        lifecycle: Lifecycle::Start,
        container: Arc::clone(&docker),
        enrichment: Enrichment::Complete,
    };
    let mut out = Vec::new();
    RecordWriter::new(&host, "r")
        .write(&mut out, &Item::new(1_000, &host, record))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for (field, want) in [
        ("workloadId", "shop/api"),
        ("workloadIdSource", "derived"),
        ("containerRuntime", "docker"),
        ("composeProject", "shop"),
        ("composeService", "api"),
        ("containerName", "shop_api_1"),
        ("namespace", ""),
        ("pod", ""),
        ("podUid", ""),
    ] {
        assert_eq!(v[field], want, "{field} in {v}");
    }
    // A CRI pod's records do not name a runtime.
    let record = Record::Lifecycle {
        lifecycle: Lifecycle::Start,
        container: container("a1", "web"),
        enrichment: Enrichment::Complete,
    };
    let mut out = Vec::new();
    RecordWriter::new(&host, "r")
        .write(&mut out, &Item::new(1_000, &host, record))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v.get("containerRuntime").is_none(), "{v}");
    assert!(v.get("composeProject").is_none(), "{v}");
}

#[test]
fn records_carry_the_deployment_only_when_asked_to() {
    let deployment = zastava_platform::deployment::Deployment {
        tenant: Some("acme".into()),
        environment: Some("prod".into()),
        cluster: Some("prod-eu-1".into()),
    };
    // A pod whose own tenant label differs from the installation's.
    let mut info = ContainerInfo::clone(&container("a1", "web"));
    let mut pod = PodInfo::clone(&info.pod);
    pod.pod
        .labels
        .insert("stellaops.workload/tenant".into(), "team-a".into());
    info.pod = Arc::new(PodInfo::new(pod.sandbox_id.clone(), pod.pod.clone()));
    let info = Arc::new(info);
    let record = |host: &HostIdentity| {
        let record = Record::Lifecycle {
            lifecycle: Lifecycle::Start,
            container: Arc::clone(&info),
            enrichment: Enrichment::Complete,
        };
        let mut out = Vec::new();
        RecordWriter::new(host, "r")
            .write(&mut out, &Item::new(1_000, host, record))
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()
    };
    let off = HostIdentity::for_tests().with_deployment(deployment.clone(), false);
    let v = record(&off);
    assert!(v.get("deployment").is_none(), "{v}");
    let on = HostIdentity::for_tests().with_deployment(deployment, true);
    let v = record(&on);
    assert_eq!(
        v["deployment"],
        serde_json::json!({"tenant": "acme", "environment": "prod", "cluster": "prod-eu-1"}),
        "{v}"
    );
    // The pod's own tenant label is a workload field beside it, not replaced by it.
    assert_eq!(v["tenant"], "team-a", "{v}");
    // Nothing set: nothing written, even when asked.
    let empty = HostIdentity::for_tests().with_deployment(Default::default(), true);
    assert!(record(&empty).get("deployment").is_none());
}

#[test]
fn the_shared_marks_are_written_beside_each_other_by_both_writers() {
    let host = HostIdentity::for_tests();
    let mut record = edge(1, Attribution::host());
    let Record::Edge { event, .. } = &mut record else {
        unreachable!()
    };
    event.memory_shared = true;
    event.files_shared = true;
    let item = Item::new(1_000, &host, record);
    let (mut direct, mut serde) = (Vec::new(), Vec::new());
    RecordWriter::new(&host, "r")
        .write(&mut direct, &item)
        .unwrap();
    RecordWriter::new(&host, "r")
        .write_with_serde(&mut serde, &item)
        .unwrap();
    let text = String::from_utf8_lossy(&direct);
    assert_eq!(text, String::from_utf8_lossy(&serde));
    assert!(
        text.contains(r#""sharedMemory":true,"filesShared":true"#),
        "{text}"
    );
}
