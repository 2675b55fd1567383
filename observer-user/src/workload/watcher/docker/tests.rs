//! The Docker source against a scripted engine, for what a real one cannot be made to do on
//! demand: a container removed before it can be inspected, a die whose inspect would race a
//! removal. tests/docker.rs runs the same source against a real dockerd.

use std::{
    collections::HashMap,
    io::Write as _,
    sync::{mpsc as std_mpsc, Arc, Mutex},
    time::Duration,
};

use observer_common::identity::{DigestKind, IdSource};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::*;
use crate::{
    record::Origin,
    workload::{
        docker::fake::{reply, serve, Dir, VERSION},
        watcher::{Watcher, WatcherConfig},
    },
};

#[derive(Default)]
struct Engine {
    containers: HashMap<String, Value>,
    images: HashMap<String, Value>,
    events: Option<std_mpsc::Receiver<String>>,
}

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

fn image_id() -> String {
    format!("sha256:{}", "c".repeat(64))
}

fn inspect(id: &str, name: &str, status: &str, labels: Value) -> Value {
    json!({
        "Id": id, "Name": format!("/{name}"), "Image": image_id(),
        "State": {"Status": status, "Pid": 0, "ExitCode": 0,
                  "StartedAt": "2026-12-01T08:00:00.000000001Z",
                  "FinishedAt": "0001-01-01T00:00:00Z"},
        "Config": {"Image": "zastava.test/busybox:1.0", "Labels": labels},
    })
}

fn fake_engine(dir: &Dir) -> (Arc<Mutex<Engine>>, Arc<Mutex<Vec<String>>>) {
    let engine = Arc::new(Mutex::new(Engine::default()));
    let state = Arc::clone(&engine);
    let seen = serve(&dir.socket(), move |line, stream| {
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if path == "/version" {
            return reply(stream, "200 OK", VERSION);
        }
        if path.starts_with("/v1.41/events?") {
            let Some(events) = state.lock().unwrap().events.take() else {
                return reply(stream, "500 Internal Server Error", r#"{"message":"once"}"#);
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let _ = stream.flush();
            for event in events {
                let line = format!("{event}\n");
                let _ = write!(stream, "{:x}\r\n{line}\r\n", line.len());
                let _ = stream.flush();
            }
            let _ = write!(stream, "0\r\n\r\n");
            return;
        }
        let engine = state.lock().unwrap();
        if path == "/v1.41/containers/json?all=1" {
            let listed: Vec<Value> = engine
                .containers
                .values()
                .map(|c| json!({"Id": c["Id"], "State": c["State"]["Status"]}))
                .collect();
            return reply(stream, "200 OK", &Value::from(listed).to_string());
        }
        let found = if let Some(rest) = path.strip_prefix("/v1.41/containers/") {
            engine.containers.get(rest.trim_end_matches("/json"))
        } else if let Some(rest) = path.strip_prefix("/v1.41/images/") {
            engine.images.get(rest.trim_end_matches("/json"))
        } else {
            None
        };
        match found {
            Some(body) => reply(stream, "200 OK", &body.to_string()),
            None => reply(stream, "404 Not Found", r#"{"message":"No such object"}"#),
        }
    });
    (engine, seen)
}

async fn next(updates: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(10), updates.recv())
        .await
        .expect("no update within 10 s")
        .expect("the watcher is gone")
}

async fn next_container(updates: &mut mpsc::Receiver<Update>) -> Arc<ContainerInfo> {
    match next(updates).await {
        Update::Container(info) => info,
        other => panic!("expected a container, got {other:?}"),
    }
}

#[tokio::test]
async fn containers_are_described_from_listing_events_and_when_removed_from_events_alone() {
    let dir = Dir::new("source");
    let (engine, seen) = fake_engine(&dir);
    let (events_tx, events_rx) = std_mpsc::channel::<String>();
    let web = id('a');
    let sandbox = id('b');
    let app = id('d');
    {
        let mut e = engine.lock().unwrap();
        e.events = Some(events_rx);
        e.containers.insert(
            web.clone(),
            inspect(
                &web,
                "shop_api_1",
                "running",
                json!({"com.docker.compose.project": "shop", "com.docker.compose.service": "api"}),
            ),
        );
        e.images.insert(
            image_id(),
            json!({"Id": image_id(), "RepoTags": ["zastava.test/busybox:1.0"], "RepoDigests": []}),
        );
    }
    let (client, _) = DockerClient::connect(&dir.socket(), Duration::from_secs(5))
        .await
        .unwrap();
    let (updates_tx, mut updates) = mpsc::channel(64);
    let (requests, requests_rx) = mpsc::channel(8);
    let source = DockerSource::new(
        dir.socket(),
        Duration::from_secs(5),
        dir.path().join("proc"),
    );
    let watcher = Watcher::new(
        source,
        WatcherConfig {
            poll_interval: Duration::from_secs(3600),
        },
        Some(client),
        updates_tx,
        requests_rx,
    );
    tokio::spawn(watcher.run());

    // Listed at start: a Compose service, its image known by id only.
    let listed = next_container(&mut updates).await;
    assert_eq!(listed.id, web);
    assert_eq!(listed.name, "shop_api_1");
    assert_eq!(listed.state, ContainerState::Running);
    assert_eq!(listed.started_at_ns, 1_796_112_000_000_000_001);
    assert_eq!(
        (
            listed.pod.identity.id.as_str(),
            listed.pod.identity.id_source
        ),
        ("shop/api", IdSource::Derived)
    );
    assert_eq!(
        listed.pod.origin,
        Origin::DockerContainer {
            compose: Some(("shop".into(), "api".into()))
        }
    );
    assert_eq!(listed.pod.pod.namespace, "");
    assert_eq!(
        (listed.image.digest.clone(), listed.image.digest_kind),
        (Some(image_id()), DigestKind::Config)
    );
    assert_eq!(listed.image.reference, "zastava.test/busybox:1.0");

    // It dies: the engine's record of the exit.
    {
        let mut e = engine.lock().unwrap();
        let state = &mut e.containers.get_mut(&web).unwrap()["State"];
        state["Status"] = json!("exited");
        state["ExitCode"] = json!(137);
        state["FinishedAt"] = json!("2026-12-01T08:00:01.000000002Z");
    }
    let die = |id: &str, code: &str, at: i64| {
        json!({"Type": "container", "Action": "die", "timeNano": at,
               "Actor": {"ID": id, "Attributes": {"exitCode": code, "name": "x"}}})
        .to_string()
    };
    events_tx
        .send(die(&web, "137", 1_796_112_001_500_000_000))
        .unwrap();
    let died = next_container(&mut updates).await;
    assert_eq!(died.state, ContainerState::Exited);
    assert_eq!(died.exit_code, Some(137));
    assert_eq!(died.finished_at_ns, 1_796_112_001_000_000_002);
    assert_eq!(died.started_at_ns, listed.started_at_ns);

    // Removed as soon as it exited (`--rm`): the event's exit code and time.
    engine.lock().unwrap().containers.remove(&web);
    events_tx
        .send(die(&web, "0", 1_796_112_002_000_000_000))
        .unwrap();
    let removed = next_container(&mut updates).await;
    assert_eq!(removed.exit_code, Some(0));
    assert_eq!(removed.finished_at_ns, 1_796_112_002_000_000_000);
    assert_eq!(removed.pod.identity.id, "shop/api");
    let inspected_web = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&format!("/containers/{web}/json")))
        .count();
    assert_eq!(inspected_web, 3, "listing, then one inspection per die");

    // Created and removed before it could be inspected: described from the event.
    let gone = id('e');
    let create = json!({"Type": "container", "Action": "create", "timeNano": 5,
                        "Actor": {"ID": gone, "Attributes": {"name": "blink", "image": "zastava.test/busybox:1.0",
                                  "stellaops.workload/id": "blinker", "stellaops.workload/tenant": "acme"}}});
    events_tx.send(create.to_string()).unwrap();
    let blink = next_container(&mut updates).await;
    assert_eq!(blink.id, gone);
    assert_eq!(blink.name, "blink");
    assert_eq!(blink.state, ContainerState::Created);
    assert_eq!(
        (
            blink.pod.identity.id.as_str(),
            blink.pod.identity.tenant.as_deref()
        ),
        ("blinker", Some("acme"))
    );
    assert!(!blink.pod.pod.labels.contains_key("name"));
    // A tag says nothing certain about which image ran: no digest.
    assert_eq!(
        (blink.image.digest.clone(), blink.image.digest_kind),
        (None, DigestKind::Unknown)
    );
    events_tx
        .send(json!({"Type": "container", "Action": "destroy", "Actor": {"ID": gone}}).to_string())
        .unwrap();
    match next(&mut updates).await {
        Update::ContainerGone(id) => assert_eq!(id, gone),
        other => panic!("expected the removal, got {other:?}"),
    }

    // A pod cri-dockerd runs: the sandbox is the pod, the container belongs to it.
    {
        let mut e = engine.lock().unwrap();
        e.containers.insert(
            sandbox.clone(),
            inspect(
                &sandbox,
                "k8s_POD_web-1_shop_u-1_0",
                "running",
                json!({"io.kubernetes.docker.type": "podsandbox", "io.kubernetes.pod.name": "web-1",
                       "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.uid": "u-1",
                       "stellaops.workload/id": "web"}),
            ),
        );
        e.containers.insert(
            app.clone(),
            inspect(
                &app,
                "k8s_nginx_web-1_shop_u-1_0",
                "running",
                json!({"io.kubernetes.docker.type": "container", "io.kubernetes.sandbox.id": sandbox,
                       "io.kubernetes.container.name": "nginx", "io.kubernetes.pod.name": "web-1",
                       "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.uid": "u-1"}),
            ),
        );
    }
    events_tx
        .send(json!({"Type": "container", "Action": "start", "Actor": {"ID": app}}).to_string())
        .unwrap();
    let pod = match next(&mut updates).await {
        Update::Pod(pod) => pod,
        other => panic!("expected the pod, got {other:?}"),
    };
    assert_eq!(pod.sandbox_id, sandbox);
    assert_eq!(pod.origin, Origin::DockerPod);
    assert_eq!(
        (
            pod.pod.namespace.as_str(),
            pod.pod.name.as_str(),
            pod.pod.uid.as_str()
        ),
        ("shop", "web-1", "u-1")
    );
    assert_eq!(
        (pod.identity.id.as_str(), pod.identity.id_source),
        ("web", IdSource::Label)
    );
    let nginx = next_container(&mut updates).await;
    assert_eq!(nginx.id, app);
    assert_eq!(nginx.name, "nginx");
    assert!(Arc::ptr_eq(&nginx.pod, &pod));

    // Asked about a container the engine does not know: unknown, not worth asking again.
    requests.send(id('f')).await.unwrap();
    match next(&mut updates).await {
        Update::ResolveFailed { id: asked, retry } => assert_eq!((asked, retry), (id('f'), false)),
        other => panic!("expected a failed lookup, got {other:?}"),
    }

    // The stream ends (dockerd stopped): the watcher says so.
    drop(events_tx);
    match next(&mut updates).await {
        Update::Disconnected { runtime, reason } => {
            assert_eq!(runtime, RuntimeKind::Docker);
            assert!(reason.contains("the event stream ended"), "{reason}");
        }
        other => panic!("expected the disconnection, got {other:?}"),
    }
}

#[test]
fn docker_states() {
    assert_eq!(state_of("created"), ContainerState::Created);
    assert_eq!(state_of("running"), ContainerState::Running);
    assert_eq!(state_of("paused"), ContainerState::Running);
    for ended in ["exited", "dead", "removing", "restarting"] {
        assert_eq!(state_of(ended), ContainerState::Exited, "{ended}");
    }
    assert_eq!(state_of("rebooting"), ContainerState::Unknown);
}

#[tokio::test]
async fn an_engine_that_refuses_the_event_stream_is_polled() {
    let dir = Dir::new("poll");
    // No event stream: the scripted engine answers `/events` with HTTP 500.
    let (engine, seen) = fake_engine(&dir);
    let web = id('a');
    engine
        .lock()
        .unwrap()
        .containers
        .insert(web.clone(), inspect(&web, "web", "running", json!(null)));
    let (client, _) = DockerClient::connect(&dir.socket(), Duration::from_secs(5))
        .await
        .unwrap();
    let (updates_tx, mut updates) = mpsc::channel(64);
    let (_requests, requests_rx) = mpsc::channel(8);
    let source = DockerSource::new(
        dir.socket(),
        Duration::from_secs(5),
        dir.path().join("proc"),
    );
    let config = WatcherConfig {
        poll_interval: Duration::from_millis(50),
    };
    tokio::spawn(Watcher::new(source, config, Some(client), updates_tx, requests_rx).run());

    let listed = next_container(&mut updates).await;
    assert_eq!(
        (listed.name.as_str(), listed.state),
        ("web", ContainerState::Running)
    );
    // No labels at all (`null`): named after the container.
    assert_eq!(listed.pod.identity.id, "docker:web");
    {
        let mut e = engine.lock().unwrap();
        let state = &mut e.containers.get_mut(&web).unwrap()["State"];
        state["Status"] = json!("exited");
        state["ExitCode"] = json!(2);
        state["FinishedAt"] = json!("2026-12-01T08:00:03Z");
    }
    let exited = next_container(&mut updates).await;
    assert_eq!(
        (exited.state, exited.exit_code),
        (ContainerState::Exited, Some(2))
    );
    assert_eq!(exited.finished_at_ns, 1_796_112_003_000_000_000);
    engine.lock().unwrap().containers.clear();
    match next(&mut updates).await {
        Update::ContainerGone(id) => assert_eq!(id, web),
        other => panic!("expected the removal, got {other:?}"),
    }
    // Polling lists; it inspects only what changed.
    let seen = seen.lock().unwrap();
    let inspections = seen
        .iter()
        .filter(|l| l.contains(&format!("/containers/{web}/json")))
        .count();
    assert_eq!(inspections, 2, "{seen:?}");
    assert!(
        seen.iter()
            .filter(|l| l.contains("/containers/json?all=1"))
            .count()
            >= 3
    );
}
