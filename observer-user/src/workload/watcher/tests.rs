use super::*;
use crate::{
    record::ContainerState,
    workload::{cri::CriClient, watcher::cri::CriSource},
};
use observer_common::identity::DigestKind;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// containerd 1.6, which the integration tests run, has no container event stream; a
/// runtime that has one is played by `fake_cri`.
#[tokio::test]
async fn a_runtime_event_stream_drives_discovery_without_polling() {
    use std::time::Instant;
    use zastava_testing::cri::{proto as fake, FakeRuntime};

    let dir = std::env::temp_dir().join(format!("zastava-fake-cri-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("cri.sock");
    let (runtime, events) = FakeRuntime::serve(&socket);
    let (client, version) = CriClient::connect(&socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(version.name, "fake-runtime");
    let (updates_tx, mut updates) = mpsc::channel(64);
    let (_requests, requests_rx) = mpsc::channel(8);
    let watcher = Watcher::new(
        CriSource::new(socket.clone(), Duration::from_secs(5), dir.join("no-proc")),
        WatcherConfig {
            // Were the watcher polling, nothing would be seen within the test.
            poll_interval: Duration::from_secs(3600),
        },
        Some(client),
        updates_tx,
        requests_rx,
    );
    tokio::spawn(watcher.run());
    let deadline = Instant::now() + Duration::from_secs(10);
    // The stream is opened first, then everything is listed once.
    while runtime.calls("GetContainerEvents") == 0 || runtime.calls("ListContainers") == 0 {
        assert!(
            Instant::now() < deadline,
            "the watcher never opened the stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed_at_start = runtime.calls("ListContainers");
    assert_eq!(listed_at_start, 1);

    // A pod and its container appear after the first listing; only the stream says so.
    let manifest = digest('a');
    let config = digest('c');
    {
        let mut state = runtime.state.lock().unwrap();
        state.sandboxes.push(fake::PodSandboxStatus {
            id: "sandbox-1".into(),
            metadata: Some(fake::PodSandboxMetadata {
                name: "checkout-7d9f8b6c5-x2x4q".into(),
                uid: "uid-1".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            labels: [
                ("stellaops.workload/id".to_owned(), "checkout".to_owned()),
                ("stellaops.workload/tenant".to_owned(), "acme".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        state.containers.push(fake::ContainerStatus {
            id: "container-1".into(),
            metadata: Some(fake::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            state: fake::ContainerState::ContainerRunning as i32,
            started_at: 1_700_000_000_000_000_000,
            image: Some(fake::ImageSpec {
                image: "registry.example/shop/checkout:1.4".into(),
                ..Default::default()
            }),
            image_ref: config.clone(),
            ..Default::default()
        });
        state
            .sandbox_of
            .insert("container-1".into(), "sandbox-1".into());
        state.images.push(fake::Image {
            id: config.clone(),
            repo_tags: vec!["registry.example/shop/checkout:1.4".into()],
            repo_digests: vec![format!("registry.example/shop/checkout@{manifest}")],
            size: 1,
        });
    }
    let event = |id: &str, kind: fake::ContainerEventType| fake::ContainerEventResponse {
        container_id: id.into(),
        container_event_type: kind as i32,
        ..Default::default()
    };
    events
        .send(Ok(event(
            "container-1",
            fake::ContainerEventType::ContainerStartedEvent,
        )))
        .await
        .unwrap();

    async fn next(updates: &mut mpsc::Receiver<Update>) -> Update {
        tokio::time::timeout(Duration::from_secs(10), updates.recv())
            .await
            .expect("no update in 10 s")
            .expect("watcher gone")
    }
    let container = loop {
        match next(&mut updates).await {
            Update::Container(info) => break info,
            Update::Pod(_) | Update::Connected(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(container.id, "container-1");
    assert_eq!(container.name, "app");
    assert_eq!(container.state, ContainerState::Running);
    assert_eq!(container.pod.sandbox_id, "sandbox-1");
    assert_eq!(container.pod.pod.namespace, "shop");
    assert_eq!(container.pod.pod.name, "checkout-7d9f8b6c5-x2x4q");
    assert_eq!(container.pod.identity.id, "checkout");
    assert_eq!(container.pod.identity.tenant.as_deref(), Some("acme"));
    assert_eq!(
        container.image.reference,
        "registry.example/shop/checkout:1.4"
    );
    assert_eq!(container.image.digest.as_deref(), Some(manifest.as_str()));
    assert_eq!(container.image.digest_kind, DigestKind::Manifest);

    // It is deleted: the stream says so, the runtime no longer lists it.
    runtime.state.lock().unwrap().containers.clear();
    events
        .send(Ok(event(
            "container-1",
            fake::ContainerEventType::ContainerDeletedEvent,
        )))
        .await
        .unwrap();
    match next(&mut updates).await {
        Update::ContainerGone(id) => assert_eq!(id, "container-1"),
        other => panic!("unexpected {other:?}"),
    }
    // One lookup per event, and no listing of everything beyond the first.
    assert_eq!(runtime.calls("ListContainers") - listed_at_start, 2);
    assert_eq!(runtime.calls("ListPodSandbox"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
