use super::*;

#[derive(Deserialize)]
struct Wrapper {
    authority: AuthorityConfig,
}

fn parse(text: &str) -> Result<AuthorityConfig, String> {
    toml::from_str::<Wrapper>(text)
        .map(|w| w.authority)
        .map_err(|e| e.to_string())
}

fn problems(config: &AuthorityConfig, token_file: bool) -> Vec<String> {
    let mut found = Vec::new();
    config.check(token_file, &mut |key, problem| {
        found.push(format!("{key}: {problem}"));
    });
    found
}

#[test]
fn refresh_before_is_a_share_of_the_lifetime_or_a_duration() {
    let share = parse("[authority]\nrefresh_before = \"20%\"").unwrap();
    assert_eq!(share.refresh_before, RefreshBefore::Fraction(0.2));
    assert_eq!(
        share
            .refresh_before
            .ahead_of_expiry(Duration::from_secs(300)),
        Duration::from_secs(60)
    );
    let ahead = parse("[authority]\nrefresh_before = \"30s\"").unwrap();
    assert_eq!(
        ahead
            .refresh_before
            .ahead_of_expiry(Duration::from_secs(300)),
        Duration::from_secs(30)
    );
    // Never more than half of a short token's life.
    assert_eq!(
        ahead
            .refresh_before
            .ahead_of_expiry(Duration::from_secs(20)),
        Duration::from_secs(10)
    );
    for bad in ["0%", "100%", "lots"] {
        let err = parse(&format!("[authority]\nrefresh_before = \"{bad}\"")).unwrap_err();
        assert!(err.contains(bad), "{err}");
    }
}

/// A self-signed P-256 client certificate, its key (PKCS#8) and another key (SEC1).
const CLIENT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUTaZ2E36mPoU207OTFdM1XSyAzsgwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTemFzdGF2YS10ZXN0LWNsaWVudDAgFw0yNjEyMDIwNTIwMjla
GA8yMTI2MTEwODA1MjAyOVowHjEcMBoGA1UEAwwTemFzdGF2YS10ZXN0LWNsaWVu
dDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKB8LPF+Y/ThrTtPDzaPFCKw30dV
MhNwN8A4Aflw+iWXBZ/mi/5Ks+fPIIxVZk7zVnbBi3vefoEne5L5QeRRUwijUzBR
MB0GA1UdDgQWBBQ4SXUgmpdExRxTRa2oQDZT+tnZYjAfBgNVHSMEGDAWgBQ4SXUg
mpdExRxTRa2oQDZT+tnZYjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQDDenHQSQcUS4e4I0VRq1GO8oT7+Mn5O1BjS+U16i3WkAIgY4XxLinWL9gH
Cr8GJdISvcoN0D6jOXZYLNePv0xWp6c=
-----END CERTIFICATE-----\n";
const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3D2RlVR9oQtW6RDF
LlPSN5ChNm+FgqNPmrvBHX6yGt+hRANCAASgfCzxfmP04a07Tw82jxQisN9HVTIT
cDfAOAH5cPollwWf5ov+SrPnzyCMVWZO81Z2wYt73n6BJ3uS+UHkUVMI
-----END PRIVATE KEY-----\n";
const OTHER_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIMqfiyKBaFRp3sv9eBxZItokI6k/Tpxu7subZgaPQ7SboAoGCCqGSM49
AwEHoUQDQgAEghFO23QVrQrp7O3BE0mw1839QZvPvBcBOnyS62lmHLkL+6hxIAQB
dlPlMHn9xEFAyjsBYa4fR8Vzxo1rifQOBg==
-----END EC PRIVATE KEY-----\n";

#[test]
fn a_complete_table_passes_and_each_missing_piece_is_named() {
    let dir = std::env::temp_dir().join(format!("zastava-authority-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let cert = dir.join("tls.crt");
    let client_key = dir.join("tls.key");
    let secret = dir.join("secret");
    // The P-256 key of RFC 7517 appendix A.2, as a JWK.
    std::fs::write(
        &key,
        r#"{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","d":"870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE"}"#,
    )
    .unwrap();
    std::fs::write(&cert, CLIENT_CERT).unwrap();
    std::fs::write(&client_key, CLIENT_KEY).unwrap();
    std::fs::write(&secret, "s3cret\n").unwrap();
    let complete = AuthorityConfig {
        issuer: Some("https://authority.internal".parse().unwrap()),
        dpop_key_file: Some(key.clone()),
        client_cert_file: Some(cert.clone()),
        client_key_file: Some(client_key.clone()),
        ca_file: Some(cert.clone()),
        ..AuthorityConfig::default()
    };
    assert_eq!(problems(&complete, false), Vec::<String>::new());
    assert_eq!(
        problems(&complete, true),
        ["backend.token_file: cannot be used with authority.issuer: tokens come from the Authority (a static token for bootstrap goes in authority.static_token_file, with authority.allow_static_token_fallback = true)"]
    );
    let without_key = AuthorityConfig {
        dpop_key_file: None,
        ..complete.clone()
    };
    assert!(problems(&without_key, false)[0].starts_with("authority.dpop_key_file: is required"));
    // Without DPoP or mutual TLS required, a client secret alone will do.
    let secret = AuthorityConfig {
        require_dpop: false,
        require_mutual_tls: false,
        dpop_key_file: None,
        client_cert_file: None,
        client_key_file: None,
        client_secret_file: Some(secret.clone()),
        ..complete.clone()
    };
    assert_eq!(problems(&secret, false), Vec::<String>::new());
    // Nothing without an issuer.
    let orphan = AuthorityConfig {
        issuer: None,
        ..complete
    };
    let found = problems(&orphan, false);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found
        .iter()
        .all(|p| p.contains("has no effect without authority.issuer")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn certificate_and_key_files_are_read_as_they_are_at_start() {
    let dir =
        std::env::temp_dir().join(format!("zastava-authority-tls-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = file("tls.crt", CLIENT_CERT);
    let key = file("tls.key", CLIENT_KEY);
    let other_key = file("other.key", OTHER_KEY);
    let text = file("text", "x");
    let torn = file("torn.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let not_der = file(
        "not-der.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let not_der_key = file(
        "not-der.key",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let with = |cert: &PathBuf, key: &PathBuf, ca: Option<&PathBuf>| AuthorityConfig {
        issuer: Some("https://authority.internal".parse().unwrap()),
        require_dpop: false,
        client_cert_file: Some(cert.clone()),
        client_key_file: Some(key.clone()),
        ca_file: ca.cloned(),
        ..AuthorityConfig::default()
    };
    let d = |p: &PathBuf| p.display().to_string();
    assert_eq!(
        problems(&with(&cert, &key, Some(&cert)), false),
        Vec::<String>::new()
    );
    assert_eq!(
        problems(&with(&text, &text, None), false),
        [
            format!("authority.client_cert_file: {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")", d(&text)),
            format!("authority.client_key_file: {} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")", d(&text)),
        ]
    );
    // Swapped: each file names what it holds instead.
    assert_eq!(
        problems(&with(&key, &cert, None), false),
        [
            format!("authority.client_cert_file: {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); it holds a private key", d(&key)),
            format!("authority.client_key_file: {} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\"); it holds a certificate", d(&cert)),
        ]
    );
    assert_eq!(
        problems(&with(&cert, &other_key, None), false),
        [format!(
            "authority.client_key_file: {} is not the private key of the certificate in {} (authority.client_cert_file)",
            d(&other_key),
            d(&cert)
        )]
    );
    assert_eq!(
        problems(&with(&not_der, &key, Some(&torn)), false),
        [
            format!(
                "authority.ca_file: {} is not valid PEM: no \"-----END CERTIFICATE-----\" line",
                d(&torn)
            ),
            format!(
                "authority.client_cert_file: {}: the first certificate is not a valid X.509 certificate (BadEncoding)",
                d(&not_der)
            ),
        ]
    );
    assert_eq!(
        problems(&with(&cert, &not_der_key, Some(&not_der)), false),
        [
            format!(
                "authority.ca_file: {}: certificate 1 of 1 is not a usable CA certificate: BadEncoding",
                d(&not_der)
            ),
            format!(
                "authority.client_key_file: {}: the private key cannot be used: failed to parse private key as RSA, ECDSA, or EdDSA",
                d(&not_der_key)
            ),
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
