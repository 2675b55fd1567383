//! The decision: images not pinned by digest are judged by the local policy; pinned ones by
//! the Scanner backend (`POST <backend>/api/v1/policy/runtime`), through the verdict cache.
//! The whole decision ends by its deadline, whatever the backend does: an answer that does
//! not come in time is a failure, which denies, except in namespaces that fail open.
//!
//! Some reviews need no verdict at all: nothing that runs, a deletion, an object being
//! deleted, an update that adds no image ([`NotJudged`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use observer_common::identity::WorkloadIdentity;

use zastava_platform::backend::BackendClient;

use zastava_platform::metrics::{
    ADMISSION_BACKEND_ERRORS, ADMISSION_NOT_JUDGED, ADMISSION_UNREADABLE_OBJECTS,
    POLICY_BACKEND_LATENCY,
};

use crate::{
    admission::{Decision, NotJudged, Review, Subject},
    cache::{Answer, Failure, Judgement, Verdict, VerdictCache},
    config::PolicyConfig,
    judgement::{self, Rules, Verdicts},
    message::{annotation, line},
    workload::WorkloadUnderReview,
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
                        Err(Failure::new(
                            "the Scanner backend's verdict is none of allow, warn, deny",
                            format!(
                                "the Scanner backend's verdict {:?} for {} is none of allow, warn, deny",
                                r.verdict, r.digest
                            ),
                        ))
                    }
                };
                answers.insert(r.digest, answer);
            }
            answers
        }
        Err((reason, message)) => {
            metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => reason).increment(1);
            let failure = failure(reason, message);
            if reason == "unauthorized" {
                // A rotated token: read the file again next time.
                client.invalidate_token();
            }
            digests
                .into_iter()
                .map(|d| (d, Err(failure.clone())))
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

/// A failed call as people are told of it (no URL, no socket error) and as it happened.
fn failure(reason: &str, message: String) -> Failure {
    let summary = match reason {
        "unreachable" => "the Scanner backend is unreachable",
        "bad_reply" => "the Scanner backend's reply could not be read",
        // Timeouts, statuses and refused credentials are told in a few words already.
        _ => return Failure::plain(message),
    };
    Failure::new(summary, message)
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

/// Backend requests at once for one review's digests.
const REQUESTS_AT_ONCE: usize = 4;

/// What the backend is asked about one review's digests.
struct Ask {
    client: BackendClient,
    namespace: String,
    identity: WorkloadIdentity,
    /// The image naming each digest.
    images: BTreeMap<String, String>,
    per_request: usize,
}

impl Ask {
    /// Asks about `digests`, at most `per_request` of them in a request and
    /// `REQUESTS_AT_ONCE` requests at a time, so that a pod of thousands of images makes
    /// requests of a size the backend can take, and answers as soon as it can.
    async fn all(self, digests: Vec<String>) -> HashMap<String, Answer> {
        let mut parts = digests.chunks(self.per_request);
        let mut calls = tokio::task::JoinSet::new();
        let mut answers = HashMap::with_capacity(digests.len());
        loop {
            while calls.len() < REQUESTS_AT_ONCE {
                let Some(part) = parts.next() else { break };
                let body = request_body(&self.namespace, &self.identity, &self.images, part);
                calls.spawn(ask_backend(self.client.clone(), body, part.to_vec()));
            }
            match calls.join_next().await {
                Some(Ok(part)) => answers.extend(part),
                // A call that panicked leaves its digests without an answer, which the
                // cache reports as such.
                Some(Err(_)) => {}
                None => break,
            }
        }
        answers
    }
}

pub struct Policy {
    config: PolicyConfig,
    client: BackendClient,
    cache: Arc<VerdictCache>,
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
        let workload = match &review.subject {
            Subject::Workload(workload) => workload,
            Subject::Nothing(reason) => return not_judged(*reason, None),
            Subject::Unreadable(problem) => return unreadable(review, problem),
        };
        if let Some(reason) = self.needs_no_verdict(workload) {
            return not_judged(reason, Some(workload));
        }
        let verdicts = self.verdicts(&review.namespace, workload, deadline).await;
        let rules = Rules {
            namespace: &review.namespace,
            tag_only: self.config.tag_only_in(&review.namespace),
            fails_open: self.config.fails_open(&review.namespace),
        };
        judgement::decide(workload, &verdicts, &rules)
    }

    /// Why `workload` may be admitted as it is, if it may: nothing new would run.
    fn needs_no_verdict(&self, workload: &WorkloadUnderReview) -> Option<NotJudged> {
        if self.config.judge_every_update {
            None
        } else if workload.deleting {
            Some(NotJudged::BeingDeleted)
        } else if workload.adds_no_image() {
            Some(NotJudged::UnchangedImages)
        } else {
            None
        }
    }

    /// The verdicts for the pinned images of `workload`: cached, else from the backend,
    /// whatever has come by `deadline`.
    async fn verdicts(
        &self,
        namespace: &str,
        workload: &WorkloadUnderReview,
        deadline: Instant,
    ) -> Verdicts {
        let images: BTreeMap<String, String> = workload
            .images
            .iter()
            .filter_map(|i| Some((i.digest()?.to_owned(), i.image.clone())))
            .collect();
        if images.is_empty() {
            return Verdicts::default();
        }
        let digests: Vec<String> = images.keys().cloned().collect();
        let ask = Ask {
            client: self.client.clone(),
            namespace: namespace.to_owned(),
            identity: workload.identity.clone(),
            images,
            per_request: self.config.digests_per_request.max(1),
        };
        // Only the digests nobody is fetching yet are asked about.
        let lookup = self.cache.lookup(&digests, move |digests| ask.all(digests));
        match tokio::time::timeout_at(deadline.into(), lookup).await {
            Ok(answers) => Verdicts {
                answers,
                missing: None,
            },
            Err(_) => {
                metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => "budget").increment(1);
                Verdicts {
                    answers: HashMap::new(),
                    missing: Some(Failure::plain(format!(
                        "the Scanner backend did not answer within the {:?} budget",
                        self.config.budget
                    ))),
                }
            }
        }
    }
}

/// Admitted without a verdict for a reason that needs none (counted).
fn not_judged(reason: NotJudged, workload: Option<&WorkloadUnderReview>) -> Decision {
    metrics::counter!(ADMISSION_NOT_JUDGED.name, "reason" => reason.label()).increment(1);
    Decision {
        workload: workload.map(|w| w.identity.id.clone()),
        ..Decision::not_judged(reason)
    }
}

/// A workload whose object cannot be read is denied: nobody can tell what it would run.
fn unreadable(review: &Review, problem: &str) -> Decision {
    metrics::counter!(ADMISSION_UNREADABLE_OBJECTS.name).increment(1);
    let message = line(&format!(
        "the {} cannot be judged because its object cannot be read: {problem}",
        review.kind
    ));
    Decision {
        allowed: false,
        details: vec![message.clone()],
        message: Some(message),
        audit: [("unreadable-object".to_owned(), annotation(problem))].into(),
        ..Decision::default()
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
