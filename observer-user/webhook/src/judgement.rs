//! From the verdicts to the decision: each image judged (the local rules for images not
//! pinned by digest, the backend's verdict for the others), then the whole request: denied
//! when an image is denied; images without a verdict deny it, except in a namespace that
//! fails open — and only a request actually admitted without a verdict says it was.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::Write as _,
};

use zastava_platform::metrics::ADMISSION_FAIL_OPEN;

use crate::{
    admission::Decision,
    cache::{Answer, Failure, Source, Verdict},
    config::TagOnly,
    message::{annotation, at_most_lines, image_line, line, logged_image_line, logged_reason},
    workload::{ContainerImage, WorkloadUnderReview},
};

/// What the cache and the backend said, by digest.
#[derive(Default)]
pub struct Verdicts {
    pub answers: HashMap<String, (Answer, Source)>,
    /// Why digests without an answer have none (the budget ran out first).
    pub missing: Option<Failure>,
}

/// The rules of the request's namespace.
pub struct Rules<'a> {
    pub namespace: &'a str,
    pub tag_only: TagOnly,
    pub fails_open: bool,
}

/// How one image was judged.
enum Outcome {
    Allowed,
    Warned(String),
    Denied(String),
    /// No verdict could be had (the backend failed or was too slow).
    Unverified(Failure),
}

/// What the images' judgements add up to, before the namespace's rule for images without a
/// verdict is applied.
#[derive(Default)]
struct Tally<'a> {
    denied: Lines,
    warnings: Lines,
    unverified: Vec<(&'a ContainerImage, Failure)>,
    /// `<digest>=<verdict>`, in the order of the images, each digest once.
    digests: Vec<String>,
    /// The entries of `digests` (a pod may list thousands of images).
    listed: HashSet<String>,
    sources: BTreeSet<&'static str>,
}

/// Lines about images: as the reply shows them (short) and as the log keeps them (with
/// every reason whole, each bounded).
#[derive(Default)]
struct Lines {
    shown: Vec<String>,
    logged: Vec<String>,
}

impl Lines {
    fn push(&mut self, image: &ContainerImage, text: &str) {
        self.shown.push(image_line(image, text));
        self.logged.push(logged_image_line(image, text));
    }

    fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }
}

const UNPINNED: &str = "is not pinned by digest (use <image>@sha256:<digest>)";

/// The decision on `workload`'s images.
pub fn decide(workload: &WorkloadUnderReview, verdicts: &Verdicts, rules: &Rules<'_>) -> Decision {
    let mut tally = Tally::default();
    for image in &workload.images {
        let outcome = judge(image, verdicts, rules, &mut tally);
        tally.add(image, outcome);
    }
    let mut decision = Decision {
        allowed: true,
        workload: Some(workload.identity.id.clone()),
        ..Decision::default()
    };
    for problem in &workload.identity_problems {
        decision.warnings.push(line(&format!(
            "workload identity: {problem}; the label is ignored"
        )));
    }
    tally.conclude(rules, &mut decision);
    decision
}

/// One image's outcome; records where its verdict came from.
fn judge(
    image: &ContainerImage,
    verdicts: &Verdicts,
    rules: &Rules<'_>,
    tally: &mut Tally<'_>,
) -> Outcome {
    let Some(digest) = image.digest() else {
        tally.sources.insert("policy");
        return if image.reference.is_none() {
            Outcome::Denied("is not a valid image reference".into())
        } else {
            match rules.tag_only {
                TagOnly::Deny => Outcome::Denied(UNPINNED.into()),
                TagOnly::Warn => Outcome::Warned(UNPINNED.into()),
            }
        };
    };
    let answer = match verdicts.answers.get(digest) {
        Some((answer, source)) => {
            if answer.is_ok() {
                tally.sources.insert(source.as_str());
            }
            answer.clone()
        }
        None => Err(verdicts
            .missing
            .clone()
            .unwrap_or_else(|| Failure::plain("the Scanner backend gave no verdict"))),
    };
    let judgement = match answer {
        Ok(judgement) => judgement,
        Err(failure) => {
            tally.digest(digest, "unverified");
            return Outcome::Unverified(failure);
        }
    };
    tally.digest(digest, judgement.verdict.as_str());
    // Whole in the log, each bounded; the reply's line is cut to its length.
    let reasons: Vec<String> = judgement.reasons.iter().map(|r| logged_reason(r)).collect();
    let reasons = reasons.join(", ");
    match (judgement.verdict, reasons.is_empty()) {
        (Verdict::Allow, _) => Outcome::Allowed,
        (Verdict::Warn, true) => Outcome::Warned("is allowed with a warning".into()),
        (Verdict::Warn, false) => Outcome::Warned(format!("is allowed with a warning: {reasons}")),
        (Verdict::Deny, true) => Outcome::Denied("is denied".into()),
        (Verdict::Deny, false) => Outcome::Denied(format!("is denied: {reasons}")),
    }
}

impl<'a> Tally<'a> {
    fn digest(&mut self, digest: &str, verdict: &str) {
        let entry = format!("{digest}={verdict}");
        if self.listed.insert(entry.clone()) {
            self.digests.push(entry);
        }
    }

    fn add(&mut self, image: &'a ContainerImage, outcome: Outcome) {
        match outcome {
            Outcome::Allowed => {}
            Outcome::Warned(text) => self.warnings.push(image, &text),
            Outcome::Denied(text) => self.denied.push(image, &text),
            Outcome::Unverified(failure) => self.unverified.push((image, failure)),
        }
    }

    /// Applies the namespace's rule for images without a verdict and fills in `decision`.
    fn conclude(mut self, rules: &Rules<'_>, decision: &mut Decision) {
        if !self.unverified.is_empty() {
            let details: BTreeSet<&str> = self.unverified.iter().map(|(_, f)| &*f.detail).collect();
            let details: Vec<&str> = details.into_iter().collect();
            decision
                .audit
                .insert("backend-error".into(), annotation(&details.join("; ")));
            if !rules.fails_open {
                self.fail_closed(rules.namespace);
            } else if self.denied.is_empty() {
                // Nothing else denies the request: it is admitted without a verdict.
                self.fail_open(rules.namespace, decision);
            }
            // Else it fails open but is denied for another reason: it was not admitted, so
            // nothing says it failed open; its unverified images are in `digests` and
            // `backend-error`.
        }
        self.fill(decision);
    }

    /// Images without a verdict deny the request.
    fn fail_closed(&mut self, namespace: &str) {
        self.sources.insert("fail-closed");
        for (image, failure) in &self.unverified {
            self.denied.push(
                image,
                &format!(
                    "could not be verified; namespace {namespace} fails closed ({})",
                    failure.summary
                ),
            );
        }
    }

    /// The request is admitted without a verdict: said in a warning per image, the
    /// `failed-open` annotation and the counter.
    fn fail_open(&mut self, namespace: &str, decision: &mut Decision) {
        self.sources.insert("fail-open");
        metrics::counter!(ADMISSION_FAIL_OPEN.name).increment(1);
        let mut failed_open = String::new();
        for (image, failure) in &self.unverified {
            self.warnings.push(
                image,
                &format!(
                    "admitted without a verdict; namespace {namespace} fails open ({})",
                    failure.summary
                ),
            );
            if !failed_open.is_empty() {
                failed_open.push_str("; ");
            }
            let _ = write!(
                failed_open,
                "{} {:?}: image {}: {}",
                image.kind.as_str(),
                image.container,
                image.image,
                failure.summary
            );
        }
        decision
            .audit
            .insert("failed-open".into(), annotation(&failed_open));
    }

    /// The message, the warnings (each at most `MAX_LINES`), every line for the log (with
    /// the reasons whole), and the `digests` and `verdict-source` annotations.
    fn fill(mut self, decision: &mut Decision) {
        decision.details = self
            .denied
            .logged
            .iter()
            .chain(&decision.warnings)
            .chain(&self.warnings.logged)
            .cloned()
            .collect();
        if !self.denied.is_empty() {
            decision.allowed = false;
            decision.message = Some(at_most_lines(self.denied.shown, "images").join("\n"));
        }
        decision.warnings.append(&mut self.warnings.shown);
        decision.warnings = at_most_lines(std::mem::take(&mut decision.warnings), "warnings");
        if !self.digests.is_empty() {
            // Not cut: the audit log is where every digest's verdict is looked up.
            decision
                .audit
                .insert("digests".into(), self.digests.join(","));
        }
        if !self.sources.is_empty() {
            let sources: Vec<&str> = self.sources.into_iter().collect();
            decision
                .audit
                .insert("verdict-source".into(), sources.join(","));
        }
    }
}
