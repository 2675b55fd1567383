//! The deployment a bundle comes from: told to `export` as `run` is told it (file,
//! `ZASTAVA__RUNTIME__*`, flags) or named by the records' own `deployment` objects; records
//! of another installation refused (or left out and counted), never exported under the
//! wrong name; verify checks the manifest's member and every record against it.

use std::path::PathBuf;

use common::evidence::evidence_with_env;

use super::*;

const GIVEN: &str = r#"{"tenant":"acme","environment":"prod","cluster":"eu-west-1a"}"#;
const OTHER: &str = r#"{"tenant":"acme","environment":"prod","cluster":"eu-west-1b"}"#;

/// `runtime_line(i)` with a `deployment` object, as the observer writes it with
/// `ndjson.include_deployment = true`.
fn with_deployment(i: usize, deployment: &str) -> String {
    let line = runtime_line(i);
    let out = line.replacen(
        r#"{"schemaVersion":1,"#,
        &format!(r#"{{"schemaVersion":1,"deployment":{deployment},"#),
        1,
    );
    assert_ne!(out, line);
    out
}

fn args_of<'a>(runtime: &'a [&'a Path], out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["export"];
    args.extend(runtime.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    args
}

fn bundles(out: &Path) -> usize {
    std::fs::read_dir(out.join("runtime")).map_or(0, |d| d.count())
}

#[test]
fn the_given_deployment_is_the_manifests_and_records_of_another_are_refused_or_counted() {
    let tmp = TempDir::new("evidence-deployment-given");
    // 30 records of this installation (every fifth without the object, as records written
    // before include_deployment was turned on), and line 3 from its neighbour.
    let file = tmp.path().join("zastava.runtime.ndjson");
    write_lines(
        &file,
        (0..30).map(|i| match i {
            2 => with_deployment(i, OTHER),
            _ if i % 5 == 4 => runtime_line(i),
            _ => with_deployment(i, GIVEN),
        }),
    );
    // The node's own configuration file (its other tables are not read), with a [runtime]
    // that the environment and a flag override in part.
    let mut config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/base/observer.toml"
    ))
    .unwrap();
    config.push_str(
        "\n[runtime]\ntenant = \"acme\"\nenvironment = \"staging\"\ndeployment = \"eu-central-9\"\n",
    );
    let config_path = tmp.path().join("observer.toml");
    std::fs::write(&config_path, config).unwrap();
    let env = [("ZASTAVA__RUNTIME__ENVIRONMENT", "prod")];
    let out = tmp.path().join("out");
    let given = [
        "--config",
        config_path.to_str().unwrap(),
        "--deployment",
        "eu-west-1a",
    ];

    let run = evidence_with_env(&args_of(&[&file], &out, &given), &env);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = format!(
        "deployment {OTHER} is not {GIVEN}, the deployment being exported (from --tenant, \
         --environment, --deployment or [runtime]): the record comes from another installation"
    );
    assert!(
        run.stderr
            .contains(&format!("{}:3: {reason}\n", file.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("or export with --skip-invalid to leave out those of others"),
        "{}",
        run.stderr
    );
    assert_eq!(bundles(&out), 0, "nothing exported");

    let mut skipping = given.to_vec();
    skipping.push("--skip-invalid");
    let run = evidence_with_env(&args_of(&[&file], &out, &skipping), &env);
    let dir = PathBuf::from(run.ok().trim());
    assert!(
        run.stderr.contains(&format!(
            "29 runtime records (0 duplicates dropped), 0 EntryTrace records (0 duplicates \
             dropped), 3 workloads, deployment {GIVEN}; 0 records filtered out, 1 invalid lines \
             skipped"
        )),
        "{}",
        run.stderr
    );
    let manifest = json_file(&dir.join("manifest.json"));
    assert_eq!(
        manifest["deployment"],
        json!({"tenant": "acme", "environment": "prod", "cluster": "eu-west-1a"})
    );
    let input = &manifest["inputs"][0];
    assert_eq!(
        (&input["lines"], &input["records"], &input["invalid"]),
        (&json!(30), &json!(29), &json!(1))
    );
    assert_eq!(input["firstInvalid"], json!({"line": 3, "reason": reason}));
    assert_eq!(manifest["streams"]["runtime"]["records"], 29);
    let records = lines(&dir.join("zastava.runtime.ndjson"));
    assert_eq!(records.len(), 29);
    assert!(records.iter().all(|r| r["eventId"] != "run1-2"));
    let given_value: Value = serde_json::from_str(GIVEN).unwrap();
    let carrying = records
        .iter()
        .filter(|r| r.get("deployment").is_some())
        .inspect(|r| assert_eq!(r["deployment"], given_value, "{r}"))
        .count();
    assert_eq!(
        carrying,
        29 - 6,
        "every fifth record has no deployment object"
    );
    let run = evidence(&["verify", dir.to_str().unwrap(), "--no-signature"]);
    assert!(run.ok().starts_with("verified: "), "{}", run.stdout);

    // A record whose object is not one the observer writes is an invalid line.
    let bad = tmp.path().join("bad.ndjson");
    write_lines(
        &bad,
        [
            with_deployment(0, GIVEN),
            with_deployment(1, r#"{"cluster":"eu west"}"#),
        ],
    );
    let run = evidence_with_env(&args_of(&[&bad], &out, &given), &env);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{}:2: `deployment.cluster` \"eu west\" is not a valid value",
            bad.display()
        )),
        "{}",
        run.stderr
    );

    // A value [runtime] does not allow: exit 2, naming the key.
    let run = evidence_with_env(&args_of(&[&file], &out, &["--tenant", "acme corp"]), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("runtime.tenant: \"acme corp\" is not a valid value"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_a_given_deployment_the_records_name_it_and_two_deployments_stop_the_export() {
    let tmp = TempDir::new("evidence-deployment-records");
    let one = r#"{"tenant":"acme","cluster":"eu-west-1a"}"#;
    let two = r#"{"tenant":"acme","cluster":"us-east-2"}"#;
    let logs = tmp.path().join("logs");
    write_lines(
        &logs.join("a.ndjson"),
        (0..10).map(|i| with_deployment(i, one)),
    );
    write_lines(&logs.join("b.ndjson"), (10..20).map(runtime_line));

    // Records that name one deployment, and records that name none: the bundle's is theirs.
    let dir = export(&tmp.path().join("out"), &[&logs], &[]);
    let manifest = json_file(&Path::new(&dir).join("manifest.json"));
    assert_eq!(
        manifest["deployment"],
        json!({"tenant": "acme", "cluster": "eu-west-1a"})
    );
    let run = evidence(&["verify", &dir, "--no-signature"]);
    assert!(run.ok().starts_with("verified: "), "{}", run.stdout);

    // No record names one: the member is absent.
    let plain = tmp.path().join("plain");
    write_lines(&plain.join("c.ndjson"), (0..10).map(runtime_line));
    let dir = export(&tmp.path().join("out"), &[&plain], &[]);
    let manifest = json_file(&Path::new(&dir).join("manifest.json"));
    let members: Vec<&String> = manifest.as_object().unwrap().keys().collect();
    assert_eq!(
        members,
        [
            "buildIds",
            "filters",
            "inputs",
            "runId",
            "runIdSource",
            "schemaVersion",
            "streams",
            "workloads"
        ]
    );

    // Lines 4 and 6 of b name another deployment: no bundle, whatever --skip-invalid says.
    write_lines(
        &logs.join("b.ndjson"),
        (10..20).map(|i| match i {
            13 | 15 => with_deployment(i, two),
            _ => runtime_line(i),
        }),
    );
    let out = tmp.path().join("mixed");
    for extra in [&[][..], &["--skip-invalid"][..]] {
        let run = evidence(&args_of(&[&logs], &out, extra));
        assert_eq!(run.code, 1, "{}", run.stderr);
        let expected = format!(
            "{}:4: deployment {two} differs from {one} of {}:1: the inputs come from more than \
             one installation\n  export each installation's files on their own, or name the \
             deployment to export (--tenant, --environment, --deployment or [runtime] in \
             --config) and leave out the others' records with --skip-invalid",
            logs.join("b.ndjson").display(),
            logs.join("a.ndjson").display(),
        );
        assert!(run.stderr.contains(&expected), "{}", run.stderr);
        assert_eq!(bundles(&out), 0);
    }
    // Named, the other's records are left out and counted.
    let dir = export(
        &out,
        &[&logs],
        &[
            "--tenant",
            "acme",
            "--deployment",
            "eu-west-1a",
            "--skip-invalid",
        ],
    );
    let manifest = json_file(&Path::new(&dir).join("manifest.json"));
    assert_eq!(
        manifest["deployment"],
        json!({"tenant": "acme", "cluster": "eu-west-1a"})
    );
    let b = &manifest["inputs"][1];
    assert_eq!(b["name"], "b.ndjson");
    assert_eq!((&b["records"], &b["invalid"]), (&json!(8), &json!(2)));
    assert_eq!(b["firstInvalid"]["line"], 4);
    assert_eq!(manifest["streams"]["runtime"]["records"], 18);
}

#[test]
fn verify_checks_the_manifests_deployment_and_every_record_against_it() {
    let tmp = TempDir::new("evidence-deployment-verify");
    let file = tmp.path().join("zastava.runtime.ndjson");
    write_lines(&file, (0..12).map(|i| with_deployment(i, GIVEN)));
    let dir = export(
        &tmp.path().join("out"),
        &[&file],
        &[
            "--tenant",
            "acme",
            "--environment",
            "prod",
            "--deployment",
            "eu-west-1a",
            "--run-id",
            "incident-7",
        ],
    );
    let bundle = Path::new(&dir);
    let manifest_path = bundle.join("manifest.json");
    let original = std::fs::read(&manifest_path).unwrap();
    let verify = || {
        let run = evidence(&["verify", &dir, "--no-signature"]);
        let problems: Vec<String> = run
            .stdout
            .lines()
            .filter(|l| l.starts_with("problem: "))
            .map(str::to_owned)
            .collect();
        (run.code, problems)
    };
    assert_eq!(verify(), (0, vec![]));

    let not_the_manifests = |manifests: &str| {
        format!(
            "problem: zastava.runtime.ndjson:1: deployment {GIVEN} is not the manifest's \
             ({manifests})"
        )
    };
    for (deployment, expected) in [
        (
            Some(json!({"tenant": "acme", "environment": "prod", "cluster": "eu-west-1b"})),
            vec![not_the_manifests(OTHER)],
        ),
        (None, vec![not_the_manifests("none")]),
        (
            Some(json!({})),
            vec![
                "problem: manifest.json: deployment is empty: a bundle without a deployment has \
                 no such member"
                    .to_owned(),
                not_the_manifests("none"),
            ],
        ),
        (
            Some(json!({"tenant": "acme", "environment": "prod", "cluster": "eu west"})),
            vec![
                "problem: manifest.json: deployment.cluster \"eu west\" is not a valid value (at \
                 most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or \
                 digit)"
                    .to_owned(),
                not_the_manifests(r#"{"tenant":"acme","environment":"prod","cluster":"eu west"}"#),
            ],
        ),
    ] {
        let mut manifest: Value = serde_json::from_slice(&original).unwrap();
        match &deployment {
            Some(d) => manifest["deployment"] = d.clone(),
            None => {
                manifest.as_object_mut().unwrap().remove("deployment");
            }
        }
        // serde_json's maps are sorted and compact: canonical for this manifest.
        std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
        let (code, problems) = verify();
        assert_eq!(code, 1, "{deployment:?}");
        // Every record disagrees; the first of each kind is what is checked here.
        let firsts: Vec<String> = expected
            .iter()
            .filter_map(|e| problems.iter().find(|p| p == &e).cloned())
            .collect();
        assert_eq!(firsts, expected, "{deployment:?}: {problems:#?}");
        let records = problems
            .iter()
            .filter(|p| p.starts_with("problem: zastava.runtime.ndjson:"))
            .count();
        assert_eq!(records, 12, "one per record: {problems:#?}");
    }

    // A member this format does not define.
    let mut manifest: Value = serde_json::from_slice(&original).unwrap();
    manifest["deployment"]["region"] = json!("eu");
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let (code, problems) = verify();
    assert_eq!(code, 1);
    assert!(
        problems.len() == 1
            && problems[0].starts_with(
                "problem: manifest.json: not a bundle manifest: unknown field `region`"
            ),
        "{problems:#?}"
    );

    std::fs::write(&manifest_path, &original).unwrap();
    assert_eq!(verify(), (0, vec![]));
}
