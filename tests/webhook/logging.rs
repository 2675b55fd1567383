//! Every review is one log line, with the fields an operator filters on; as JSON (what
//! `kubectl logs … | jq` reads) or as text.

use serde_json::{json, Value};

use crate::common::webhook::{fixture, pod_review, retargeted, DIGEST_A};
use crate::{block_on, send, setup};

#[test]
fn every_decision_is_one_json_log_line() {
    let s = setup(&[]);
    block_on(async {
        s.backend.set_verdict(DIGEST_A, "allow", &[], Some(300));
        let pinned = format!("registry.example/shop/app@{DIGEST_A}");
        send(
            &s,
            &pod_review("u-log-allow", "shop", &[("containers", "app", &pinned)]),
        )
        .await;
        send(
            &s,
            &pod_review(
                "u-log-deny",
                "shop",
                &[("containers", "app", "registry.example/app:1")],
            ),
        )
        .await;
        send(
            &s,
            &retargeted(&fixture("pod-delete.json"), "u-log-delete", "shop"),
        )
        .await;
        let (status, _) = send(&s, &fixture("pod-create-v1beta1.json")).await;
        assert_eq!(status, 400);

        let allow = s.webhook.decision_line("u-log-allow");
        let pick = |line: &Value, keys: &[&str]| -> Value {
            keys.iter()
                .map(|k| ((*k).to_owned(), line[*k].clone()))
                .collect()
        };
        let keys = [
            "level",
            "message",
            "uid",
            "namespace",
            "kind",
            "name",
            "operation",
            "dry_run",
            "decision",
            "workload",
            "verdict_source",
            "digests",
        ];
        assert_eq!(
            pick(&allow, &keys),
            json!({
                "level": "INFO", "message": "admission decision", "uid": "u-log-allow",
                "namespace": "shop", "kind": "Pod", "name": "web-0", "operation": "CREATE",
                "dry_run": false, "decision": "allow", "workload": "web",
                "verdict_source": "backend", "digests": format!("{DIGEST_A}=allow"),
            })
        );
        assert!(
            allow["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{allow}"
        );
        assert!(allow.get("details").is_none(), "{allow}");

        let deny = s.webhook.decision_line("u-log-deny");
        assert_eq!(deny["decision"], "deny");
        assert_eq!(deny["verdict_source"], "policy");
        assert_eq!(
            deny["details"],
            "container \"app\": image registry.example/app:1 is not pinned by digest (use <image>@sha256:<digest>)"
        );
        let delete = s.webhook.decision_line("u-log-delete");
        assert_eq!(
            pick(&delete, &["decision", "operation", "not_judged"]),
            json!({"decision": "allow", "operation": "DELETE", "not_judged": "a deletion starts nothing"})
        );
        // The log is read by a thread: the 400's line may come after its reply.
        s.webhook.wait_for_log(r#""decision":"invalid""#);
        let invalid: Vec<Value> = s
            .webhook
            .json_lines()
            .into_iter()
            .filter(|l| l["decision"] == "invalid")
            .collect();
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        assert_eq!(invalid[0]["status"], 400);
        assert_eq!(invalid[0]["level"], "WARN");
        // A v1beta1 review still names its request.
        assert_eq!(invalid[0]["uid"], "8c0e2a4c-6d8f-4c2e-b4a6-c8e0a2c4e6a7");
        assert!(
            invalid[0]["error"]
                .as_str()
                .unwrap()
                .starts_with("apiVersion is \"admission.k8s.io/v1beta1\""),
            "{}",
            invalid[0]
        );

        // What an operator runs: jq over the log, one line per review.
        let log = s.webhook.dir.path().join("webhook.log");
        std::fs::write(&log, s.webhook.stderr()).unwrap();
        let out = std::process::Command::new("jq")
            .args(["-r", "select(.decision) | \"\\(.decision) \\(.uid)\""])
            .arg(&log)
            .output()
            .expect("jq (installed by cargo xtask setup)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "allow u-log-allow\ndeny u-log-deny\nallow u-log-delete\ninvalid 8c0e2a4c-6d8f-4c2e-b4a6-c8e0a2c4e6a7\n"
        );
    });
}

#[test]
fn text_logs_carry_the_decision_too() {
    let s = setup(&["--log-format", "text"]);
    block_on(async {
        // A uid that tries to start a log line of its own.
        let uid = "u-text\n2026-12-01T00:00:00Z  INFO forged decision=\"allow\"";
        send(
            &s,
            &pod_review(
                uid,
                "shop",
                &[("containers", "app", "registry.example/app:1")],
            ),
        )
        .await;
        s.webhook.wait_for_log("uid=\"u-text");
        let stderr = s.webhook.stderr();
        let line = stderr.lines().find(|l| l.contains("uid=\"u-text")).unwrap();
        assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
        for field in [
            "admission decision",
            "uid=\"u-text\\n2026-12-01T00:00:00Z  INFO forged decision=\\\"allow\\\"\"",
            "namespace=\"shop\"",
            "kind=\"Pod\"",
            "decision=\"deny\"",
            "verdict_source=\"policy\"",
        ] {
            assert!(line.contains(field), "{field:?} not in {line}");
        }
        assert!(
            !stderr
                .lines()
                .any(|l| l.starts_with("2026-12-01T00:00:00Z")),
            "{stderr}"
        );
    });
}

/// `zastava-webhook ARGS` with `RUST_LOG_FORMAT` set to `format`: (exit code, stderr).
fn webhook_with_format(format: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(crate::common::webhook_bin())
        .args(args)
        .env_clear()
        .env("RUST_LOG_FORMAT", format)
        .output()
        .expect("run zastava-webhook");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn the_log_format_is_one_switch_and_an_error_stays_in_it() {
    let missing = ["serve", "--config", "/nonexistent/webhook.toml"];
    let problem = "invalid configuration:\n  --config: cannot read /nonexistent/webhook.toml: No \
                   such file or directory (os error 2)";
    // As JSON: the error that stops it is one ERROR object, as jq reads it.
    let (code, stderr) = webhook_with_format("json", &missing);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let line: Value = serde_json::from_str(&stderr).unwrap();
    assert_eq!(
        (&line["level"], &line["binary"], &line["message"]),
        (&json!("ERROR"), &json!("zastava-webhook"), &json!(problem))
    );
    let dir = crate::common::TempDir::new("webhook-jq");
    let log = dir.path().join("webhook.log");
    std::fs::write(&log, &stderr).unwrap();
    let out = std::process::Command::new("jq")
        .args(["-r", r#"select(.level == "ERROR") | .binary"#])
        .arg(&log)
        .output()
        .expect("jq (installed by cargo xtask setup)");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "zastava-webhook\n");

    // The flag wins over the variable, either way.
    let mut flagged = missing.to_vec();
    flagged.extend(["--log-format", "text"]);
    let (code, stderr) = webhook_with_format("json", &flagged);
    assert_eq!(code, Some(2));
    assert_eq!(stderr, format!("zastava-webhook: {problem}\n"));
    flagged.pop();
    flagged.push("json");
    let (_, stderr) = webhook_with_format("text", &flagged);
    assert!(serde_json::from_str::<Value>(&stderr).is_ok(), "{stderr}");

    // A value that is neither: refused before anything else, exit 2.
    let (code, stderr) = webhook_with_format("yaml", &missing);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "zastava-webhook: RUST_LOG_FORMAT=\"yaml\" is neither \"text\" nor \"json\": set one \
         of them, or unset it for text (--log-format overrides it)\n"
    );
    let (code, stderr) = webhook_with_format("text", &["--log-format", "yaml", "serve"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("invalid value 'yaml' for '--log-format <FORMAT>'"),
        "{stderr}"
    );
}
