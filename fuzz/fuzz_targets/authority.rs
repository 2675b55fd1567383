//! Authority token responses: the JSON body and the claims of the token inside it (read
//! without a signature check, for exp and cnf.jkt).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zastava_platform::authority::{fallback::jwt_claims, issue::TokenReply};

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = serde_json::from_slice::<TokenReply>(data) {
        if let Some(claims) = jwt_claims(&reply.access_token) {
            let _ = claims.get("exp").and_then(serde_json::Value::as_u64);
            let _ = claims.pointer("/cnf/jkt");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jwt_claims(text);
    }
});
