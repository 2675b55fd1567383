//! Which installation a batch or a metric comes from: `runtime.tenant`,
//! `runtime.environment` and `runtime.deployment` on the batches the backend receives, on
//! records when asked, and `cluster` (with the other common labels) on every series both
//! binaries export — with the real binaries, over real HTTPS.

mod common;

use std::{collections::BTreeSet, path::Path, process::Command};

use common::{
    backend::{Pki, Receiver},
    batch_schema_violations, observer_bin, schema_violations, unique,
    webhook::{client, fresh_digest, pod_review, post_review, Webhook},
    webhook_bin, Observer, TempDir,
};

const CLUSTER: &str = "prod-eu-1";

/// The sample lines of a scrape (no comments, no blank lines).
fn samples(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The metric name of a sample line.
fn name_of(sample: &str) -> &str {
    sample.split(['{', ' ']).next().unwrap_or_default()
}

/// Every series starts its labels with the common ones, in name order.
fn assert_every_series_labelled(text: &str, common: &str) {
    let samples = samples(text);
    assert!(!samples.is_empty(), "an empty scrape");
    for sample in &samples {
        let name = name_of(sample);
        assert!(
            sample[name.len()..].starts_with(&format!("{{{common}")),
            "{sample} does not carry {common}:\n{text}"
        );
    }
}

/// The value of the series `name{labels}` in a scrape.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn open_unique(dir: &Path, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{}-{i}", unique("deployment")));
            drop(std::fs::File::create(&path).unwrap());
            path.to_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn the_backend_receives_batches_that_name_the_deployment_and_metrics_carry_it() {
    let pki = Pki::generate();
    let receiver = Receiver::start(&pki, false);
    let token = TempDir::new("zastava-token");
    std::fs::write(token.path().join("token"), "s3cret\n").unwrap();
    let spool = TempDir::new("zastava-spool");
    let ca = pki.ca.to_str().unwrap().to_owned();
    let token_file = token.path().join("token").to_str().unwrap().to_owned();
    let spool_dir = spool.path().to_str().unwrap().to_owned();
    let observer = Observer::start(&[
        "--no-cri",
        "--backend",
        &receiver.url,
        "--ca-file",
        &ca,
        "--token-file",
        &token_file,
        "--spool-dir",
        &spool_dir,
        "--metrics-addr",
        "127.0.0.1:0",
        "--tenant",
        "acme",
        "--environment",
        "prod",
        "--deployment",
        CLUSTER,
        "--metric-label",
        "team=secops",
    ]);
    let dir = TempDir::new("zastava-deployment");
    let paths = open_unique(dir.path(), 5);
    receiver.wait_until("the opens delivered", |received| {
        let delivered: BTreeSet<String> = received
            .iter()
            .flat_map(|r| r.events())
            .filter_map(|e| e["path"].as_str().map(str::to_owned))
            .collect();
        paths.iter().all(|p| delivered.contains(p))
    });
    // The shipper counts a delivery once the backend's reply is in.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let metrics = loop {
        let metrics = observer.scrape().0;
        if metrics.contains("zastava_runtime_backend_latency_ms_bucket")
            || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stopped = observer.stop();

    let received = receiver.received();
    assert!(!received.is_empty());
    for request in &received {
        let body = request.body.as_ref().expect("a JSON body");
        assert_eq!(body["tenant"], "acme", "{body}");
        assert_eq!(body["environment"], "prod", "{body}");
        assert_eq!(body["cluster"], CLUSTER, "{body}");
        assert_eq!(batch_schema_violations(body), None);
        // Records stay as they are: the envelope says where they come from.
        for event in request.events() {
            assert!(event.get("deployment").is_none(), "{event}");
        }
    }
    for event in &stopped.events {
        assert!(event.get("deployment").is_none(), "{event}");
    }

    // Every series, the exporter's and the event account's alike.
    let common = format!("cluster=\"{CLUSTER}\",team=\"secops\"");
    assert_every_series_labelled(&metrics, &common);
    let names: BTreeSet<&str> = samples(&metrics).into_iter().map(name_of).collect();
    for name in [
        "zastava_runtime_events_seen_total",
        "stella_runtime_events_dropped_total",
        "zastava_runtime_spool_bytes",
        "zastava_runtime_events_total",
        "zastava_runtime_backend_requests_total",
        "zastava_runtime_backend_latency_ms_bucket",
        "stella_runtime_events_lag_seconds_bucket",
    ] {
        assert!(names.contains(name), "no {name} in:\n{metrics}");
    }
    let seen = value(
        &metrics,
        &format!("zastava_runtime_events_seen_total{{{common}}}"),
    )
    .expect("the account's seen counter");
    assert!(seen >= paths.len() as f64, "{metrics}");
    // The account still balances with the labels on: seen = shipped + dropped + in flight.
    let sum = |name: &str| -> f64 {
        samples(&metrics)
            .into_iter()
            .filter(|s| name_of(s) == name)
            .filter_map(|s| s.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        seen,
        sum("zastava_runtime_events_shipped_total")
            + sum("stella_runtime_events_dropped_total")
            + sum("zastava_runtime_events_in_flight"),
        "{metrics}"
    );
    assert!(
        value(
            &metrics,
            &format!("zastava_runtime_backend_requests_total{{{common},outcome=\"delivered\"}}")
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[test]
fn with_include_deployment_every_record_names_the_deployment() {
    let observer = Observer::start(&[
        "--no-cri",
        "--tenant",
        "acme",
        "--deployment",
        CLUSTER,
        "--set",
        "ndjson.include_deployment=true",
    ]);
    let dir = TempDir::new("zastava-deployment");
    let paths = open_unique(dir.path(), 1);
    let event = observer.wait_for("the open", |e| e["path"] == paths[0].as_str());
    let stopped = observer.stop();
    assert_eq!(
        event["deployment"],
        serde_json::json!({"tenant": "acme", "cluster": CLUSTER}),
        "{event}"
    );
    assert!(!stopped.events.is_empty());
    for event in &stopped.events {
        assert_eq!(event["deployment"]["cluster"], CLUSTER, "{event}");
        assert_eq!(schema_violations(event), None);
    }
}

#[test]
fn every_series_of_the_webhook_carries_the_cluster() {
    let serving = Pki::generate();
    let backend_pki = Pki::generate();
    let backend = Receiver::start(&backend_pki, true);
    let webhook = Webhook::start(
        &serving,
        &backend.url,
        &backend_pki,
        &["--deployment", CLUSTER, "--environment", "prod"],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = runtime.block_on(async {
        let image = format!("registry.example/shop/web@{}", fresh_digest());
        let review = pod_review("uid-1", "shop", &[("containers", "web", &image)]);
        let reply = post_review(&client(&serving.ca), &webhook.url("/validate"), &review).await;
        assert_eq!(reply["response"]["allowed"], true, "{reply}");
        webhook.metrics().await
    });
    let common = format!("cluster=\"{CLUSTER}\"");
    assert_every_series_labelled(&metrics, &common);
    assert_eq!(
        value(
            &metrics,
            &format!("zastava_admission_decisions_total{{{common},decision=\"allow\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "zastava_admission_decision_seconds_bucket{{{common},le=\""
        )),
        "{metrics}"
    );
    // Only the cluster: the environment is on nothing the webhook exports but its
    // configuration.
    assert!(!metrics.contains("prod\""), "{metrics}");
}

/// `--check-config` of `binary` with `args` and `env`: (exit code, stdout, stderr).
fn check_config(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary)
        .args(args)
        .arg("--check-config")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The arguments of a webhook configuration valid but for what a test adds.
fn webhook_args(dir: &TempDir, pki: &Pki, runtime_table: &str) -> Vec<String> {
    let config = dir.path().join("webhook.toml");
    std::fs::write(
        &config,
        format!(
            "{runtime_table}\n[server]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[backend]\nurl = \"https://scanner.example\"\ntoken_file = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
        ),
    )
    .unwrap();
    vec![
        "serve".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

#[test]
fn both_binaries_show_the_deployment_and_refuse_a_bad_label_naming_the_key() {
    let dir = TempDir::new("zastava-check");
    let pki = Pki::generate();
    let observer_config = |table: &str| {
        let path = dir.path().join(format!("{}.toml", unique("observer")));
        std::fs::write(&path, table).unwrap();
        path.display().to_string()
    };

    // Layered like every key: the file, then the environment, then flags.
    let file =
        "[runtime]\ntenant = \"acme\"\nenvironment = \"staging\"\ndeployment = \"from-file\"\n";
    let env = [
        ("ZASTAVA__RUNTIME__ENVIRONMENT", "prod"),
        ("ZASTAVA__RUNTIME__METRICS__COMMON_LABELS__REGION", "eu"),
    ];
    let observer = [
        "run".to_owned(),
        "--config".to_owned(),
        observer_config(file),
        "--deployment".to_owned(),
        CLUSTER.to_owned(),
    ];
    let webhook = webhook_args(&dir, &pki, file);
    for (binary, args) in [
        (observer_bin(), &observer[..]),
        (webhook_bin(), &webhook[..]),
    ] {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        if binary == webhook_bin() {
            args.extend(["--deployment", CLUSTER]);
        }
        let (code, stdout, stderr) = check_config(binary, &args, &env);
        assert_eq!(code, 0, "{binary}:\n{stdout}{stderr}");
        for line in [
            "runtime.tenant = acme".to_owned(),
            "runtime.environment = prod".to_owned(),
            format!("runtime.deployment = {CLUSTER}"),
            format!("runtime.metrics.common_labels = {{cluster=\"{CLUSTER}\",region=\"eu\"}}"),
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "{binary}: {line}:\n{stdout}"
            );
        }
    }

    // A bad label name, from a file or a flag: exit 2, the key named.
    let bad = "[runtime.metrics.common_labels]\n\"cluster-name\" = \"eu\"\n";
    let observer = [
        "run".to_owned(),
        "--config".to_owned(),
        observer_config(bad),
    ];
    let webhook = webhook_args(&dir, &pki, bad);
    for (binary, args) in [
        (observer_bin(), &observer[..]),
        (webhook_bin(), &webhook[..]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = check_config(binary, &args, &[]);
        assert_eq!(code, 2, "{binary}:\n{stdout}{stderr}");
        assert!(
            stderr.contains(
                "runtime.metrics.common_labels.cluster-name: \"cluster-name\" is not a Prometheus label name"
            ),
            "{binary}:\n{stderr}"
        );
        assert!(!stdout.contains("the configuration is valid"), "{stdout}");
        // The only problem: the rest of the configuration is valid.
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("  ")).count(),
            1,
            "{binary}:\n{stderr}"
        );
    }
    for (binary, first) in [(observer_bin(), "run"), (webhook_bin(), "serve")] {
        let (code, _, stderr) = check_config(binary, &[first, "--metric-label", "__x=1"], &[]);
        assert_eq!(code, 2, "{binary}:\n{stderr}");
        assert!(
            stderr.contains(
                "runtime.metrics.common_labels.__x: \"__x\" is not a Prometheus label name"
            ),
            "{binary}:\n{stderr}"
        );
        // A label a metric has already would be overridden there: refused too.
        let (code, _, stderr) = check_config(binary, &[first, "--metric-label", "decision=x"], &[]);
        assert_eq!(code, 2, "{binary}:\n{stderr}");
        assert!(
            stderr.contains("runtime.metrics.common_labels.decision: \"decision\" is a label of zastava_admission_decisions_total already"),
            "{binary}:\n{stderr}"
        );
        let (code, _, stderr) = check_config(binary, &[first, "--deployment", "EU West"], &[]);
        assert_eq!(code, 2, "{binary}:\n{stderr}");
        assert!(
            stderr.contains("runtime.deployment: \"EU West\" is not a valid value"),
            "{binary}:\n{stderr}"
        );
    }
}
