//! Alerts and dashboard with clusters: the rules group by (cluster, instance) and name the
//! cluster, the dashboard selects one cluster or all of them — checked by promtool unit
//! tests over series with and without the `cluster` label that `runtime.deployment` adds.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

use super::{list, metric_names, repo, str_of};

/// Runs `promtool` (fetched by `cargo xtask setup`) in `dir`; fails with its output.
fn promtool(dir: &Path, args: &[&str]) {
    let promtool = repo().join("target/tools/promtool");
    let out = Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); `cargo xtask setup` fetches it",
                promtool.display()
            )
        });
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The label lists of every `by (...)` in a PromQL expression.
fn groupings(expr: &str) -> Vec<Vec<&str>> {
    expr.split("by (")
        .skip(1)
        .map(|rest| {
            rest.split(')')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .collect()
        })
        .collect()
}

/// Each metric selector of `expr`, in order: the name and its label matchers.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut from = 0;
    metric_names(expr)
        .into_iter()
        .map(|name| {
            let at = from + expr[from..].find(&name).unwrap_or_default() + name.len();
            from = at;
            let matchers = expr[at..]
                .strip_prefix('{')
                .and_then(|rest| rest.split('}').next())
                .unwrap_or_default()
                .to_owned();
            (name, matchers)
        })
        .collect()
}

#[test]
fn alerts_are_per_cluster_and_instance_and_their_summaries_name_the_cluster() {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/zastava-rules.yaml")).unwrap();
    let rules: Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = 0;
    for group in list(&rules["groups"]) {
        for rule in list(&group["rules"]) {
            let expr = str_of(&rule["expr"]);
            for by in groupings(expr) {
                assert!(
                    by.contains(&"cluster") && by.contains(&"instance"),
                    "{}: `by ({})` mixes clusters or nodes",
                    rule["alert"],
                    by.join(", ")
                );
            }
            let summary = str_of(&rule["annotations"]["summary"]);
            assert!(
                summary.starts_with(
                    "{{ with $labels.cluster }}{{ . }}/{{ end }}{{ $labels.instance }}"
                ),
                "{}: {summary}",
                rule["alert"]
            );
            alerts += 1;
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
    // Their unit tests (run by the_alert_rules_load_in_prometheus_...) have series
    // without the label and series of two clusters that share node names.
    let tests =
        std::fs::read_to_string(repo().join("deploy/prometheus/zastava-rules.test.yaml")).unwrap();
    assert!(tests.contains("cluster: prod-eu"), "no test with clusters");
    assert!(
        tests.contains("{instance=\"node-a:9464\"}"),
        "no test without clusters"
    );
}

/// A dashboard query as Grafana sends it with `$cluster` set to `cluster`.
fn filled(expr: &str, cluster: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$instance", ".*")
        .replace("$cluster", cluster)
}

#[test]
fn the_dashboard_selects_a_cluster_and_every_query_passes_its_promtool_tests_both_ways() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/zastava.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let variables = list(&dashboard["templating"]["list"]);
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let cluster = variable("cluster");
    assert_eq!(cluster["includeAll"], true);
    // All must match series without the label too (installations without
    // runtime.deployment): a regex that matches the empty string.
    assert_eq!(cluster["allValue"], ".*");
    assert!(
        str_of(&cluster["query"]).ends_with(", cluster)"),
        "{}",
        cluster["query"]
    );
    assert!(
        str_of(&variable("instance")["query"]).contains("cluster=~\"$cluster\""),
        "the instances offered are those of the chosen clusters"
    );

    let tests = std::fs::read_to_string(repo().join("deploy/grafana/zastava.test.yaml")).unwrap();
    let tests: Value = serde_yaml::from_str(&tests).unwrap();
    let tested: BTreeSet<&str> = list(&tests["tests"])
        .iter()
        .flat_map(|t| list(&t["promql_expr_test"]))
        .map(|t| str_of(&t["expr"]))
        .collect();
    let mut queries = 0;
    for panel in list(&dashboard["panels"]) {
        for target in list(&panel["targets"]) {
            let expr = str_of(&target["expr"]);
            for (name, matchers) in selectors(expr) {
                assert!(
                    matchers.starts_with("cluster=~\"$cluster\",instance=~\"$instance\""),
                    "panel {}: {name}{{{matchers}}} does not follow the variables",
                    panel["title"]
                );
            }
            for by in groupings(expr) {
                assert!(
                    !by.contains(&"instance") || by.contains(&"cluster"),
                    "panel {}: `by ({})` mixes two clusters' nodes of one name",
                    panel["title"],
                    by.join(", ")
                );
            }
            for cluster in ["prod-eu", ".*"] {
                let filled = filled(expr, cluster);
                assert!(
                    tested.contains(filled.as_str()),
                    "panel {}: no promtool test of {filled} in deploy/grafana/zastava.test.yaml",
                    panel["title"]
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 19, "{queries} queries");
    assert_eq!(
        tested.len(),
        2 * queries,
        "tests of queries the dashboard has not"
    );
    promtool(
        &repo().join("deploy/grafana"),
        &["test", "rules", "zastava.test.yaml"],
    );
}
