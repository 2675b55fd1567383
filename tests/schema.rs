//! The record schema accepts what the observer writes and rejects what it must not write.
//! (Every record of the other integration tests is validated against it as it arrives.)

mod common;

use common::{batch_schema_violations, schema_violations};
use serde_json::{json, Value};

const DIGEST: &str = "sha256:c2b6b70457fee32deeac9516fdacf75f9d26487ee6385c1a9dac6b330210ae34";
const CONTAINER: &str = "0e8c55b6bec5950d6a15d391840a6585e9fc3f781eefd3a67f3f66a90195bd03";

fn host_open() -> Value {
    json!({
        "schemaVersion": 1, "eventType": "edge", "eventId": "7627d6acb41e-1", "edgeType": "fs",
        "timestamp": "2026-11-22T06:33:58.762012263Z", "node": "vm", "hostId": "3d12",
        "osRelease": "Debian GNU/Linux 12 (bookworm)", "workloadId": "host:3d12", "enrichment": "host",
        "cgroupId": 1,
        "process": {"pid": 1698, "tid": 1698, "ppid": 1697, "uid": 0, "gid": 0, "comm": "bash",
                    "exe": "/usr/bin/bash", "args": ["bash"]},
        "syscall": "openat", "path": "/tmp/x", "flags": 577,
        "flagNames": ["O_WRONLY", "O_CREAT", "O_TRUNC"], "result": 3
    })
}

fn container_fields(record: &mut Value) {
    let fields = json!({
        "workloadId": "payments-api", "workloadIdSource": "label", "enrichment": "complete",
        "containerId": CONTAINER, "namespace": "shop", "pod": "payments-1", "podUid": "u-1",
        "containerName": "api", "imageRef": "zastava.test/busybox:1.0", "imageDigest": DIGEST,
        "imageDigestKind": "manifest", "tenant": "acme"
    });
    for (k, v) in fields.as_object().unwrap() {
        record[k] = v.clone();
    }
}

fn assert_valid(record: &Value) {
    if let Some(why) = schema_violations(record) {
        panic!("should be valid: {why}");
    }
}

fn assert_invalid(record: &Value, what: &str) {
    assert!(
        schema_violations(record).is_some(),
        "should be rejected ({what}): {record}"
    );
}

#[test]
fn records_the_observer_writes_are_valid() {
    assert_valid(&host_open());

    let mut exec = host_open();
    container_fields(&mut exec);
    exec["edgeType"] = json!("syscall");
    exec["syscall"] = json!("execve");
    exec["args"] = json!(["/bin/sh", "-c", "true"]);
    exec["code_id"] = json!("0daa1a3855d8d19053684e2a8bd73d647939376e");
    exec["result"] = json!(0);
    for k in ["flags", "flagNames"] {
        exec.as_object_mut().unwrap().remove(k);
    }
    assert_valid(&exec);

    let mut connect = host_open();
    connect["edgeType"] = json!("net");
    connect["syscall"] = json!("connect");
    connect["family"] = json!("inet6");
    connect["address"] = json!("::1");
    connect["port"] = json!(443);
    connect["result"] = json!(-111);
    for k in ["path", "flags", "flagNames"] {
        connect.as_object_mut().unwrap().remove(k);
    }
    assert_valid(&connect);

    // A path or peer read through a descriptor table another thread shared.
    let mut shared_open = host_open();
    shared_open["filesShared"] = json!(true);
    assert_valid(&shared_open);
    let mut shared_connect = connect.clone();
    shared_connect["result"] = json!(0);
    shared_connect["filesShared"] = json!(true);
    assert_valid(&shared_connect);

    let mut merged = host_open();
    merged["count"] = json!(20);
    merged["firstSeen"] = merged["timestamp"].clone();
    merged["lastSeen"] = json!("2026-11-22T06:33:59.000000000Z");
    assert_valid(&merged);

    let mut pending = host_open();
    pending["enrichment"] = json!("pending");
    pending["workloadId"] = json!(format!("container:{CONTAINER}"));
    pending["workloadIdSource"] = json!("container");
    pending["containerId"] = json!(CONTAINER);
    assert_valid(&pending);

    let mut start = json!({"schemaVersion": 1, "eventType": "containerStart",
        "timestamp": "2026-11-22T06:33:58.000000000Z", "node": "vm", "hostId": "3d12", "osRelease": "x",
        "initPid": 24120, "entrypoint": "/bin/busybox", "code_id": "0daa1a38"});
    container_fields(&mut start);
    assert_valid(&start);

    let mut patch = json!({"schemaVersion": 1, "eventType": "enrichmentPatch",
        "timestamp": "2026-11-22T06:33:58.000000000Z", "node": "vm", "hostId": "3d12", "osRelease": "x",
        "eventIds": ["7627d6acb41e-5", "7627d6acb41e-6"]});
    container_fields(&mut patch);
    assert_valid(&patch);
}

#[test]
fn records_that_break_the_contract_are_rejected() {
    let mut unknown_field = host_open();
    unknown_field["surprise"] = json!(1);
    assert_invalid(&unknown_field, "a field the schema does not name");

    let mut missing = host_open();
    missing.as_object_mut().unwrap().remove("workloadId");
    assert_invalid(&missing, "no workloadId");

    let mut wrong_kind = host_open();
    wrong_kind["args"] = json!(["x"]);
    assert_invalid(&wrong_kind, "an fs edge with argv");

    let mut files_not_shared = host_open();
    files_not_shared["filesShared"] = json!(false);
    assert_invalid(&files_not_shared, "filesShared is written only when true");

    let mut exec_files_shared = host_open();
    exec_files_shared["edgeType"] = json!("syscall");
    exec_files_shared["syscall"] = json!("execve");
    exec_files_shared["args"] = json!(["/bin/true"]);
    exec_files_shared["result"] = json!(0);
    for k in ["flags", "flagNames"] {
        exec_files_shared.as_object_mut().unwrap().remove(k);
    }
    assert_valid(&exec_files_shared);
    exec_files_shared["filesShared"] = json!(true);
    assert_invalid(
        &exec_files_shared,
        "an exec's path comes from no descriptor",
    );

    let mut bad_time = host_open();
    bad_time["timestamp"] = json!("2026-11-22 06:33:58");
    assert_invalid(&bad_time, "not ISO-8601 with nanoseconds");

    let mut complete_without_pod = host_open();
    complete_without_pod["enrichment"] = json!("complete");
    complete_without_pod["containerId"] = json!(CONTAINER);
    complete_without_pod["workloadIdSource"] = json!("label");
    assert_invalid(&complete_without_pod, "complete but no pod");

    let mut host_with_container = host_open();
    host_with_container["containerId"] = json!(CONTAINER);
    assert_invalid(&host_with_container, "host enrichment with a container");

    let mut config_digest_complete = host_open();
    container_fields(&mut config_digest_complete);
    config_digest_complete["imageDigestKind"] = json!("config");
    assert_invalid(
        &config_digest_complete,
        "complete requires a manifest digest",
    );

    let mut count_alone = host_open();
    count_alone["count"] = json!(3);
    assert_invalid(&count_alone, "count without firstSeen/lastSeen");

    let mut v2 = host_open();
    v2["schemaVersion"] = json!(2);
    assert_invalid(&v2, "another schema version");
}

#[test]
fn docker_containers_records_are_valid_and_their_fields_checked() {
    let docker = |record: &mut Value| {
        container_fields(record);
        for (k, v) in [
            ("workloadId", json!("shop/api")),
            ("workloadIdSource", json!("derived")),
            ("enrichment", json!("partial")),
            ("namespace", json!("")),
            ("pod", json!("")),
            ("podUid", json!("")),
            ("containerName", json!("shop_api_1")),
            ("imageDigestKind", json!("config")),
            ("containerRuntime", json!("docker")),
            ("composeProject", json!("shop")),
            ("composeService", json!("api")),
        ] {
            record[k] = v;
        }
    };
    let mut open = host_open();
    docker(&mut open);
    assert_valid(&open);
    let mut stop = json!({"schemaVersion": 1, "eventType": "containerStop",
        "timestamp": "2026-11-22T06:33:58.000000000Z", "node": "vm", "hostId": "3d12", "osRelease": "x",
        "exitCode": 137});
    docker(&mut stop);
    assert_valid(&stop);

    let mut other_runtime = open.clone();
    other_runtime["containerRuntime"] = json!("podman");
    assert_invalid(&other_runtime, "containerRuntime is docker or absent");
    let mut half_compose = open.clone();
    half_compose
        .as_object_mut()
        .unwrap()
        .remove("composeService");
    assert_invalid(&half_compose, "a Compose project without its service");
    let mut compose_without_runtime = open.clone();
    compose_without_runtime
        .as_object_mut()
        .unwrap()
        .remove("containerRuntime");
    assert_invalid(
        &compose_without_runtime,
        "Compose fields on a CRI container",
    );
    let mut empty_project = open;
    empty_project["composeProject"] = json!("");
    assert_invalid(&empty_project, "an empty Compose project");
}

#[test]
fn kernel_view_fields_are_valid_where_they_belong() {
    // A relative open the kernel resolved, in a file since unlinked, named by non-UTF-8 bytes.
    let mut open = host_open();
    open["path"] = json!("/tmp/caf\u{fffd}");
    open["pathBytes"] = json!("L3RtcC9jYWb/");
    open["requestedPath"] = json!("./caf\u{fffd}");
    open["requestedPathBytes"] = json!("Li9jYWb/");
    open["pathDeleted"] = json!(true);
    open["process"]["cwd"] = json!("/tmp");
    assert_valid(&open);

    // A failed exec: the kernel never resolved a file, so the path is the caller's.
    let mut failed_exec = host_open();
    failed_exec["edgeType"] = json!("syscall");
    failed_exec["syscall"] = json!("execve");
    failed_exec["path"] = json!("./missing");
    failed_exec["pathFromCaller"] = json!(true);
    failed_exec["args"] = json!(["./missing", "\u{fffd}"]);
    failed_exec["argsBytes"] = json!(["Li9taXNzaW5n", "/w=="]);
    failed_exec["result"] = json!(-2);
    for k in ["flags", "flagNames"] {
        failed_exec.as_object_mut().unwrap().remove(k);
    }
    assert_valid(&failed_exec);

    // A refused connect: the address is what the caller asked for.
    let mut refused = host_open();
    refused["edgeType"] = json!("net");
    refused["syscall"] = json!("connect");
    refused["family"] = json!("inet");
    refused["address"] = json!("127.0.0.1");
    refused["port"] = json!(9);
    refused["result"] = json!(-111);
    refused["addressFromCaller"] = json!(true);
    for k in ["path", "flags", "flagNames"] {
        refused.as_object_mut().unwrap().remove(k);
    }
    assert_valid(&refused);

    let mut exec_without_result = failed_exec.clone();
    exec_without_result
        .as_object_mut()
        .unwrap()
        .remove("result");
    assert_invalid(&exec_without_result, "an exec edge without its result");
    let mut open_with_address_source = open.clone();
    open_with_address_source["addressFromCaller"] = json!(true);
    assert_invalid(&open_with_address_source, "addressFromCaller on an fs edge");
    let mut exec_with_address_source = failed_exec.clone();
    exec_with_address_source["addressFromCaller"] = json!(true);
    assert_invalid(
        &exec_with_address_source,
        "addressFromCaller on an exec edge",
    );
    let mut not_base64 = open.clone();
    not_base64["pathBytes"] = json!("not base64!");
    assert_invalid(&not_base64, "pathBytes that are not base64");
    let mut false_flag = open;
    false_flag["pathDeleted"] = json!(false);
    assert_invalid(&false_flag, "pathDeleted is true or absent");
}

#[test]
fn the_deployment_is_optional_on_records_and_envelopes_and_checked_where_present() {
    let mut record = host_open();
    container_fields(&mut record);
    record["deployment"] = json!({"tenant": "acme", "environment": "prod", "cluster": "prod-eu-1"});
    assert_valid(&record);
    let mut partial = host_open();
    partial["deployment"] = json!({"cluster": "prod-eu-1"});
    assert_valid(&partial);
    for (bad, what) in [
        (json!({}), "an empty deployment"),
        (
            json!({"cluster": "prod-eu-1", "region": "eu"}),
            "a field the deployment does not name",
        ),
        (json!({"cluster": "-eu"}), "not a label value"),
        (json!({"tenant": ""}), "an empty tenant"),
    ] {
        let mut record = host_open();
        record["deployment"] = bad;
        assert_invalid(&record, what);
    }

    let batch = |extra: Value| {
        let mut batch = json!({
            "batchId": "3d12-7627d6acb41e-1", "node": "vm", "schemaVersion": 1,
            "events": [host_open()]
        });
        for (k, v) in extra.as_object().unwrap() {
            batch[k] = v.clone();
        }
        batch
    };
    for ok in [
        json!({}),
        json!({"tenant": "acme", "environment": "prod", "cluster": "prod-eu-1"}),
        json!({"cluster": "c1"}),
    ] {
        let batch = batch(ok);
        assert_eq!(batch_schema_violations(&batch), None);
    }
    for (bad, what) in [
        (
            json!({"cluster": "Prod EU"}),
            "a cluster that is not a label value",
        ),
        (
            json!({"region": "eu"}),
            "a field the envelope does not name",
        ),
        (
            json!({"deployment": {"cluster": "c1"}}),
            "the records' form on the envelope",
        ),
        (
            json!({"events": [{"surprise": 1}]}),
            "an event that is not a record",
        ),
    ] {
        let batch = batch(bad);
        assert!(
            batch_schema_violations(&batch).is_some(),
            "should be rejected ({what}): {batch}"
        );
    }
}
