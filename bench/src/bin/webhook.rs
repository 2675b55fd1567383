//! Decision latency of `zastava-webhook` under concurrent admission requests.
//!
//! Starts the real webhook binary (HTTPS with a certificate made here) and a policy backend
//! on loopback that answers after `--backend-delay-ms`, then sends AdmissionReviews from
//! `--concurrency` tasks over one HTTPS client, as an API server would:
//!
//! - baseline: `GET /healthz` — the TLS/HTTP round trip with no decision (the floor);
//! - warm cache: pods whose digests were all judged before (no backend call);
//! - backend: every pod with a digest never seen (every decision waits for the backend).
//!
//! Reports p50, p99 and the largest latency seen by the client, requests per second, the
//! buckets of the webhook's own decision histogram that hold its p50 and p99, and the
//! webhook's CPU time per request. Checks that the warm cache made no backend call.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use axum::{body::Bytes, extract::State, routing, Router};
use clap::Parser;
use rustls_pki_types::{pem::PemObject as _, CertificateDer};
use serde_json::{json, Value};

use zastava_bench::{exposition, programs, report::percentile, tracer::process_cpu_seconds};
use zastava_platform::metrics::ADMISSION_DECISION_SECONDS;
use zastava_testing::pki::Pki;

#[derive(Parser, Clone)]
#[command(about = "zastava-webhook decision latency at high concurrency")]
struct Cli {
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Requests per scenario.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// How long the policy backend takes to answer, in milliseconds.
    #[arg(long, default_value_t = 50)]
    backend_delay_ms: u64,
    /// Where zastava-webhook is (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Distinct digests the warm-cache scenario cycles through.
const WARM_DIGESTS: usize = 100;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let [binary] = programs(cli.bin_dir.as_deref(), ["zastava-webhook"])?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("zastava-webhook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&cli, &binary, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if cli.json {
        println!("{report}");
    } else {
        println!(
            "{} requests per scenario, {} concurrent, backend answering in {} ms:",
            cli.requests, cli.concurrency, cli.backend_delay_ms
        );
        for s in report["scenarios"].as_array().into_iter().flatten() {
            println!(
                "  {:<28} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  {:>7.0} req/s",
                s["name"].as_str().unwrap_or(""),
                s["p50Ms"].as_f64().unwrap_or(0.0),
                s["p99Ms"].as_f64().unwrap_or(0.0),
                s["maxMs"].as_f64().unwrap_or(0.0),
                s["perSecond"].as_f64().unwrap_or(0.0),
            );
            print!(
                "  {:<28} webhook CPU {:.3} ms/request",
                "",
                s["webhookCpuMsPerRequest"].as_f64().unwrap_or(0.0)
            );
            if let Some(n) = s["serverDecisions"].as_u64() {
                print!(
                    "; its own timing of {n} decisions: p50 <= {} ms, p99 <= {} ms",
                    s["serverP50AtMostMs"], s["serverP99AtMostMs"],
                );
            }
            println!();
        }
        println!(
            "  backend calls during the warm-cache scenario: {}",
            report["backendCallsDuringWarmScenario"]
        );
    }
    Ok(())
}

async fn run(cli: &Cli, binary: &Path, dir: &Path) -> Result<Value> {
    let pki = Pki::generate_for(vec!["127.0.0.1".into()]);
    let calls = Arc::new(AtomicU64::new(0));
    let backend = start_backend(
        Duration::from_millis(cli.backend_delay_ms),
        Arc::clone(&calls),
    )
    .await?;
    let mut webhook = Webhook::start(binary, dir, &pki, backend)?;
    let client = https_client(&pki.ca)?;
    let base = format!("https://127.0.0.1:{}", webhook.https.port());

    let warm: Vec<String> = (0..WARM_DIGESTS).map(|i| digest(1, i)).collect();
    for d in &warm {
        let reply = post(&client, &base, &review(d)).await?;
        if reply["response"]["allowed"] != true {
            bail!("warming the cache: {reply}");
        }
    }
    let warmed = calls.load(Ordering::SeqCst);

    let healthz = format!("{base}/healthz");
    let health = |_| {
        let (client, url) = (client.clone(), healthz.clone());
        async move {
            let status = client.get(&url).send().await?.status();
            if !status.is_success() {
                bail!("/healthz answered {status}");
            }
            Ok(())
        }
    };
    // Open every connection (the TLS handshakes) before measuring anything, as an API
    // server's long-lived connection pool would have.
    let warm_up = Cli {
        requests: cli.concurrency * 4,
        ..cli.clone()
    };
    load("connection warm-up", &warm_up, &health).await?;

    let metrics_url = format!("http://{}/metrics", webhook.metrics);
    let pid = webhook.pid();
    let mut scenarios = Vec::new();
    let mut before = Snapshot::take(&client, &metrics_url, pid).await?;
    let mut scenario = load("baseline: GET /healthz", cli, &health).await?;
    let mut after = Snapshot::take(&client, &metrics_url, pid).await?;
    after.annotate(&before, &mut scenario);
    scenarios.push(scenario);

    before = after;
    let mut scenario = load("warm cache", cli, |i| {
        let (client, base) = (client.clone(), base.clone());
        let body = review(&warm[i % WARM_DIGESTS]);
        async move { expect_allowed(post(&client, &base, &body).await?) }
    })
    .await?;
    after = Snapshot::take(&client, &metrics_url, pid).await?;
    after.annotate(&before, &mut scenario);
    scenarios.push(scenario);
    let warm_calls = calls.load(Ordering::SeqCst) - warmed;
    if warm_calls > 0 {
        bail!("the warm cache asked the backend {warm_calls} times; every digest was cached");
    }

    before = after;
    let name = format!("backend answering in {} ms", cli.backend_delay_ms);
    let mut scenario = load(&name, cli, |i| {
        let (client, base) = (client.clone(), base.clone());
        let body = review(&digest(2, i));
        async move { expect_allowed(post(&client, &base, &body).await?) }
    })
    .await?;
    after = Snapshot::take(&client, &metrics_url, pid).await?;
    after.annotate(&before, &mut scenario);
    scenarios.push(scenario);
    webhook.stop();
    Ok(json!({
        "concurrency": cli.concurrency,
        "requests": cli.requests,
        "backendDelayMs": cli.backend_delay_ms,
        "backendCallsDuringWarmScenario": warm_calls,
        "scenarios": scenarios,
    }))
}

/// What the webhook says about itself at one moment: its decision-latency histogram
/// (upper bound in seconds, cumulative count) and the CPU time it has used.
struct Snapshot {
    buckets: Vec<(f64, u64)>,
    cpu_seconds: f64,
}

impl Snapshot {
    async fn take(client: &reqwest::Client, url: &str, pid: libc::pid_t) -> Result<Snapshot> {
        let text = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let series = format!("{}_bucket", ADMISSION_DECISION_SECONDS.name);
        let mut buckets = Vec::new();
        for sample in exposition::samples(&text, &series) {
            let Some(le) = sample.label("le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, sample.value.parse()?));
        }
        let cpu_seconds = process_cpu_seconds(pid).context("the webhook is gone")?;
        Ok(Snapshot {
            buckets,
            cpu_seconds,
        })
    }

    /// Adds to `scenario` what happened inside the webhook since `before`: its CPU time per
    /// request, and the histogram bucket bounds holding the p50 and p99 of the decisions it
    /// timed itself (its view, without the client's queueing).
    fn annotate(&self, before: &Snapshot, scenario: &mut Value) {
        let requests = scenario["requests"].as_f64().unwrap_or(1.0).max(1.0);
        scenario["webhookCpuMsPerRequest"] =
            json!((self.cpu_seconds - before.cpu_seconds) * 1000.0 / requests);
        let delta: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let earlier = before.buckets.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                (le, n.saturating_sub(earlier))
            })
            .collect();
        let total = delta.last().map_or(0, |d| d.1);
        if total == 0 {
            return;
        }
        let bound = |q: f64| {
            let wanted = (total as f64 * q).ceil() as u64;
            delta
                .iter()
                .find(|d| d.1 >= wanted)
                .map_or(Value::Null, |d| {
                    if d.0.is_finite() {
                        json!(d.0 * 1000.0)
                    } else {
                        json!("+Inf")
                    }
                })
        };
        scenario["serverDecisions"] = json!(total);
        scenario["serverP50AtMostMs"] = bound(0.50);
        scenario["serverP99AtMostMs"] = bound(0.99);
    }
}

fn expect_allowed(reply: Value) -> Result<()> {
    if reply["response"]["allowed"] != true {
        bail!("not allowed: {reply}");
    }
    Ok(())
}

/// Runs `requests` calls of `call(i)` from `concurrency` tasks; latency of each.
async fn load<F, Fut>(name: &str, cli: &Cli, call: F) -> Result<Value>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<f64>>();
    // Request i goes to task i % concurrency; each task sends its requests one by one.
    let mut per_task: Vec<Vec<Fut>> = (0..cli.concurrency.max(1)).map(|_| Vec::new()).collect();
    let tasks = per_task.len();
    for i in 0..cli.requests {
        per_task[i % tasks].push(call(i));
    }
    for calls in per_task {
        let tx = tx.clone();
        tokio::spawn(async move {
            for call in calls {
                let at = Instant::now();
                let outcome = call.await.map(|()| at.elapsed().as_secs_f64() * 1000.0);
                let _ = tx.send(outcome);
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(cli.requests);
    while let Some(outcome) = rx.recv().await {
        latencies.push(outcome.with_context(|| format!("{name}: a request failed"))?);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "name": name,
        "requests": latencies.len(),
        "p50Ms": percentile(&latencies, 50.0),
        "p99Ms": percentile(&latencies, 99.0),
        "maxMs": percentile(&latencies, 100.0),
        "perSecond": latencies.len() as f64 / seconds,
    }))
}

fn digest(scenario: u64, i: usize) -> String {
    format!("sha256:{scenario:08x}{:056x}", i)
}

fn review(digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{digest}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "bench",
            "operation": "CREATE",
            "object": {
                "metadata": {"name": "app-0", "labels": {"stellaops.workload/id": "bench-app"}},
                "spec": {
                    "initContainers": [{"name": "init", "image": format!("registry.example/init@{digest}")}],
                    "containers": [{"name": "app", "image": format!("registry.example/app@{digest}")}],
                },
            },
        }
    }))
    .unwrap_or_default()
}

async fn post(client: &reqwest::Client, base: &str, body: &[u8]) -> Result<Value> {
    let reply = client
        .post(format!("{base}/validate"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    let status = reply.status();
    let bytes = reply.bytes().await?;
    if !status.is_success() {
        bail!(
            "/validate answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn https_client(ca: &Path) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The policy endpoint: every digest allowed for an hour, after `delay`.
async fn start_backend(delay: Duration, calls: Arc<AtomicU64>) -> Result<SocketAddr> {
    async fn policy(
        State((delay, calls)): State<(Duration, Arc<AtomicU64>)>,
        body: Bytes,
    ) -> String {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let results: Vec<Value> = request["images"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| json!({"digest": i["digest"], "verdict": "allow", "ttlSeconds": 3600}))
            .collect();
        json!({ "results": results }).to_string()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/api/v1/policy/runtime", routing::post(policy))
        .with_state((delay, calls));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

struct Webhook {
    child: Option<Child>,
    https: SocketAddr,
    metrics: SocketAddr,
}

impl Webhook {
    fn start(binary: &Path, dir: &Path, pki: &Pki, backend: SocketAddr) -> Result<Webhook> {
        let config = dir.join("webhook.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\naddr = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 [backend]\nurl = \"http://127.0.0.1:{}/\"\n\
                 [metrics]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n",
                pki.server_cert.display(),
                pki.server_key.display(),
                backend.port()
            ),
        )?;
        let mut child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn,zastava_webhook=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = String::new();
        let (https, metrics) = loop {
            let Some(Ok(line)) = lines.next() else {
                bail!("zastava-webhook exited before it was ready:\n{seen}");
            };
            if line.contains("webhook ready") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("https="))
                    .and_then(|a| a.parse().ok())
                    .context("no https= address in the ready line")?;
                let metrics = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("metrics="))
                    .and_then(|a| a.parse().ok())
                    .context("no metrics= address in the ready line")?;
                break (addr, metrics);
            }
            seen.push_str(&line);
            seen.push('\n');
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Webhook {
            child: Some(child),
            https,
            metrics,
        })
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().map_or(0, |c| c.id() as libc::pid_t)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}
