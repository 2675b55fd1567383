//! What an operator can get wrong, against real servers: credentials, addresses, a stream
//! or key that cannot take the batches. Each is named in the log with what to do, counted
//! in `zastava_runtime_sink_errors_total`, and the daemon keeps running (batches wait in
//! the spool, NDJSON keeps flowing). And what is right: TLS, tokens, passwords, a tenant.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::{
    assert_exactly_once,
    common::{backend::Pki, TempDir},
    errors,
    nats_harness::{create_stream, read_stream, stream_info, Access, Auth, Cluster, Options},
    nats_sink, observer, pending,
    redis_harness::{self, connect, range},
    redis_sink, set, shipped, sink_value, spool_dir, wait_metrics, Load,
};

const STREAM: &str = "ZASTAVA_RUNTIME_EVENTS";

/// The observer is alive and reporting: a fresh open of ours shows up in its NDJSON.
fn still_reporting(observer: &crate::common::Observer) {
    let load = Load::start("alive", Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(50));
    let paths = load.finish();
    let path = paths[0].clone();
    observer.wait_for("an open after the failures", |e| e["path"] == path.as_str());
}

#[test]
fn wrong_credentials_are_named_and_counted_and_delivery_resumes_once_they_are_fixed() {
    let nats = Cluster::start(
        1,
        &Options {
            auth: Auth::UserPassword("observer".into(), "right-nats".into()),
            ..Options::default()
        },
    );
    let redis = redis_harness::Server::start(&redis_harness::Options {
        password: Some("right-redis".into()),
        ..redis_harness::Options::default()
    });
    let secrets = TempDir::new("zastava-secrets");
    let nats_password = secrets.path().join("nats-password");
    let redis_password = secrets.path().join("redis-password");
    std::fs::write(&nats_password, "wrong-nats\n").unwrap();
    std::fs::write(&redis_password, "wrong-redis\n").unwrap();
    let (_dir, spool) = spool_dir();
    let mut args = nats_sink(&nats.urls(), 1);
    args.extend(redis_sink(&redis.url()));
    args.extend(set(&[
        "sinks.nats.user=\"observer\"".into(),
        format!(
            "sinks.nats.password_file={:?}",
            nats_password.to_str().unwrap()
        ),
        format!(
            "sinks.redis.password_file={:?}",
            redis_password.to_str().unwrap()
        ),
    ]));
    let observer = observer(&spool, &args);
    let load = Load::start("creds", Duration::from_millis(20));
    observer.wait_for_log("nats: the NATS server refused the credentials (authorization violation");
    observer.wait_for_log("redis: Redis at redis://127.0.0.1:");
    let metrics = wait_metrics(
        &observer,
        "both refusals counted",
        Duration::from_secs(30),
        |m| {
            errors(m, "nats", "auth") > 0.0
                && errors(m, "redis", "auth") > 0.0
                && pending(m, "nats") >= 2.0
                && pending(m, "redis") >= 2.0
        },
    );
    assert_eq!(shipped(&metrics, "nats") + shipped(&metrics, "redis"), 0.0);
    assert!(
        observer
            .stderr()
            .contains("refused the credentials or the command"),
        "{}",
        observer.stderr()
    );
    still_reporting(&observer);

    // Fixed the way a rotated secret is: the files are read again at the next connect.
    std::fs::write(&nats_password, "right-nats\n").unwrap();
    std::fs::write(&redis_password, "right-redis\n").unwrap();
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    observer.wait_for("the last open", |e| e["path"] == last.as_str());
    wait_metrics(&observer, "both caught up", Duration::from_secs(30), |m| {
        pending(m, "nats") == 0.0 && pending(m, "redis") == 0.0
    });
    let stopped = observer.stop();
    let auth = Auth::UserPassword("observer".into(), "right-nats".into());
    let on_nats = assert_exactly_once(
        &crate::jetstream_batches(&read_stream(&nats.urls(), &auth, STREAM, "scanner")),
        &paths,
    );
    let mut client = connect(&redis.url(), Some("right-redis"), None);
    let on_redis = assert_exactly_once(
        &crate::redis_streams::batches(&range(&mut client, "zastava.runtime.events")),
        &paths,
    );
    assert_eq!(on_nats, on_redis);
    assert_eq!(stopped.summary["delivery"]["shipped"], on_nats);
}

#[test]
fn unreachable_servers_are_named_and_counted_and_the_daemon_keeps_running() {
    let closed = zastava_testing::servers::free_port();
    let (_dir, spool) = spool_dir();
    let mut args = nats_sink(&[format!("nats://127.0.0.1:{closed}")], 1);
    args.extend(redis_sink(&format!("redis://127.0.0.1:{closed}")));
    let observer = observer(&spool, &args);
    let load = Load::start("unreachable", Duration::from_millis(20));
    observer.wait_for_log(&format!(
        "nats: cannot connect to any NATS server (nats://127.0.0.1:{closed})"
    ));
    observer.wait_for_log(&format!(
        "redis: cannot reach Redis at redis://127.0.0.1:{closed}"
    ));
    let metrics = wait_metrics(
        &observer,
        "the batches waiting",
        Duration::from_secs(30),
        |m| {
            errors(m, "nats", "connect") >= 2.0
                && errors(m, "redis", "connect") >= 2.0
                && pending(m, "nats") >= 2.0
                && pending(m, "redis") >= 2.0
        },
    );
    assert_eq!(
        sink_value(&metrics, "zastava_runtime_sink_connected", "nats"),
        0.0
    );
    assert_eq!(
        sink_value(&metrics, "zastava_runtime_sink_connected", "redis"),
        0.0
    );
    still_reporting(&observer);
    drop(load);
    let stopped = observer.stop();
    // Nothing shipped, nothing lost: it all waits in the spool for the next start.
    let delivery = &stopped.summary["delivery"];
    assert_eq!(delivery["shipped"], 0);
    assert!(
        delivery["inFlightSpool"].as_u64().unwrap() > 0,
        "{delivery}"
    );
    assert_eq!(
        delivery["sinks"]["nats"]["inFlightSpool"],
        delivery["inFlightSpool"]
    );
    assert!(
        stopped.stderr.contains("event account"),
        "{}",
        stopped.stderr
    );
    for sink in ["nats", "redis"] {
        let line = stopped
            .stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("sink {sink} ")))
            .unwrap_or_else(|| panic!("no summary line for {sink}:\n{}", stopped.stderr));
        assert!(line.contains("shipped=0 dropped="), "{line}");
    }
    assert!(!stopped.stderr.contains("UNBALANCED"), "{}", stopped.stderr);
}

#[test]
fn a_stream_or_key_that_cannot_take_the_batches_is_refused_by_name() {
    let nats = Cluster::start(1, &Options::default());
    let urls = nats.urls();
    // An operator's stream of the same name, for other subjects, with a short window.
    create_stream(
        &urls,
        &Auth::None,
        stream::Config {
            name: STREAM.into(),
            subjects: vec!["zastava.other.>".into()],
            duplicate_window: Duration::from_secs(1),
            ..stream::Config::default()
        },
    );
    let redis = redis_harness::Server::start(&redis_harness::Options::default());
    let mut client = connect(&redis.url(), None, None);
    let _: () = redis::cmd("SET")
        .arg("zastava.runtime.events")
        .arg("not a stream")
        .query(&mut client)
        .unwrap();
    let (_dir, spool) = spool_dir();
    let mut args = nats_sink(&urls, 1);
    args.extend(redis_sink(&redis.url()));
    let observer = observer(&spool, &args);
    let load = Load::start("incompatible", Duration::from_millis(20));
    observer.wait_for_log("stream ZASTAVA_RUNTIME_EVENTS does not take subject zastava.runtime.events (its subjects: [\"zastava.other.>\"])");
    observer.wait_for_log(
        "stream ZASTAVA_RUNTIME_EVENTS drops duplicates only within 1s, shorter than the 3s",
    );
    observer.wait_for_log("the key zastava.runtime.events is a string, not a stream; rename it, or set sinks.redis.stream");
    wait_metrics(
        &observer,
        "both refusals counted",
        Duration::from_secs(30),
        |m| {
            errors(m, "nats", "stream_config") > 0.0
                && errors(m, "redis", "wrong_type") > 0.0
                && pending(m, "nats") >= 2.0
        },
    );
    still_reporting(&observer);
    drop(load);
    observer.stop();
    // Neither was touched.
    let info = stream_info(&urls, &Auth::None, STREAM);
    assert_eq!(info.state.messages, 0);
    assert_eq!(info.config.subjects, ["zastava.other.>"]);
    let value: String = redis::cmd("GET")
        .arg("zastava.runtime.events")
        .query(&mut client)
        .unwrap();
    assert_eq!(value, "not a stream");
}

#[test]
fn tls_tokens_passwords_and_a_tenant_subject_deliver() {
    let pki = Pki::generate();
    let nats = Cluster::start(
        1,
        &Options {
            auth: Auth::Token("nats-token".into()),
            tls: Some((pki.server_cert.clone(), pki.server_key.clone())),
            ..Options::default()
        },
    );
    let redis = redis_harness::Server::start(&redis_harness::Options {
        password: Some("redis-password".into()),
        tls: Some((
            pki.server_cert.clone(),
            pki.server_key.clone(),
            pki.ca.clone(),
        )),
        ..redis_harness::Options::default()
    });
    let secrets = TempDir::new("zastava-secrets");
    std::fs::write(secrets.path().join("token"), "nats-token").unwrap();
    std::fs::write(secrets.path().join("password"), "redis-password").unwrap();
    let urls: Vec<String> = nats
        .urls()
        .iter()
        .map(|u| u.replace("nats://", "tls://"))
        .collect();
    let (_dir, spool) = spool_dir();
    let mut args = nats_sink(&urls, 1);
    args.extend(redis_sink(&redis.url()));
    let file = |name: &str| secrets.path().join(name).to_str().unwrap().to_owned();
    args.extend(set(&[
        format!("sinks.nats.token_file={:?}", file("token")),
        format!("sinks.nats.ca_file={:?}", pki.ca.to_str().unwrap()),
        "sinks.nats.tenant=\"acme\"".into(),
        format!("sinks.redis.password_file={:?}", file("password")),
        format!("sinks.redis.ca_file={:?}", pki.ca.to_str().unwrap()),
    ]));
    assert!(redis.url().starts_with("rediss://"));
    let observer = observer(&spool, &args);
    let load = Load::start("tls", Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    observer.wait_for("the last open", |e| e["path"] == last.as_str());
    wait_metrics(&observer, "both delivered", Duration::from_secs(30), |m| {
        pending(m, "nats") == 0.0 && pending(m, "redis") == 0.0 && shipped(m, "nats") > 0.0
    });
    observer.stop();
    let access = Access {
        auth: Auth::Token("nats-token".into()),
        ca: Some(pki.ca.clone()),
    };
    let stored = read_stream(&urls, access, STREAM, "scanner");
    assert!(stored
        .iter()
        .all(|m| m.subject == "zastava.runtime.events.acme"));
    let on_nats = assert_exactly_once(&crate::jetstream_batches(&stored), &paths);
    let mut client = connect(&redis.url(), Some("redis-password"), Some(&pki.ca));
    let on_redis = assert_exactly_once(
        &crate::redis_streams::batches(&range(&mut client, "zastava.runtime.events")),
        &paths,
    );
    assert_eq!(on_nats, on_redis);
}

#[test]
fn a_batch_larger_than_the_servers_max_payload_is_dead_lettered_and_counted() {
    let nats = Cluster::start(
        1,
        &Options {
            max_payload: Some(1024),
            ..Options::default()
        },
    );
    let (dir, spool) = spool_dir();
    let observer = observer(&spool, &nats_sink(&nats.urls(), 1));
    // A burst: one batch of far more than 1 KiB, gzip-encoded.
    let load = Load::start("oversized", Duration::ZERO);
    std::thread::sleep(Duration::from_millis(100));
    let paths = load.finish();
    assert!(paths.len() > 100, "{}", paths.len());
    let last = paths.last().unwrap().clone();
    observer.wait_for("the last open", |e| e["path"] == last.as_str());
    let metrics = wait_metrics(
        &observer,
        "the burst settled",
        Duration::from_secs(30),
        |m| {
            pending(m, "nats") == 0.0
                && m.value(
                    "zastava_runtime_sink_batches_total",
                    "{sink=\"nats\",outcome=\"rejected\"}",
                )
                .unwrap_or(0.0)
                    > 0.0
        },
    );
    let stopped = observer.stop();
    let letters = std::fs::read_to_string(spool.join("dead-letter.nats.ndjson")).unwrap();
    let letters: Vec<serde_json::Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ours = std::collections::HashSet::new();
    let mut dead_events = 0;
    for letter in &letters {
        assert_eq!(letter["sink"], "nats");
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains("larger than the server's max_payload"),
            "{letter}"
        );
        dead_events += letter["events"].as_u64().unwrap();
        for event in letter["batch"]["events"].as_array().unwrap() {
            if let Some(path) = event["path"].as_str() {
                ours.insert(path.to_owned());
            }
        }
    }
    assert!(
        paths.iter().all(|p| ours.contains(p)),
        "every open of the burst is in a dead letter"
    );
    let account = &stopped.summary["delivery"];
    assert_eq!(account["dropped"]["dead_letter"], dead_events, "{account}");
    assert_eq!(
        account["sinks"]["nats"]["dropped"]["dead_letter"],
        dead_events
    );
    assert!(
        metrics
            .value(
                "stella_runtime_events_dropped_total",
                "{stage=\"dead_letter\"}"
            )
            .unwrap()
            > 0.0
    );
    // Nothing of the burst in the stream.
    let stored = read_stream(&nats.urls(), &Auth::None, STREAM, "scanner");
    assert!(stored
        .iter()
        .flat_map(|m| m.events())
        .all(|e| !e["path"].as_str().is_some_and(|p| ours.contains(p))));
    drop(dir);
}

#[test]
fn a_password_rotated_on_the_servers_is_read_again_from_its_file_on_reconnect() {
    let mut nats = Cluster::start(
        1,
        &Options {
            auth: Auth::UserPassword("observer".into(), "old".into()),
            ..Options::default()
        },
    );
    let secrets = TempDir::new("zastava-secrets");
    let password = secrets.path().join("password");
    std::fs::write(&password, "old").unwrap();
    let (_dir, spool) = spool_dir();
    let mut args = nats_sink(&nats.urls(), 1);
    args.extend(set(&[
        "sinks.nats.user=\"observer\"".into(),
        format!("sinks.nats.password_file={:?}", password.to_str().unwrap()),
    ]));
    let observer = observer(&spool, &args);
    let load = Load::start("rotation", Duration::from_millis(20));
    wait_metrics(&observer, "deliveries", Duration::from_secs(30), |m| {
        shipped(m, "nats") > 0.0
    });
    // The secret is rotated: the file first, then the servers.
    std::fs::write(&password, "new").unwrap();
    nats.change_auth(Auth::UserPassword("observer".into(), "new".into()));
    let rotated = shipped(&observer.scrape(), "nats");
    observer.wait_for_log("a NATS server refused the credentials on reconnect");
    wait_metrics(
        &observer,
        "deliveries with the new password",
        Duration::from_secs(30),
        |m| shipped(m, "nats") > rotated && errors(m, "nats", "auth") > 0.0,
    );
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    observer.wait_for("the last open", |e| e["path"] == last.as_str());
    wait_metrics(&observer, "caught up", Duration::from_secs(30), |m| {
        pending(m, "nats") == 0.0
    });
    let stopped = observer.stop();
    let auth = Auth::UserPassword("observer".into(), "new".into());
    let stored = read_stream(&nats.urls(), &auth, STREAM, "scanner");
    let on_bus = assert_exactly_once(&crate::jetstream_batches(&stored), &paths);
    assert_eq!(stopped.summary["delivery"]["shipped"], on_bus);
}
