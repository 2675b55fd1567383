//! Redis Streams: every batch is added to the stream `sinks.redis.stream`
//! (`zastava.runtime.events`) as one entry with the fields `batchId`, `schemaVersion`,
//! `contentType`, `contentEncoding`, `events` and `body` (the batch envelope, gzip-encoded
//! JSON), trimmed to about `sinks.redis.max_len` entries (`MAXLEN ~`).
//!
//! Exactly-once across retries: one Lua script, which Redis runs atomically, adds the entry
//! only if the key `<stream>:batch:<batchId>` is absent, and then sets that key to the new
//! entry's id for `sinks.redis.dedup_ttl`; a retried batch finds the key and is reported as
//! a duplicate. What an acknowledged entry survives is the server's to say: with AOF and
//! `appendfsync always`, a restart or a crash of Redis loses none.

use std::{path::PathBuf, time::Duration};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, IntoConnectionInfo as _};
use serde::Deserialize;
use tracing::info;
use zastava_platform::config::duration;

use super::{Failure, Outcome, Sink};
use crate::{output::spool::SpoolEntry, record::SCHEMA_VERSION};

/// The sink's name (label, cursor, dead-letter file).
pub const NAME: &str = "redis";

/// Adds a batch unless its id was added already; returns {1, id} or {0, id of the first}.
const ADD_ONCE: &str = r"
local known = redis.call('GET', KEYS[2])
if known then
  return {0, known}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
  'batchId', ARGV[3], 'schemaVersion', ARGV[4], 'contentType', 'application/json',
  'contentEncoding', 'gzip', 'events', ARGV[5], 'body', ARGV[6])
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
";

/// `[sinks.redis]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub enabled: bool,
    /// `redis://host:6379/0`, or `rediss://` for TLS. No credentials here: they go in
    /// `user` and `password_file`.
    pub url: String,
    pub stream: String,
    /// Entries the stream is trimmed to (approximately).
    pub max_len: u64,
    /// How long a batch id is remembered, to drop a retry of a batch already added.
    #[serde(deserialize_with = "duration")]
    pub dedup_ttl: Duration,
    /// ACL user (Redis 6+); the default user when unset.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Deadline of each call (connecting, and every publish).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Upper bound of the retry backoff.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            enabled: false,
            url: String::new(),
            stream: "zastava.runtime.events".into(),
            max_len: 1_000_000,
            dedup_ttl: Duration::from_secs(600),
            user: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RedisConfig {
    /// The longest time between a first try of a batch and its last retry: what
    /// `dedup_ttl` must cover.
    pub fn retry_within(&self) -> Duration {
        self.timeout + self.max_backoff
    }
}

pub struct RedisSink {
    config: RedisConfig,
    script: redis::Script,
    connection: Option<MultiplexedConnection>,
}

fn read_file(key: &str, path: &PathBuf) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::reconnect(
            "credentials",
            format!("{key}: cannot read {}: {e}", path.display()),
        )
    })
}

/// The reason label and what to do, for an error from Redis.
fn failure(err: &redis::RedisError, config: &RedisConfig) -> Failure {
    let url = &config.url;
    let code = err.code().unwrap_or_default();
    let (reason, message) = if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
        || err.kind() == redis::ErrorKind::AuthenticationFailed
    {
        (
            "auth",
            format!("Redis at {url} refused the credentials or the command ({err}); check sinks.redis.user and sinks.redis.password_file, and that the user may run EVALSHA, XADD, GET and SET"),
        )
    } else if code == "WRONGTYPE" {
        (
            "wrong_type",
            format!("the key {} exists and is not a stream ({err}); rename it, or set sinks.redis.stream", config.stream),
        )
    } else if matches!(code, "OOM" | "MISCONF" | "READONLY" | "LOADING" | "BUSY") {
        (
            "server",
            format!("Redis at {url} cannot take writes now: {err}"),
        )
    } else if err.is_timeout() {
        (
            "timeout",
            format!("Redis at {url} did not answer within sinks.redis.timeout"),
        )
    } else if err.is_connection_refusal() || err.is_io_error() || err.is_connection_dropped() {
        ("connect", format!("cannot reach Redis at {url}: {err}"))
    } else if err.kind() == redis::ErrorKind::InvalidClientConfig {
        (
            "tls",
            format!("cannot set up the connection to {url}: {err}"),
        )
    } else {
        ("server", format!("Redis at {url}: {err}"))
    };
    Failure::reconnect(reason, message)
}

impl RedisSink {
    pub fn new(config: RedisConfig) -> Self {
        RedisSink {
            config,
            script: redis::Script::new(ADD_ONCE),
            connection: None,
        }
    }

    fn client(&self) -> Result<redis::Client, Failure> {
        let c = &self.config;
        let bad = |e: redis::RedisError| failure(&e, c);
        let mut info = c.url.as_str().into_connection_info().map_err(bad)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &c.user {
            settings = settings.set_username(user);
        }
        if let Some(file) = &c.password_file {
            let password = read_file("sinks.redis.password_file", file)?;
            settings = settings.set_password(String::from_utf8_lossy(&password).trim());
        }
        info = info.set_redis_settings(settings);
        if !c.url.starts_with("rediss://") {
            return redis::Client::open(info).map_err(bad);
        }
        // The client builds its TLS configuration with the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_tls = match (&c.client_cert_file, &c.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_file("sinks.redis.client_cert_file", cert)?,
                client_key: read_file("sinks.redis.client_key_file", key)?,
            }),
            _ => None,
        };
        let root_cert = match &c.ca_file {
            Some(ca) => Some(read_file("sinks.redis.ca_file", ca)?),
            None => None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(bad)
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        let client = self.client()?;
        let options = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&options)
            .await
            .map_err(|e| failure(&e, &self.config))?;
        // A key of another type would refuse every batch: say so now.
        let kind: String = redis::cmd("TYPE")
            .arg(&self.config.stream)
            .query_async(&mut connection)
            .await
            .map_err(|e| failure(&e, &self.config))?;
        if kind != "stream" && kind != "none" {
            return Err(Failure::reconnect(
                "wrong_type",
                format!(
                    "the key {} is a {kind}, not a stream; rename it, or set sinks.redis.stream",
                    self.config.stream
                ),
            ));
        }
        info!(
            "redis: connected to {} (stream {})",
            self.config.url, self.config.stream
        );
        self.connection = Some(connection);
        Ok(())
    }

    async fn deliver(&mut self, entry: &SpoolEntry) -> Outcome {
        let Some(connection) = self.connection.as_mut() else {
            return Outcome::Failed(Failure::reconnect("connect", "not connected"));
        };
        let stream = &self.config.stream;
        let ttl_ms = u64::try_from(self.config.dedup_ttl.as_millis()).unwrap_or(u64::MAX);
        let result: Result<(i64, String), _> = self
            .script
            .key(stream)
            .key(format!("{stream}:batch:{}", entry.batch_id))
            .arg(ttl_ms)
            .arg(self.config.max_len)
            .arg(&entry.batch_id)
            .arg(SCHEMA_VERSION)
            .arg(entry.events)
            .arg(entry.body.as_slice())
            .invoke_async(connection)
            .await;
        match result {
            Ok((added, _id)) => Outcome::Delivered {
                duplicate: added == 0,
            },
            Err(err) => {
                let failure = failure(&err, &self.config);
                if failure.reconnect {
                    self.connection = None;
                }
                Outcome::Failed(failure)
            }
        }
    }
}
