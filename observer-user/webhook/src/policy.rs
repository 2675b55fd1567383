//! The decision: images not pinned by digest are judged by the local policy; pinned ones by
//! the Scanner backend (`POST <backend>/api/v1/policy/runtime`), through the verdict cache.
//! The whole decision ends by its deadline, whatever the backend does: the verdicts had by
//! then (cached, or answered in time) count, and a digest whose answer does not come in time
//! is a failure, which denies, except in namespaces that fail open.
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

use zastava_platform::{
    authority::AuthorityError,
    backend::{BackendClient, SendError},
};

use zastava_platform::metrics::{
    ADMISSION_BACKEND_ERRORS, ADMISSION_NOT_JUDGED, ADMISSION_UNREADABLE_OBJECTS,
    POLICY_BACKEND_LATENCY,
};

use crate::{
    admission::{Decision, NotJudged, Review, Subject},
    cache::{Answer, Deliveries, Failure, Judgement, Verdict, VerdictCache},
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
        Err(error) => {
            metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => error.reason).increment(1);
            if error.token_refused {
                // A revoked or rotated token: read the file again, or have a new OpTok
                // issued, for the next call.
                client.invalidate_token();
            }
            digests
                .into_iter()
                .map(|d| (d, Err(error.failure.clone())))
                .collect()
        }
    }
}

/// Why a backend call gave no verdicts.
struct CallError {
    /// The `reason` label of `zastava_admission_backend_errors_total`.
    reason: &'static str,
    /// As people are told of it (no URL, no socket error) and as it happened.
    failure: Failure,
    /// The backend refused the token itself (not only what it may do): it is dropped.
    token_refused: bool,
}

impl CallError {
    fn new(reason: &'static str, failure: Failure) -> Self {
        CallError {
            reason,
            failure,
            token_refused: false,
        }
    }
}

async fn call_backend(client: &BackendClient, body: Vec<u8>) -> Result<Vec<ResultJson>, CallError> {
    let response = client
        .post(POLICY_PATH)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| match &e {
            SendError::Credentials(error) => CallError::new(
                "credentials",
                Failure::new(
                    format!(
                        "no credentials for the Scanner backend: {}",
                        no_credentials(error)
                    ),
                    e.to_string(),
                ),
            ),
            SendError::Http(_) if e.is_timeout() => CallError::new(
                "timeout",
                Failure::plain("the Scanner backend did not answer in time"),
            ),
            SendError::Http(_) => CallError::new(
                "unreachable",
                Failure::new(
                    "the Scanner backend is unreachable",
                    format!("the Scanner backend is unreachable: {}", error_chain(&e)),
                ),
            ),
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(refused(response).await);
    }
    if !status.is_success() {
        return Err(CallError::new(
            "status",
            Failure::plain(format!("the Scanner backend answered {status}")),
        ));
    }
    let bytes = response.bytes().await.map_err(|e| {
        CallError::new(
            "unreachable",
            Failure::new(
                "the Scanner backend is unreachable",
                format!("reading the Scanner backend's reply: {}", error_chain(&e)),
            ),
        )
    })?;
    let reply: PolicyReply = serde_json::from_slice(&bytes).map_err(|e| {
        CallError::new(
            "bad_reply",
            Failure::new(
                "the Scanner backend's reply could not be read",
                format!("the Scanner backend's reply is not a policy result: {e}"),
            ),
        )
    })?;
    Ok(reply.results)
}

/// Why the Authority gave no OpTok, in a few words.
fn no_credentials(error: &AuthorityError) -> &'static str {
    let issue = match error {
        AuthorityError::Issue(issue) | AuthorityError::Fallback { issue, .. } => issue,
        AuthorityError::Setup(_) => return "the Authority's TLS setup failed",
    };
    match issue.reason() {
        "unreachable" => "the Authority is unreachable",
        "tls" => "the TLS handshake with the Authority failed",
        "discovery" => "the Authority's OIDC discovery failed",
        "rejected" => "the Authority refused to issue a token",
        "dpop_key" => "authority.dpop_key_file cannot be used",
        "client_secret" => "authority.client_secret_file cannot be read",
        _ => "the Authority's token cannot be used",
    }
}

/// Most of a refusal's body read for its `error`.
const MAX_REFUSAL_BYTES: usize = 4096;

/// A 401 or 403. A 401 says the token is not (or no longer) good: it is dropped, so the
/// next call reads the token file again or has a new OpTok issued. A 403 says what the
/// token may do, and a new one would be refused as well (its scopes are the client's
/// registration), unless it names the token itself as `invalid_token`, in its
/// `WWW-Authenticate` challenge or its body's `error`.
async fn refused(mut response: reqwest::Response) -> CallError {
    let status = response.status();
    let challenge = response
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(challenge_error)
        .map(str::to_owned);
    let mut body = Vec::new();
    while body.len() < MAX_REFUSAL_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let error = challenge.or_else(|| body_error(&body));
    let token_refused = token_refused(status, error.as_deref());
    let said = error.map(|e| format!(": {e}")).unwrap_or_default();
    let failure = if status == reqwest::StatusCode::UNAUTHORIZED {
        Failure::new(
            format!("the Scanner backend refused the webhook's credentials ({status})"),
            format!("the Scanner backend refused the webhook's credentials ({status}{said})"),
        )
    } else {
        Failure::new(
            format!("the Scanner backend refused the webhook's request ({status})"),
            format!("the Scanner backend refused the webhook's request ({status}{said}); check the scopes of the webhook's token"),
        )
    };
    CallError {
        reason: "unauthorized",
        failure,
        token_refused,
    }
}

/// Whether a refusal with `status` and `error` (from the challenge or the body) is of the
/// token itself.
fn token_refused(status: reqwest::StatusCode, error: Option<&str>) -> bool {
    status == reqwest::StatusCode::UNAUTHORIZED || error == Some("invalid_token")
}

/// The `error` of a `WWW-Authenticate` challenge (`DPoP error="invalid_token", ...`).
fn challenge_error(challenge: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(found) = challenge[from..].find("error=") {
        let at = from + found;
        from = at + "error=".len();
        // The parameter itself, not the end of another's name.
        let starts = challenge[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c == ' ' || c == ',');
        if !starts {
            continue;
        }
        let rest = challenge[from..].trim_start_matches('"');
        let end = rest
            .find(|c: char| c == '"' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        return Some(&rest[..end]).filter(|e| !e.is_empty());
    }
    None
}

/// The `error` of a JSON body (`{"error": "invalid_token", ...}`), as OAuth 2.0 writes it.
fn body_error(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    Some(parsed.error).filter(|e| {
        !e.is_empty()
            && e.len() <= 64
            && e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
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
    /// requests of a size the backend can take; each request's answers are delivered as
    /// soon as they come.
    async fn all(self, digests: Vec<String>, deliveries: Deliveries) {
        let mut parts = digests.chunks(self.per_request);
        let mut calls = tokio::task::JoinSet::new();
        loop {
            while calls.len() < REQUESTS_AT_ONCE {
                let Some(part) = parts.next() else { break };
                let body = request_body(&self.namespace, &self.identity, &self.images, part);
                calls.spawn(ask_backend(self.client.clone(), body, part.to_vec()));
            }
            match calls.join_next().await {
                Some(Ok(part)) => deliveries.deliver(part),
                // A call that panicked leaves its digests without an answer, which the
                // cache reports as such.
                Some(Err(_)) => {}
                None => break,
            }
        }
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
        // Only the digests nobody is fetching yet are asked about. What has come by the
        // deadline counts: the cached verdicts and the answers that arrived; the digests
        // still without one are unverified.
        let answers = self
            .cache
            .lookup(&digests, deadline, move |digests, deliveries| {
                ask.all(digests, deliveries)
            })
            .await;
        let missing = (answers.len() < digests.len()).then(|| {
            metrics::counter!(ADMISSION_BACKEND_ERRORS.name, "reason" => "budget").increment(1);
            Failure::plain(format!(
                "the Scanner backend did not answer within the {:?} budget",
                self.config.budget
            ))
        });
        Verdicts { answers, missing }
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

#[cfg(test)]
mod tests;
