use std::fmt;
use std::time::Duration;

/// Why a delivery (or a secret) was rejected.
///
/// The variants are deliberately coarse and carry only static text or numbers: the
/// message is meant to be shown to whoever sent the request (e.g. in a 401 body), so it
/// must never echo attacker-controlled header contents or anything derived from the
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// A header required by the signature scheme is absent. Carries the (lower-case)
    /// header name. When neither scheme's headers are present at all, this names
    /// [`SONZAI_SIGNATURE_HEADER`](crate::SONZAI_SIGNATURE_HEADER).
    MissingHeader(&'static str),
    /// A header is present but cannot be parsed (no timestamp, no `v1` entry,
    /// non-numeric timestamp, ...). Carries a fixed description of the problem.
    BadFormat(&'static str),
    /// The signed timestamp is further than the verifier's tolerance from the current
    /// time, in either direction. Only reported for otherwise authentic deliveries, so
    /// seeing it usually means a replayed request or a badly skewed clock.
    TimestampOutOfTolerance {
        /// The timestamp the delivery was signed with (unix seconds).
        timestamp: i64,
        /// The receiver's notion of "now" (unix seconds).
        now: i64,
        /// The maximum accepted distance between the two.
        tolerance: Duration,
    },
    /// No signature in the header matches the body under the configured secret: the
    /// body was modified, the secret is wrong, or the request is forged.
    BadSignature,
    /// The secret is unusable: empty, or not `whsec_` followed by standard padded
    /// base64 (Standard Webhooks keys with the decoded bytes, so they must decode).
    InvalidSecret,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader(name) => write!(f, "missing `{name}` header"),
            Self::BadFormat(why) => write!(f, "malformed signature header: {why}"),
            Self::TimestampOutOfTolerance {
                timestamp,
                now,
                tolerance,
            } => write!(
                f,
                "timestamp {timestamp} is {}s away from the current time {now}, \
                 more than the allowed {}s",
                timestamp.abs_diff(*now),
                tolerance.as_secs()
            ),
            Self::BadSignature => f.write_str("no signature matches the payload"),
            Self::InvalidSecret => f.write_str(
                "invalid webhook secret: expected `whsec_` followed by non-empty standard base64",
            ),
        }
    }
}

impl std::error::Error for VerifyError {}
