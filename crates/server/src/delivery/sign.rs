//! What a receiver gets: the JSON body of a delivery and its signature headers. Pure
//! functions over a claimed delivery and a timestamp, so they are tested with fixed
//! vectors. The HMAC formats themselves live in the verify crate, which receivers use
//! too, so there is one implementation of each.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use sonzai_webhooks_verify as verify;

use crate::store::ClaimedDelivery;

/// The delivery body: `{"event_id","event_type","project_id","created_at","data"}`.
/// `data` is inserted as stored (it was serialized by the publisher, so it is valid
/// JSON) instead of being parsed and re-serialized on the hot path.
pub fn delivery_body(d: &ClaimedDelivery) -> Bytes {
    let event_type = serde_json::to_string(&d.event_type).unwrap_or_else(|_| "\"\"".into());
    let created_at = d
        .event_created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut body = String::with_capacity(128 + d.data.len());
    body.push_str("{\"event_id\":\"");
    body.push_str(&d.event_id.to_string());
    body.push_str("\",\"event_type\":");
    body.push_str(&event_type);
    body.push_str(",\"project_id\":\"");
    body.push_str(&d.project_id.to_string());
    body.push_str("\",\"created_at\":\"");
    body.push_str(&created_at);
    body.push_str("\",\"data\":");
    body.push_str(&d.data);
    body.push('}');
    Bytes::from(body)
}

pub const SONZAI_SIGNATURE: HeaderName = HeaderName::from_static("sonzai-signature");
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The headers of one attempt, signed at `timestamp` (unix seconds): `Sonzai-Signature`,
/// the Standard Webhooks trio, and `Authorization` when the webhook has one. During a
/// rotation grace period both secrets sign, the new one first.
pub fn delivery_headers(
    d: &ClaimedDelivery,
    body: &[u8],
    timestamp: i64,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut secrets = vec![d.secret.expose()];
    if let Some(previous) = &d.previous_secret {
        secrets.push(previous.expose());
    }
    let event_id = d.event_id.to_string();
    let mut headers = Vec::with_capacity(5);
    let sonzai = verify::sonzai_signature_header(&secrets, timestamp, body);
    if let Ok(v) = HeaderValue::from_str(&sonzai) {
        headers.push((SONZAI_SIGNATURE, v));
    }
    if let Ok(v) = HeaderValue::from_str(&event_id) {
        headers.push((WEBHOOK_ID, v));
    }
    headers.push((WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp)));
    // A secret that is not base64 cannot key a Standard Webhooks signature; ours always
    // are, and the Sonzai signature is still there for the receiver.
    if let Ok(standard) = verify::standard_signature_header(&secrets, &event_id, timestamp, body) {
        if let Ok(v) = HeaderValue::from_str(&standard) {
            headers.push((WEBHOOK_SIGNATURE, v));
        }
    }
    if let Some(auth) = &d.auth_header {
        if let Ok(mut v) = HeaderValue::from_str(auth) {
            v.set_sensitive(true);
            headers.push((http::header::AUTHORIZATION, v));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SigningSecret;
    use chrono::TimeZone;
    use uuid::Uuid;

    fn claimed(previous: Option<&str>) -> ClaimedDelivery {
        ClaimedDelivery {
            rate_limit: None,
            ordered: false,
            send_at: None,
            delivery_id: Uuid::nil(),
            event_id: Uuid::parse_str("0190f3c2-7a2b-7000-8000-000000000001").unwrap(),
            webhook_id: Uuid::nil(),
            project_id: Uuid::parse_str("7d444840-9dc0-11d1-b245-5ffdce74fad2").unwrap(),
            event_type: "session.end".into(),
            event_created_at: chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            data: r#"{"a":1}"#.into(),
            webhook_url: "http://127.0.0.1:1/hook".into(),
            auth_header: Some("Bearer receiver-token".into()),
            secret: SigningSecret::from_stored("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            previous_secret: previous.map(|p| SigningSecret::from_stored(p.into())),
            attempts_made: 0,
            lease_token: Uuid::nil(),
            origin: crate::store::AttemptTrigger::Publish,
        }
    }

    #[test]
    fn body_has_the_contract_fields_in_order() {
        let body = delivery_body(&claimed(None));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"event_id":"0190f3c2-7a2b-7000-8000-000000000001","event_type":"session.end","project_id":"7d444840-9dc0-11d1-b245-5ffdce74fad2","created_at":"2026-01-02T03:04:05.000000Z","data":{"a":1}}"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["data"]["a"], 1);
    }

    #[test]
    fn headers_match_independent_vectors() {
        // Expected values computed with Python:
        //   import hmac, hashlib, base64
        //   body = b'{"a":1}'
        //   hmac.new(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", b"1700000000." + body, hashlib.sha256).hexdigest()
        //   base64.b64encode(hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        //       b"0190f3c2-7a2b-7000-8000-000000000001.1700000000." + body, hashlib.sha256).digest())
        let d = claimed(None);
        let headers = delivery_headers(&d, br#"{"a":1}"#, 1_700_000_000);
        let get = |name: &HeaderName| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            get(&SONZAI_SIGNATURE).unwrap(),
            format!("t=1700000000,v1={}", SONZAI_HEX)
        );
        assert_eq!(get(&WEBHOOK_ID).unwrap(), d.event_id.to_string());
        assert_eq!(get(&WEBHOOK_TIMESTAMP).unwrap(), "1700000000");
        assert_eq!(
            get(&WEBHOOK_SIGNATURE).unwrap(),
            format!("v1,{STANDARD_B64}")
        );
        assert_eq!(
            get(&http::header::AUTHORIZATION).unwrap(),
            "Bearer receiver-token"
        );
    }

    #[test]
    fn grace_period_signs_with_both_secrets_new_first() {
        let d = claimed(Some("whsec_c2Vjb25kLXNlY3JldC1zZWNvbmQtc2VjcmV0"));
        let headers = delivery_headers(&d, br#"{"a":1}"#, 1_700_000_000);
        let sonzai = headers
            .iter()
            .find(|(n, _)| n == SONZAI_SIGNATURE)
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned();
        let entries: Vec<&str> = sonzai.split(',').filter(|p| p.starts_with("v1=")).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], format!("v1={SONZAI_HEX}"));
        let standard = headers
            .iter()
            .find(|(n, _)| n == WEBHOOK_SIGNATURE)
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(standard.split(' ').count(), 2);
    }

    const SONZAI_HEX: &str = "f9f856e83ff2f7b8d8185d1a32960f75adf9ac6827be3a772aae6b4c710689bb";
    const STANDARD_B64: &str = "4LtCv7awecPeXXuuOA5O2DJBmWqom0q/fu7vsDe8XX0=";
}
