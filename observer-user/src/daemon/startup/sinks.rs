//! Delivery at start: with at least one sink turned on, the backend's client and the spool
//! (each sink a cursor in it, batches from an earlier run sent first), then a task per sink
//! on its cursor. Hands on the spool for the pipeline to append to, and the sink tasks for
//! the shutdown to stop.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};
use zastava_platform::backend::BackendClient;

use crate::{
    config::Config,
    daemon::{RunError, SinkTasks},
    output::{
        sinks::{
            dead_letter::DeadLetter,
            https::{self, HttpsSink, EVENTS_PATH},
            nats::{self, NatsSink},
            redis::{self, RedisSink},
            Sink, SinkTask,
        },
        spool::Spool,
        Delivery,
    },
};

/// The sinks `config` turns on, in the order of their cursors in the spool.
fn sink_names(config: &Config) -> Vec<&'static str> {
    let mut names = Vec::new();
    if config.scanner.runtime.capture.enabled {
        names.push(https::NAME);
    }
    if config.sinks.nats.enabled {
        names.push(nats::NAME);
    }
    if config.sinks.redis.enabled {
        names.push(redis::NAME);
    }
    names
}

/// With at least one sink: the backend's client (when it is one of them) and the spool
/// batches wait in for every sink.
pub(super) fn open_delivery(
    config: &Config,
) -> Result<(Option<BackendClient>, Option<Spool>), RunError> {
    let names = sink_names(config);
    if names.is_empty() {
        return Ok((None, None));
    }
    let client = if config.scanner.runtime.capture.enabled {
        Some(BackendClient::new(&config.backend, &config.authority).map_err(RunError::Backend)?)
    } else {
        None
    };
    let spool = Spool::open(
        &config.spool.dir,
        config.spool.max_bytes,
        config.spool.when_full,
        &names,
    )
    .map_err(RunError::Spool)?;
    report_spool(config, &spool);
    if let Some(url) = &config.backend.url {
        if client.is_some() {
            info!(
                "shipping to {}{}",
                url.as_str(),
                EVENTS_PATH.trim_start_matches('/')
            );
        }
    }
    if config.sinks.nats.enabled {
        info!(
            "publishing to NATS JetStream subject {} (stream {}) at {}",
            config.sinks.nats.publish_subject(),
            config.sinks.nats.stream.name,
            config.sinks.nats.servers.join(", ")
        );
    }
    if config.sinks.redis.enabled {
        info!(
            "adding to Redis stream {} at {}",
            config.sinks.redis.stream, config.sinks.redis.url
        );
    }
    Ok((client, Some(spool)))
}

/// What an earlier run left in the spool: damaged records removed, batches still to send.
fn report_spool(config: &Config, spool: &Spool) {
    let stats = spool.stats();
    if stats.torn > 0 {
        warn!(
            "spool {}: {} damaged records from an earlier run were removed",
            config.spool.dir.display(),
            stats.torn
        );
    }
    if !spool.is_empty() {
        info!(
            "spool {}: {} batches ({} events) from an earlier run will be sent first",
            config.spool.dir.display(),
            spool.len(),
            spool.pending_events()
        );
    }
}

/// Starts a task per sink, each on its own cursor in the spool.
pub(super) fn start_sinks(
    config: &Config,
    backend: Option<BackendClient>,
    delivery: &Arc<Delivery>,
) -> Option<SinkTasks> {
    let names = delivery
        .lock()
        .spool
        .as_ref()
        .map(|s| s.sinks().map(str::to_owned).collect::<Vec<_>>())?;
    let (stop, stopped) = watch::channel(None);
    let dir = &config.spool.dir;
    let mut tasks = Vec::new();
    let mut backend = backend;
    for (index, name) in names.iter().enumerate() {
        let task = match name.as_str() {
            https::NAME => backend.take().map(|client| {
                spawn_sink(
                    HttpsSink::new(client),
                    index,
                    delivery,
                    config.backend.max_backoff,
                    dir,
                    &stopped,
                )
            }),
            nats::NAME => Some(spawn_sink(
                NatsSink::new(config.sinks.nats.clone()),
                index,
                delivery,
                config.sinks.nats.max_backoff,
                dir,
                &stopped,
            )),
            redis::NAME => Some(spawn_sink(
                RedisSink::new(config.sinks.redis.clone()),
                index,
                delivery,
                config.sinks.redis.max_backoff,
                dir,
                &stopped,
            )),
            _ => None,
        };
        tasks.extend(task);
    }
    Some(SinkTasks { tasks, stop })
}

fn spawn_sink<S: Sink>(
    sink: S,
    index: usize,
    delivery: &Arc<Delivery>,
    max_backoff: Duration,
    dir: &Path,
    stop: &watch::Receiver<Option<Instant>>,
) -> JoinHandle<()> {
    let dead_letter = DeadLetter::in_dir(dir, sink.name());
    let task = SinkTask::new(
        sink,
        index,
        Arc::clone(delivery),
        max_backoff,
        dead_letter,
        stop.clone(),
    );
    tokio::spawn(task.run())
}
