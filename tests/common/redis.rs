//! Redis for tests (declared by tests/bus.rs only): the private server of `zastava_testing::redis`, and reading the stream
//! back — with `XRANGE`, or the way a consumer would, with a consumer group.

use redis::{streams::StreamReadReply, Commands as _, Value as RedisValue};
use serde_json::Value;

pub use zastava_testing::redis::{Options, Server};

/// One entry of the stream: a batch as the observer added it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub batch_id: String,
    pub schema_version: String,
    pub content_encoding: String,
    pub events_field: u64,
    pub batch: Value,
}

impl Entry {
    pub fn events(&self) -> Vec<Value> {
        self.batch["events"].as_array().cloned().unwrap_or_default()
    }
}

/// A connection as the test's own client, with the server's password and, for `rediss://`,
/// the CA that signed its certificate.
pub fn connect(
    url: &str,
    password: Option<&str>,
    ca: Option<&std::path::Path>,
) -> redis::Connection {
    let url = match password {
        Some(p) => url.replacen("://", &format!("://:{p}@"), 1),
        None => url.to_owned(),
    };
    let client = match ca {
        Some(ca) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).expect("the CA")),
                },
            )
        }
        None => redis::Client::open(url),
    };
    client
        .and_then(|c| c.get_connection())
        .expect("the test connects to Redis")
}

fn field(map: &std::collections::HashMap<String, RedisValue>, name: &str) -> Vec<u8> {
    match map.get(name) {
        Some(RedisValue::BulkString(bytes)) => bytes.clone(),
        other => panic!("field {name}: {other:?}"),
    }
}

fn entry(id: String, map: &std::collections::HashMap<String, RedisValue>) -> Entry {
    let text = |name: &str| String::from_utf8(field(map, name)).expect("a text field");
    Entry {
        id,
        batch_id: text("batchId"),
        schema_version: text("schemaVersion"),
        content_encoding: text("contentEncoding"),
        events_field: text("events").parse().expect("a number of events"),
        batch: super::nats_harness::gunzip_json(&field(map, "body")),
    }
}

/// Every entry of `key`, oldest first (`XRANGE key - +`).
pub fn range(connection: &mut redis::Connection, key: &str) -> Vec<Entry> {
    let reply: redis::streams::StreamRangeReply = connection.xrange_all(key).expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| entry(e.id.clone(), &e.map))
        .collect()
}

/// Reads everything as consumer `consumer` of group `group` (created at the start of the
/// stream), acknowledging each entry (`XREADGROUP`, `XACK`).
pub fn read_group(
    connection: &mut redis::Connection,
    key: &str,
    group: &str,
    consumer: &str,
) -> Vec<Entry> {
    let _: Result<(), _> = connection.xgroup_create(key, group, "0");
    let mut entries = Vec::new();
    loop {
        let options = redis::streams::StreamReadOptions::default()
            .group(group, consumer)
            .count(500);
        let reply: Option<StreamReadReply> = connection
            .xread_options(&[key], &[">"], &options)
            .expect("XREADGROUP");
        let Some(reply) = reply else { break };
        let ids: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if ids.is_empty() {
            break;
        }
        for e in ids {
            let _: i64 = connection.xack(key, group, &[&e.id]).expect("XACK");
            entries.push(entry(e.id.clone(), &e.map));
        }
    }
    entries
}
