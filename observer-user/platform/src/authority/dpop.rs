//! DPoP (RFC 9449): the P-256 key an OpTok is bound to, its JWK thumbprint (RFC 7638, the
//! token's `cnf.jkt`), and the proofs sent with every request: a JWS with `typ dpop+jwt`,
//! `alg ES256` and the public `jwk` in its header; `jti`, `htm`, `htu`, `iat` and, when
//! asked for, `nonce` and `ath` in its claims.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use p256::{
    ecdsa::{signature::Signer as _, Signature, SigningKey},
    pkcs8::DecodePrivateKey as _,
    SecretKey,
};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a P-256 private key ({reason}); expected PEM (\"EC PRIVATE KEY\" or \"PRIVATE KEY\") or a JWK with \"d\"; make one with `openssl ecparam -name prime256v1 -genkey -noout`")]
    Parse { path: PathBuf, reason: String },
}

/// base64url without padding, as JOSE writes it.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `ath`: the base64url SHA-256 of the access token.
pub fn token_hash(access_token: &str) -> String {
    b64(Sha256::digest(access_token.as_bytes()))
}

/// A DPoP key and what is derived from it.
pub struct DpopKey {
    signing: SigningKey,
    /// The public key as a JWK, members in lexicographic order (which is also the input
    /// of its thumbprint).
    jwk: String,
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        write!(f, "DpopKey(jkt={})", self.thumbprint)
    }
}

impl DpopKey {
    pub fn load(path: &Path) -> Result<DpopKey, KeyError> {
        let text = fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| KeyError::Parse {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<DpopKey, String> {
        let text = text.trim();
        let secret = if text.starts_with('{') {
            SecretKey::from_jwk_str(text).map_err(|_| {
                "a JWK, but not an EC P-256 private key (kty \"EC\", crv \"P-256\", x, y, d)"
                    .to_owned()
            })?
        } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            SecretKey::from_sec1_pem(text).map_err(|e| format!("SEC1 PEM: {e}"))?
        } else if text.contains("-----BEGIN PRIVATE KEY-----") {
            SecretKey::from_pkcs8_pem(text)
                .map_err(|e| format!("PKCS#8 PEM (must be an EC P-256 key): {e}"))?
        } else {
            return Err("no private key found".into());
        };
        Ok(Self::from_secret(&secret))
    }

    fn from_secret(secret: &SecretKey) -> DpopKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let point = secret.public_key().to_encoded_point(false);
        // An uncompressed point of a valid key has both coordinates.
        let (x, y) = (
            point.x().map(b64).unwrap_or_default(),
            point.y().map(b64).unwrap_or_default(),
        );
        let jwk = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = b64(Sha256::digest(jwk.as_bytes()));
        DpopKey {
            signing: SigningKey::from(secret),
            jwk,
            thumbprint,
        }
    }

    /// The JWK SHA-256 thumbprint: what `cnf.jkt` of a token bound to this key holds.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for one request. `htu` is taken without query and fragment.
    pub fn proof(
        &self,
        htm: &str,
        htu: &url::Url,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> String {
        let mut htu = htu.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{}}}"#, self.jwk);
        let mut claims = serde_json::json!({
            "jti": b64(rand::random::<[u8; 16]>()),
            "htm": htm,
            "htu": htu.as_str(),
            "iat": SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        if let Some(token) = access_token {
            claims["ath"] = token_hash(token).into();
        }
        let input = format!("{}.{}", b64(header), b64(claims.to_string()));
        // ES256 in JWS is the raw r‖s pair, 64 bytes.
        let signature: Signature = self.signing.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }
}

/// The DPoP key file, re-read when it changes: a rotated key (a new Secret) means a new
/// thumbprint, so the token bound to the old one is dropped and a new one issued.
pub struct KeyFile {
    path: PathBuf,
    stamp: Option<(u64, u64, i64, i64)>,
    key: Option<Arc<DpopKey>>,
}

/// What a look at the key file found.
pub enum KeyState {
    Same(Arc<DpopKey>),
    /// A new key (or the first).
    Rotated(Arc<DpopKey>),
}

impl KeyFile {
    pub fn new(path: PathBuf) -> KeyFile {
        KeyFile {
            path,
            stamp: None,
            key: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current key. A changed file that does not hold a key (being written, or wrong)
    /// leaves the previous key in use and is reported.
    pub fn current(&mut self) -> Result<KeyState, KeyError> {
        let stamp = fs::metadata(&self.path)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        if let (Some(key), true) = (&self.key, stamp == self.stamp) {
            return Ok(KeyState::Same(Arc::clone(key)));
        }
        match DpopKey::load(&self.path) {
            Ok(key) => {
                self.stamp = stamp;
                let rotated = self
                    .key
                    .as_ref()
                    .is_none_or(|old| old.thumbprint() != key.thumbprint());
                let key = Arc::new(key);
                self.key = Some(Arc::clone(&key));
                Ok(if rotated {
                    KeyState::Rotated(key)
                } else {
                    KeyState::Same(key)
                })
            }
            Err(err) => match &self.key {
                Some(key) => {
                    tracing::warn!("the DPoP key file changed but holds no usable key ({err}); still using the key with jkt {}", key.thumbprint());
                    // Look again next time.
                    Ok(KeyState::Same(Arc::clone(key)))
                }
                None => Err(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The P-256 key of RFC 7517 appendix A.2. The test Authority (tests/authority/)
    // computes thumbprints of real proofs independently; here: structure.
    const JWK: &str = r#"{"kty":"EC","crv":"P-256",
        "x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        "d":"870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE"}"#;

    #[test]
    fn a_jwk_key_gives_its_public_jwk_and_thumbprint() {
        let key = DpopKey::parse(JWK).unwrap();
        assert_eq!(
            key.jwk,
            r#"{"crv":"P-256","kty":"EC","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}"#
        );
        assert_eq!(key.thumbprint().len(), 43);
    }

    #[test]
    fn a_proof_has_the_claims_it_must() {
        let key = DpopKey::parse(JWK).unwrap();
        let url: url::Url = "https://scanner.internal/api/v1/runtime/events?x=1#f"
            .parse()
            .unwrap();
        let proof = key.proof("POST", &url, Some("n-1"), Some("tok"));
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
        };
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(
            header["jwk"]["x"],
            "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4"
        );
        assert!(
            header["jwk"].get("d").is_none(),
            "the private key never leaves"
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(
            claims["htu"],
            "https://scanner.internal/api/v1/runtime/events"
        );
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["ath"], token_hash("tok"));
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(claims["jti"].as_str().unwrap())
                .unwrap()
                .len(),
            16
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
        // Every proof is new.
        assert_ne!(proof, key.proof("POST", &url, Some("n-1"), Some("tok")));
    }

    #[test]
    fn what_is_not_a_p256_key_is_named() {
        assert!(DpopKey::parse("hello")
            .unwrap_err()
            .contains("no private key"));
        assert!(DpopKey::parse(r#"{"kty":"EC","crv":"P-256"}"#)
            .unwrap_err()
            .contains("not an EC P-256 private key"));
    }
}
