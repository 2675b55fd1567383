//! The decision: images not pinned by digest are judged by the local policy; pinned ones by
//! the Scanner backend (`POST <backend>/api/v1/policy/runtime`), through the verdict cache.
//! The whole decision ends by its deadline, whatever the backend does: an answer that does
//! not come in time is a failure, which denies, except in namespaces that fail open.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use observer_common::identity::WorkloadIdentity;

use zastava_platform::backend::BackendClient;

use zastava_platform::metrics::{
    ADMISSION_BACKEND_ERRORS, ADMISSION_FAIL_OPEN, POLICY_BACKEND_LATENCY,
};

use crate::{
    admission::{ContainerImage, Decision, Review},
    cache::{Answer, Judgement, Verdict, VerdictCache},
    config::{PolicyConfig, TagOnly},
};

/// The backend's policy endpoint, below its base URL.
pub const POLICY_PATH: &str = "api/v1/policy/runtime";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyRequest<'a> {
    namespace: &'a str,
    workload: WorkloadJson<'a>,
    images: Vec<ImageJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadJson<'a> {
    id: &'a str,
    id_source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

#[derive(Serialize)]
struct ImageJson<'a> {
    image: &'a str,
    digest: &'a str,
}

#[derive(Deserialize)]
struct PolicyReply {
    results: Vec<ResultJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultJson {
    digest: String,
    verdict: String,
    #[serde(default)]
    reasons: Vec<String>,
    ttl_seconds: Option<u64>,
}

fn parse_verdict(value: &str) -> Option<Verdict> {
    match value {
        "allow" => Some(Verdict::Allow),
        "warn" => Some(Verdict::Warn),
        "deny" => Some(Verdict::Deny),
        _ => None,
    }
}

/// Asks the backend about `digests` (with the images that name them); every digest gets an
/// answer, an error for all of them when the call fails.
async fn ask_backend(
    client: BackendClient,
    body: Vec<u8>,
    digests: Vec<String>,
) -> HashMap<String, Answer> {
    let started = Instant::now();
    let result = call_backend(&client, body).await;
    #[allow(clippy::cast_precision_loss, reason = "milliseconds fit an f64")]
    metrics::histogram!(POLICY_BACKEND_LATENCY.name)
        .record(started.elapsed().as_secs_f64() * 1000.0);
    match result {
        Ok(results) => {
            let mut answers: HashMap<String, Answer> = HashMap::new();
            for r in results {
                let answer = match parse_verdict(&r.verdict) {
                    Some(verdict) => Ok(Judgement {
                        verdict,
                        reasons: r.reasons,
                        ttl: r.ttl_seconds.map(Duration::from_secs),
                    }),
                    None => {
                        metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => "bad_reply")
                            .increment(1);
                        Err(Arc::from(format!(
                            "the backend's verdict {:?} for {} is none of allow, warn, deny",
                            r.verdict, r.digest
                        )))
                    }
                };
                answers.insert(r.digest, answer);
            }
            answers
        }
        Err((reason, message)) => {
            metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => reason).increment(1);
            let message: Arc<str> = Arc::from(message);
            if reason == "unauthorized" {
                // A rotated token: read the file again next time.
                client.invalidate_token();
            }
            digests
                .into_iter()
                .map(|d| (d, Err(Arc::clone(&message))))
                .collect()
        }
    }
}

async fn call_backend(
    client: &BackendClient,
    body: Vec<u8>,
) -> Result<Vec<ResultJson>, (&'static str, String)> {
    let response = client
        .post(POLICY_PATH)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_credentials() {
                ("credentials", e.to_string())
            } else if e.is_timeout() {
                (
                    "timeout",
                    "the Scanner backend did not answer in time".to_owned(),
                )
            } else {
                (
                    "unreachable",
                    format!("the Scanner backend is unreachable: {}", error_chain(&e)),
                )
            }
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err((
            "unauthorized",
            format!("the Scanner backend refused the webhook's credentials ({status})"),
        ));
    }
    if !status.is_success() {
        return Err(("status", format!("the Scanner backend answered {status}")));
    }
    let bytes = response.bytes().await.map_err(|e| {
        (
            "unreachable",
            format!("reading the Scanner backend's reply: {}", error_chain(&e)),
        )
    })?;
    let reply: PolicyReply = serde_json::from_slice(&bytes).map_err(|e| {
        (
            "bad_reply",
            format!("the Scanner backend's reply is not a policy result: {e}"),
        )
    })?;
    Ok(reply.results)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub struct Policy {
    config: PolicyConfig,
    client: BackendClient,
    cache: Arc<VerdictCache>,
}

/// How one image was judged.
enum Outcome {
    Allowed,
    Warned(String),
    Denied(String),
    /// No verdict could be had (the backend failed or was too slow).
    Unverified(String),
}

impl Policy {
    pub fn new(config: PolicyConfig, client: BackendClient, cache: Arc<VerdictCache>) -> Self {
        Policy {
            config,
            client,
            cache,
        }
    }

    pub fn cache(&self) -> &Arc<VerdictCache> {
        &self.cache
    }

    pub fn client(&self) -> &BackendClient {
        &self.client
    }

    /// The decision for `review`, by `deadline`.
    pub async fn decide(&self, review: &Review, deadline: Instant) -> Decision {
        let Some(pod) = &review.pod else {
            // Nothing that runs: not this webhook's business.
            return Decision {
                allowed: true,
                ..Decision::default()
            };
        };
        let namespace = review.namespace.as_str();
        let mut decision = Decision {
            allowed: true,
            ..Decision::default()
        };
        for problem in &pod.identity_problems {
            decision.warnings.push(format!(
                "workload identity: {problem}; the label is ignored"
            ));
        }

        let pinned: Vec<&ContainerImage> =
            pod.images.iter().filter(|i| i.digest().is_some()).collect();
        let mut digests: Vec<String> = pinned
            .iter()
            .filter_map(|i| i.digest().map(str::to_owned))
            .collect();
        digests.sort();
        digests.dedup();
        let mut failure: Option<String> = None;
        let answers = if digests.is_empty() {
            HashMap::new()
        } else {
            let client = self.client.clone();
            let (ns, identity) = (namespace.to_owned(), pod.identity.clone());
            let images: BTreeMap<String, String> = pinned
                .iter()
                .filter_map(|i| Some((i.digest()?.to_owned(), i.image.clone())))
                .collect();
            // Only the digests nobody is fetching yet are asked about.
            let lookup = self.cache.lookup(&digests, move |digests| {
                let body = request_body(&ns, &identity, &images, &digests);
                ask_backend(client, body, digests)
            });
            match tokio::time::timeout_at(deadline.into(), lookup).await {
                Ok(answers) => answers,
                Err(_) => {
                    metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => "budget")
                        .increment(1);
                    failure = Some(format!(
                        "the Scanner backend did not answer within the {:?} budget",
                        self.config.budget
                    ));
                    HashMap::new()
                }
            }
        };

        let mut sources = BTreeSet::new();
        let mut verdicts = Vec::new();
        let mut denied = Vec::new();
        let mut unverified = Vec::new();
        for image in &pod.images {
            let what = format!(
                "{} {:?}: image {}",
                image.kind.as_str(),
                image.container,
                image.image
            );
            let outcome = match image.digest() {
                None if image.reference.is_none() => {
                    sources.insert("policy");
                    Outcome::Denied(format!("{what} is not a valid image reference"))
                }
                None => {
                    sources.insert("policy");
                    let text =
                        format!("{what} is not pinned by digest (use <image>@sha256:<digest>)");
                    match self.config.tag_only_in(namespace) {
                        TagOnly::Deny => Outcome::Denied(text),
                        TagOnly::Warn => Outcome::Warned(text),
                    }
                }
                Some(digest) => match answers.get(digest) {
                    Some((Ok(judgement), source)) => {
                        sources.insert(source.as_str());
                        verdicts.push(format!("{digest}={}", judgement.verdict.as_str()));
                        let reasons = if judgement.reasons.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", judgement.reasons.join(", "))
                        };
                        match judgement.verdict {
                            Verdict::Allow => Outcome::Allowed,
                            Verdict::Warn => Outcome::Warned(format!("{what}{reasons}")),
                            Verdict::Deny => Outcome::Denied(format!("{what} is denied{reasons}")),
                        }
                    }
                    Some((Err(error), _)) => Outcome::Unverified(format!("{what}: {error}")),
                    None => Outcome::Unverified(format!(
                        "{what}: {}",
                        failure.as_deref().unwrap_or("no verdict")
                    )),
                },
            };
            match outcome {
                Outcome::Allowed => {}
                Outcome::Warned(text) => decision.warnings.push(text),
                Outcome::Denied(text) => denied.push(text),
                Outcome::Unverified(text) => {
                    verdicts.push(format!("{}=unverified", image.digest().unwrap_or("-")));
                    unverified.push(text);
                }
            }
        }
        if !unverified.is_empty() {
            if self.config.fails_open(namespace) {
                sources.insert("fail-open");
                metrics::counter!(ADMISSION_FAIL_OPEN.name).increment(1);
                decision.warnings.push(format!(
                    "admitted without a verdict because namespace {namespace} fails open: {}",
                    unverified.join("; ")
                ));
                decision
                    .audit
                    .insert("failed-open".into(), unverified.join("; "));
            } else {
                sources.insert("fail-closed");
                denied.extend(unverified.into_iter().map(|u| {
                    format!("{u} (could not be verified; namespace {namespace} fails closed)")
                }));
            }
        }
        if !denied.is_empty() {
            decision.allowed = false;
            decision.message = Some(denied.join("; "));
        }
        if !verdicts.is_empty() {
            verdicts.dedup();
            decision.audit.insert("digests".into(), verdicts.join(","));
        }
        if !sources.is_empty() {
            decision.audit.insert(
                "verdict-source".into(),
                sources.into_iter().collect::<Vec<_>>().join(","),
            );
        }
        decision
    }
}

fn request_body(
    namespace: &str,
    identity: &WorkloadIdentity,
    images: &BTreeMap<String, String>,
    digests: &[String],
) -> Vec<u8> {
    let request = PolicyRequest {
        namespace,
        workload: WorkloadJson {
            id: &identity.id,
            id_source: identity.id_source.as_str(),
            tenant: identity.tenant.as_deref(),
            project: identity.project.as_deref(),
            component: identity.component.as_deref(),
            channel: identity.channel.as_deref(),
        },
        images: digests
            .iter()
            .filter_map(|digest| {
                Some(ImageJson {
                    image: images.get(digest)?,
                    digest,
                })
            })
            .collect(),
    };
    // Strings and options of strings: serializing cannot fail.
    serde_json::to_vec(&request).unwrap_or_default()
}
