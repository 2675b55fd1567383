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

#[derive(Clone, Debug, thiserror::Error)]
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
    stamp: Option<Stamp>,
    key: Option<Arc<DpopKey>>,
    /// The version of the file last found to hold no usable key, and why: it is not read
    /// again until it changes.
    unusable: Option<(Option<Stamp>, KeyError)>,
}

/// What identifies one version of the file: inode, size, modification time.
type Stamp = (u64, u64, i64, i64);

/// What a look at the key file found.
pub enum KeyState {
    Same(Arc<DpopKey>),
    /// A new key (or the first).
    Rotated(Arc<DpopKey>),
    /// The file changed but holds no usable key (being written, or wrong): the previous
    /// key stays in use. Returned once per version of the file; later looks at the same
    /// version give `Same`.
    Kept {
        key: Arc<DpopKey>,
        error: KeyError,
    },
}

/// There is no key: the file has held none since the binary started.
#[derive(Debug)]
pub struct NoKey {
    pub error: KeyError,
    /// Whether this version of the file is seen for the first time (so the failure is
    /// reported once per version, not on every look).
    pub first: bool,
}

impl KeyFile {
    pub fn new(path: PathBuf) -> KeyFile {
        KeyFile {
            path,
            stamp: None,
            key: None,
            unusable: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current key, reading the file again when it changed.
    pub fn current(&mut self) -> Result<KeyState, NoKey> {
        let stamp = fs::metadata(&self.path)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        if let (Some(key), true) = (&self.key, stamp == self.stamp) {
            return Ok(KeyState::Same(Arc::clone(key)));
        }
        if let Some((seen, error)) = &self.unusable {
            if *seen == stamp {
                return match &self.key {
                    Some(key) => Ok(KeyState::Same(Arc::clone(key))),
                    None => Err(NoKey {
                        error: error.clone(),
                        first: false,
                    }),
                };
            }
        }
        match DpopKey::load(&self.path) {
            Ok(key) => {
                self.stamp = stamp;
                self.unusable = None;
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
            Err(error) => {
                self.unusable = Some((stamp, error.clone()));
                match &self.key {
                    Some(key) => Ok(KeyState::Kept {
                        key: Arc::clone(key),
                        error,
                    }),
                    None => Err(NoKey { error, first: true }),
                }
            }
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
    fn a_key_file_without_a_key_is_reported_once_per_version() {
        let dir = std::env::temp_dir().join(format!("zastava-dpop-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dpop.jwk");
        // Replaced as Kubernetes updates a Secret: a new file renamed over the old one.
        let replace = |text: &str| {
            let tmp = dir.join("dpop.jwk.new");
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, &path).unwrap();
        };
        let unusable = format!(
            "{} is not a P-256 private key (no private key found); expected PEM (\"EC PRIVATE KEY\" or \"PRIVATE KEY\") or a JWK with \"d\"; make one with `openssl ecparam -name prime256v1 -genkey -noout`",
            path.display()
        );

        // None since the start: an error each time, new only for a new version.
        replace("garbage");
        let mut file = KeyFile::new(path.clone());
        let err = file.current().err().unwrap();
        assert!(err.first);
        assert_eq!(err.error.to_string(), unusable);
        assert!(!file.current().err().unwrap().first);
        replace("more garbage");
        assert!(file.current().err().unwrap().first);

        replace(JWK);
        let jkt = match file.current() {
            Ok(KeyState::Rotated(key)) => key.thumbprint().to_owned(),
            _ => panic!("the first key is new"),
        };
        // Broken after start: the key stays, and that is said once.
        replace("garbage");
        match file.current() {
            Ok(KeyState::Kept { key, error }) => {
                assert_eq!(key.thumbprint(), jkt);
                assert_eq!(error.to_string(), unusable);
            }
            _ => panic!("the old key is kept"),
        }
        for _ in 0..3 {
            assert!(matches!(file.current(), Ok(KeyState::Same(k)) if k.thumbprint() == jkt));
        }
        fs::remove_file(&path).unwrap();
        let missing = match file.current() {
            Ok(KeyState::Kept { error, .. }) => error.to_string(),
            _ => panic!("the old key is kept"),
        };
        assert!(
            missing.starts_with(&format!("cannot read {}: ", path.display())),
            "{missing}"
        );
        assert!(matches!(file.current(), Ok(KeyState::Same(_))));
        // Fixed: the same key again, nothing rotated.
        replace(JWK);
        assert!(matches!(file.current(), Ok(KeyState::Same(k)) if k.thumbprint() == jkt));
        fs::remove_dir_all(&dir).unwrap();
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
