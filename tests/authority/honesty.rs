//! The test Authority itself: each way a DPoP proof can be wrong is refused, at the token
//! endpoint and at the backend, with the error the fake names — and the same request with a
//! right proof is taken, so each refusal is for that one fault. The proofs are made here,
//! with p256 directly, not by the code under test.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use p256::{
    ecdsa::{signature::Signer as _, Signature, SigningKey},
    elliptic_curve::sec1::ToEncodedPoint as _,
};
use sha2::Digest as _;

use super::*;

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `ath` of a token: its SHA-256, base64url.
fn ath(token: &str) -> String {
    b64(sha2::Sha256::digest(token.as_bytes()))
}

/// Signs DPoP proofs with a P-256 key file (SEC1 PEM, as `openssl ecparam` writes it).
struct Prover {
    key: SigningKey,
    jwk: Value,
}

impl Prover {
    fn load(path: &Path) -> Prover {
        let pem = std::fs::read_to_string(path).unwrap();
        let secret = p256::SecretKey::from_sec1_pem(&pem).unwrap();
        let point = secret.public_key().to_encoded_point(false);
        Prover {
            key: SigningKey::from(&secret),
            jwk: json!({
                "kty": "EC",
                "crv": "P-256",
                "x": b64(point.x().unwrap()),
                "y": b64(point.y().unwrap()),
            }),
        }
    }

    /// The claims of a right proof for `htm` `htu`, made now.
    fn claims(htm: &str, htu: &str) -> Value {
        json!({
            "jti": b64(rand::random::<[u8; 16]>()),
            "htm": htm,
            "htu": htu,
            "iat": now(),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk});
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }
}

/// The observer's token request, with `proof`: the status and the JSON reply.
fn token_request(s: &Setup, proof: &str) -> (u16, Value) {
    let (status, _, body) = post_as_client(
        &s.pki,
        &format!("{}/token", s.authority.issuer),
        &[
            ("dpop", proof),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        b"grant_type=client_credentials&client_id=zastava-runtime&scope=aud%3Ascanner+api%3Ascanner.runtime.write&audience=scanner"
            .to_vec(),
    );
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn the_test_authority_refuses_a_tampered_proof_the_wrong_htu_or_htm_and_a_stale_or_future_iat() {
    let s = Setup::new();
    let prover = Prover::load(&s.key);
    let token_url = format!("{}/token", s.authority.issuer);
    let refused = |proof: &str, description: &str| {
        let (status, body) = token_request(&s, proof);
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            body,
            json!({"error": "invalid_dpop_proof", "error_description": description})
        );
    };

    // Right: a DPoP token, bound to the key by the fake's own thumbprint of it.
    let (status, body) = token_request(&s, &prover.sign(&Prover::claims("POST", &token_url)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let issued = s.authority.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["jkt"], thumbprint(&s.key).as_str());

    // One bit of the signature flipped.
    let proof = prover.sign(&Prover::claims("POST", &token_url));
    let (input, signature) = proof.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    signature[10] ^= 1;
    refused(
        &format!("{input}.{}", b64(&signature)),
        "signature or claims: Signature verification failed",
    );
    // The claims rewritten after signing (another jti), the signature kept.
    let parts: Vec<&str> = proof.split('.').collect();
    let forged = Prover::claims("POST", &token_url);
    refused(
        &format!("{}.{}.{}", parts[0], b64(forged.to_string()), parts[2]),
        "signature or claims: Signature verification failed",
    );

    // Signed, but for another URL or another method.
    let elsewhere = format!("{}/other", s.authority.issuer);
    refused(
        &prover.sign(&Prover::claims("POST", &elsewhere)),
        &format!("htu '{elsewhere}' is not {token_url}"),
    );
    refused(
        &prover.sign(&Prover::claims("GET", &token_url)),
        "htm 'GET' is not POST",
    );

    // Made two minutes ago, or two minutes ahead: outside the fake's 60 s window.
    for iat in [now() - 120, now() + 120] {
        let mut claims = Prover::claims("POST", &token_url);
        claims["iat"] = iat.into();
        refused(
            &prover.sign(&claims),
            &format!("iat {iat} is outside the 60 s window"),
        );
    }

    // Nothing more was issued, and the fake kept each refusal.
    let state = s.authority.state();
    assert_eq!(list(&state["issued"]).len(), 1);
    let refusals: Vec<Value> = list(&state["refused"])
        .iter()
        .map(|r| r["error"].clone())
        .collect();
    assert_eq!(refusals, vec![json!("invalid_dpop_proof"); 6]);
}

#[test]
fn the_test_backend_refuses_a_wrong_ath_and_a_proof_by_a_key_the_token_is_not_bound_to() {
    let s = Setup::new();
    let prover = Prover::load(&s.key);
    let token_url = format!("{}/token", s.authority.issuer);
    let (status, body) = token_request(&s, &prover.sign(&Prover::claims("POST", &token_url)));
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    let events = format!("{}api/v1/runtime/events", s.authority.backend);
    let authorization = format!("DPoP {token}");
    let send = |proof: &str| {
        post_as_client(
            &s.pki,
            &events,
            &[
                ("authorization", &authorization),
                ("dpop", proof),
                ("content-type", "application/json"),
            ],
            br#"{"events":[]}"#.to_vec(),
        )
    };
    let proof_by = |prover: &Prover, ath: &str| {
        let mut claims = Prover::claims("POST", &events);
        claims["ath"] = ath.into();
        prover.sign(&claims)
    };
    let refusal = |description: &str| {
        format!("DPoP error=\"invalid_dpop_proof\", error_description=\"{description}\"")
    };

    // Right: the token's key, the token's hash.
    let (status, challenge, _) = send(&proof_by(&prover, &ath(&token)));
    assert_eq!((status, challenge.as_str()), (200, ""));

    // The hash of another token.
    let (status, challenge, _) = send(&proof_by(&prover, &ath("another-token")));
    assert_eq!(
        (status, challenge),
        (401, refusal("ath is not the hash of the access token"))
    );

    // A right proof by another key than the one in the token's cnf.jkt.
    let other_key = s.dir.path().join("other-dpop.pem");
    generate_dpop_key(&other_key);
    let (status, challenge, _) = send(&proof_by(&Prover::load(&other_key), &ath(&token)));
    assert_eq!(
        (status, challenge),
        (
            401,
            refusal("the proof's key is not the one the token is bound to")
        )
    );

    let seen: Vec<(Value, Value)> = s
        .authority
        .backend_requests()
        .iter()
        .map(|r| (r["status"].clone(), r["error"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (json!(200), Value::Null),
            (json!(401), json!("invalid_dpop_proof")),
            (json!(401), json!("invalid_dpop_proof")),
        ]
    );
}
