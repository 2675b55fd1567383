//! Every metric either binary exports, in one table: its name, type, labels, help and, for
//! histograms, its buckets. Code records metrics by these names only; the alerting rules,
//! the dashboard and the operations guide are checked against this table by the tests.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Which binary exports a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Observer,
    Webhook,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Bucket bounds of a histogram (empty for other kinds).
    pub buckets: &'static [f64],
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        labels,
        help,
        buckets: &[],
    }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        labels,
        help,
        buckets: &[],
    }
}

const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Metric {
    labelled_histogram(name, &[], help, buckets)
}

const fn labelled_histogram(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
    buckets: &'static [f64],
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        labels,
        help,
        buckets,
    }
}

// --- The observer ---------------------------------------------------------------------

pub const RUNTIME_EVENTS: Metric = counter(
    "zastava_runtime_events_total",
    &["tenant", "component", "kind"],
    "Records written, by tenant, component and record kind.",
);
pub const EVENTS_SEEN: Metric = counter(
    "zastava_runtime_events_seen_total",
    &[],
    "Edge events that left the kernel or were lost on the way.",
);
pub const EVENTS_SHIPPED: Metric = counter(
    "zastava_runtime_events_shipped_total",
    &[],
    "Edge events acknowledged by every sink (written, without a sink).",
);
pub const EVENTS_DROPPED: Metric = counter(
    "stella_runtime_events_dropped_total",
    &["stage"],
    "Edge events dropped, by the stage that dropped them.",
);
pub const EVENTS_IN_FLIGHT: Metric = gauge(
    "zastava_runtime_events_in_flight",
    &["stage"],
    "Edge events held, by where they are held.",
);
pub const SPOOL_BATCHES: Metric = gauge(
    "zastava_runtime_spool_batches",
    &[],
    "Batches in the disk spool.",
);
pub const SPOOL_BYTES: Metric = gauge(
    "zastava_runtime_spool_bytes",
    &[],
    "Bytes in the disk spool.",
);
pub const EVENTS_LAG: Metric = histogram(
    "stella_runtime_events_lag_seconds",
    "Seconds from an event to its delivery (acknowledged by every sink, or written to the NDJSON file without one).",
    &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
);
pub const BATCH_RECORDS: Metric = counter(
    "zastava_runtime_batch_records_total",
    &["outcome"],
    "Records batched out of time order: late (after the reorder window), or released early (before it, over a held-records bound).",
);
pub const BACKEND_REQUESTS: Metric = counter(
    "zastava_runtime_backend_requests_total",
    &["outcome"],
    "Batch deliveries to the backend, by outcome.",
);
/// The backend's latency as the observer sees it (one batch delivery).
pub const SHIPPER_BACKEND_LATENCY: Metric = histogram(
    "zastava_runtime_backend_latency_ms",
    "Milliseconds per call to the Scanner backend.",
    &[
        5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ],
);

// --- Sinks: the HTTPS backend, NATS JetStream, Redis Streams -------------------------

pub const SINK_EVENTS_SHIPPED: Metric = counter(
    "zastava_runtime_sink_events_shipped_total",
    &["sink"],
    "Edge events the sink acknowledged.",
);
pub const SINK_EVENTS_DROPPED: Metric = counter(
    "zastava_runtime_sink_events_dropped_total",
    &["sink", "stage"],
    "Edge events that will never reach the sink, by stage (dead_letter and spool_eviction are the sink's own; the others as in the totals).",
);
pub const SINK_EVENTS_IN_FLIGHT: Metric = gauge(
    "zastava_runtime_sink_events_in_flight",
    &["sink", "stage"],
    "Edge events on their way to the sink: in the pipeline, or spooled and not yet settled by the sink.",
);
pub const SINK_PENDING_BATCHES: Metric = gauge(
    "zastava_runtime_sink_pending_batches",
    &["sink"],
    "Spooled batches the sink has not settled yet (how far its cursor is behind).",
);
pub const SINK_BATCHES: Metric = counter(
    "zastava_runtime_sink_batches_total",
    &["sink", "outcome"],
    "Batch deliveries to the sink, by outcome: delivered, duplicate (the sink already had it), retry, throttled, rejected (dead-lettered).",
);
pub const SINK_ERRORS: Metric = counter(
    "zastava_runtime_sink_errors_total",
    &["sink", "reason"],
    "Failed connections and deliveries, by sink and reason (connect, timeout, auth, tls, stream_config, no_stream, wrong_type, server, spool, ...).",
);
pub const SINK_LATENCY: Metric = labelled_histogram(
    "zastava_runtime_sink_latency_ms",
    &["sink"],
    "Milliseconds per delivery attempt, by sink.",
    &[
        1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ],
);
pub const SINK_LAG: Metric = labelled_histogram(
    "zastava_runtime_sink_lag_seconds",
    &["sink"],
    "Seconds from the oldest event of a batch to its acknowledgement by the sink.",
    &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
);
pub const SINK_CONNECTED: Metric = gauge(
    "zastava_runtime_sink_connected",
    &["sink"],
    "1 while the sink is connected (its last attempt reached the server), 0 while the observer reconnects.",
);

// --- The Authority (both binaries) ----------------------------------------------------

pub const AUTHORITY_TOKEN_ISSUES: Metric = counter(
    "zastava_authority_token_issues_total",
    &["result"],
    "OpTok requests to the Authority, by result: issued, cached (reused from the cache at start), or why none came (not_dpop, unreachable, tls, discovery, rejected, wrong_binding, bad_reply, dpop_key, client_secret).",
);
pub const AUTHORITY_TOKEN_EXPIRY: Metric = gauge(
    "zastava_authority_token_expiry_timestamp_seconds",
    &[],
    "When the token in use expires (Unix time; a static token without exp: a day after it was made; 0: none yet).",
);
pub const AUTHORITY_TOKEN_ISSUED: Metric = gauge(
    "zastava_authority_token_issued_timestamp_seconds",
    &[],
    "When the token in use was issued (Unix time).",
);
pub const AUTHORITY_FALLBACK_ACTIVE: Metric = gauge(
    "zastava_authority_fallback_active",
    &[],
    "1 while the static token stands in for an OpTok the Authority cannot issue.",
);
pub const AUTHORITY_NONCE_CHALLENGES: Metric = counter(
    "zastava_authority_dpop_nonce_challenges_total",
    &["server"],
    "use_dpop_nonce challenges answered, by server: authority, backend.",
);
pub const AUTHORITY_TOKEN_DROPS: Metric = counter(
    "zastava_authority_token_drops_total",
    &["cause"],
    "OpToks dropped before expiry, by cause: invalid_token (the backend refused it), key_rotated, invalidated (invalidate-op-token, or refused by the backend twice).",
);

// --- Container runtimes ---------------------------------------------------------------

pub const RUNTIME_ERRORS: Metric = counter(
    "zastava_container_runtime_errors_total",
    &["runtime", "reason"],
    "Failed calls to a container runtime (cri, docker), by reason; events of containers it could not describe are sent with their container id only.",
);
pub const RUNTIME_CONNECTED: Metric = gauge(
    "zastava_container_runtime_connected",
    &["runtime"],
    "1 while the container runtime (cri, docker) answers, 0 while the observer reconnects.",
);

// --- The webhook ----------------------------------------------------------------------

pub const ADMISSION_DECISIONS: Metric = counter(
    "zastava_admission_decisions_total",
    &["decision"],
    "Admission reviews answered, by decision.",
);
pub const ADMISSION_DECISION_SECONDS: Metric = histogram(
    "zastava_admission_decision_seconds",
    "Seconds from a review's arrival to its answer.",
    &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 1.5,
        2.0, 5.0,
    ],
);
pub const ADMISSION_INVALID_REQUESTS: Metric = counter(
    "zastava_admission_invalid_requests_total",
    &[],
    "Requests refused because they are not an AdmissionReview the webhook can read.",
);
pub const ADMISSION_CACHE_HITS: Metric = counter(
    "zastava_admission_cache_hits_total",
    &[],
    "Image verdicts answered from the cache.",
);
pub const ADMISSION_CACHE_MISSES: Metric = counter(
    "zastava_admission_cache_misses_total",
    &[],
    "Image verdicts not in the cache.",
);
pub const ADMISSION_BACKEND_ERRORS: Metric = counter(
    "zastava_admission_backend_errors_total",
    &["reason"],
    "Verdict requests the backend did not answer usefully, by reason.",
);
pub const ADMISSION_FAIL_OPEN: Metric = counter(
    "zastava_admission_fail_open_total",
    &[],
    "Reviews admitted without a verdict because their namespace fails open.",
);
pub const ADMISSION_NOT_JUDGED: Metric = counter(
    "zastava_admission_not_judged_total",
    &["reason"],
    "Reviews admitted without judging their images, by reason (not_a_workload, delete, being_deleted, unchanged_images).",
);
pub const ADMISSION_UNREADABLE_OBJECTS: Metric = counter(
    "zastava_admission_unreadable_objects_total",
    &[],
    "Reviews denied because their object, of a kind that runs pods, could not be read as one.",
);
pub const ADMISSION_TLS_HANDSHAKE_FAILURES: Metric = counter(
    "zastava_admission_tls_handshake_failures_total",
    &[],
    "TLS handshakes that failed or timed out.",
);
pub const ADMISSION_REQUEST_TIMEOUTS: Metric = counter(
    "zastava_admission_request_timeouts_total",
    &["part"],
    "Requests cut off because a part did not arrive in time: headers (server.header_timeout, the connection is closed) or body (server.body_timeout, answered 408).",
);
pub const ADMISSION_IDLE_CLOSES: Metric = counter(
    "zastava_admission_idle_connections_closed_total",
    &[],
    "Connections closed after server.idle_timeout without a request.",
);
pub const ADMISSION_CONNECTIONS_REFUSED: Metric = counter(
    "zastava_admission_connections_refused_total",
    &[],
    "Connections refused at accept because server.max_connections were open.",
);
pub const ADMISSION_OPEN_CONNECTIONS: Metric = gauge(
    "zastava_admission_open_connections",
    &[],
    "HTTPS connections open, including those still in their TLS handshake.",
);
pub const ADMISSION_BODY_BYTES_RESERVED: Metric = gauge(
    "zastava_admission_body_bytes_reserved",
    &[],
    "Bytes of request bodies being read or judged (reserved of server.max_bodies_in_flight).",
);
pub const ADMISSION_OVERLOAD_REFUSALS: Metric = counter(
    "zastava_admission_overload_refusals_total",
    &[],
    "Requests answered 503 because server.max_bodies_in_flight had no room for their body within server.body_timeout.",
);
pub const ADMISSION_CERTIFICATE_RELOADS: Metric = counter(
    "zastava_admission_certificate_reloads_total",
    &[],
    "Serving certificates reloaded after their files changed.",
);
pub const ADMISSION_CERTIFICATE_RELOAD_ERRORS: Metric = counter(
    "zastava_admission_certificate_reload_errors_total",
    &[],
    "Changed certificate files that could not be used (the previous certificate is kept).",
);
/// The backend's latency as the webhook sees it (one verdict request).
pub const POLICY_BACKEND_LATENCY: Metric = histogram(
    "zastava_runtime_backend_latency_ms",
    "Milliseconds per call to the Scanner backend.",
    &[
        1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
    ],
);

/// What `zastava-observer` exports.
pub const OBSERVER: &[Metric] = &[
    RUNTIME_EVENTS,
    EVENTS_SEEN,
    EVENTS_SHIPPED,
    EVENTS_DROPPED,
    EVENTS_IN_FLIGHT,
    SPOOL_BATCHES,
    SPOOL_BYTES,
    EVENTS_LAG,
    BATCH_RECORDS,
    BACKEND_REQUESTS,
    SHIPPER_BACKEND_LATENCY,
    SINK_EVENTS_SHIPPED,
    SINK_EVENTS_DROPPED,
    SINK_EVENTS_IN_FLIGHT,
    SINK_PENDING_BATCHES,
    SINK_BATCHES,
    SINK_ERRORS,
    SINK_LATENCY,
    SINK_LAG,
    SINK_CONNECTED,
    AUTHORITY_TOKEN_ISSUES,
    AUTHORITY_TOKEN_EXPIRY,
    AUTHORITY_TOKEN_ISSUED,
    AUTHORITY_FALLBACK_ACTIVE,
    AUTHORITY_NONCE_CHALLENGES,
    AUTHORITY_TOKEN_DROPS,
    RUNTIME_ERRORS,
    RUNTIME_CONNECTED,
];

/// What `zastava-webhook` exports.
pub const WEBHOOK: &[Metric] = &[
    ADMISSION_DECISIONS,
    ADMISSION_DECISION_SECONDS,
    ADMISSION_INVALID_REQUESTS,
    ADMISSION_CACHE_HITS,
    ADMISSION_CACHE_MISSES,
    ADMISSION_BACKEND_ERRORS,
    ADMISSION_FAIL_OPEN,
    ADMISSION_NOT_JUDGED,
    ADMISSION_UNREADABLE_OBJECTS,
    ADMISSION_TLS_HANDSHAKE_FAILURES,
    ADMISSION_REQUEST_TIMEOUTS,
    ADMISSION_IDLE_CLOSES,
    ADMISSION_CONNECTIONS_REFUSED,
    ADMISSION_OPEN_CONNECTIONS,
    ADMISSION_BODY_BYTES_RESERVED,
    ADMISSION_OVERLOAD_REFUSALS,
    ADMISSION_CERTIFICATE_RELOADS,
    ADMISSION_CERTIFICATE_RELOAD_ERRORS,
    POLICY_BACKEND_LATENCY,
    AUTHORITY_TOKEN_ISSUES,
    AUTHORITY_TOKEN_EXPIRY,
    AUTHORITY_TOKEN_ISSUED,
    AUTHORITY_FALLBACK_ACTIVE,
    AUTHORITY_NONCE_CHALLENGES,
    AUTHORITY_TOKEN_DROPS,
];

/// The metrics of one binary.
pub fn of(binary: Binary) -> &'static [Metric] {
    match binary {
        Binary::Observer => OBSERVER,
        Binary::Webhook => WEBHOOK,
    }
}

/// A Prometheus exporter with the buckets of the binary's histograms.
pub fn exporter(binary: Binary) -> PrometheusBuilder {
    let mut builder = PrometheusBuilder::new();
    for metric in of(binary) {
        if metric.kind != Kind::Histogram {
            continue;
        }
        builder = match builder
            .set_buckets_for_metric(Matcher::Full(metric.name.into()), metric.buckets)
        {
            Ok(builder) => builder,
            // Only an empty bucket list is refused, and none of the table's is empty
            // (checked by a test).
            Err(_) => PrometheusBuilder::new(),
        };
    }
    builder
}

/// Installs the binary's recorder as the global one, every series carrying the `common`
/// labels (`runtime.metrics.common_labels`, validated by the configuration). Returns its
/// handle for `/metrics`, and whether it became the global recorder (false if one was
/// installed already, when the handle renders nothing).
pub fn install<'a>(
    binary: Binary,
    common: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (PrometheusHandle, bool) {
    let mut builder = exporter(binary);
    for (name, value) in common {
        builder = builder.add_global_label(name, value);
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    let installed = metrics::set_global_recorder(recorder).is_ok();
    (handle, installed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_prometheus_names_and_unique_per_binary() {
        for binary in [Binary::Observer, Binary::Webhook] {
            let mut seen = BTreeSet::new();
            for m in of(binary) {
                assert!(seen.insert(m.name), "{} twice", m.name);
                assert!(
                    m.name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{}",
                    m.name
                );
                assert!(
                    m.name.starts_with("zastava_") || m.name.starts_with("stella_"),
                    "{}",
                    m.name
                );
                assert_eq!(
                    m.kind == Kind::Counter,
                    m.name.ends_with("_total"),
                    "{}: counters, and only counters, end in _total",
                    m.name
                );
                assert_eq!(
                    m.kind == Kind::Histogram,
                    !m.buckets.is_empty(),
                    "{}",
                    m.name
                );
                assert!(
                    m.buckets.windows(2).all(|w| w[0] < w[1]),
                    "{}: buckets must increase",
                    m.name
                );
                assert!(!m.help.is_empty(), "{}", m.name);
            }
        }
    }
}
