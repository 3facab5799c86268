use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use subtle::{Choice, ConstantTimeEq};

use crate::sign::{
    keyed_mac, secret_text, sonzai_tag, standard_key, standard_tag, HmacSha256, TAG_LEN,
};
use crate::{
    VerifyError, SONZAI_SIGNATURE_HEADER, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};

/// How far a signed timestamp may be from the receiver's clock by default: long enough
/// for retries through slow proxies and ordinary clock skew, short enough that a
/// captured request cannot be replayed much later.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Checks webhook deliveries against one endpoint secret.
///
/// Build it once at startup (it validates the secret eagerly, so a mistyped secret
/// fails there rather than on the first delivery) and share it; cloning is cheap and
/// allocation-free. Both header formats are verified with the same secret, so a
/// receiver does not need to know which one the sender used.
///
/// All verification must happen on the raw request body bytes, before any JSON
/// parsing or re-serialization.
#[derive(Clone)]
pub struct Verifier {
    /// Keyed with the secret text (Sonzai-Signature scheme).
    sonzai: HmacSha256,
    /// Keyed with the decoded secret bytes (Standard Webhooks scheme).
    standard: HmacSha256,
    tolerance: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &"whsec_***")
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// The signature headers of one request, after picking the scheme.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SignatureHeaders<'h> {
    Sonzai(&'h str),
    Standard {
        id: &'h str,
        timestamp: &'h str,
        signature: &'h str,
    },
}

impl<'h> SignatureHeaders<'h> {
    /// Picks `Sonzai-Signature` when present, otherwise the Standard Webhooks triple.
    ///
    /// `lookup` receives lower-case header names. Looking up headers before the body is
    /// read lets callers reject unsigned requests without buffering them.
    pub(crate) fn locate<F>(lookup: F) -> Result<Self, VerifyError>
    where
        F: Fn(&'static str) -> Result<Option<&'h str>, VerifyError>,
    {
        if let Some(header) = lookup(SONZAI_SIGNATURE_HEADER)? {
            return Ok(Self::Sonzai(header));
        }
        let id = lookup(WEBHOOK_ID_HEADER)?;
        let timestamp = lookup(WEBHOOK_TIMESTAMP_HEADER)?;
        let signature = lookup(WEBHOOK_SIGNATURE_HEADER)?;
        match (id, timestamp, signature) {
            (Some(id), Some(timestamp), Some(signature)) => Ok(Self::Standard {
                id,
                timestamp,
                signature,
            }),
            (None, None, None) => Err(VerifyError::MissingHeader(SONZAI_SIGNATURE_HEADER)),
            (None, _, _) => Err(VerifyError::MissingHeader(WEBHOOK_ID_HEADER)),
            (_, None, _) => Err(VerifyError::MissingHeader(WEBHOOK_TIMESTAMP_HEADER)),
            (_, _, None) => Err(VerifyError::MissingHeader(WEBHOOK_SIGNATURE_HEADER)),
        }
    }
}

impl Verifier {
    /// Creates a verifier for `secret` (`whsec_...`; the prefix is optional and
    /// surrounding whitespace is ignored).
    ///
    /// Fails with [`VerifyError::InvalidSecret`] unless the part after the prefix is
    /// non-empty standard padded base64, which every secret issued by Sonzai is.
    pub fn new(secret: impl AsRef<str>) -> Result<Self, VerifyError> {
        let secret = secret.as_ref();
        let standard = keyed_mac(&standard_key(secret)?);
        let sonzai = keyed_mac(secret_text(secret).as_bytes());
        Ok(Self {
            sonzai,
            standard,
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// Sets the maximum distance between a delivery's timestamp and the current time,
    /// in either direction (default [`DEFAULT_TOLERANCE`], 5 minutes).
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The configured timestamp tolerance.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Verifies a `Sonzai-Signature` header value against `body` using the system clock.
    pub fn verify_sonzai(&self, header: &str, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_sonzai_at(header, body, now_unix())
    }

    /// Like [`verify_sonzai`](Self::verify_sonzai) with an explicit "now" (unix seconds).
    ///
    /// The signature is checked before the timestamp, so
    /// [`VerifyError::TimestampOutOfTolerance`] is only reported for authentic but
    /// stale (or future-dated) deliveries.
    pub fn verify_sonzai_at(
        &self,
        header: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        let parsed = SonzaiHeader::parse(header)?;
        let expected = sonzai_tag(&self.sonzai, parsed.timestamp_text, body);
        let mut matched = Choice::from(0);
        for candidate in &parsed.signatures {
            let mut decoded = [0u8; TAG_LEN];
            // Undecodable entries simply do not match: one garbled entry must not hide a
            // valid one next to it.
            let valid = Choice::from(u8::from(
                hex::decode_to_slice(candidate, &mut decoded).is_ok(),
            ));
            matched |= valid & decoded[..].ct_eq(&expected[..]);
        }
        if !bool::from(matched) {
            return Err(VerifyError::BadSignature);
        }
        self.check_timestamp(parsed.timestamp, now_unix)
    }

    /// Verifies Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` values) against `body` using the system clock.
    pub fn verify_standard(
        &self,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_standard_at(id, timestamp, signature, body, now_unix())
    }

    /// Like [`verify_standard`](Self::verify_standard) with an explicit "now" (unix
    /// seconds).
    pub fn verify_standard_at(
        &self,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        if id.is_empty() {
            return Err(VerifyError::BadFormat("empty webhook-id"));
        }
        let parsed_timestamp = parse_timestamp(timestamp)?;
        let mut candidates = Vec::new();
        for entry in signature.split_ascii_whitespace() {
            let (version, value) = entry.split_once(',').ok_or(VerifyError::BadFormat(
                "webhook-signature entry is not `version,signature`",
            ))?;
            // Other versions (e.g. asymmetric `v1a`) are not ours to check.
            if version == "v1" {
                candidates.push(value);
            }
        }
        if candidates.is_empty() {
            return Err(VerifyError::BadFormat("no v1 entry in webhook-signature"));
        }
        let expected = standard_tag(&self.standard, id, timestamp, body);
        let mut matched = Choice::from(0);
        for candidate in candidates {
            // As for Sonzai entries, undecodable or wrong-length values count as
            // mismatches rather than errors. The buffer has spare room so base64's
            // conservative output-size check never refuses a tag-length value.
            let mut decoded = [0u8; 2 * TAG_LEN];
            let (valid, decoded) = match STANDARD.decode_slice(candidate, &mut decoded) {
                Ok(len) => (Choice::from(1), &decoded[..len]),
                Err(_) => (Choice::from(0), &decoded[..0]),
            };
            // Slice `ct_eq` is false for differing lengths without comparing contents.
            matched |= valid & decoded.ct_eq(&expected[..]);
        }
        if !bool::from(matched) {
            return Err(VerifyError::BadSignature);
        }
        self.check_timestamp(parsed_timestamp, now_unix)
    }

    /// Verifies a request given a header lookup function, using the system clock.
    ///
    /// Checks `Sonzai-Signature` when present, otherwise the Standard Webhooks headers;
    /// returns [`VerifyError::MissingHeader`] when neither is there. `get_header` is
    /// called with lower-case names, so it must either match case-insensitively (as
    /// `http::HeaderMap` does) or work on lower-cased names.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use sonzai_webhooks_verify::{Verifier, VerifyError};
    /// let verifier = Verifier::new("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
    /// let headers: HashMap<String, String> = HashMap::new();
    /// let result = verifier.verify(|name| headers.get(name).map(String::as_str), b"{}");
    /// assert_eq!(result, Err(VerifyError::MissingHeader("sonzai-signature")));
    /// # Ok::<(), VerifyError>(())
    /// ```
    pub fn verify<'h, F>(&self, get_header: F, body: &[u8]) -> Result<(), VerifyError>
    where
        F: Fn(&str) -> Option<&'h str>,
    {
        self.verify_at(get_header, body, now_unix())
    }

    /// Like [`verify`](Self::verify) with an explicit "now" (unix seconds).
    pub fn verify_at<'h, F>(
        &self,
        get_header: F,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError>
    where
        F: Fn(&str) -> Option<&'h str>,
    {
        let headers = SignatureHeaders::locate(|name| Ok(get_header(name)))?;
        self.verify_located(headers, body, now_unix)
    }

    /// Verifies a request's [`http::HeaderMap`] and body, using the system clock.
    ///
    /// Same scheme selection as [`verify`](Self::verify). A signature header whose value
    /// is not visible ASCII is reported as [`VerifyError::BadFormat`].
    #[cfg(feature = "http")]
    pub fn verify_headers(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_headers_at(headers, body, now_unix())
    }

    /// Like [`verify_headers`](Self::verify_headers) with an explicit "now" (unix
    /// seconds).
    #[cfg(feature = "http")]
    pub fn verify_headers_at(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        let located = SignatureHeaders::locate(|name| header_str(headers, name))?;
        self.verify_located(located, body, now_unix)
    }

    pub(crate) fn verify_located(
        &self,
        headers: SignatureHeaders<'_>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        match headers {
            SignatureHeaders::Sonzai(header) => self.verify_sonzai_at(header, body, now_unix),
            SignatureHeaders::Standard {
                id,
                timestamp,
                signature,
            } => self.verify_standard_at(id, timestamp, signature, body, now_unix),
        }
    }

    fn check_timestamp(&self, timestamp: i64, now_unix: i64) -> Result<(), VerifyError> {
        if Duration::from_secs(timestamp.abs_diff(now_unix)) > self.tolerance {
            return Err(VerifyError::TimestampOutOfTolerance {
                timestamp,
                now: now_unix,
                tolerance: self.tolerance,
            });
        }
        Ok(())
    }
}

/// A header's value as text, or `BadFormat` if it is not visible ASCII (signature
/// headers always are, so anything else is corrupt rather than absent).
#[cfg(feature = "http")]
pub(crate) fn header_str<'h>(
    headers: &'h http::HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, VerifyError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| VerifyError::BadFormat("signature header is not visible ASCII"))
        })
        .transpose()
}

/// Parsed `t=<ts>,v1=<hex>[,v1=<hex>...]`.
struct SonzaiHeader<'a> {
    /// The timestamp exactly as sent; it is what the signature covers.
    timestamp_text: &'a str,
    timestamp: i64,
    signatures: Vec<&'a str>,
}

impl<'a> SonzaiHeader<'a> {
    fn parse(header: &'a str) -> Result<Self, VerifyError> {
        if header.trim().is_empty() {
            return Err(VerifyError::BadFormat("empty Sonzai-Signature"));
        }
        let mut timestamp_text = None;
        let mut signatures = Vec::new();
        for element in header.split(',') {
            let (key, value) = element.split_once('=').ok_or(VerifyError::BadFormat(
                "Sonzai-Signature element is not `key=value`",
            ))?;
            let value = value.trim();
            match key.trim() {
                "t" if timestamp_text.is_some() => {
                    return Err(VerifyError::BadFormat(
                        "more than one t in Sonzai-Signature",
                    ));
                }
                "t" => timestamp_text = Some(value),
                "v1" => signatures.push(value),
                // Other schemes (e.g. a future `v2`) are for other verifiers.
                _ => {}
            }
        }
        let timestamp_text =
            timestamp_text.ok_or(VerifyError::BadFormat("no t in Sonzai-Signature"))?;
        let timestamp = parse_timestamp(timestamp_text)?;
        if signatures.is_empty() {
            return Err(VerifyError::BadFormat("no v1 in Sonzai-Signature"));
        }
        Ok(Self {
            timestamp_text,
            timestamp,
            signatures,
        })
    }
}

/// Unix seconds as plain ASCII digits. Signs, whitespace and the like are refused
/// because the text is covered by the signature verbatim.
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadFormat("timestamp is not unix seconds"));
    }
    text.parse()
        .map_err(|_| VerifyError::BadFormat("timestamp is out of range"))
}

/// Current unix time. A clock before 1970 yields 0, which fails closed: every real
/// timestamp is then outside the tolerance.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}
