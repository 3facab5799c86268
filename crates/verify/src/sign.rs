//! Signature computation shared by the signing functions and [`Verifier`](crate::Verifier).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{VerifyError, SECRET_PREFIX};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;

/// The secret text without surrounding whitespace and without the `whsec_` prefix.
///
/// Whitespace is trimmed because secrets usually arrive through environment variables
/// or files with a trailing newline; valid secrets never contain whitespace, so this
/// cannot turn one valid secret into another.
pub(crate) fn secret_text(secret: &str) -> &str {
    let secret = secret.trim();
    secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret)
}

/// The Standard Webhooks key: the base64-decoded secret.
pub(crate) fn standard_key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let key = STANDARD
        .decode(secret_text(secret))
        .map_err(|_| VerifyError::InvalidSecret)?;
    if key.is_empty() {
        return Err(VerifyError::InvalidSecret);
    }
    Ok(key)
}

/// An HMAC-SHA256 instance keyed with `key`, ready to be cloned per message.
pub(crate) fn keyed_mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length (long keys are hashed, short ones zero-padded);
    // the `Result` only exists because `KeyInit` is shared with fixed-key MACs.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
    }
}

/// Tag over `"<t>." + body`.
pub(crate) fn sonzai_tag(mac: &HmacSha256, timestamp: &str, body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = mac.clone();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Tag over `"<id>.<timestamp>." + body`.
pub(crate) fn standard_tag(
    mac: &HmacSha256,
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
) -> [u8; TAG_LEN] {
    let mut mac = mac.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Hex signature for the `Sonzai-Signature` header (one `v1=` value).
///
/// The HMAC key is the secret's text after the `whsec_` prefix (the base64 characters
/// themselves, not their decoded bytes), so the prefix is optional here.
pub fn sign_sonzai(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = keyed_mac(secret_text(secret).as_bytes());
    hex::encode(sonzai_tag(&mac, &timestamp.to_string(), body))
}

/// Full `Sonzai-Signature` header value: `t=<timestamp>,v1=<hex>[,v1=<hex>...]`.
///
/// One `v1` entry is emitted per secret, in the given order. During a key rotation pass
/// the new secret first and the old one second so receivers still holding the old
/// secret keep verifying. `secrets` should not be empty: a header without any `v1`
/// entry is rejected by every verifier.
pub fn sonzai_signature_header(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mac = keyed_mac(secret_text(secret).as_bytes());
        header.push_str(",v1=");
        header.push_str(&hex::encode(sonzai_tag(&mac, &timestamp, body)));
    }
    header
}

/// One Standard Webhooks signature entry: `v1,<base64>`.
///
/// Fails with [`VerifyError::InvalidSecret`] if the secret (after the optional `whsec_`
/// prefix) is not non-empty standard padded base64, because this scheme keys the HMAC
/// with the decoded bytes.
pub fn sign_standard(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, VerifyError> {
    let mac = keyed_mac(&standard_key(secret)?);
    let tag = standard_tag(&mac, msg_id, &timestamp.to_string(), body);
    Ok(format!("v1,{}", STANDARD.encode(tag)))
}

/// Full `webhook-signature` header value: space-separated `v1,<base64>` entries, one per
/// secret in the given order (new secret first during a rotation).
pub fn standard_signature_header(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, VerifyError> {
    let entries = secrets
        .iter()
        .map(|secret| sign_standard(secret, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries.join(" "))
}
