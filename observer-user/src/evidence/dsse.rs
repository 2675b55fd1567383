//! Signing: an in-toto Statement whose subjects are the bundle's files with their SHA-256,
//! in a DSSE envelope (`manifest.dsse.json`) signed with ECDSA P-256 over SHA-256.
//!
//! The signature is over DSSE's pre-authentication encoding (PAE) of the payload type and
//! the payload; `sig` is the base64 of the ASN.1 DER signature, which is what
//! `openssl dgst -sha256 -verify` takes. `keyid` is the hex SHA-256 of the public key's
//! DER SubjectPublicKeyInfo. RFC 6979 nonces make a signature depend only on key and
//! payload, so re-signing the same bundle with the same key gives the same bytes.

use std::{collections::BTreeMap, path::Path};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use p256::{
    ecdsa::{
        signature::{Signer as _, Verifier as _},
        DerSignature, Signature, SigningKey, VerifyingKey,
    },
    pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{canonical, hex, EvidenceError};

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a runtime evidence bundle.
pub const PREDICATE_TYPE: &str = "urn:stellaops:zastava:runtime-evidence:v1";

/// DSSE's pre-authentication encoding: `DSSEv1 <len> <type> <len> <payload>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Predicate,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Predicate {
    pub run_id: String,
}

/// The statement over `files` (name → hex SHA-256).
pub fn statement(run_id: &str, files: &BTreeMap<String, String>) -> Statement {
    Statement {
        statement_type: STATEMENT_TYPE.to_owned(),
        subject: files
            .iter()
            .map(|(name, sha256)| Subject {
                name: name.clone(),
                digest: BTreeMap::from([("sha256".to_owned(), sha256.clone())]),
            })
            .collect(),
        predicate_type: PREDICATE_TYPE.to_owned(),
        predicate: Predicate {
            run_id: run_id.to_owned(),
        },
    }
}

/// Reads an ECDSA P-256 private key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1
/// (`BEGIN EC PRIVATE KEY`) PEM.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, EvidenceError> {
    let text = std::fs::read_to_string(path).map_err(EvidenceError::io("read the key", path))?;
    let refuse = |reason: String| EvidenceError::Key {
        path: path.to_owned(),
        reason,
    };
    if text.contains("ENCRYPTED") {
        return Err(refuse(
            "the key is encrypted; sign with an unencrypted PEM key (e.g. from a secret mounted \
             for the signing step)"
                .into(),
        ));
    }
    if text.contains("BEGIN EC PRIVATE KEY") {
        let secret = p256::SecretKey::from_sec1_pem(&text)
            .map_err(|e| refuse(format!("not an ECDSA P-256 private key (SEC1 PEM): {e}")))?;
        return Ok(SigningKey::from(secret));
    }
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        refuse(format!(
            "not an ECDSA P-256 private key in PEM (PKCS#8 or SEC1): {e}; create one with \
             `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`"
        ))
    })
}

/// Reads an ECDSA P-256 public key (`BEGIN PUBLIC KEY` PEM).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, EvidenceError> {
    let text = std::fs::read_to_string(path).map_err(EvidenceError::io("read the key", path))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| EvidenceError::Key {
        path: path.to_owned(),
        reason: format!(
            "not an ECDSA P-256 public key in PEM: {e}; derive it from the signing key with \
             `openssl ec -in key.pem -pubout -out key.pub.pem`"
        ),
    })
}

/// The hex SHA-256 of the key's DER SubjectPublicKeyInfo.
pub fn key_id(key: &VerifyingKey) -> Result<String, EvidenceError> {
    let der = key
        .to_public_key_der()
        .map_err(|e| EvidenceError::Refused(format!("cannot encode the public key: {e}")))?;
    Ok(hex(&Sha256::digest(der.as_bytes())))
}

/// The canonical envelope signing the statement over `files`.
pub fn sign(
    key: &SigningKey,
    run_id: &str,
    files: &BTreeMap<String, String>,
) -> Result<Vec<u8>, EvidenceError> {
    let payload =
        canonical::to_canonical(&statement(run_id, files)).map_err(EvidenceError::Refused)?;
    let signature: Signature = key.sign(&pae(PAYLOAD_TYPE, &payload));
    let der: DerSignature = signature.to_der();
    let envelope = Envelope {
        payload: STANDARD.encode(&payload),
        payload_type: PAYLOAD_TYPE.to_owned(),
        signatures: vec![EnvelopeSignature {
            keyid: key_id(key.verifying_key())?,
            sig: STANDARD.encode(der.as_bytes()),
        }],
    };
    canonical::to_canonical(&envelope).map_err(EvidenceError::Refused)
}

/// Checks an envelope against `key` and the bundle's actual `files`; what is wrong, if
/// anything.
pub fn check(
    envelope: &[u8],
    key: &VerifyingKey,
    run_id: &str,
    files: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match canonical::is_canonical(envelope) {
        Ok(true) => {}
        Ok(false) => problems.push("not canonical JSON (RFC 8785)".to_owned()),
        Err(e) => {
            problems.push(e);
            return problems;
        }
    }
    let envelope: Envelope = match serde_json::from_slice(envelope) {
        Ok(envelope) => envelope,
        Err(e) => {
            problems.push(format!("not a DSSE envelope: {e}"));
            return problems;
        }
    };
    if envelope.payload_type != PAYLOAD_TYPE {
        problems.push(format!(
            "payloadType is {:?}, expected {PAYLOAD_TYPE:?}",
            envelope.payload_type
        ));
    }
    let payload = match STANDARD.decode(&envelope.payload) {
        Ok(payload) => payload,
        Err(e) => {
            problems.push(format!("the payload is not base64: {e}"));
            return problems;
        }
    };
    let wanted = match key_id(key) {
        Ok(id) => id,
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
    };
    let signed = pae(&envelope.payload_type, &payload);
    match envelope.signatures.iter().find(|s| s.keyid == wanted) {
        None => problems.push(format!(
            "no signature by the given key (keyid {wanted}); signed by {}",
            envelope
                .signatures
                .iter()
                .map(|s| s.keyid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(sig) => {
            let verified = STANDARD
                .decode(&sig.sig)
                .ok()
                .and_then(|der| Signature::from_der(&der).ok())
                .is_some_and(|signature| key.verify(&signed, &signature).is_ok());
            if !verified {
                problems.push(format!(
                    "the signature of keyid {wanted} does not verify: the envelope was changed \
                     after signing"
                ));
            }
        }
    }
    if !canonical::is_canonical(&payload).unwrap_or(false) {
        problems.push("the statement is not canonical JSON".to_owned());
    }
    let statement: Statement = match serde_json::from_slice(&payload) {
        Ok(statement) => statement,
        Err(e) => {
            problems.push(format!("the payload is not an in-toto Statement: {e}"));
            return problems;
        }
    };
    let expected = self::statement(run_id, files);
    if statement.statement_type != expected.statement_type {
        problems.push(format!(
            "_type is {:?}, expected {STATEMENT_TYPE:?}",
            statement.statement_type
        ));
    }
    if statement.predicate_type != expected.predicate_type {
        problems.push(format!(
            "predicateType is {:?}, expected {PREDICATE_TYPE:?}",
            statement.predicate_type
        ));
    }
    if statement.predicate != expected.predicate {
        problems.push(format!(
            "the statement is for run {:?}, the manifest's is {run_id:?}",
            statement.predicate.run_id
        ));
    }
    let signed_files: BTreeMap<&str, Option<&String>> = statement
        .subject
        .iter()
        .map(|s| (s.name.as_str(), s.digest.get("sha256")))
        .collect();
    for (name, sha256) in files {
        match signed_files.get(name.as_str()) {
            Some(Some(signed)) if *signed == sha256 => {}
            Some(Some(signed)) => problems.push(format!(
                "the statement signs {name} with sha256 {signed}; the file's is {sha256}"
            )),
            _ => problems.push(format!("the statement does not sign {name}")),
        }
    }
    for name in signed_files.keys() {
        if !files.contains_key(*name) {
            problems.push(format!(
                "the statement signs {name}, which the bundle does not hold"
            ));
        }
    }
    problems
}
