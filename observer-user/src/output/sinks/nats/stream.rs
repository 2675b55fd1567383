//! The JetStream stream batches go to: the configuration the observer creates it with,
//! whether one that exists can take this observer's batches exactly once, and the look-up
//! on each connect (creating the stream when `sinks.nats.stream.create` says so). Hands on
//! a stream the sink can publish to, or the reason it cannot.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};
use tracing::{info, warn};

use super::{NatsConfig, NatsSink, Storage};
use crate::output::sinks::Failure;

/// The stream as `[sinks.nats.stream]` describes it: the base subject and everything below
/// it (`<subject>.<tenant>`), limits, file or memory storage, the duplicate window.
pub fn desired(config: &NatsConfig) -> Config {
    let stream = &config.stream;
    Config {
        name: stream.name.clone(),
        subjects: vec![config.subject.clone(), format!("{}.>", config.subject)],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: stream.max_age,
        max_bytes: limit(stream.max_bytes),
        max_messages: -1,
        max_messages_per_subject: -1,
        max_consumers: -1,
        storage: match stream.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        num_replicas: stream.replicas,
        duplicate_window: stream.duplicate_window,
        description: Some("zastava runtime events, one message per batch".into()),
        ..Config::default()
    }
}

/// 0 (no limit) is -1 to the server.
fn limit(bytes: u64) -> i64 {
    if bytes == 0 {
        -1
    } else {
        i64::try_from(bytes).unwrap_or(i64::MAX)
    }
}

/// Whether `pattern` (a stream subject, `*` and `>` wildcards allowed) matches `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut want = subject.split('.');
    for token in pattern.split('.') {
        match (token, want.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(got)) if literal == got => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// What is wrong with an existing stream for publishing `subject` with retries up to
/// `retry_within` apart: an error (the sink cannot deliver exactly once), and differences
/// worth a warning.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn check(
    found: &Config,
    config: &NatsConfig,
    subject: &str,
    retry_within: Duration,
) -> Verdict {
    let mut verdict = Verdict::default();
    let want = desired(config);
    let name = &found.name;
    if !found.subjects.iter().any(|p| subject_matches(p, subject)) {
        verdict.errors.push(format!(
            "stream {name} does not take subject {subject} (its subjects: {:?}); add it to the stream, or set sinks.nats.subject / sinks.nats.stream.name",
            found.subjects
        ));
    }
    // A stream without a window (0) has the server's default, 2 minutes.
    let window = if found.duplicate_window.is_zero() {
        Duration::from_secs(120)
    } else {
        found.duplicate_window
    };
    if window < retry_within {
        verdict.errors.push(format!(
            "stream {name} drops duplicates only within {}, shorter than the {} between a first try and the last retry (sinks.nats.timeout + sinks.nats.max_backoff), so a retried batch could be stored twice; raise the stream's duplicate window (nats stream edit {name} --dupe-window {})",
            humantime::format_duration(window),
            humantime::format_duration(retry_within),
            humantime::format_duration(retry_within)
        ));
    }
    if found.num_replicas < want.num_replicas {
        verdict.errors.push(format!(
            "stream {name} has {} replica(s), fewer than sinks.nats.stream.replicas = {}; scale it up (nats stream edit {name} --replicas {}) or lower the key",
            found.num_replicas, want.num_replicas, want.num_replicas
        ));
    }
    if found.no_ack {
        verdict.errors.push(format!(
            "stream {name} does not acknowledge publishes (no_ack), so nothing could be confirmed stored; turn no_ack off"
        ));
    }
    if found.sealed {
        verdict
            .errors
            .push(format!("stream {name} is sealed: it takes no new messages"));
    }
    if found.max_age != want.max_age {
        verdict.warnings.push(format!(
            "stream {name} keeps messages for {}, sinks.nats.stream.max_age says {}",
            humantime::format_duration(found.max_age),
            humantime::format_duration(want.max_age)
        ));
    }
    if found.max_bytes != want.max_bytes {
        verdict.warnings.push(format!(
            "stream {name} holds at most {} bytes, sinks.nats.stream.max_bytes says {} (-1: no limit)",
            found.max_bytes, want.max_bytes
        ));
    }
    if found.storage != want.storage {
        verdict.warnings.push(format!(
            "stream {name} uses {:?} storage, sinks.nats.stream.storage says {:?}",
            found.storage, want.storage
        ));
    }
    verdict
}

impl NatsSink {
    /// Looks the stream up and checks it, creating it when configured to.
    pub(super) async fn ensure_stream(&mut self, js: &jetstream::Context) -> Result<(), Failure> {
        let settings = &self.config.stream;
        let found = match js.get_stream(&settings.name).await {
            Ok(stream) => Some(stream.cached_info().config.clone()),
            Err(err) => match err.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED =>
                {
                    return Err(Failure::reconnect(
                        "no_jetstream",
                        format!("the NATS server does not have JetStream enabled ({e}); start it with JetStream (-js, or a jetstream block)"),
                    ));
                }
                _ => {
                    return Err(Failure::reconnect(
                        "stream_api",
                        format!("cannot look up stream {}: {err}", settings.name),
                    ))
                }
            },
        };
        let found = match found {
            Some(found) => found,
            None if settings.create => self.create_stream(js).await?,
            None => {
                return Err(Failure::reconnect(
                    "no_stream",
                    format!(
                        "stream {} does not exist; create it (subjects {}, {}), or set sinks.nats.stream.create = true",
                        settings.name,
                        self.config.subject,
                        format_args!("{}.>", self.config.subject)
                    ),
                ))
            }
        };
        self.check_stream(&found)
    }

    async fn create_stream(&self, js: &jetstream::Context) -> Result<Config, Failure> {
        let want = desired(&self.config);
        match js.create_stream(want.clone()).await {
            Ok(created) => {
                let replicas = created.cached_info().config.num_replicas;
                info!(
                    "nats: created stream {} (subjects {:?}, {replicas} replica(s), duplicate window {})",
                    want.name,
                    want.subjects,
                    humantime::format_duration(want.duplicate_window)
                );
                Ok(created.cached_info().config.clone())
            }
            // Another observer created it first.
            Err(err) => match js.get_stream(&want.name).await {
                Ok(stream) => Ok(stream.cached_info().config.clone()),
                Err(_) => Err(Failure::reconnect(
                    "stream_config",
                    format!(
                        "cannot create stream {}: {err}; check the server's JetStream limits and that {} servers can hold a replica",
                        want.name, want.num_replicas
                    ),
                )),
            },
        }
    }

    fn check_stream(&mut self, found: &Config) -> Result<(), Failure> {
        if !self.config.stream.check {
            return Ok(());
        }
        let verdict = check(
            found,
            &self.config,
            &self.subject,
            self.config.retry_within(),
        );
        if !verdict.errors.is_empty() {
            return Err(Failure::reconnect(
                "stream_config",
                verdict.errors.join("; "),
            ));
        }
        if !self.warned {
            for warning in &verdict.warnings {
                warn!("nats: {warning}");
            }
            self.warned = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_the_server_matches_them() {
        assert!(subject_matches(
            "zastava.runtime.events",
            "zastava.runtime.events"
        ));
        assert!(subject_matches(
            "zastava.runtime.events.>",
            "zastava.runtime.events.acme"
        ));
        assert!(subject_matches(
            "zastava.*.events",
            "zastava.runtime.events"
        ));
        assert!(subject_matches(">", "zastava.runtime.events"));
        assert!(!subject_matches(
            "zastava.runtime.events.>",
            "zastava.runtime.events"
        ));
        assert!(!subject_matches(
            "zastava.runtime",
            "zastava.runtime.events"
        ));
        assert!(!subject_matches(
            "zastava.runtime.events.x",
            "zastava.runtime.events"
        ));
        assert!(!subject_matches("zastava.*", "zastava.runtime.events"));
    }

    #[test]
    fn a_stream_like_the_one_the_observer_creates_passes() {
        let config = NatsConfig::default();
        let found = desired(&config);
        let verdict = check(
            &found,
            &config,
            "zastava.runtime.events",
            Duration::from_secs(35),
        );
        assert_eq!(verdict, Verdict::default());
        assert_eq!(
            found.subjects,
            ["zastava.runtime.events", "zastava.runtime.events.>"]
        );
    }

    #[test]
    fn an_incompatible_stream_is_named_with_what_to_change() {
        let config = NatsConfig::default();
        let mut found = desired(&config);
        found.subjects = vec!["other.>".into()];
        found.duplicate_window = Duration::from_secs(10);
        found.max_age = Duration::from_secs(60);
        let verdict = check(
            &found,
            &config,
            "zastava.runtime.events.acme",
            Duration::from_secs(35),
        );
        assert_eq!(verdict.errors.len(), 2, "{verdict:?}");
        assert!(
            verdict.errors[0].contains("does not take subject zastava.runtime.events.acme"),
            "{verdict:?}"
        );
        assert!(
            verdict.errors[1].contains("drops duplicates only within 10s, shorter than the 35s"),
            "{verdict:?}"
        );
        assert_eq!(verdict.warnings.len(), 1, "{verdict:?}");
        assert!(verdict.warnings[0].contains("keeps messages for 1m"));
        // The server's default window (0 = 2 minutes) is long enough for 35 s.
        found.subjects = vec!["zastava.>".into()];
        found.duplicate_window = Duration::ZERO;
        found.max_age = config.stream.max_age;
        assert_eq!(
            check(
                &found,
                &config,
                "zastava.runtime.events",
                Duration::from_secs(35)
            ),
            Verdict::default()
        );
    }
}
