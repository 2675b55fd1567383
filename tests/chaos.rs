//! Chaos: the real observer under a steady load of new edges while its backend goes away,
//! it is killed and started again, its spool's disk fills and its ring buffer is overrun.
//! Every case checks the event account at every scrape and at shutdown, and follows each
//! edge the load made to the backend: delivered once, or lost for a reason the case names
//! and the observer counted.
//!
//! The cases run small by default: the test suite's smoke run. `ZASTAVA_CHAOS=full` runs
//! them at the scale docs/RELIABILITY.md reports (`cargo xtask chaos` does, and turns the
//! figures each case prints into the table).

mod common;

#[path = "chaos/cpu_limit.rs"]
mod cpu_limit;
#[path = "chaos/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use common::{
    backend::Reply,
    containerd::{Containerd, PodSpec, BUSYBOX},
    TempDir,
};
use cpu_limit::CpuLimit;
use harness::{
    account, assert_summary_balanced, one_at_a_time, report, scraping, secs, wait_balanced,
    wait_until_quiet, Backend, Daemon, Load, Outcome, Scale,
};
use serde_json::json;

fn dropped_at(metrics: &common::Metrics, stage: &str) -> u64 {
    metrics
        .value(
            "stella_runtime_events_dropped_total",
            &format!("{{stage=\"{stage}\"}}"),
        )
        .unwrap_or(0.0) as u64
}

#[test]
fn a_backend_outage_under_load_loses_nothing_and_sends_no_batch_twice() {
    let _one = one_at_a_time();
    let scale = Scale::get();
    let rate = scale.pick(500, 5000);
    let outage = scale.pick(Duration::from_secs(8), Duration::from_secs(600));
    let dir = TempDir::new("zastava-chaos-outage");
    let backend = Backend::start(dir.path().to_str().unwrap());
    let spool = TempDir::new("zastava-chaos-spool");
    backend.receiver.set_default(Some(Reply::Status(503)));
    let daemon = Daemon::start(
        &backend.args(spool.path()),
        &spool.path().with_extension("log"),
    );

    // The backend answers 503 for the whole outage while the load goes on.
    let load = Load::start(dir.path(), rate);
    let started = Instant::now();
    let mut spool_peak = 0.0_f64;
    let mut scrapes = scraping(&daemon, Duration::from_secs(1), |m| {
        spool_peak = spool_peak.max(m.value("zastava_runtime_spool_bytes", "").unwrap_or(0.0));
        started.elapsed() < outage
    });
    let load = load.stop();
    let refused = backend.receiver.statuses().get(&503).copied().unwrap_or(0);
    assert!(refused > 0, "the outage refused nothing");

    // It returns: everything made during the outage arrives.
    backend.receiver.set_default(None);
    let back = Instant::now();
    let all = load.count as usize;
    let arrived = wait_balanced(
        &daemon,
        scale.pick(common::TIMEOUT, Duration::from_secs(600)),
        |_| backend.receiver.with_tally(|t| t.paths.len()) >= all,
    );
    scrapes += 1;
    let recovered = backend
        .receiver
        .with_tally(|t| t.last_new_path_at)
        .map(|at| at.saturating_duration_since(back));
    let summary = daemon.stop();
    assert_summary_balanced(&summary);

    let outcome = Outcome::of(&backend, &load);
    let duplicate_batches = backend.receiver.with_tally(|t| t.duplicate_batches);
    report(
        "backend outage under load",
        json!({
            "rate_per_second": rate,
            "outage_seconds": outage.as_secs(),
            "generated": outcome.generated,
            "delivered": outcome.delivered,
            "lost": outcome.missing.len(),
            "delivered_twice": outcome.repeated,
            "duplicate_batches": duplicate_batches,
            "refused_requests": refused,
            "spool_peak_bytes": spool_peak,
            "recovery_seconds": recovered.map(secs),
            "scrapes_balanced": scrapes,
            "account": account(&summary),
        }),
    );
    assert!(arrived, "not everything arrived after the outage");
    assert_eq!(outcome.missing.len(), 0, "lost during the outage");
    assert_eq!(outcome.repeated, 0, "edges delivered twice");
    assert_eq!(duplicate_batches, 0, "batches accepted twice");
}

#[test]
fn sigkill_under_load_sends_every_spooled_batch_once_and_loses_only_what_memory_held() {
    let _one = one_at_a_time();
    let scale = Scale::get();
    let rate = scale.pick(500, 5000);
    let period = scale.pick(Duration::from_secs(3), Duration::from_secs(30));
    let kills = scale.pick(2, 10);
    // As the systemd unit restarts it (`RestartSec=`).
    let restart = scale.pick(Duration::from_secs(1), restart_sec());
    let dir = TempDir::new("zastava-chaos-kill");
    let backend = Backend::start(dir.path().to_str().unwrap());
    let spool = TempDir::new("zastava-chaos-spool");
    let args = backend.args(spool.path());
    let log = |n: usize| spool.path().with_extension(format!("{n}.log"));

    let mut daemon = Daemon::start(&args, &log(0));
    let first_ready = Instant::now();
    let load = Load::start(dir.path(), rate);
    // (killed at, the next observer ready at)
    let mut downtimes = vec![(first_ready, first_ready)];
    let mut scrapes = 0;
    for n in 1..=kills {
        // Before the last kill the backend is down: that run's batches are in the spool
        // when the kill comes, and only a restart that resumes from it delivers them.
        if n == kills {
            backend.receiver.set_default(Some(Reply::Status(503)));
        }
        let until = Instant::now() + period;
        scrapes += scraping(&daemon, Duration::from_millis(500), |_| {
            Instant::now() < until
        });
        let killed_at = Instant::now();
        daemon.kill();
        backend.receiver.set_default(None);
        std::thread::sleep(restart);
        daemon = Daemon::start(&args, &log(n));
        downtimes.push((killed_at, Instant::now()));
    }
    let until = Instant::now() + period;
    scrapes += scraping(&daemon, Duration::from_millis(500), |_| {
        Instant::now() < until
    });
    let load = load.stop();
    // Everything made after the last start arrives.
    let last_ready = downtimes.last().unwrap().1;
    let after: Vec<String> = (0..load.count)
        .filter(|&i| load.time_of(i) > last_ready)
        .map(|i| load.path(i))
        .collect();
    let arrived = wait_balanced(&daemon, common::TIMEOUT, |_| {
        backend
            .receiver
            .with_tally(|t| after.iter().all(|p| t.paths.contains_key(p)))
    });
    let summary = daemon.stop();
    assert_summary_balanced(&summary);

    // Each edge that never arrived was made while no observer ran, or after the last
    // edge of its observer's run that did arrive: still in memory (the reorder window, an
    // open batch) when the kill came. A gap before that edge would be a loss of another
    // kind.
    let outcome = Outcome::of(&backend, &load);
    let delivered = backend.delivered(&load);
    let runs = runs_between(&downtimes);
    let run_of = |i: u64| {
        let at = load.time_of(i);
        runs.iter()
            .position(|&(from, to)| at >= from && to.is_none_or(|to| at < to))
    };
    let mut last_arrived = vec![None; runs.len()];
    let mut arrived_of = vec![0_u64; runs.len()];
    for (i, &n) in delivered.iter().enumerate() {
        if let (true, Some(run)) = (n > 0, run_of(i as u64)) {
            last_arrived[run] = Some(i as u64);
            arrived_of[run] += 1;
        }
    }
    // The run that ended in the outage (runs[0] ends at the first kill).
    let spooled_at_kill = arrived_of[kills - 1];
    let (mut unobserved, mut in_memory, mut other) = (0_u64, 0_u64, Vec::new());
    let mut held_longest = Duration::ZERO;
    for &i in &outcome.missing {
        match run_of(i) {
            None => unobserved += 1,
            Some(run) if runs[run].1.is_some() && last_arrived[run].is_none_or(|last| i > last) => {
                in_memory += 1;
                let killed = runs[run].1.unwrap();
                held_longest = held_longest.max(killed.saturating_duration_since(load.time_of(i)));
            }
            Some(_) => other.push(load.path(i)),
        }
    }
    let duplicate_batches = backend.receiver.with_tally(|t| t.duplicate_batches);
    report(
        "SIGKILL under load",
        json!({
            "rate_per_second": rate,
            "kills": kills,
            "every_seconds": period.as_secs(),
            "restart_seconds": restart.as_secs(),
            "generated": outcome.generated,
            "delivered": outcome.delivered,
            "not_observed_while_down": unobserved,
            "lost_in_memory_at_kills": in_memory,
            "oldest_lost_in_memory_seconds": secs(held_longest),
            "lost_otherwise": other.len(),
            "spooled_during_an_outage_and_delivered_after_the_restart": spooled_at_kill,
            "delivered_twice": outcome.repeated,
            "batches_sent_again": duplicate_batches,
            "scrapes_balanced": scrapes,
            "account_of_the_last_run": account(&summary),
        }),
    );
    assert!(arrived, "edges made after the last restart did not arrive");
    assert!(
        spooled_at_kill > 0,
        "nothing spooled before the last kill arrived after the restart"
    );
    assert_eq!(
        other,
        Vec::<String>::new(),
        "lost for no reason a kill explains"
    );
    assert_eq!(outcome.repeated, 0, "edges delivered twice");
}

/// The times an observer ran, from (killed at, the next one ready at): (ready, killed),
/// the last one never killed.
fn runs_between(downtimes: &[(Instant, Instant)]) -> Vec<(Instant, Option<Instant>)> {
    downtimes
        .iter()
        .enumerate()
        .map(|(n, &(_, ready))| (ready, downtimes.get(n + 1).map(|&(killed, _)| killed)))
        .collect()
}

/// `RestartSec=` of the systemd unit.
fn restart_sec() -> Duration {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/zastava-observer.service"
    ))
    .unwrap();
    let value = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestartSec="))
        .expect("the unit sets RestartSec=");
    humantime::parse_duration(value.trim()).unwrap()
}

#[test]
fn a_full_spool_disk_during_an_outage_drops_only_what_it_counts_and_recovers() {
    let _one = one_at_a_time();
    let scale = Scale::get();
    let rate = scale.pick(2000, 5000);
    let disk_bytes = scale.pick(384 << 10, 8 << 20);
    let beyond = scale.pick(Duration::from_secs(2), Duration::from_secs(60));
    let root = TempDir::new("zastava-chaos-full");
    let (outage_dir, after_dir) = (root.path().join("outage"), root.path().join("after"));
    std::fs::create_dir_all(&outage_dir).unwrap();
    std::fs::create_dir_all(&after_dir).unwrap();
    let backend = Backend::start(root.path().to_str().unwrap());
    let disk = zastava_testing::tmpfs::Tmpfs::mount("zastava-chaos-spool", disk_bytes);
    backend.receiver.set_default(Some(Reply::Status(503)));
    let daemon = Daemon::start(
        &backend.args(disk.path()),
        &root.path().join("observer.log"),
    );

    // The outage lasts until the disk has refused batches for a while.
    let load = Load::start(&outage_dir, rate);
    let mut full_at = None;
    let limit = Instant::now() + scale.pick(Duration::from_secs(60), Duration::from_secs(900));
    let mut scrapes = scraping(&daemon, Duration::from_millis(500), |m| {
        if full_at.is_none() && dropped_at(m, "spool_full") > 0 {
            full_at = Some(Instant::now());
        }
        let now = Instant::now();
        now < limit && full_at.is_none_or(|at| now < at + beyond)
    });
    let outage_load = load.stop();
    let filled = full_at.is_some();

    // The backend returns: what was spooled drains, and new edges are spooled and sent.
    backend.receiver.set_default(None);
    let back = Instant::now();
    let drained = wait_balanced(
        &daemon,
        scale.pick(common::TIMEOUT, Duration::from_secs(300)),
        |m| m.value("zastava_runtime_spool_batches", "") == Some(0.0),
    );
    let drained_in = back.elapsed();
    let load = Load::start(&after_dir, rate);
    std::thread::sleep(scale.pick(Duration::from_secs(2), Duration::from_secs(10)));
    let after_load = load.stop();
    let all = after_load.count;
    let arrived = wait_balanced(&daemon, common::TIMEOUT, |_| {
        backend
            .receiver
            .with_tally(|t| (0..all).all(|i| t.paths.contains_key(&after_load.path(i))))
    });
    scrapes += 2;
    let metrics = daemon.scrape();
    let spool_full = dropped_at(&metrics, "spool_full");
    let summary = daemon.stop();
    assert_summary_balanced(&summary);

    let during = Outcome::of(&backend, &outage_load);
    let after = Outcome::of(&backend, &after_load);
    report(
        "spool disk full during an outage",
        json!({
            "rate_per_second": rate,
            "spool_disk_bytes": disk_bytes,
            "generated_during_outage": during.generated,
            "delivered_of_those": during.delivered,
            "lost_of_those": during.missing.len(),
            "dropped_spool_full_all_processes": spool_full,
            "drained_seconds": secs(drained_in),
            "generated_after": after.generated,
            "delivered_after": after.delivered,
            "scrapes_balanced": scrapes,
            "account": account(&summary),
        }),
    );
    assert!(filled, "the spool's disk never filled");
    assert!(drained, "the spool did not drain when the backend returned");
    assert!(
        during.missing.len() as u64 <= spool_full,
        "{} of the load's edges lost, but only {spool_full} counted as spool_full",
        during.missing.len()
    );
    assert!(
        !during.missing.is_empty(),
        "a full disk dropped none of the load's edges"
    );
    assert_eq!(during.repeated + after.repeated, 0, "edges delivered twice");
    assert!(arrived, "edges made after recovery did not all arrive");
    assert_eq!(after.missing.len(), 0);
}

/// The observer's CPU limit in the overrun case.
const CPU_LIMIT_MILLICORES: u64 = 50;

#[test]
fn an_overrun_ring_buffer_counts_every_loss_and_memory_stays_bounded() {
    let _one = one_at_a_time();
    let scale = Scale::get();
    let storm = scale.pick(Duration::from_secs(3), Duration::from_secs(60));
    let dir = TempDir::new("zastava-chaos-ring");
    let backend = Backend::start(dir.path().to_str().unwrap());
    let spool = TempDir::new("zastava-chaos-spool");
    let mut args = backend.args(spool.path());
    args.extend(["--ring-buffer-bytes".to_owned(), "65536".to_owned()]);
    let daemon = Daemon::start(&args, &spool.path().with_extension("log"));
    let rss_at_start = daemon.peak_rss();
    // The observer limited to a twentieth of a CPU, as a DaemonSet's `limits.cpu: 50m` would
    // (from here: start-up, which parses the kernel's BTF, ran unlimited): on two cores the
    // load cannot otherwise offer ten times what the observer takes in.
    let limit = CpuLimit::apply(daemon.pid(), CPU_LIMIT_MILLICORES);

    // Two threads open new paths as fast as they can.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (load_a, load_b) = (Load::start(&a, 0), Load::start(&b, 0));
    let until = Instant::now() + storm;
    // Resident set and events held in the pipeline, at every scrape.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut scrapes = scraping(&daemon, Duration::from_millis(500), |m| {
        let held = m
            .value("zastava_runtime_events_in_flight", "{stage=\"pipeline\"}")
            .unwrap_or(0.0) as u64;
        samples.push((daemon.rss(), held));
        Instant::now() < until
    });
    let (load_a, load_b) = (load_a.stop(), load_b.stop());
    let half = samples.len() / 2;
    let rss_peak_of = |s: &[(u64, u64)]| s.iter().map(|&(rss, _)| rss).max().unwrap_or(0);
    wait_until_quiet(&daemon, &backend);
    scrapes += 1;
    let peak_rss = daemon.peak_rss();
    let throttled = limit.throttled_ns();
    let summary = daemon.stop();
    drop(limit);
    assert_summary_balanced(&summary);

    let (oa, ob) = (
        Outcome::of(&backend, &load_a),
        Outcome::of(&backend, &load_b),
    );
    let generated = oa.generated + ob.generated;
    let delivered = oa.delivered + ob.delivered;
    let ring_full = summary["delivery"]["dropped"]["kernel_ring_full"]
        .as_u64()
        .unwrap_or(0);
    let dropped = harness::totals(&summary).dropped;
    report(
        "ring buffer overrun",
        json!({
            "storm_seconds": storm.as_secs(),
            "ring_buffer_bytes": 65536,
            "cpu_limit_millicores": CPU_LIMIT_MILLICORES,
            "throttled_seconds": secs(Duration::from_nanos(throttled)),
            "generated": generated,
            "delivered": delivered,
            "overload": (generated as f64 / delivered.max(1) as f64 * 10.0).round() / 10.0,
            "dropped_kernel_ring_full_all_processes": ring_full,
            "kernel": summary["kernel"],
            "rss_at_start_bytes": rss_at_start,
            "rss_max_first_half_bytes": rss_peak_of(&samples[..half]),
            "rss_max_second_half_bytes": rss_peak_of(&samples[half..]),
            "held_in_pipeline_max": samples.iter().map(|&(_, held)| held).max().unwrap_or(0),
            "peak_rss_bytes": peak_rss,
            "scrapes_balanced": scrapes,
            "account": account(&summary),
        }),
    );
    assert!(ring_full > 0, "the ring buffer was never overrun");
    assert!(throttled > 0, "the CPU limit never held the observer back");
    assert!(
        generated - delivered <= dropped,
        "{} of the storm's edges missing, but only {dropped} dropped counted",
        generated - delivered
    );
    assert_eq!(oa.repeated + ob.repeated, 0, "edges delivered twice");
    // A ceiling, not a figure: what an overrun holds is bounded by `batch.max_held_bytes`
    // and `batch.max_held_events` (records waiting for the reorder window); the case
    // reports the peak and the resident set in each half of the storm.
    assert!(peak_rss < 512 << 20, "peak RSS {peak_rss} bytes");
}

#[test]
fn containerd_killed_and_restarted_under_load_never_gives_an_edge_the_wrong_pod() {
    let _one = one_at_a_time();
    let scale = Scale::get();
    let cycles: u64 = scale.pick(1, 3);
    let down = scale.pick(Duration::from_secs(2), Duration::from_secs(10));
    let period = scale.pick(Duration::from_secs(3), Duration::from_secs(20));
    let marker = format!("/{}", common::unique("chaos"));
    let backend = Backend::start(&marker);
    backend.receiver.tally_paths_and_pods(&marker);
    let mut containerd = Containerd::start();
    let spool = TempDir::new("zastava-chaos-spool");
    let socket = containerd.socket.to_str().unwrap().to_owned();
    let args = backend.args_with(
        spool.path(),
        &["--cri-endpoint", &socket, "--cri-poll-interval", "0.1"],
    );
    let daemon = Daemon::start(&args, &spool.path().with_extension("log"));

    // Each pod's container opens paths that name the pod, about 2 000 a second.
    let mut pods = Vec::new();
    let mut start_pod = |containerd: &mut Containerd, name: String| {
        let pod = containerd.run_pod(&PodSpec {
            name: &name,
            namespace: "chaos",
            labels: &[],
        });
        let script = format!(
            "i=0; while :; do for j in 0 1 2 3 4 5 6 7 8 9; do true < {marker}-{name}-$i-$j; done; i=$((i+1)); busybox usleep 5000; done 2>/dev/null"
        );
        containerd.run_container(&pod, "load", BUSYBOX, &["/bin/sh", "-c", &script]);
        pods.push((name, pod));
    };
    start_pod(&mut containerd, "steady-a".to_owned());
    start_pod(&mut containerd, "steady-b".to_owned());
    let pause = |d: Duration| {
        let until = Instant::now() + d;
        scraping(&daemon, Duration::from_millis(500), |_| {
            Instant::now() < until
        })
    };
    let mut scrapes = pause(period);
    for cycle in 0..cycles {
        containerd.kill_daemon();
        scrapes += pause(down);
        containerd.start_daemon();
        let back = wait_balanced(&daemon, common::TIMEOUT, |_| {
            daemon.log_text().matches("container runtime back").count() as u64 > cycle
        });
        assert!(
            back,
            "no reconnect after containerd restarted:\n{}",
            daemon.log_text()
        );
        start_pod(&mut containerd, format!("after-{cycle}"));
        scrapes += pause(period);
    }
    for (_, pod) in &pods {
        containerd.stop_pod(pod);
    }
    wait_until_quiet(&daemon, &backend);
    let summary = daemon.stop();
    assert_summary_balanced(&summary);

    // Every edge names its pod in its path: attributed to it (by the edge itself or by a
    // patch for it), or to no pod (sent as unknown), never to another.
    let mut right = std::collections::BTreeMap::<String, u64>::new();
    let (mut no_pod, mut wrong) = (0_u64, Vec::new());
    backend.receiver.with_tally(|t| {
        for (path, attributed) in t.pods.as_ref().unwrap() {
            let rest = &path[marker.len() + 1..];
            let mut parts = rest.rsplitn(3, '-');
            let (_, _, pod) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
            let others: Vec<&String> = attributed
                .iter()
                .filter(|p| !p.is_empty() && *p != pod)
                .collect();
            if !others.is_empty() {
                wrong.push(format!("{path} attributed to {others:?}"));
            } else if attributed.contains(pod) {
                *right.entry(pod.to_owned()).or_default() += 1;
            } else {
                no_pod += 1;
            }
        }
    });
    report(
        "containerd killed and restarted under load",
        json!({
            "pods": pods.len(),
            "kills": cycles,
            "down_seconds": down.as_secs(),
            "edges_with_their_pod": right.values().sum::<u64>(),
            "edges_by_pod": right,
            "edges_without_a_pod": no_pod,
            "edges_without_a_pod_by_enrichment": backend.receiver.with_tally(|t| t.without_pod.clone()),
            "patches_by_enrichment": backend.receiver.with_tally(|t| t.patches.clone()),
            "edges_with_another_pod": wrong.len(),
            "runtime_disconnects": summary["cri"]["disconnects"],
            "attribution": summary["attribution"],
            "scrapes_balanced": scrapes,
            "account": account(&summary),
        }),
    );
    assert_eq!(wrong, Vec::<String>::new(), "edges given another pod");
    for (name, _) in &pods {
        assert!(
            right.get(name).copied().unwrap_or(0) > 0,
            "no edge of {name} was attributed to it: {right:?}"
        );
    }
    assert!(summary["cri"]["disconnects"].as_u64().unwrap() >= cycles);
}
