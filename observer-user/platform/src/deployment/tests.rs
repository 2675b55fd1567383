use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sample {
    runtime: RuntimeConfig,
}

fn layered(file: &str, env: &[(&str, &str)], args: &RuntimeArgs) -> RuntimeConfig {
    let mut sources = Sources {
        file: Some(("test.toml".into(), file.into())),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    args.apply(&mut sources);
    sources.layered::<Sample>().unwrap().runtime
}

fn problems(runtime: &RuntimeConfig) -> Vec<(String, String)> {
    let mut found = Vec::new();
    runtime.check(&mut |key, problem| found.push((key.to_owned(), problem)));
    found
}

#[test]
fn file_environment_and_flags_layer_and_cluster_defaults_to_the_deployment() {
    let file = r#"
        [runtime]
        tenant = "acme"
        environment = "staging"
        deployment = "eu-west-1a"
        [runtime.metrics.common_labels]
        team = "secops"
    "#;
    let runtime = layered(file, &[], &RuntimeArgs::default());
    assert_eq!(
        runtime.deployment(),
        Deployment {
            tenant: Some("acme".into()),
            environment: Some("staging".into()),
            cluster: Some("eu-west-1a".into()),
        }
    );
    assert_eq!(
        runtime.common_labels().series(&[("stage", "spool")]),
        r#"{cluster="eu-west-1a",team="secops",stage="spool"}"#
    );
    assert!(problems(&runtime).is_empty());

    // The environment overrides the file, the flags both; a numeric id from the
    // environment is a string.
    let args = RuntimeArgs {
        deployment: DeploymentArgs {
            deployment: Some("eu-west-1b".into()),
            ..Default::default()
        },
        metric_labels: vec![("cluster".into(), "eu-1b".into())],
    };
    let runtime = layered(
        file,
        &[
            ("ZASTAVA__RUNTIME__ENVIRONMENT", "prod"),
            ("ZASTAVA__RUNTIME__TENANT", "42"),
            ("ZASTAVA__RUNTIME__METRICS__COMMON_LABELS__REGION", "eu"),
        ],
        &args,
    );
    assert_eq!(runtime.tenant.as_deref(), Some("42"));
    assert_eq!(runtime.environment.as_deref(), Some("prod"));
    assert_eq!(runtime.deployment.as_deref(), Some("eu-west-1b"));
    let labels = runtime.common_labels();
    let labels: Vec<(&str, &str)> = labels.iter().collect();
    assert_eq!(
        labels,
        [("cluster", "eu-1b"), ("region", "eu"), ("team", "secops")]
    );

    // Blank values are unset; an explicit cluster wins over none.
    let runtime = layered(
        "[runtime]\ntenant = \"\"\n[runtime.metrics.common_labels]\ncluster = \"c1\"\n",
        &[
            ("ZASTAVA__RUNTIME__DEPLOYMENT", ""),
            ("ZASTAVA__RUNTIME__METRICS__COMMON_LABELS__REGION", ""),
        ],
        &RuntimeArgs::default(),
    );
    assert_eq!(runtime.deployment(), Deployment::default());
    assert_eq!(runtime.common_labels().series(&[]), r#"{cluster="c1"}"#);
    assert_eq!(
        RuntimeConfig::default().common_labels(),
        CommonLabels::default()
    );
    assert_eq!(RuntimeConfig::default().common_labels().series(&[]), "");
}

#[test]
fn bad_names_and_values_are_refused_by_key() {
    let runtime = layered(
        r#"
        [runtime]
        deployment = "-eu"
        [runtime.metrics.common_labels]
        "bad-name" = "x"
        __meta = "x"
        le = "x"
        stage = "x"
        ok = "has space"
        9lives = "x"
        "#,
        &[],
        &RuntimeArgs::default(),
    );
    let found = problems(&runtime);
    let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "runtime.deployment",
            "runtime.metrics.common_labels.9lives",
            "runtime.metrics.common_labels.__meta",
            "runtime.metrics.common_labels.bad-name",
            "runtime.metrics.common_labels.le",
            "runtime.metrics.common_labels.ok",
            "runtime.metrics.common_labels.stage",
        ],
        "{found:?}"
    );
    let problem = |key: &str| &found.iter().find(|(k, _)| k == key).unwrap().1;
    assert!(
        problem("runtime.metrics.common_labels.bad-name").contains("not a Prometheus label name")
    );
    assert!(problem("runtime.metrics.common_labels.le").contains("histogram buckets"));
    assert!(problem("runtime.metrics.common_labels.stage")
        .contains("a label of stella_runtime_events_dropped_total already"));
    assert!(problem("runtime.metrics.common_labels.ok").contains("Kubernetes label value"));

    let err = Sources {
        file: Some(("t.toml".into(), "[runtime]\ntenant = 1.5\n".into())),
        ..Default::default()
    }
    .layered::<Sample>()
    .unwrap_err();
    assert_eq!(err.0[0].key, "runtime.tenant", "{err}");
    assert!(err.to_string().contains("quote it"), "{err}");
}

#[test]
fn label_names_and_values() {
    for name in ["cluster", "_x", "Region2", "a_b"] {
        assert!(is_label_name(name), "{name}");
    }
    for name in ["", "2x", "a-b", "a.b", "__x", "é"] {
        assert!(!is_label_name(name), "{name}");
    }
    for value in ["eu-west-1", "a", "prod.eu_1", "x".repeat(63).as_str()] {
        assert!(is_label_value(value), "{value}");
    }
    for value in ["", "-a", "a-", "a b", "a/b", "x".repeat(64).as_str(), "ü"] {
        assert!(!is_label_value(value), "{value}");
    }
    assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert!(parse_label("a.b=c").is_err());
    assert!(parse_label("novalue").is_err());
}

#[test]
fn common_labels_are_on_every_series_the_exporter_renders() {
    let runtime: RuntimeConfig =
        toml::from_str("deployment = \"eu-1\"\n[metrics.common_labels]\nteam = \"secops\"\n")
            .unwrap();
    let mut builder = metrics::exporter(metrics::Binary::Observer);
    for (name, value) in runtime.common_labels().iter() {
        builder = builder.add_global_label(name, value);
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    ::metrics::with_local_recorder(&recorder, || {
        ::metrics::counter!(crate::metrics::BACKEND_REQUESTS.name, "outcome" => "ok").increment(3);
        ::metrics::gauge!(crate::metrics::RUNTIME_CONNECTED.name, "runtime" => "cri").set(1.0);
        ::metrics::histogram!(crate::metrics::EVENTS_LAG.name).record(0.7);
    });
    let text = handle.render();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    // 3 series, the histogram with 9 buckets, +Inf, sum and count.
    assert_eq!(
        samples.len(),
        2 + crate::metrics::EVENTS_LAG.buckets.len() + 3,
        "{text}"
    );
    for sample in &samples {
        assert!(
            sample.contains("{cluster=\"eu-1\",team=\"secops\""),
            "{sample}"
        );
    }
    assert!(
        text.contains(
            "zastava_runtime_backend_requests_total{cluster=\"eu-1\",team=\"secops\",outcome=\"ok\"} 3\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "stella_runtime_events_lag_seconds_bucket{cluster=\"eu-1\",team=\"secops\",le=\"1\"} 1\n"
        ),
        "{text}"
    );
}
