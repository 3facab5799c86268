//! Known-answer and behaviour tests for both signature schemes.
//!
//! Every expected signature below was computed outside this crate with Python's
//! standard library, so the tests pin the wire format rather than echo the
//! implementation back at itself:
//!
//! ```python
//! import base64, hashlib, hmac
//! A = "whsec_" + base64.b64encode(bytes(range(32))).decode()
//! B = "whsec_" + base64.b64encode(hashlib.sha256(b"sonzai-test-secret-b").digest()).decode()
//! def sonzai(secret, t, body):
//!     key = secret.removeprefix("whsec_").encode()          # the base64 TEXT is the key
//!     return hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
//! def std(secret, mid, t, body):
//!     key = base64.b64decode(secret.removeprefix("whsec_"))  # the DECODED bytes are the key
//!     mac = hmac.new(key, f"{mid}.{t}.".encode() + body, hashlib.sha256).digest()
//!     return "v1," + base64.b64encode(mac).decode()
//! J = b'{"type":"message.created","data":{"id":"evt_1"}}'
//! U = "héllo wörld ✓ 日本語 🚀".encode()
//! sonzai(A, 1700000000, J)  # and so on for each constant below
//! ```

use std::collections::HashMap;
use std::time::Duration;

use sonzai_webhooks_verify::{
    sign_sonzai, sign_standard, sonzai_signature_header, standard_signature_header, Verifier,
    VerifyError, DEFAULT_TOLERANCE,
};

const SECRET_A: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SECRET_B: &str = "whsec_cxdY+yjp+kQ+BxZ8Yu9abFgDb5DGzs4Fg6hf0lXS4ic=";

const T: i64 = 1_700_000_000;
const T_STR: &str = "1700000000";
const MSG_ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";

const BODY_JSON: &[u8] = br#"{"type":"message.created","data":{"id":"evt_1"}}"#;
/// Non-ASCII UTF-8 (2-, 3- and 4-byte sequences).
const BODY_UTF8: &str = "héllo wörld ✓ 日本語 🚀";
const BODY_EMPTY: &[u8] = b"";

// sonzai(secret, 1700000000, body)
const SONZAI_A_JSON: &str = "661b3b235da7dbe2e9bd4d9c2a6917faf15aa07a4121a1da7221dee385def99b";
const SONZAI_A_UTF8: &str = "0c36efa340038261cd1afaae445c48e9124cd867fdb64c88dfa576505a608ce8";
const SONZAI_A_EMPTY: &str = "40b1f7160c71e62ad214c0ab47250c26663c13e1e7d910d55f74237d92e8102a";
const SONZAI_B_JSON: &str = "0958484247849d2cdcbca6ca51625710a867353eca44ef470906e4ee197f8a98";
const SONZAI_B_UTF8: &str = "f71f5377ca5ccbfae66fadac0cf77e30bd2ad5c45c2532762cccb0e57a393877";
const SONZAI_B_EMPTY: &str = "174f1dc0e2c2931b3826a993a27a873f76763e28509efb74b2bc866368b5df15";

// std(secret, MSG_ID, 1700000000, body)
const STD_A_JSON: &str = "v1,ZDe9ZNq6GeJOOvhup9IvXNFRKyALjiWgJHDIVpKYM3w=";
const STD_A_UTF8: &str = "v1,2Hv3R3viy4yMXAjjGwKtFLFUE2rF8SE9zA9y9t8CqGI=";
const STD_A_EMPTY: &str = "v1,3/6GPvKtGOYJPo34gd2QyOdVTj9lYxINFNJfbFEJ2dw=";
const STD_B_JSON: &str = "v1,HGIAlC21HXv8WFTovDaTOWsmec/e/K+s3UM7WhQBI9U=";
const STD_B_UTF8: &str = "v1,+Ou8SFGO0x7pX28emcVObXrHN/scLR505klWUArJWgg=";
const STD_B_EMPTY: &str = "v1,nI3aE04D4RUhMtn/M3LISGlVr5G/B3X5cP7ku3nDPJI=";
/// Same message as `STD_A_JSON` but keyed with the secret text instead of its decoded
/// bytes, i.e. the wrong key derivation for this scheme.
const TEXT_KEYED_STD_A_JSON: &str = "v1,BI2XZisivgAn518DvDOT6ltmbtTYVWEbt7Ej9UATS/I=";

/// A moment comfortably inside the default tolerance of `T`.
const NOW: i64 = T + 42;

fn verifier_a() -> Verifier {
    Verifier::new(SECRET_A).expect("SECRET_A is valid")
}

fn sonzai_header(signatures: &[&str]) -> String {
    let mut header = format!("t={T_STR}");
    for signature in signatures {
        header.push_str(",v1=");
        header.push_str(signature);
    }
    header
}

// ---------------------------------------------------------------- signing

#[test]
fn sign_sonzai_matches_independent_vectors() {
    let cases: [(&str, &[u8], &str); 6] = [
        (SECRET_A, BODY_JSON, SONZAI_A_JSON),
        (SECRET_A, BODY_UTF8.as_bytes(), SONZAI_A_UTF8),
        (SECRET_A, BODY_EMPTY, SONZAI_A_EMPTY),
        (SECRET_B, BODY_JSON, SONZAI_B_JSON),
        (SECRET_B, BODY_UTF8.as_bytes(), SONZAI_B_UTF8),
        (SECRET_B, BODY_EMPTY, SONZAI_B_EMPTY),
    ];
    for (secret, body, expected) in cases {
        assert_eq!(sign_sonzai(secret, T, body), expected, "secret {secret}");
        // The prefix is optional when signing too.
        let bare = secret.strip_prefix("whsec_").unwrap();
        assert_eq!(sign_sonzai(bare, T, body), expected, "bare secret {bare}");
    }
}

#[test]
fn sonzai_header_lists_one_v1_per_secret_in_order() {
    assert_eq!(
        sonzai_signature_header(&[SECRET_A], T, BODY_JSON),
        format!("t=1700000000,v1={SONZAI_A_JSON}")
    );
    assert_eq!(
        sonzai_signature_header(&[SECRET_B, SECRET_A], T, BODY_JSON),
        format!("t=1700000000,v1={SONZAI_B_JSON},v1={SONZAI_A_JSON}")
    );
}

#[test]
fn sign_standard_matches_independent_vectors() {
    let cases: [(&str, &[u8], &str); 6] = [
        (SECRET_A, BODY_JSON, STD_A_JSON),
        (SECRET_A, BODY_UTF8.as_bytes(), STD_A_UTF8),
        (SECRET_A, BODY_EMPTY, STD_A_EMPTY),
        (SECRET_B, BODY_JSON, STD_B_JSON),
        (SECRET_B, BODY_UTF8.as_bytes(), STD_B_UTF8),
        (SECRET_B, BODY_EMPTY, STD_B_EMPTY),
    ];
    for (secret, body, expected) in cases {
        assert_eq!(sign_standard(secret, MSG_ID, T, body).unwrap(), expected);
    }
}

#[test]
fn sign_standard_matches_the_specification_example() {
    // Example published with the Standard Webhooks reference libraries, re-checked with
    // std("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
    //     1614265330, b'{"test": 2432232314}').
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body = br#"{"test": 2432232314}"#;
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body).unwrap(),
        expected
    );
    Verifier::new(secret)
        .unwrap()
        .verify_standard_at(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            expected,
            body,
            1_614_265_330,
        )
        .unwrap();
}

#[test]
fn standard_header_is_space_separated_in_order() {
    assert_eq!(
        standard_signature_header(&[SECRET_A, SECRET_B], MSG_ID, T, BODY_UTF8.as_bytes()).unwrap(),
        format!("{STD_A_UTF8} {STD_B_UTF8}")
    );
}

#[test]
fn standard_signing_rejects_secrets_that_are_not_base64() {
    assert_eq!(
        sign_standard("whsec_not base64!", MSG_ID, T, BODY_JSON),
        Err(VerifyError::InvalidSecret)
    );
    assert_eq!(
        standard_signature_header(&[SECRET_A, "whsec_%%%"], MSG_ID, T, BODY_JSON),
        Err(VerifyError::InvalidSecret)
    );
}

// ---------------------------------------------------------------- Sonzai-Signature

#[test]
fn sonzai_accepts_valid_signatures_for_all_bodies() {
    let verifier = verifier_a();
    verifier
        .verify_sonzai_at(&sonzai_header(&[SONZAI_A_JSON]), BODY_JSON, NOW)
        .unwrap();
    verifier
        .verify_sonzai_at(&sonzai_header(&[SONZAI_A_UTF8]), BODY_UTF8.as_bytes(), NOW)
        .unwrap();
    verifier
        .verify_sonzai_at(&sonzai_header(&[SONZAI_A_EMPTY]), BODY_EMPTY, NOW)
        .unwrap();
}

#[test]
fn sonzai_grace_period_accepts_when_only_the_second_entry_matches() {
    // Server rotated from A to B: new (B) first, old (A) second. A receiver still on A
    // must accept via the second entry, one already on B via the first.
    let header = sonzai_header(&[SONZAI_B_JSON, SONZAI_A_JSON]);
    verifier_a()
        .verify_sonzai_at(&header, BODY_JSON, NOW)
        .unwrap();
    Verifier::new(SECRET_B)
        .unwrap()
        .verify_sonzai_at(&header, BODY_JSON, NOW)
        .unwrap();
}

#[test]
fn sonzai_accepts_secret_without_prefix_and_with_whitespace() {
    let header = sonzai_header(&[SONZAI_A_JSON]);
    for secret in [
        SECRET_A.strip_prefix("whsec_").unwrap().to_owned(),
        format!("  {SECRET_A}\n"),
    ] {
        Verifier::new(&secret)
            .unwrap()
            .verify_sonzai_at(&header, BODY_JSON, NOW)
            .unwrap();
    }
}

#[test]
fn sonzai_rejects_tampered_body() {
    let header = sonzai_header(&[SONZAI_A_JSON]);
    let tampered = br#"{"type":"message.created","data":{"id":"evt_2"}}"#;
    assert_eq!(
        verifier_a().verify_sonzai_at(&header, tampered, NOW),
        Err(VerifyError::BadSignature)
    );
    // The timestamp is signed too.
    let moved = format!("t={},v1={SONZAI_A_JSON}", T + 1);
    assert_eq!(
        verifier_a().verify_sonzai_at(&moved, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sonzai_rejects_wrong_secret() {
    let header = sonzai_header(&[SONZAI_B_JSON]);
    assert_eq!(
        verifier_a().verify_sonzai_at(&header, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sonzai_key_is_the_secret_text_not_its_decoded_bytes() {
    // Keying with the decoded bytes (the Standard Webhooks derivation) must not verify:
    // hmac.new(bytes(range(32)), b"1700000000." + J, hashlib.sha256).hexdigest()
    let decoded_key_sig = "85836e36f0f9e365d1ba0ba3299ce9584047104733624827f3d54923618fcb48";
    assert_ne!(decoded_key_sig, SONZAI_A_JSON);
    assert_eq!(
        verifier_a().verify_sonzai_at(&sonzai_header(&[decoded_key_sig]), BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sonzai_rejects_expired_and_future_timestamps() {
    let header = sonzai_header(&[SONZAI_A_JSON]);
    let verifier = verifier_a();
    let limit = i64::try_from(DEFAULT_TOLERANCE.as_secs()).unwrap();
    assert_eq!(limit, 300);

    // Exactly at the edge in either direction is still fine.
    verifier
        .verify_sonzai_at(&header, BODY_JSON, T + limit)
        .unwrap();
    verifier
        .verify_sonzai_at(&header, BODY_JSON, T - limit)
        .unwrap();

    assert_eq!(
        verifier.verify_sonzai_at(&header, BODY_JSON, T + limit + 1),
        Err(VerifyError::TimestampOutOfTolerance {
            timestamp: T,
            now: T + 301,
            tolerance: DEFAULT_TOLERANCE,
        })
    );
    assert_eq!(
        verifier.verify_sonzai_at(&header, BODY_JSON, T - limit - 1),
        Err(VerifyError::TimestampOutOfTolerance {
            timestamp: T,
            now: T - 301,
            tolerance: DEFAULT_TOLERANCE,
        })
    );
}

#[test]
fn custom_tolerance_is_honoured() {
    let header = sonzai_header(&[SONZAI_A_JSON]);
    let verifier = verifier_a().with_tolerance(Duration::from_secs(10));
    assert_eq!(verifier.tolerance(), Duration::from_secs(10));
    verifier
        .verify_sonzai_at(&header, BODY_JSON, T + 10)
        .unwrap();
    assert!(matches!(
        verifier.verify_sonzai_at(&header, BODY_JSON, T + 11),
        Err(VerifyError::TimestampOutOfTolerance { .. })
    ));
    // Real clock: T is long past.
    assert!(matches!(
        verifier.verify_sonzai(&header, BODY_JSON),
        Err(VerifyError::TimestampOutOfTolerance { .. })
    ));
}

#[test]
fn bad_signature_wins_over_stale_timestamp() {
    // A forged request must not learn anything about the tolerance window.
    let header = sonzai_header(&[SONZAI_B_JSON]);
    assert_eq!(
        verifier_a().verify_sonzai_at(&header, BODY_JSON, T + 10_000),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sonzai_ignores_unknown_keys_and_garbled_entries() {
    let header = format!("t={T_STR},v0=deadbeef,v1=not-hex,v1=abcd,v2=whatever,v1={SONZAI_A_JSON}");
    verifier_a()
        .verify_sonzai_at(&header, BODY_JSON, NOW)
        .unwrap();
    // Keys in any order and optional spaces after commas.
    let reordered = format!("v1={SONZAI_B_JSON}, v1={SONZAI_A_JSON}, t={T_STR}");
    verifier_a()
        .verify_sonzai_at(&reordered, BODY_JSON, NOW)
        .unwrap();
    // Only garbage: no match.
    let garbage = format!("t={T_STR},v1=zz,v1={}", &SONZAI_A_JSON[..62]);
    assert_eq!(
        verifier_a().verify_sonzai_at(&garbage, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sonzai_rejects_malformed_headers() {
    let verifier = verifier_a();
    let sig = SONZAI_A_JSON;
    let cases = [
        (String::new(), "empty Sonzai-Signature"),
        ("   ".to_owned(), "empty Sonzai-Signature"),
        (format!("v1={sig}"), "no t in Sonzai-Signature"),
        (format!("t=abc,v1={sig}"), "timestamp is not unix seconds"),
        (format!("t=,v1={sig}"), "timestamp is not unix seconds"),
        (
            format!("t=-1700000000,v1={sig}"),
            "timestamp is not unix seconds",
        ),
        (
            format!("t=+1700000000,v1={sig}"),
            "timestamp is not unix seconds",
        ),
        (
            format!("t=99999999999999999999,v1={sig}"),
            "timestamp is out of range",
        ),
        (format!("t={T_STR}"), "no v1 in Sonzai-Signature"),
        (format!("t={T_STR},v0={sig}"), "no v1 in Sonzai-Signature"),
        (
            format!("t={T_STR},t={T_STR},v1={sig}"),
            "more than one t in Sonzai-Signature",
        ),
        (
            format!("t={T_STR},{sig}"),
            "Sonzai-Signature element is not `key=value`",
        ),
        (
            format!("t={T_STR},v1={sig},"),
            "Sonzai-Signature element is not `key=value`",
        ),
    ];
    for (header, reason) in cases {
        assert_eq!(
            verifier.verify_sonzai_at(&header, BODY_JSON, NOW),
            Err(VerifyError::BadFormat(reason)),
            "header {header:?}"
        );
    }
}

// ---------------------------------------------------------------- Standard Webhooks

#[test]
fn standard_accepts_valid_signatures_for_all_bodies() {
    let verifier = verifier_a();
    for (body, sig) in [
        (BODY_JSON, STD_A_JSON),
        (BODY_UTF8.as_bytes(), STD_A_UTF8),
        (BODY_EMPTY, STD_A_EMPTY),
    ] {
        verifier
            .verify_standard_at(MSG_ID, T_STR, sig, body, NOW)
            .unwrap();
    }
}

#[test]
fn standard_rejects_invalid_signatures() {
    let verifier = verifier_a();
    // Wrong secret.
    assert_eq!(
        verifier.verify_standard_at(MSG_ID, T_STR, STD_B_JSON, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
    // Tampered body, id or timestamp.
    assert_eq!(
        verifier.verify_standard_at(MSG_ID, T_STR, STD_A_JSON, b"{}", NOW),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verifier.verify_standard_at("msg_other", T_STR, STD_A_JSON, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verifier.verify_standard_at(MSG_ID, "1700000001", STD_A_JSON, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
    // Not base64, or base64 of the wrong length.
    for sig in [
        "v1,@@@@",
        "v1,",
        "v1,AAAA",
        "v1,ZDe9ZNq6GeJOOvhup9IvXNFRKyALjiWgJHDIVpKYM3w",
    ] {
        assert_eq!(
            verifier.verify_standard_at(MSG_ID, T_STR, sig, BODY_JSON, NOW),
            Err(VerifyError::BadSignature),
            "signature {sig:?}"
        );
    }
    // Keying with the secret text (the Sonzai derivation) must not verify:
    // "v1," + base64.b64encode(hmac.new(A.removeprefix("whsec_").encode(),
    //     f"{MSG_ID}.1700000000.".encode() + J, hashlib.sha256).digest()).decode()
    assert_eq!(
        verifier.verify_standard_at(MSG_ID, T_STR, TEXT_KEYED_STD_A_JSON, BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn standard_accepts_any_of_multiple_signatures() {
    let verifier = verifier_a();
    for header in [
        format!("{STD_B_JSON} {STD_A_JSON}"),
        format!("{STD_A_JSON} {STD_B_JSON}"),
        format!("v1a,c29tZXRoaW5nIGFzeW1tZXRyaWM= v1,@@@ {STD_A_JSON}"),
        format!("  {STD_B_JSON}   {STD_A_JSON}  "),
    ] {
        verifier
            .verify_standard_at(MSG_ID, T_STR, &header, BODY_JSON, NOW)
            .unwrap_or_else(|err| panic!("{header:?}: {err}"));
    }
    assert_eq!(
        verifier.verify_standard_at(
            MSG_ID,
            T_STR,
            &format!("{STD_B_JSON} {STD_B_UTF8}"),
            BODY_JSON,
            NOW
        ),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn standard_rejects_malformed_headers() {
    let verifier = verifier_a();
    let cases = [
        ("", T_STR, STD_A_JSON, "empty webhook-id"),
        (MSG_ID, "", STD_A_JSON, "timestamp is not unix seconds"),
        (MSG_ID, "soon", STD_A_JSON, "timestamp is not unix seconds"),
        (
            MSG_ID,
            " 1700000000",
            STD_A_JSON,
            "timestamp is not unix seconds",
        ),
        (MSG_ID, T_STR, "", "no v1 entry in webhook-signature"),
        (
            MSG_ID,
            T_STR,
            "v1a,AAAA v2,AAAA",
            "no v1 entry in webhook-signature",
        ),
        (
            MSG_ID,
            T_STR,
            "ZDe9ZNq6GeJOOvhup9IvXNFRKyALjiWgJHDIVpKYM3w=",
            "webhook-signature entry is not `version,signature`",
        ),
    ];
    for (id, timestamp, signature, reason) in cases {
        assert_eq!(
            verifier.verify_standard_at(id, timestamp, signature, BODY_JSON, NOW),
            Err(VerifyError::BadFormat(reason)),
            "{id:?} {timestamp:?} {signature:?}"
        );
    }
}

#[test]
fn standard_rejects_timestamps_outside_tolerance() {
    let verifier = verifier_a();
    for now in [T + 301, T - 301] {
        assert_eq!(
            verifier.verify_standard_at(MSG_ID, T_STR, STD_A_JSON, BODY_JSON, now),
            Err(VerifyError::TimestampOutOfTolerance {
                timestamp: T,
                now,
                tolerance: DEFAULT_TOLERANCE,
            })
        );
    }
    assert!(matches!(
        verifier.verify_standard(MSG_ID, T_STR, STD_A_JSON, BODY_JSON),
        Err(VerifyError::TimestampOutOfTolerance { .. })
    ));
}

// ---------------------------------------------------------------- secrets

#[test]
fn invalid_secrets_are_rejected_up_front() {
    for secret in [
        "whsec_not base64!",
        "whsec_",
        "",
        "   ",
        "whsec_AAECAw",
        "whsec_%%%%",
    ] {
        assert_eq!(
            Verifier::new(secret).map(|_| ()),
            Err(VerifyError::InvalidSecret),
            "secret {secret:?}"
        );
    }
}

#[test]
fn debug_output_hides_the_secret() {
    let debug = format!("{:?}", verifier_a());
    assert!(debug.contains("whsec_***"), "{debug}");
    assert!(!debug.contains("AAECAw"), "{debug}");
    let pretty = format!("{:#?}", verifier_a());
    assert!(!pretty.contains("AAECAw"), "{pretty}");
}

#[test]
fn errors_display_without_request_contents() {
    let verifier = verifier_a();
    let hostile = "t=<script>,v1=<script>";
    let err = verifier
        .verify_sonzai_at(hostile, BODY_JSON, NOW)
        .unwrap_err();
    assert!(!err.to_string().contains("<script>"), "{err}");

    assert_eq!(
        VerifyError::MissingHeader("webhook-id").to_string(),
        "missing `webhook-id` header"
    );
    let expired = VerifyError::TimestampOutOfTolerance {
        timestamp: T,
        now: T + 301,
        tolerance: DEFAULT_TOLERANCE,
    };
    assert_eq!(
        expired.to_string(),
        "timestamp 1700000000 is 301s away from the current time 1700000301, more than the allowed 300s"
    );
    let as_dyn: &dyn std::error::Error = &VerifyError::BadSignature;
    assert_eq!(as_dyn.to_string(), "no signature matches the payload");
}

// ---------------------------------------------------------------- header lookup

fn lookup<'h>(headers: &'h HashMap<String, String>) -> impl Fn(&str) -> Option<&'h str> + 'h {
    move |name| headers.get(name).map(String::as_str)
}

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn verify_prefers_sonzai_signature_and_falls_back_to_standard() {
    let verifier = verifier_a();
    let sonzai = sonzai_header(&[SONZAI_A_JSON]);

    let only_sonzai = headers(&[("sonzai-signature", &sonzai)]);
    verifier
        .verify_at(lookup(&only_sonzai), BODY_JSON, NOW)
        .unwrap();

    let only_standard = headers(&[
        ("webhook-id", MSG_ID),
        ("webhook-timestamp", T_STR),
        ("webhook-signature", STD_A_JSON),
    ]);
    verifier
        .verify_at(lookup(&only_standard), BODY_JSON, NOW)
        .unwrap();

    // When both are present the Sonzai header decides, even if it is the bad one.
    let bad_sonzai = sonzai_header(&[SONZAI_B_JSON]);
    let both = headers(&[
        ("sonzai-signature", &bad_sonzai),
        ("webhook-id", MSG_ID),
        ("webhook-timestamp", T_STR),
        ("webhook-signature", STD_A_JSON),
    ]);
    assert_eq!(
        verifier.verify_at(lookup(&both), BODY_JSON, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn verify_reports_missing_headers() {
    let verifier = verifier_a();
    assert_eq!(
        verifier.verify_at(lookup(&HashMap::new()), BODY_JSON, NOW),
        Err(VerifyError::MissingHeader("sonzai-signature"))
    );
    assert_eq!(
        verifier.verify(lookup(&HashMap::new()), BODY_JSON),
        Err(VerifyError::MissingHeader("sonzai-signature"))
    );
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("webhook-timestamp", T_STR),
                ("webhook-signature", STD_A_JSON),
            ],
            "webhook-id",
        ),
        (
            &[("webhook-id", MSG_ID), ("webhook-signature", STD_A_JSON)],
            "webhook-timestamp",
        ),
        (
            &[("webhook-id", MSG_ID), ("webhook-timestamp", T_STR)],
            "webhook-signature",
        ),
    ];
    for (pairs, missing) in cases {
        assert_eq!(
            verifier.verify_at(lookup(&headers(pairs)), BODY_JSON, NOW),
            Err(VerifyError::MissingHeader(missing))
        );
    }
}

#[test]
fn round_trip_with_the_current_clock() {
    let verifier = verifier_a();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let header = sonzai_signature_header(&[SECRET_B, SECRET_A], now, BODY_UTF8.as_bytes());
    verifier
        .verify_sonzai(&header, BODY_UTF8.as_bytes())
        .unwrap();
    let sig = standard_signature_header(&[SECRET_A], MSG_ID, now, BODY_EMPTY).unwrap();
    verifier
        .verify_standard(MSG_ID, &now.to_string(), &sig, BODY_EMPTY)
        .unwrap();
}

#[cfg(feature = "http")]
#[test]
fn verify_headers_reads_an_http_header_map() {
    use http::{HeaderMap, HeaderValue};

    let verifier = verifier_a();
    let mut map = HeaderMap::new();
    // Mixed case on the wire is fine: header names are case-insensitive.
    map.insert(
        "Sonzai-Signature",
        HeaderValue::from_str(&sonzai_header(&[SONZAI_A_JSON])).unwrap(),
    );
    verifier.verify_headers_at(&map, BODY_JSON, NOW).unwrap();
    assert_eq!(
        verifier.verify_headers_at(&map, b"other", NOW),
        Err(VerifyError::BadSignature)
    );

    let mut standard = HeaderMap::new();
    standard.insert("Webhook-Id", HeaderValue::from_static(MSG_ID));
    standard.insert("Webhook-Timestamp", HeaderValue::from_static(T_STR));
    standard.insert("Webhook-Signature", HeaderValue::from_static(STD_A_JSON));
    verifier
        .verify_headers_at(&standard, BODY_JSON, NOW)
        .unwrap();

    let mut opaque = HeaderMap::new();
    opaque.insert(
        "sonzai-signature",
        HeaderValue::from_bytes(b"t=1,v1=\xff").unwrap(),
    );
    assert_eq!(
        verifier.verify_headers_at(&opaque, BODY_JSON, NOW),
        Err(VerifyError::BadFormat(
            "signature header is not visible ASCII"
        ))
    );
    assert_eq!(
        verifier.verify_headers(&HeaderMap::new(), BODY_JSON),
        Err(VerifyError::MissingHeader("sonzai-signature"))
    );
}
