//! What runs, in an object the API server asks about: the pod spec of a Pod, or the pod
//! template of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob; its images
//! (`initContainers`, `containers`, `ephemeralContainers`); its workload identity, derived by
//! the code the observer uses; and whether it is being deleted.

use std::collections::{BTreeMap, BTreeSet};

use observer_common::identity::{
    ImageReference, ObjectKind, ObjectName, ObjectRef, WorkloadIdentity,
};

use crate::json::Json;

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

/// A workload the API server asks about.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadUnderReview {
    pub identity: WorkloadIdentity,
    /// Identity labels present but invalid (reported as warnings).
    pub identity_problems: Vec<String>,
    pub images: Vec<ContainerImage>,
    /// `metadata.deletionTimestamp` is set: the object is on its way out.
    pub deleting: bool,
    /// The images of `oldObject` (an UPDATE), when it has a pod spec that can be read.
    pub old_images: Option<BTreeSet<String>>,
}

impl WorkloadUnderReview {
    /// An UPDATE that names no image `oldObject` did not name already (a scale, a label or
    /// finalizer change, a container removed): nothing new would run.
    pub fn adds_no_image(&self) -> bool {
        self.old_images.as_ref().is_some_and(|old| {
            self.images
                .iter()
                .all(|image| old.contains(image.image.as_str()))
        })
    }
}

pub(crate) fn str_at<'a>(value: &'a Json<'_>, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Json::as_str)
}

/// Where the pod spec of a `kind` is, below the object.
fn template_path(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Pod => &[],
        ObjectKind::Deployment
        | ObjectKind::StatefulSet
        | ObjectKind::DaemonSet
        | ObjectKind::ReplicaSet
        | ObjectKind::Job => &["spec", "template"],
        ObjectKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
    }
}

/// The pod (template) of `object`: what holds the labels and the spec.
fn template<'j, 'a>(kind: ObjectKind, object: &'j Json<'a>) -> Result<&'j Json<'a>, String> {
    let path = template_path(kind);
    let mut template = object;
    for (i, key) in path.iter().enumerate() {
        template = template
            .get(key)
            .filter(|t| t.is_object())
            .ok_or_else(|| format!("the {} has no {}", kind.as_str(), path[..=i].join(".")))?;
    }
    Ok(template)
}

/// Reads the workload in `object` (of a kind that has a pod spec), named `name`, and the
/// images of `old_object` if there is one.
pub fn read(
    kind: ObjectKind,
    object: &Json<'_>,
    old_object: Option<&Json<'_>>,
    namespace: &str,
    name: ObjectName<'_>,
) -> Result<WorkloadUnderReview, String> {
    let pod = template(kind, object)?;
    let labels: BTreeMap<String, String> = pod
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Json::members)
        .map(|labels| {
            labels
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let (identity, errors) = WorkloadIdentity::of_object(&ObjectRef {
        kind,
        name,
        namespace,
        labels: &labels,
    });
    let new_images = images(pod)?;
    let deleting = object
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|t| !t.is_null());
    // An old object that cannot be read just means the update is judged like a create.
    let old_images = old_object
        .and_then(|old| images(template(kind, old).ok()?).ok())
        .map(|old| old.into_iter().map(|i| i.image).collect());
    Ok(WorkloadUnderReview {
        identity,
        identity_problems: errors.iter().map(ToString::to_string).collect(),
        images: new_images,
        deleting,
        old_images,
    })
}

/// Every container's image in the pod (template) `template`.
fn images(template: &Json<'_>) -> Result<Vec<ContainerImage>, String> {
    let spec = template
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| "the pod has no spec".to_owned())?;
    let mut images = Vec::new();
    for (field, kind) in [
        ("initContainers", ContainerKind::Init),
        ("containers", ContainerKind::Container),
        ("ephemeralContainers", ContainerKind::Ephemeral),
    ] {
        let list = match spec.get(field) {
            None | Some(Json::Null) => continue,
            Some(Json::Array(list)) => list,
            Some(_) => return Err(format!("spec.{field} is not a list")),
        };
        images.reserve(list.len());
        for (i, container) in list.iter().enumerate() {
            if !container.is_object() {
                return Err(format!("spec.{field}[{i}] is not a container"));
            }
            let name =
                str_at(container, "name").map_or_else(|| format!("{field}[{i}]"), str::to_owned);
            let image = str_at(container, "image").unwrap_or_default().to_owned();
            images.push(ContainerImage {
                reference: ImageReference::parse(&image),
                container: name,
                kind,
                image,
            });
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pod_spec() -> Value {
        json!({
            "initContainers": [{"name": "migrate", "image": format!("registry.example/migrate@{DIGEST}")}],
            "containers": [{"name": "app", "image": "registry.example/app:1.4"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
        })
    }

    /// `read` of the objects as the webhook reads them: parsed from their text.
    fn read_text(
        kind: ObjectKind,
        object: &Value,
        old: Option<&Value>,
        name: ObjectName<'_>,
    ) -> Result<WorkloadUnderReview, String> {
        let text = serde_json::to_vec(object).unwrap();
        let old_text = old.map(|o| serde_json::to_vec(o).unwrap());
        let object = Json::parse(&text).unwrap();
        let old = old_text.as_deref().map(|t| Json::parse(t).unwrap());
        read(kind, &object, old.as_ref(), "shop", name)
    }

    fn read_new(kind: ObjectKind, object: &Value, name: ObjectName<'_>) -> WorkloadUnderReview {
        read_text(kind, object, None, name).unwrap()
    }

    #[test]
    fn a_pod_gives_every_image_and_its_identity() {
        let pod = json!({
            "metadata": {"name": "web-7d4b9c8f6d-x2x7k", "labels": {
                "pod-template-hash": "7d4b9c8f6d",
                "stellaops.workload/tenant": "acme"}},
            "spec": pod_spec(),
        });
        let w = read_new(
            ObjectKind::Pod,
            &pod,
            ObjectName::Given("web-7d4b9c8f6d-x2x7k"),
        );
        assert_eq!(w.identity.id, "shop/web");
        assert_eq!(w.identity.tenant.as_deref(), Some("acme"));
        assert!(!w.deleting);
        assert_eq!(w.old_images, None);
        let images: Vec<(&str, ContainerKind, Option<&str>)> = w
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
    fn templates_of_workload_kinds_are_found() {
        let template = json!({"metadata": {"labels": {"stellaops.workload/id": "payments"}}, "spec": pod_spec()});
        for (kind, object) in [
            (
                ObjectKind::Deployment,
                json!({"spec": {"template": template.clone()}}),
            ),
            (
                ObjectKind::StatefulSet,
                json!({"spec": {"template": template.clone()}}),
            ),
            (
                ObjectKind::DaemonSet,
                json!({"spec": {"template": template.clone()}}),
            ),
            (
                ObjectKind::ReplicaSet,
                json!({"spec": {"template": template.clone()}}),
            ),
            (
                ObjectKind::Job,
                json!({"spec": {"template": template.clone()}}),
            ),
            (
                ObjectKind::CronJob,
                json!({"spec": {"jobTemplate": {"spec": {"template": template.clone()}}}}),
            ),
        ] {
            let w = read_new(kind, &object, ObjectName::Given("x"));
            assert_eq!(w.identity.id, "payments", "{kind:?}");
            assert_eq!(w.images.len(), 3, "{kind:?}");
        }
    }

    #[test]
    fn an_update_that_adds_no_image_is_recognised() {
        let old = json!({"spec": {"template": {"spec": pod_spec()}}});
        let mut same = old.clone();
        same["spec"]["replicas"] = 1.into();
        let w = read_text(
            ObjectKind::ReplicaSet,
            &same,
            Some(&old),
            ObjectName::Given("a"),
        )
        .unwrap();
        assert!(w.adds_no_image());
        // A container removed: still nothing new.
        let mut fewer = old.clone();
        fewer["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("ephemeralContainers");
        let w = read_text(
            ObjectKind::ReplicaSet,
            &fewer,
            Some(&old),
            ObjectName::Given("a"),
        )
        .unwrap();
        assert!(w.adds_no_image());
        // An image changed: judged.
        let mut changed = old.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] =
            "registry.example/app:1.5".into();
        let w = read_text(
            ObjectKind::ReplicaSet,
            &changed,
            Some(&old),
            ObjectName::Given("a"),
        )
        .unwrap();
        assert!(!w.adds_no_image());
        // No old object (a create), or one without a pod spec: judged.
        let w = read_text(ObjectKind::ReplicaSet, &same, None, ObjectName::Given("a")).unwrap();
        assert!(!w.adds_no_image());
        let w = read_text(
            ObjectKind::ReplicaSet,
            &same,
            Some(&json!({})),
            ObjectName::Given("a"),
        )
        .unwrap();
        assert!(!w.adds_no_image());
    }

    #[test]
    fn a_deletion_timestamp_marks_an_object_being_deleted() {
        let mut object =
            json!({"metadata": {"deletionTimestamp": "2026-12-01T10:00:00Z"}, "spec": pod_spec()});
        assert!(read_new(ObjectKind::Pod, &object, ObjectName::Given("p")).deleting);
        object["metadata"]["deletionTimestamp"] = Value::Null;
        assert!(!read_new(ObjectKind::Pod, &object, ObjectName::Given("p")).deleting);
    }

    #[test]
    fn objects_that_are_not_what_their_kind_says_are_named_errors() {
        let err = |kind, object: Value| {
            read_text(kind, &object, None, ObjectName::Given("x")).unwrap_err()
        };
        assert_eq!(
            err(ObjectKind::Pod, json!({"metadata": {}})),
            "the pod has no spec"
        );
        assert_eq!(
            err(ObjectKind::Pod, json!({"spec": {"containers": {"app": 1}}})),
            "spec.containers is not a list"
        );
        assert_eq!(
            err(ObjectKind::Pod, json!({"spec": {"containers": ["app"]}})),
            "spec.containers[0] is not a container"
        );
        assert_eq!(
            err(ObjectKind::Deployment, json!({"spec": {}})),
            "the Deployment has no spec.template"
        );
        assert_eq!(
            err(
                ObjectKind::CronJob,
                json!({"spec": {"jobTemplate": {"spec": 3}}})
            ),
            "the CronJob has no spec.jobTemplate.spec"
        );
    }
}
