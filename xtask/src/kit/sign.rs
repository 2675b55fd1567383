//! Detached signatures in cosign's blob format: ECDSA P-256 over the SHA-256 of the file,
//! ASN.1 DER, base64 — what `cosign verify-blob --key cosign.pub` and
//! `openssl dgst -sha256 -verify` check. Nonces are RFC 6979's, so the same key and file
//! give the same signature.

use std::{fs, io::Read as _, path::Path};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use p256::{
    ecdsa::{
        signature::{DigestSigner as _, DigestVerifier as _},
        Signature, SigningKey, VerifyingKey,
    },
    pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding},
    SecretKey,
};
use sha2::{Digest as _, Sha256};

const HOW_TO_MAKE_A_KEY: &str = "make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out kit-signing.key` \
     and keep it off the build machine between releases";

/// Reads a P-256 private key (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY` PEM).
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let pem = fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    let secret = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        SecretKey::from_sec1_pem(&pem).map_err(|e| anyhow::anyhow!("{e}"))
    } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
        SecretKey::from_pkcs8_pem(&pem).map_err(|e| anyhow::anyhow!("{e}"))
    } else if pem.contains("ENCRYPTED") {
        bail!(
            "the signing key {} is encrypted; give it unencrypted (e.g. `openssl pkey -in KEY -out plain.key`)",
            path.display()
        )
    } else {
        bail!(
            "{} holds no PEM private key; {HOW_TO_MAKE_A_KEY}",
            path.display()
        )
    };
    let secret = secret.with_context(|| {
        format!(
            "{} is not an ECDSA P-256 private key; {HOW_TO_MAKE_A_KEY}",
            path.display()
        )
    })?;
    Ok(SigningKey::from(secret))
}

/// Reads a P-256 public key (SubjectPublicKeyInfo PEM, as `cosign.pub` is).
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let pem = fs::read_to_string(path)
        .with_context(|| format!("cannot read the public key {}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an ECDSA P-256 public key in PEM (-----BEGIN PUBLIC KEY-----): {e}",
            path.display()
        )
    })
}

/// The public key as PEM, to publish beside the kit.
pub fn public_pem(key: &SigningKey) -> Result<String> {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))
}

fn digest_of(path: &Path) -> Result<Sha256> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
    }
}

/// The signature of `path`, base64 of its DER encoding.
pub fn sign_file(key: &SigningKey, path: &Path) -> Result<String> {
    let signature: Signature = key.sign_digest(digest_of(path)?);
    Ok(base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes()))
}

/// Checks that `signature` (base64 of DER, surrounding white space allowed) is `key`'s
/// over `path`.
pub fn verify_file(key: &VerifyingKey, path: &Path, signature: &str) -> Result<()> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .context("the signature is not base64")?;
    let signature =
        Signature::from_der(&der).context("the signature is not a DER-encoded ECDSA signature")?;
    key.verify_digest(digest_of(path)?, &signature)
        .map_err(|_| {
            anyhow::anyhow!(
                "the signature does not match {} under this public key: the file was changed, or it was signed with another key",
                path.display()
            )
        })
}
