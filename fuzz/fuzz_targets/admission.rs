//! AdmissionReview bodies, parsed and decided against a verdict source made from the input
//! itself: never a panic, a response the API server can read, and never an admission of a
//! pod whose pinned image was denied.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use zastava_webhook::{
    admission::{Review, Subject},
    cache::{Failure, Judgement, Source, Verdict},
    config::TagOnly,
    judgement::{decide, Rules, Verdicts},
};

/// The verdict the fake backend gives a digest: chosen by its bytes, so a run is repeatable.
fn verdict_for(digest: &str) -> Result<Judgement, Failure> {
    let sum: u32 = digest.bytes().map(u32::from).sum();
    let verdict = match sum % 4 {
        0 => Verdict::Allow,
        1 => Verdict::Warn,
        2 => Verdict::Deny,
        _ => return Err(Failure::plain("the backend failed")),
    };
    Ok(Judgement {
        verdict,
        reasons: vec![format!("fuzz verdict for {digest}")],
        ttl: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(review) = Review::parse(data) else {
        return;
    };
    let Subject::Workload(workload) = &review.subject else {
        return;
    };
    let answers: HashMap<_, _> = workload
        .images
        .iter()
        .filter_map(|image| image.digest())
        .map(|d| (d.to_owned(), (verdict_for(d), Source::Backend)))
        .collect();
    let denied = answers
        .values()
        .any(|(a, _)| matches!(a, Ok(j) if j.verdict == Verdict::Deny));
    let fails_open = data.len() % 2 == 0;
    let rules = Rules {
        namespace: &review.namespace,
        tag_only: if data.len() % 3 == 0 {
            TagOnly::Warn
        } else {
            TagOnly::Deny
        },
        fails_open,
    };
    let decision = decide(
        workload,
        &Verdicts {
            answers,
            missing: None,
        },
        &rules,
    );
    assert!(
        !(denied && decision.allowed),
        "a denied image was admitted: {decision:?}"
    );
    // The bytes the server sends.
    let reply = decision.reply_bytes(&review.uid);
    let back: serde_json::Value = serde_json::from_slice(&reply).expect("the reply parses");
    assert_eq!(back["response"]["uid"], review.uid.as_str());
    assert_eq!(back["response"]["allowed"], decision.allowed);
});
