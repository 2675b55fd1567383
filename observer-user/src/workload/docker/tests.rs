//! The client against sockets that answer as scripted: what a real dockerd cannot be made
//! to do on demand (answer garbage, speak another protocol, cut an event in two).
//! tests/docker.rs runs it against a real dockerd.

use std::io::Write as _;

use super::{
    fake::{reply, serve, Dir, VERSION},
    *,
};

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn connects_with_the_engine_s_api_version_and_reads_containers() {
    let dir = Dir::new("ok");
    let seen = serve(&dir.socket(), |line, stream| {
        if line.starts_with("GET /version ") {
            reply(stream, "200 OK", VERSION);
        } else if line.starts_with("GET /v1.41/containers/json?all=1 ") {
            reply(
                stream,
                "200 OK",
                r#"[{"Id":"abc","State":"running","Names":["/x"]}]"#,
            );
        } else if line.starts_with("GET /v1.41/containers/gone/json ") {
            reply(
                stream,
                "404 Not Found",
                r#"{"message":"No such container: gone"}"#,
            );
        } else if line.starts_with("GET /v1.41/images/sha256:") {
            reply(
                stream,
                "200 OK",
                r#"{"Id":"sha256:1","RepoTags":null,"RepoDigests":["a@sha256:2"]}"#,
            );
        } else {
            reply(stream, "500 Internal Server Error", r#"{"message":"boom"}"#);
        }
    });
    let (client, version) = DockerClient::connect(&dir.socket(), TIMEOUT).await.unwrap();
    assert_eq!(
        version,
        RuntimeVersion {
            kind: RuntimeKind::Docker,
            name: "docker".into(),
            version: "20.10.24+dfsg1".into(),
            api_version: "1.41".into(),
        }
    );
    let listed = client.list_containers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].state.as_str()),
        ("abc", "running")
    );
    assert!(client.inspect_container("gone").await.unwrap().is_none());
    let image = client.inspect_image("sha256:1").await.unwrap().unwrap();
    assert_eq!(image.repo_tags, None);
    assert_eq!(image.repo_digests, Some(vec!["a@sha256:2".to_owned()]));
    let err = client.inspect_container("other").await.unwrap_err();
    assert_eq!(err.reason(), "http_status");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: GET /containers/{{id}}/json failed: HTTP 500: boom",
            dir.socket().display()
        )
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /version HTTP/1.1",
            "GET /v1.41/containers/json?all=1 HTTP/1.1",
            "GET /v1.41/containers/gone/json HTTP/1.1",
            "GET /v1.41/images/sha256:1/json HTTP/1.1",
            "GET /v1.41/containers/other/json HTTP/1.1",
        ]
    );
}

#[tokio::test]
async fn a_socket_that_is_not_docker_is_named_as_such() {
    let dir = Dir::new("not-http");
    serve(&dir.socket(), |_, stream| {
        let _ = stream.write_all(b"220 smtp.example ESMTP ready\r\n");
    });
    let err = DockerClient::connect(&dir.socket(), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "not_docker");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: this is not a Docker Engine API socket (it does not answer HTTP/1.1: ",
            dir.socket().display()
        )),
        "{text}"
    );
    assert!(text.ends_with("point docker.endpoint (--docker-endpoint) at dockerd's socket, or set docker.enabled = false (--no-docker)"), "{text}");

    let dir = Dir::new("web");
    serve(&dir.socket(), |_, stream| {
        reply(stream, "404 Not Found", "<html>no</html>");
    });
    let err = DockerClient::connect(&dir.socket(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("(GET /version answered HTTP 404)"),
        "{err}"
    );

    let dir = Dir::new("other-json");
    serve(&dir.socket(), |_, stream| {
        reply(
            stream,
            "200 OK",
            r#"{"name":"some other service","version":"3"}"#,
        );
    });
    let err = DockerClient::connect(&dir.socket(), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "not_docker");
    assert!(
        err.to_string()
            .contains("GET /version did not answer Docker's JSON: missing field `Version`"),
        "{err}"
    );

    let dir = Dir::new("old");
    serve(&dir.socket(), |_, stream| {
        reply(
            stream,
            "200 OK",
            r#"{"Version":"1.11.2","ApiVersion":"1.23"}"#,
        );
    });
    let err = DockerClient::connect(&dir.socket(), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: Docker Engine 1.11.2 speaks API 1.23, but the observer needs 1.24 or newer",
            dir.socket().display()
        )
    );

    let dir = Dir::new("missing");
    let err = DockerClient::connect(&dir.socket(), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "connect");
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_json_and_silence_are_errors_with_the_call_named() {
    let dir = Dir::new("garbage");
    serve(&dir.socket(), |line, stream| {
        if line.starts_with("GET /version ") {
            reply(stream, "200 OK", VERSION);
        } else if line.contains("/containers/json") {
            reply(stream, "200 OK", "{\"Id\": [1, 2,, garbage");
        } else {
            // Never answer.
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let (client, _) = DockerClient::connect(&dir.socket(), Duration::from_millis(300))
        .await
        .unwrap();
    let err = client.list_containers().await.unwrap_err();
    assert_eq!(err.reason(), "bad_reply");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: GET /containers/json: the reply is not what Docker Engine sends: ",
            dir.socket().display()
        )),
        "{text}"
    );
    assert!(
        text.contains("(reply starts \"{\\\"Id\\\": [1, 2,, garbage\")"),
        "{text}"
    );
    let err = client.inspect_container("abc").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: GET /containers/{{id}}/json did not answer within 300ms",
            dir.socket().display()
        )
    );
}

#[tokio::test]
async fn events_are_read_across_chunks_and_a_bad_one_ends_the_stream() {
    let dir = Dir::new("events");
    let seen = serve(&dir.socket(), |line, stream| {
        if line.starts_with("GET /version ") {
            reply(stream, "200 OK", VERSION);
            return;
        }
        let event = r#"{"Type":"container","Action":"die","Actor":{"ID":"c1","Attributes":{"exitCode":"3","name":"web"}},"time":1,"timeNano":1700000000123456789}"#;
        let (a, b) = event.split_at(40);
        let chunk = |stream: &mut std::os::unix::net::UnixStream, data: &str| {
            let _ = write!(stream, "{:x}\r\n{data}\r\n", data.len());
            let _ = stream.flush();
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        chunk(stream, a);
        chunk(stream, &format!("{b}\n\n"));
        chunk(
            stream,
            "{\"Type\":\"container\",\"Action\":\"start\",\"Actor\":{\"ID\":\"c2\"}}\n",
        );
        chunk(stream, "not an event\n");
        let _ = write!(stream, "0\r\n\r\n");
    });
    let (client, _) = DockerClient::connect(&dir.socket(), TIMEOUT).await.unwrap();
    let mut events = client.events().await.unwrap();
    let die = events.next().await.unwrap();
    assert_eq!(
        (die.kind.as_str(), die.action.as_str()),
        ("container", "die")
    );
    assert_eq!(die.actor.id, "c1");
    assert_eq!(die.time_nano, 1_700_000_000_123_456_789);
    let attributes = die.actor.attributes.unwrap();
    assert_eq!(attributes["exitCode"], "3");
    assert_eq!(attributes["name"], "web");
    let start = events.next().await.unwrap();
    assert_eq!(
        (
            start.action.as_str(),
            start.actor.id.as_str(),
            start.actor.attributes
        ),
        ("start", "c2", None)
    );
    let err = events.next().await.unwrap_err();
    assert_eq!(err.reason(), "bad_reply");
    assert!(
        err.to_string().contains("(event starts \"not an event\")"),
        "{err}"
    );
    let err = events.next().await.unwrap_err();
    assert_eq!(err.reason(), "stream_ended");
    // The filter asks for container events of the actions the watcher acts on.
    let request = seen.lock().unwrap()[1].clone();
    assert_eq!(
        request,
        "GET /v1.41/events?filters=%7B%22type%22:%5B%22container%22%5D%2C%22event%22:%5B%22create%22%2C%22start%22%2C%22die%22%2C%22destroy%22%2C%22rename%22%5D%7D HTTP/1.1"
    );
}

#[test]
fn times_versions_and_endpoints() {
    assert_eq!(
        parse_time_ns("2026-12-01T08:32:40.713348945Z"),
        1_796_113_960_713_348_945
    );
    assert_eq!(
        parse_time_ns("2026-12-01T08:32:40.5066372Z"),
        1_796_113_960_506_637_200
    );
    assert_eq!(parse_time_ns("0001-01-01T00:00:00Z"), 0);
    assert_eq!(parse_time_ns(""), 0);
    assert_eq!(parse_time_ns("yesterday"), 0);
    assert_eq!(parse_api_version("1.41"), Some((1, 41)));
    assert_eq!(parse_api_version("1"), None);
    assert_eq!(parse_api_version("x.y"), None);
    assert!(parse_api_version("1.9").unwrap() < MIN_API_VERSION);
    assert_eq!(encode("sha256:ab/c d"), "sha256:ab%2Fc%20d");
    assert_eq!(
        resolve_endpoint(Some("unix:///run/d.sock")),
        Some(PathBuf::from("/run/d.sock"))
    );
    assert_eq!(
        resolve_endpoint(Some("/tmp/d.sock")),
        Some(PathBuf::from("/tmp/d.sock"))
    );
}
