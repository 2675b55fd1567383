//! `AdmissionReview` (`admission.k8s.io/v1`): what a request asks about, and the reply.
//!
//! Pods are checked, and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs. Images come from `containers`, `initContainers` and
//! `ephemeralContainers`; the workload identity from the pod (template) labels, through the
//! same types the observer uses.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use observer_common::identity::{ImageReference, PodRef, WorkloadIdentity};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a request body is not a review this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("apiVersion is {0:?}; this webhook speaks admission.k8s.io/v1 (set admissionReviewVersions: [\"v1\"])")]
    ApiVersion(String),
    #[error("kind is {0:?}, not AdmissionReview")]
    Kind(String),
    #[error("the review has no request")]
    NoRequest,
    #[error("request.uid is missing or empty")]
    NoUid,
    #[error("{0}")]
    Malformed(String),
}

/// Which list of the pod spec a container is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Container,
    Init,
    Ephemeral,
}

impl ContainerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerKind::Container => "container",
            ContainerKind::Init => "init container",
            ContainerKind::Ephemeral => "ephemeral container",
        }
    }
}

/// One container's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    pub container: String,
    pub kind: ContainerKind,
    /// As written in the spec.
    pub image: String,
    /// `None` when the reference does not parse.
    pub reference: Option<ImageReference>,
}

impl ContainerImage {
    pub fn digest(&self) -> Option<&str> {
        self.reference.as_ref()?.digest.as_deref()
    }
}

/// What a request asks about.
#[derive(Clone, Debug, PartialEq)]
pub struct Review {
    pub uid: String,
    pub namespace: String,
    /// `Pod`, `Deployment`, ...
    pub kind: String,
    pub name: String,
    pub operation: String,
    /// `None` when there is no pod spec to check (a DELETE, another kind of object).
    pub pod: Option<PodUnderReview>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodUnderReview {
    pub identity: WorkloadIdentity,
    /// Identity labels present but invalid (reported as warnings).
    pub identity_problems: Vec<String>,
    pub images: Vec<ContainerImage>,
}

/// The kinds whose pod spec is checked, and where it is.
fn pod_template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

impl Review {
    pub fn parse(body: &[u8]) -> Result<Review, ReviewError> {
        let review: Value =
            serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
        if !review.is_object() {
            return Err(ReviewError::NotJson("not a JSON object".into()));
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
        let object_kind = request
            .get("kind")
            .and_then(|k| str_at(k, "kind"))
            .unwrap_or_default()
            .to_owned();
        let operation = str_at(request, "operation").unwrap_or_default().to_owned();
        let object = request.get("object").filter(|o| o.is_object());
        let metadata = object.and_then(|o| o.get("metadata"));
        let namespace = str_at(request, "namespace")
            .filter(|n| !n.is_empty())
            .or_else(|| metadata.and_then(|m| str_at(m, "namespace")))
            .unwrap_or("default")
            .to_owned();
        // A pod its controller creates has no name yet at admission, only `generateName`.
        let name = str_at(request, "name")
            .filter(|n| !n.is_empty())
            .or_else(|| metadata.and_then(|m| str_at(m, "name")))
            .filter(|n| !n.is_empty())
            .map(|n| Name::Given(n.to_owned()))
            .or_else(|| {
                metadata
                    .and_then(|m| str_at(m, "generateName"))
                    .map(|n| Name::Generated(n.trim_end_matches('-').to_owned()))
            })
            .unwrap_or(Name::Given(String::new()));
        let pod = match (object, pod_template_path(&object_kind)) {
            (Some(object), Some(path)) => {
                let mut template = object;
                for (i, key) in path.iter().enumerate() {
                    template = template.get(key).ok_or_else(|| {
                        ReviewError::Malformed(format!(
                            "request.object of kind {object_kind} has no {}",
                            path[..=i].join(".")
                        ))
                    })?;
                }
                Some(pod_under_review(template, &namespace, &name)?)
            }
            _ => None,
        };
        Ok(Review {
            uid,
            namespace,
            kind: object_kind,
            name: name.prefix().to_owned(),
            operation,
            pod,
        })
    }
}

/// The object's name, or the prefix its name will be generated from.
enum Name {
    Given(String),
    Generated(String),
}

impl Name {
    fn prefix(&self) -> &str {
        match self {
            Name::Given(n) | Name::Generated(n) => n,
        }
    }
}

fn pod_under_review(
    template: &Value,
    namespace: &str,
    name: &Name,
) -> Result<PodUnderReview, ReviewError> {
    let metadata = template.get("metadata");
    let labels: BTreeMap<String, String> = metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let uid = metadata
        .and_then(|m| str_at(m, "uid"))
        .unwrap_or_default()
        .to_owned();
    // A ReplicaSet's pods are generated from `<deployment>-<pod-template-hash>-`: the
    // workload is the Deployment, as the observer derives it from the running pod's name.
    let name = match name {
        Name::Generated(prefix) => labels
            .get(observer_common::identity::labels::POD_TEMPLATE_HASH)
            .and_then(|hash| prefix.strip_suffix(hash.as_str()))
            .and_then(|rest| rest.strip_suffix('-'))
            .unwrap_or(prefix),
        Name::Given(name) => name,
    };
    let (identity, errors) = WorkloadIdentity::of_pod(&PodRef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        uid,
        labels,
    });
    let spec = template
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| ReviewError::Malformed("the pod has no spec".into()))?;
    let mut images = Vec::new();
    for (field, kind) in [
        ("initContainers", ContainerKind::Init),
        ("containers", ContainerKind::Container),
        ("ephemeralContainers", ContainerKind::Ephemeral),
    ] {
        let Some(list) = spec.get(field) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| ReviewError::Malformed(format!("spec.{field} is not a list")))?;
        for (i, container) in list.iter().enumerate() {
            let container_name =
                str_at(container, "name").map_or_else(|| format!("{field}[{i}]"), str::to_owned);
            let image = str_at(container, "image").unwrap_or_default().to_owned();
            images.push(ContainerImage {
                reference: ImageReference::parse(&image),
                container: container_name,
                kind,
                image,
            });
        }
    }
    Ok(PodUnderReview {
        identity,
        identity_problems: errors.iter().map(ToString::to_string).collect(),
        images,
    })
}

/// The answer to one review.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Why it was denied (one line per denied image).
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub audit: BTreeMap<String, String>,
}

impl Decision {
    /// The `AdmissionReview` carrying this decision for request `uid`.
    pub fn to_review(&self, uid: &str) -> Value {
        let mut response = Map::new();
        response.insert("uid".into(), uid.into());
        response.insert("allowed".into(), self.allowed.into());
        if !self.allowed {
            response.insert(
                "status".into(),
                json!({
                    "code": 403,
                    "reason": "Forbidden",
                    "message": self.message.clone().unwrap_or_default(),
                }),
            );
        }
        if !self.warnings.is_empty() {
            response.insert("warnings".into(), json!(self.warnings));
        }
        if !self.audit.is_empty() {
            response.insert("auditAnnotations".into(), json!(self.audit));
        }
        json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "response": response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn review(kind: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "apps", "version": "v1", "kind": kind},
                "namespace": "shop",
                "operation": "CREATE",
                "object": object,
            }
        }))
        .unwrap()
    }

    fn pod_spec() -> Value {
        json!({
            "initContainers": [{"name": "migrate", "image": format!("registry.example/migrate@{DIGEST}")}],
            "containers": [{"name": "app", "image": "registry.example/app:1.4"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
        })
    }

    #[test]
    fn a_pod_gives_every_image_and_its_identity() {
        let r = Review::parse(&review(
            "Pod",
            json!({
                "metadata": {"name": "web-7d4b9c8f6d-x2x7k", "labels": {
                    "pod-template-hash": "7d4b9c8f6d",
                    "stellaops.workload/tenant": "acme"}},
                "spec": pod_spec(),
            }),
        ))
        .unwrap();
        assert_eq!(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!((r.namespace.as_str(), r.kind.as_str()), ("shop", "Pod"));
        let pod = r.pod.unwrap();
        assert_eq!(pod.identity.id, "shop/web");
        assert_eq!(pod.identity.tenant.as_deref(), Some("acme"));
        let images: Vec<(&str, ContainerKind, Option<&str>)> = pod
            .images
            .iter()
            .map(|i| (i.container.as_str(), i.kind, i.digest()))
            .collect();
        assert_eq!(
            images,
            [
                ("migrate", ContainerKind::Init, Some(DIGEST)),
                ("app", ContainerKind::Container, None),
                ("debug", ContainerKind::Ephemeral, None),
            ]
        );
    }

    #[test]
    fn a_pod_with_a_generated_name_is_its_deployment() {
        let r = Review::parse(&review(
            "Pod",
            json!({
                "metadata": {"generateName": "web-7d4b9c8f6d-", "labels": {"pod-template-hash": "7d4b9c8f6d"}},
                "spec": pod_spec(),
            }),
        ))
        .unwrap();
        assert_eq!(r.pod.unwrap().identity.id, "shop/web");
    }

    #[test]
    fn templates_of_workload_kinds_are_found() {
        let template = json!({"metadata": {"labels": {"stellaops.workload/id": "payments"}}, "spec": pod_spec()});
        for (kind, object) in [
            (
                "Deployment",
                json!({"metadata": {"name": "api"}, "spec": {"template": template.clone()}}),
            ),
            (
                "StatefulSet",
                json!({"metadata": {"name": "db"}, "spec": {"template": template.clone()}}),
            ),
            (
                "DaemonSet",
                json!({"metadata": {"name": "agent"}, "spec": {"template": template.clone()}}),
            ),
            (
                "ReplicaSet",
                json!({"metadata": {"name": "api-1"}, "spec": {"template": template.clone()}}),
            ),
            (
                "Job",
                json!({"metadata": {"name": "once"}, "spec": {"template": template.clone()}}),
            ),
            (
                "CronJob",
                json!({"metadata": {"name": "nightly"}, "spec": {"jobTemplate": {"spec": {"template": template.clone()}}}}),
            ),
        ] {
            let r = Review::parse(&review(kind, object)).unwrap();
            let pod = r.pod.unwrap_or_else(|| panic!("{kind}: no pod"));
            assert_eq!(pod.identity.id, "payments", "{kind}");
            assert_eq!(pod.images.len(), 3, "{kind}");
        }
        let r = Review::parse(&review(
            "Deployment",
            json!({"metadata": {"name": "api"}, "spec": {"template": {"spec": pod_spec()}}}),
        ))
        .unwrap();
        assert_eq!(r.pod.unwrap().identity.id, "shop/api");
    }

    #[test]
    fn other_kinds_and_deletes_have_nothing_to_check() {
        let r = Review::parse(&review("ConfigMap", json!({"data": {}}))).unwrap();
        assert!(r.pod.is_none());
        let mut body: Value = serde_json::from_slice(&review("Pod", json!(null))).unwrap();
        body["request"]["operation"] = "DELETE".into();
        let r = Review::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert!(r.pod.is_none());
    }

    #[test]
    fn bad_reviews_are_named_errors() {
        assert!(matches!(
            Review::parse(b"{not json"),
            Err(ReviewError::NotJson(_))
        ));
        assert!(matches!(
            Review::parse(b"[1]"),
            Err(ReviewError::NotJson(_))
        ));
        let mut body: Value =
            serde_json::from_slice(&review("Pod", json!({"spec": pod_spec()}))).unwrap();
        body["apiVersion"] = "admission.k8s.io/v1beta1".into();
        assert_eq!(
            Review::parse(&serde_json::to_vec(&body).unwrap()),
            Err(ReviewError::ApiVersion("admission.k8s.io/v1beta1".into()))
        );
        body["apiVersion"] = API_VERSION.into();
        body["request"]["uid"] = "".into();
        assert_eq!(
            Review::parse(&serde_json::to_vec(&body).unwrap()),
            Err(ReviewError::NoUid)
        );
        body["request"]["uid"] = "u".into();
        body["request"]["object"]["spec"]["containers"] = json!({"app": 1});
        assert_eq!(
            Review::parse(&serde_json::to_vec(&body).unwrap()),
            Err(ReviewError::Malformed(
                "spec.containers is not a list".into()
            ))
        );
        body["request"]["kind"]["kind"] = "Deployment".into();
        assert_eq!(
            Review::parse(&serde_json::to_vec(&body).unwrap()),
            Err(ReviewError::Malformed(
                "request.object of kind Deployment has no spec.template".into()
            ))
        );
    }

    #[test]
    fn the_reply_echoes_the_uid_and_explains_a_denial() {
        let d = Decision {
            allowed: false,
            message: Some("app: denied".into()),
            warnings: vec!["w".into()],
            audit: [("verdict-source".to_owned(), "backend".to_owned())].into(),
        };
        assert_eq!(
            d.to_review("u-1"),
            json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": "u-1",
                    "allowed": false,
                    "status": {"code": 403, "reason": "Forbidden", "message": "app: denied"},
                    "warnings": ["w"],
                    "auditAnnotations": {"verdict-source": "backend"},
                }
            })
        );
    }
}
