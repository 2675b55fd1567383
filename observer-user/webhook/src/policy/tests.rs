use super::*;
use reqwest::StatusCode;

#[test]
fn only_a_refusal_of_the_token_itself_drops_it() {
    assert!(token_refused(StatusCode::UNAUTHORIZED, None));
    assert!(token_refused(
        StatusCode::UNAUTHORIZED,
        Some("use_dpop_nonce")
    ));
    assert!(token_refused(StatusCode::FORBIDDEN, Some("invalid_token")));
    assert!(!token_refused(StatusCode::FORBIDDEN, None));
    assert!(!token_refused(
        StatusCode::FORBIDDEN,
        Some("insufficient_scope")
    ));
}

#[test]
fn the_error_of_a_challenge_or_a_body_is_read() {
    assert_eq!(
        challenge_error(r#"DPoP error="invalid_token", error_description="revoked""#),
        Some("invalid_token")
    );
    assert_eq!(
        challenge_error(r#"Bearer realm="scanner", error=insufficient_scope"#),
        Some("insufficient_scope")
    );
    // Another parameter's name that ends in `error` is not it.
    assert_eq!(
        challenge_error(r#"Bearer x_error="invalid_token", error="insufficient_scope""#),
        Some("insufficient_scope")
    );
    assert_eq!(challenge_error(r#"Bearer realm="scanner""#), None);
    assert_eq!(challenge_error(r#"Bearer error="""#), None);
    assert_eq!(
        body_error(br#"{"error": "invalid_token", "error_description": "expired"}"#).as_deref(),
        Some("invalid_token")
    );
    assert_eq!(body_error(b"forbidden"), None);
    assert_eq!(body_error(br#"{"error": "not\nan error code"}"#), None);
    assert_eq!(body_error(br#"{"error": 403}"#), None);
}
