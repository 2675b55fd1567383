//! `AdmissionReview` (`admission.k8s.io/v1`): what a request asks about, and the reply.
//!
//! A body that is not a v1 review with a uid cannot be answered, and gets 400. Everything
//! after that is answered in a review: an object of a kind that runs pods ([`workload`])
//! but cannot be read as one is denied, with the reason, rather than handed to the API
//! server's `failurePolicy`.
//!
//! [`workload`]: crate::workload

use std::collections::BTreeMap;

use serde::Serialize;

use observer_common::identity::{ObjectKind, ObjectName};

use crate::{
    json::Json,
    workload::{self, str_at, WorkloadUnderReview},
};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a request body is not a review this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not an AdmissionReview: it is {0}, not a JSON object")]
    NotAReview(&'static str),
    #[error("apiVersion is {0:?}; this webhook speaks admission.k8s.io/v1 (set admissionReviewVersions: [\"v1\"])")]
    ApiVersion(String),
    #[error("kind is {0:?}, not AdmissionReview")]
    Kind(String),
    #[error("the review has no request")]
    NoRequest,
    #[error("request.uid is missing or empty")]
    NoUid,
}

/// Why a review was admitted without judging its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotJudged {
    /// A kind that runs nothing (a ConfigMap, a Scale, ...).
    NotAWorkload,
    /// A DELETE: nothing starts.
    Delete,
    /// `metadata.deletionTimestamp` is set: an update of an object on its way out (a
    /// finalizer removed) must not keep it from going.
    BeingDeleted,
    /// An UPDATE that adds no image to what `oldObject` already ran (a scale, a label).
    UnchangedImages,
}

impl NotJudged {
    /// The `reason` label of `zastava_admission_not_judged_total`.
    pub fn label(self) -> &'static str {
        match self {
            NotJudged::NotAWorkload => "not_a_workload",
            NotJudged::Delete => "delete",
            NotJudged::BeingDeleted => "being_deleted",
            NotJudged::UnchangedImages => "unchanged_images",
        }
    }

    /// The `not-judged` audit annotation.
    pub fn explanation(self) -> &'static str {
        match self {
            NotJudged::NotAWorkload => "the object runs no containers",
            NotJudged::Delete => "a deletion starts nothing",
            NotJudged::BeingDeleted => "the object is being deleted (deletionTimestamp is set)",
            NotJudged::UnchangedImages => "the update adds no image to those oldObject has",
        }
    }
}

/// What a review asks the webhook to judge.
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// A pod, or a controller's pod template.
    Workload(Box<WorkloadUnderReview>),
    /// Nothing that runs.
    Nothing(NotJudged),
    /// An object of a kind that runs pods, which cannot be read as one (denied).
    Unreadable(String),
}

/// What a request asks about.
#[derive(Clone, Debug, PartialEq)]
pub struct Review {
    pub uid: String,
    pub namespace: String,
    /// `Pod`, `Deployment`, ... (`request.kind.kind`).
    pub kind: String,
    /// The object's name, or the prefix its name will be generated from.
    pub name: String,
    pub operation: String,
    /// `ephemeralcontainers`, `scale`, ... when the request is for a subresource.
    pub sub_resource: Option<String>,
    pub dry_run: bool,
    pub subject: Subject,
}

impl Review {
    pub fn parse(body: &[u8]) -> Result<Review, ReviewError> {
        let review = Json::parse(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
        if !review.is_object() {
            return Err(ReviewError::NotAReview(review.type_name()));
        }
        let api_version = str_at(&review, "apiVersion").unwrap_or_default();
        if api_version != API_VERSION {
            return Err(ReviewError::ApiVersion(api_version.to_owned()));
        }
        let kind = str_at(&review, "kind").unwrap_or_default();
        if kind != "AdmissionReview" {
            return Err(ReviewError::Kind(kind.to_owned()));
        }
        let request = review
            .get("request")
            .filter(|r| r.is_object())
            .ok_or(ReviewError::NoRequest)?;
        let uid = str_at(request, "uid")
            .filter(|u| !u.is_empty())
            .ok_or(ReviewError::NoUid)?
            .to_owned();
        Ok(Review::of_request(uid, request))
    }

    /// The `request.uid` of a body that is not a review this webhook answers (a v1beta1
    /// review, say), when it has one: for the log line of its 400.
    pub fn readable_uid(body: &[u8]) -> Option<String> {
        let review = Json::parse(body).ok()?;
        let uid = str_at(review.get("request")?, "uid")?;
        (!uid.is_empty()).then(|| uid.to_owned())
    }

    /// The request of a review that has a uid: from here on, every problem is answered.
    fn of_request(uid: String, request: &Json<'_>) -> Review {
        let object_kind = request
            .get("kind")
            .and_then(|k| str_at(k, "kind"))
            .unwrap_or_default()
            .to_owned();
        let operation = str_at(request, "operation").unwrap_or_default().to_owned();
        let object = request.get("object").filter(|o| !o.is_null());
        let metadata = object.and_then(|o| o.get("metadata"));
        let namespace = str_at(request, "namespace")
            .filter(|n| !n.is_empty())
            .or_else(|| metadata.and_then(|m| str_at(m, "namespace")))
            .unwrap_or("default")
            .to_owned();
        let name = object_name(request, metadata);
        let subject = subject(&object_kind, &operation, request, &namespace, name);
        Review {
            uid,
            namespace,
            kind: object_kind,
            name: match name {
                ObjectName::Given(n) | ObjectName::Generated(n) => n.to_owned(),
            },
            operation,
            sub_resource: str_at(request, "subResource")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            dry_run: request
                .get("dryRun")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            subject,
        }
    }
}

/// The name the request gives. A validating webhook is shown the name the API server
/// generated; only where it is not yet chosen is there just `generateName`.
fn object_name<'a>(request: &'a Json<'_>, metadata: Option<&'a Json<'_>>) -> ObjectName<'a> {
    str_at(request, "name")
        .filter(|n| !n.is_empty())
        .or_else(|| metadata.and_then(|m| str_at(m, "name")))
        .filter(|n| !n.is_empty())
        .map(ObjectName::Given)
        .or_else(|| {
            metadata
                .and_then(|m| str_at(m, "generateName"))
                .map(ObjectName::Generated)
        })
        .unwrap_or(ObjectName::Given(""))
}

fn subject(
    kind: &str,
    operation: &str,
    request: &Json<'_>,
    namespace: &str,
    name: ObjectName<'_>,
) -> Subject {
    let Some(kind) = ObjectKind::from_api(kind) else {
        return Subject::Nothing(NotJudged::NotAWorkload);
    };
    match operation {
        "DELETE" => return Subject::Nothing(NotJudged::Delete),
        // CONNECT is for subresources such as exec and attach, which start no image.
        "CONNECT" => return Subject::Nothing(NotJudged::NotAWorkload),
        _ => {}
    }
    let object = match request.get("object") {
        Some(object) if object.is_object() => object,
        None | Some(Json::Null) => {
            return Subject::Unreadable(format!(
                "a {operation} of a {} without request.object",
                kind.as_str()
            ))
        }
        Some(other) => {
            return Subject::Unreadable(format!(
                "request.object is {}, not a {}",
                other.type_name(),
                kind.as_str()
            ))
        }
    };
    let old = request.get("oldObject").filter(|o| o.is_object());
    match workload::read(kind, object, old, namespace, name) {
        Ok(workload) => Subject::Workload(Box::new(workload)),
        Err(problem) => Subject::Unreadable(problem),
    }
}

/// The answer to one review.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Why it was denied (one line per denied image).
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub audit: BTreeMap<String, String>,
    /// The workload identity judged (for the log).
    pub workload: Option<String>,
    /// Every line about the request, none left out (for the log; the reply has at most
    /// `message::MAX_LINES` of each kind).
    pub details: Vec<String>,
}

impl Decision {
    /// Admitted without judging anything, saying why.
    pub fn not_judged(reason: NotJudged) -> Decision {
        Decision {
            allowed: true,
            audit: [("not-judged".to_owned(), reason.explanation().to_owned())].into(),
            ..Decision::default()
        }
    }

    /// `allow`, `warn` (allowed with warnings) or `deny`: the `decision` label and log field.
    pub fn label(&self) -> &'static str {
        match (self.allowed, self.warnings.is_empty()) {
            (false, _) => "deny",
            (true, true) => "allow",
            (true, false) => "warn",
        }
    }

    /// The `AdmissionReview` carrying this decision for request `uid`, borrowing from it.
    pub fn reply<'a>(&'a self, uid: &'a str) -> Reply<'a> {
        Reply {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response: Response {
                allowed: self.allowed,
                audit_annotations: &self.audit,
                status: (!self.allowed).then(|| Status {
                    code: 403,
                    message: self.message.as_deref().unwrap_or_default(),
                    reason: "Forbidden",
                }),
                uid,
                warnings: &self.warnings,
            },
        }
    }

    /// The reply as JSON text.
    pub fn reply_bytes(&self, uid: &str) -> Vec<u8> {
        // Serialising borrowed strings, maps and lists into a Vec cannot fail.
        serde_json::to_vec(&self.reply(uid)).unwrap_or_default()
    }
}

/// An `AdmissionReview` reply. Its members are in the order of their names, as
/// `serde_json` writes a map.
#[derive(Debug, Serialize)]
pub struct Reply<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
    uid: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Debug, Serialize)]
struct Status<'a> {
    code: u16,
    message: &'a str,
    reason: &'static str,
}

#[cfg(test)]
mod tests;
