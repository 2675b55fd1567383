//! Which deployment (tenant, environment, cluster) a bundle's records come from. The
//! export is told it (`--config`, `ZASTAVA__RUNTIME__*`, `--tenant`, `--environment`,
//! `--deployment`, as `run` is), or learns it from the records' own `deployment` objects
//! (written with `ndjson.include_deployment`); a record that says otherwise is never
//! exported under the wrong name.

use std::path::{Path, PathBuf};

use zastava_platform::deployment::{is_label_value, Deployment};

use super::{canonical::Json, manifest};

/// Reads a record's `deployment` member: an object of at most `tenant`, `environment` and
/// `cluster`, each a valid value (as `[runtime]` allows), at least one of them.
pub fn parse(value: &Json<'_>) -> Result<Deployment, String> {
    let shape = "`deployment` must be an object of `tenant`, `environment` and `cluster` \
                 strings (those the observer had set)";
    let Json::Object(members) = value else {
        return Err(shape.into());
    };
    if members.is_empty() {
        return Err(format!("{shape}; it is empty"));
    }
    let mut deployment = Deployment::default();
    for (name, value) in members {
        let Json::String(text) = value else {
            return Err(format!("{shape}; `{name}` is not a string"));
        };
        let slot = match name.as_ref() {
            "tenant" => &mut deployment.tenant,
            "environment" => &mut deployment.environment,
            "cluster" => &mut deployment.cluster,
            other => return Err(format!("{shape}; `{other}` is not one of them")),
        };
        if !is_label_value(text) {
            return Err(format!(
                "`deployment.{name}` {text:?} is not a valid value (at most 63 letters, digits, \
                 '-', '_' or '.', beginning and ending with a letter or digit)"
            ));
        }
        *slot = Some(text.to_string());
    }
    Ok(deployment)
}

/// A deployment as a record writes it: `{"tenant":"acme","cluster":"eu-1"}`; `none` when
/// nothing is set.
pub fn describe(deployment: &Deployment) -> String {
    if deployment.is_empty() {
        return "none".into();
    }
    let members: Vec<String> = deployment
        .fields()
        .map(|(k, v)| format!("{k:?}:{v:?}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The manifest's form of a deployment (`None` when nothing is set).
pub fn to_manifest(deployment: &Deployment) -> Option<manifest::Deployment> {
    (!deployment.is_empty()).then(|| manifest::Deployment {
        tenant: deployment.tenant.clone(),
        environment: deployment.environment.clone(),
        cluster: deployment.cluster.clone(),
    })
}

pub fn from_manifest(deployment: Option<&manifest::Deployment>) -> Deployment {
    deployment.map_or_else(Deployment::default, |d| Deployment {
        tenant: d.tenant.clone(),
        environment: d.environment.clone(),
        cluster: d.cluster.clone(),
    })
}

/// Problems with the manifest's `deployment` member itself.
pub fn check_manifest(deployment: &manifest::Deployment) -> Vec<String> {
    let values = [
        ("tenant", &deployment.tenant),
        ("environment", &deployment.environment),
        ("cluster", &deployment.cluster),
    ];
    if values.iter().all(|(_, v)| v.is_none()) {
        return vec![
            "deployment is empty: a bundle without a deployment has no such member".into(),
        ];
    }
    values
        .iter()
        .filter_map(|(name, value)| {
            let value = value.as_deref()?;
            (!is_label_value(value)).then(|| {
                format!(
                    "deployment.{name} {value:?} is not a valid value (at most 63 letters, \
                     digits, '-', '_' or '.', beginning and ending with a letter or digit)"
                )
            })
        })
        .collect()
}

/// What one record's deployment means for the export.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It agrees (or the record names none).
    Agrees,
    /// It is not the deployment the export was given: the record may be left out (and
    /// counted) with `--skip-invalid`.
    NotTheGiven(String),
    /// It differs from another record's, and no deployment was given to choose between
    /// them: the export cannot go on.
    Mixed(String),
}

/// Where the first record naming a deployment was.
#[derive(Debug)]
struct Seen {
    deployment: Deployment,
    file: PathBuf,
    line: u64,
}

/// The deployment check over every exported record of the observer's stream.
#[derive(Debug)]
pub struct Deployments {
    given: Option<Deployment>,
    seen: Option<Seen>,
}

impl Deployments {
    /// `given`: the deployment the export was told (`None`, or one with nothing set: learn
    /// it from the records).
    pub fn new(given: Option<Deployment>) -> Deployments {
        Deployments {
            given: given.filter(|d| !d.is_empty()),
            seen: None,
        }
    }

    /// Checks the `deployment` a record at `file:line` carries (`None`: it carries none).
    pub fn check(&mut self, record: Option<Deployment>, file: &Path, line: u64) -> Verdict {
        let Some(record) = record else {
            return Verdict::Agrees;
        };
        if let Some(given) = &self.given {
            return if record == *given {
                Verdict::Agrees
            } else {
                Verdict::NotTheGiven(format!(
                    "deployment {} is not {}, the deployment being exported (from --tenant, \
                     --environment, --deployment or [runtime]): the record comes from another \
                     installation",
                    describe(&record),
                    describe(given)
                ))
            };
        }
        match &self.seen {
            None => {
                self.seen = Some(Seen {
                    deployment: record,
                    file: file.to_path_buf(),
                    line,
                });
                Verdict::Agrees
            }
            Some(seen) if seen.deployment == record => Verdict::Agrees,
            Some(seen) => Verdict::Mixed(format!(
                "deployment {} differs from {} of {}:{}: the inputs come from more than one \
                 installation",
                describe(&record),
                describe(&seen.deployment),
                seen.file.display(),
                seen.line
            )),
        }
    }

    /// The bundle's deployment: the one given, else the one the records name, else none.
    pub fn deployment(&self) -> Deployment {
        match (&self.given, &self.seen) {
            (Some(given), _) => given.clone(),
            (None, Some(seen)) => seen.deployment.clone(),
            (None, None) => Deployment::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Result<Deployment, String> {
        parse(&Json::parse(text.as_bytes()).unwrap())
    }

    fn deployment(tenant: &str, cluster: &str) -> Deployment {
        Deployment {
            tenant: Some(tenant.into()),
            environment: None,
            cluster: Some(cluster.into()),
        }
    }

    #[test]
    fn record_deployments_are_objects_of_the_three_values() {
        assert_eq!(
            of(r#"{"cluster":"eu-1","tenant":"acme"}"#),
            Ok(deployment("acme", "eu-1"))
        );
        for (text, reason) in [
            (r#""eu-1""#, "must be an object"),
            ("{}", "it is empty"),
            (r#"{"cluster":1}"#, "`cluster` is not a string"),
            (r#"{"region":"eu"}"#, "`region` is not one of them"),
            (
                r#"{"cluster":"eu 1"}"#,
                "`deployment.cluster` \"eu 1\" is not a valid value",
            ),
        ] {
            let err = of(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
        assert_eq!(
            describe(&deployment("acme", "eu-1")),
            r#"{"tenant":"acme","cluster":"eu-1"}"#
        );
        assert_eq!(describe(&Deployment::default()), "none");
    }

    #[test]
    fn a_given_deployment_is_what_records_must_name() {
        let file = PathBuf::from("a.ndjson");
        let mut check = Deployments::new(Some(deployment("acme", "eu-1")));
        assert_eq!(check.check(None, &file, 1), Verdict::Agrees);
        assert_eq!(
            check.check(Some(deployment("acme", "eu-1")), &file, 2),
            Verdict::Agrees
        );
        let Verdict::NotTheGiven(reason) = check.check(
            Some(Deployment {
                environment: Some("prod".into()),
                ..deployment("acme", "eu-1")
            }),
            &file,
            3,
        ) else {
            panic!("a record with one more member is another deployment");
        };
        assert_eq!(
            reason,
            "deployment {\"tenant\":\"acme\",\"environment\":\"prod\",\"cluster\":\"eu-1\"} is \
             not {\"tenant\":\"acme\",\"cluster\":\"eu-1\"}, the deployment being exported \
             (from --tenant, --environment, --deployment or [runtime]): the record comes from \
             another installation"
        );
        assert_eq!(check.deployment(), deployment("acme", "eu-1"));
    }

    #[test]
    fn without_one_the_records_must_agree() {
        let (a, b) = (PathBuf::from("a.ndjson"), PathBuf::from("b.ndjson"));
        let mut check = Deployments::new(Some(Deployment::default()));
        assert_eq!(check.deployment(), Deployment::default());
        assert_eq!(check.check(None, &a, 1), Verdict::Agrees);
        assert_eq!(
            check.check(Some(deployment("acme", "eu-1")), &a, 2),
            Verdict::Agrees
        );
        assert_eq!(
            check.check(Some(deployment("acme", "eu-1")), &b, 7),
            Verdict::Agrees
        );
        assert_eq!(
            check.check(Some(deployment("acme", "eu-2")), &b, 9),
            Verdict::Mixed(
                "deployment {\"tenant\":\"acme\",\"cluster\":\"eu-2\"} differs from \
                 {\"tenant\":\"acme\",\"cluster\":\"eu-1\"} of a.ndjson:2: the inputs come from \
                 more than one installation"
                    .into()
            )
        );
        assert_eq!(check.deployment(), deployment("acme", "eu-1"));
    }
}
