//! API keys: generation, parsing of the `Authorization` header, and authentication.
//!
//! A key looks like `sk_<lookup_id>_<secret>`: `lookup_id` is 12 lowercase alphanumeric
//! characters that find the key's row, `secret` is 40 base62 characters (about 238 bits)
//! from the operating system's CSPRNG. Only the lookup id and the SHA-256 of the secret
//! are stored, so a leaked database does not leak usable keys. A fast hash is the right
//! tool here: the secret is random and far too long to brute-force, unlike a password,
//! and slow password hashes would put a CPU-heavy step on every API request.
//!
//! Hash comparison is constant-time, and the secret is hashed before the lookup
//! whether or not the lookup id exists, so response timing does not tell a caller
//! which lookup ids are valid beyond what the database round trip itself reveals.
//!
//! A key found in the database is trusted for up to a second without asking again
//! ([`KEY_CACHE_TTL`], [`CachedKeys`]), so a busy client costs one lookup per second
//! rather than one per request. The price is that revocation is eventually consistent
//! across processes: revoking through the same store drops the cached entry at once,
//! but a key revoked from the CLI or another server keeps working on a server for up
//! to that second. The secret is still hashed and compared on every request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use rand::distributions::{Alphanumeric, Distribution};
use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::store::{
    ApiKeyRecord, AttemptList, AttemptPage, ClaimBatch, DeliveryOutcome, DisablePolicy, KeyOwner,
    Listing, Project, PublishEvent, Published, PurgeStep, QueueStats, Recorded, RecoverOutcome,
    RecoverRequest, Recovery, RecoveryClaim, RecoveryProgress, RecoveryStep, ResendOutcome,
    RetentionLock, RetentionTable, SendSlots, SigningSecret, StoreError, StoreResult, Tenant,
    UpsertOutcome, UpsertWebhook, Webhook, WebhookStore,
};

/// Every key starts with this, so secret scanners and humans recognise one.
pub(crate) const KEY_PREFIX: &str = "sk_";
/// Length of the public lookup id.
pub(crate) const LOOKUP_ID_LEN: usize = 12;
/// Length of the secret part.
pub(crate) const SECRET_LEN: usize = 40;

const LOOKUP_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const KEY_LEN: usize = KEY_PREFIX.len() + LOOKUP_ID_LEN + 1 + SECRET_LEN;
/// Compared against when the lookup id is unknown, so that path does the same work as
/// a real comparison. Its value is irrelevant (no secret hashes to it in practice).
const DUMMY_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A full API key. Only its owner sees it, once, when it is created; `Debug` shows
/// just the lookup id so that the key never ends up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The whole key, to hand to its owner or to put in an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The public lookup id, the part that is safe to show in listings and logs.
    pub(crate) fn lookup_id(&self) -> &str {
        self.0
            .get(KEY_PREFIX.len()..KEY_PREFIX.len() + LOOKUP_ID_LEN)
            .unwrap_or_default()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}_***", self.lookup_id())
    }
}

/// Who is calling, once a key has been verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub key_id: Uuid,
}

/// Why a request was not authenticated. Every credential variant becomes the same 401
/// for the caller; they are distinct only so that logs can tell what happened.
/// [`AuthError::Store`] is not the caller's fault and should become a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header")]
    MissingHeader,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("unknown API key")]
    UnknownKey,
    #[error("API key revoked")]
    Revoked,
    #[error("API key secret does not match")]
    SecretMismatch,
    #[error("cannot look up API key: {0}")]
    Store(#[from] StoreError),
}

impl AuthError {
    /// True when the credentials are at fault (answer 401); false when the lookup
    /// itself failed (answer 5xx, the caller may well be entitled).
    pub fn is_unauthorized(&self) -> bool {
        !matches!(self, AuthError::Store(_))
    }
}

/// A new key for `project_id` and the record to store for it. The key is returned
/// once here and cannot be recovered from the record.
pub(crate) fn generate_api_key(project_id: Uuid) -> (ApiKey, ApiKeyRecord) {
    let mut rng = OsRng;
    let lookup_id: String = (0..LOOKUP_ID_LEN)
        .map(|_| char::from(LOOKUP_ALPHABET[rng.gen_range(0..LOOKUP_ALPHABET.len())]))
        .collect();
    let secret: String = Alphanumeric
        .sample_iter(&mut rng)
        .take(SECRET_LEN)
        .map(char::from)
        .collect();
    let key = ApiKey(format!("{KEY_PREFIX}{lookup_id}_{secret}"));
    let record = ApiKeyRecord {
        id: Uuid::now_v7(),
        project_id,
        secret_hash: hash_secret(&secret),
        lookup_id,
        // Microseconds are what both databases keep; truncating here makes the
        // record read back equal to the one written.
        created_at: Utc::now().trunc_subsecs(6),
        revoked_at: None,
    };
    (key, record)
}

/// Generates a key for `project_id` and stores it. A lookup id collision (about one
/// in 10^18 per pair of keys) is answered by drawing a new key, a bounded number of
/// times.
pub async fn issue_api_key(
    store: &dyn WebhookStore,
    project_id: Uuid,
) -> Result<(ApiKey, ApiKeyRecord), StoreError> {
    const ATTEMPTS: usize = 3;
    let mut last_conflict = None;
    for _ in 0..ATTEMPTS {
        let (key, record) = generate_api_key(project_id);
        match store.insert_api_key(&record).await {
            Ok(()) => return Ok((key, record)),
            Err(StoreError::Conflict(reason)) => last_conflict = Some(reason),
            Err(other) => return Err(other),
        }
    }
    Err(StoreError::Conflict(last_conflict.unwrap_or_default()))
}

/// Hex SHA-256 of a key's secret part: what the store keeps.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two hex hashes; unequal lengths are simply unequal.
fn hashes_match(candidate: &str, stored: &str) -> bool {
    candidate.as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Splits `Bearer sk_<lookup_id>_<secret>` into lookup id and secret. The scheme is
/// case-insensitive (RFC 9110); anything else about the value must be exact.
pub(crate) fn parse_bearer(header_value: &str) -> Result<(&str, &str), AuthError> {
    let value = header_value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(AuthError::Malformed("empty Authorization header"));
    }
    let (scheme, credentials) = value
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected `Bearer <API key>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("authorization scheme is not Bearer"));
    }
    split_key(credentials.trim_start_matches(' '))
}

/// Checks the key format and returns (lookup id, secret).
fn split_key(key: &str) -> Result<(&str, &str), AuthError> {
    let rest = key
        .strip_prefix(KEY_PREFIX)
        .ok_or(AuthError::Malformed("API key does not start with sk_"))?;
    if key.len() != KEY_LEN {
        return Err(AuthError::Malformed("API key has the wrong length"));
    }
    // Length is checked and the prefix is ASCII, so byte indexing below stays on
    // character boundaries only if the rest is ASCII too; check that first.
    if !rest.is_ascii() {
        return Err(AuthError::Malformed(
            "API key contains non-ASCII characters",
        ));
    }
    let (lookup_id, tail) = rest.split_at(LOOKUP_ID_LEN);
    let secret = tail.strip_prefix('_').ok_or(AuthError::Malformed(
        "API key lacks the separator after the lookup id",
    ))?;
    if !lookup_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(AuthError::Malformed(
            "API key lookup id is not lowercase alphanumeric",
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AuthError::Malformed("API key secret is not alphanumeric"));
    }
    Ok((lookup_id, secret))
}

/// Resolves the `Authorization` header of a request to the key's tenant and project.
pub async fn authenticate(
    store: &dyn WebhookStore,
    authorization: Option<&str>,
) -> Result<Caller, AuthError> {
    let header = authorization.ok_or(AuthError::MissingHeader)?;
    let (lookup_id, secret) = parse_bearer(header)?;
    // Hash before looking up so the unknown-id path costs the same CPU as the others.
    let candidate = hash_secret(secret);
    let Some(owner) = store.find_api_key(lookup_id).await? else {
        std::hint::black_box(hashes_match(&candidate, DUMMY_HASH));
        return Err(AuthError::UnknownKey);
    };
    // The secret is checked before revocation so that only the key's holder can learn
    // that it was revoked.
    if !hashes_match(&candidate, &owner.secret_hash) {
        return Err(AuthError::SecretMismatch);
    }
    if owner.revoked {
        return Err(AuthError::Revoked);
    }
    Ok(Caller {
        tenant_id: owner.tenant_id,
        project_id: owner.project_id,
        key_id: owner.key_id,
    })
}

/// How long a found API key is trusted without asking the database again.
pub(crate) const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Recently found API keys, so authenticating a request does not cost a query every
/// time. An entry lives at most [`KEY_CACHE_TTL`]; revoking a key through the same
/// [`CachedKeys`] drops its entry at once, so only a revocation made by another
/// process (the CLI, another server) can take up to that long to apply. Only keys that
/// exist are cached, so the cache is bounded by the number of keys, not by what
/// callers send; it is cleared if it ever grows past [`KeyCache::MAX_ENTRIES`].
#[derive(Default)]
struct KeyCache {
    entries: Mutex<HashMap<String, (KeyOwner, Instant)>>,
}

impl KeyCache {
    const MAX_ENTRIES: usize = 100_000;

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (KeyOwner, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, lookup_id: &str) -> Option<KeyOwner> {
        let entries = self.lock();
        let (owner, at) = entries.get(lookup_id)?;
        (at.elapsed() < KEY_CACHE_TTL).then(|| owner.clone())
    }

    fn put(&self, lookup_id: &str, owner: &KeyOwner) {
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(lookup_id.to_owned(), (owner.clone(), Instant::now()));
    }

    fn forget(&self, key_id: Uuid) {
        self.lock().retain(|_, (owner, _)| owner.key_id != key_id);
    }
}

/// A store whose [`WebhookStore::find_api_key`] answers from a [`KeyCache`] and whose
/// [`WebhookStore::revoke_api_key`] drops the revoked key from it; everything else
/// goes straight to the wrapped store.
pub(crate) struct CachedKeys {
    store: Arc<dyn WebhookStore>,
    keys: KeyCache,
}

impl CachedKeys {
    pub(crate) fn new(store: Arc<dyn WebhookStore>) -> Self {
        Self {
            store,
            keys: KeyCache::default(),
        }
    }
}

#[async_trait::async_trait]
impl WebhookStore for CachedKeys {
    async fn find_api_key(&self, lookup_id: &str) -> StoreResult<Option<KeyOwner>> {
        if let Some(owner) = self.keys.get(lookup_id) {
            return Ok(Some(owner));
        }
        let found = self.store.find_api_key(lookup_id).await?;
        if let Some(owner) = &found {
            self.keys.put(lookup_id, owner);
        }
        Ok(found)
    }
    async fn revoke_api_key(&self, key_id: Uuid) -> StoreResult<()> {
        self.store.revoke_api_key(key_id).await?;
        self.keys.forget(key_id);
        Ok(())
    }

    // The rest only passes through.
    fn portal(&self) -> &dyn crate::store::portal::PortalStore {
        self.store.portal()
    }
    async fn create_tenant(&self, name: &str) -> StoreResult<Tenant> {
        self.store.create_tenant(name).await
    }
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.store.list_tenants().await
    }
    async fn create_project(&self, tenant_id: Uuid, name: &str) -> StoreResult<Project> {
        self.store.create_project(tenant_id, name).await
    }
    async fn list_projects(&self, tenant_id: Option<Uuid>) -> StoreResult<Vec<Project>> {
        self.store.list_projects(tenant_id).await
    }
    async fn get_project(&self, project_id: Uuid) -> StoreResult<Option<Project>> {
        self.store.get_project(project_id).await
    }
    async fn insert_api_key(&self, record: &ApiKeyRecord) -> StoreResult<()> {
        self.store.insert_api_key(record).await
    }
    async fn list_api_keys(&self, project_id: Option<Uuid>) -> StoreResult<Vec<ApiKeyRecord>> {
        self.store.list_api_keys(project_id).await
    }
    async fn is_empty(&self) -> StoreResult<bool> {
        self.store.is_empty().await
    }
    async fn upsert_webhook(&self, input: UpsertWebhook<'_>) -> StoreResult<UpsertOutcome> {
        self.store.upsert_webhook(input).await
    }
    async fn list_webhooks(&self, project_id: Uuid) -> StoreResult<Listing> {
        self.store.list_webhooks(project_id).await
    }
    async fn get_webhook(
        &self,
        project_id: Uuid,
        event_type: &str,
    ) -> StoreResult<Option<Webhook>> {
        self.store.get_webhook(project_id, event_type).await
    }
    async fn delete_webhook(&self, project_id: Uuid, event_type: &str) -> StoreResult<bool> {
        self.store.delete_webhook(project_id, event_type).await
    }
    async fn rotate_secret(
        &self,
        project_id: Uuid,
        event_type: &str,
        new_secret: &SigningSecret,
        grace: Duration,
    ) -> StoreResult<bool> {
        let store = &self.store;
        store
            .rotate_secret(project_id, event_type, new_secret, grace)
            .await
    }
    async fn list_attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        page: AttemptPage,
        max_bytes: usize,
    ) -> StoreResult<AttemptList> {
        let store = &self.store;
        store
            .list_attempts(project_id, event_type, page, max_bytes)
            .await
    }
    async fn publish_event(&self, event: PublishEvent<'_>) -> StoreResult<Published> {
        self.store.publish_event(event).await
    }
    async fn resend_event(
        &self,
        project_id: Uuid,
        event_type: &str,
        event_id: Uuid,
    ) -> StoreResult<ResendOutcome> {
        self.store
            .resend_event(project_id, event_type, event_id)
            .await
    }
    async fn start_recovery(&self, request: RecoverRequest<'_>) -> StoreResult<RecoverOutcome> {
        self.store.start_recovery(request).await
    }
    async fn get_recovery(
        &self,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> StoreResult<Option<Recovery>> {
        self.store.get_recovery(project_id, recovery_id).await
    }
    async fn cancel_recovery(&self, project_id: Uuid, recovery_id: Uuid) -> StoreResult<bool> {
        self.store.cancel_recovery(project_id, recovery_id).await
    }
    async fn claim_recoveries(
        &self,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<RecoveryClaim>> {
        self.store.claim_recoveries(max, lease).await
    }
    async fn advance_recovery(
        &self,
        claim: RecoveryClaim,
        step: RecoveryStep,
    ) -> StoreResult<RecoveryProgress> {
        self.store.advance_recovery(claim, step).await
    }
    async fn release_recovery(&self, claim: RecoveryClaim) -> StoreResult<()> {
        self.store.release_recovery(claim).await
    }
    async fn claim_batch(
        &self,
        max: usize,
        lease: Duration,
        skip: &[Uuid],
    ) -> StoreResult<ClaimBatch> {
        self.store.claim_batch(max, lease, skip).await
    }
    async fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> StoreResult<Recorded> {
        self.store.record_outcomes(outcomes, policy).await
    }
    async fn retention_lock(&self) -> StoreResult<Option<RetentionLock>> {
        self.store.retention_lock().await
    }
    async fn take_send_slots(
        &self,
        webhook_id: Uuid,
        per_second: i64,
        wanted: usize,
        horizon: std::time::Duration,
    ) -> StoreResult<SendSlots> {
        self.store
            .take_send_slots(webhook_id, per_second, wanted, horizon)
            .await
    }
    async fn release_each(
        &self,
        claims: &[(Uuid, Uuid, chrono::DateTime<Utc>)],
    ) -> StoreResult<()> {
        self.store.release_each(claims).await
    }
    async fn purge(
        &self,
        table: RetentionTable,
        horizon: chrono::DateTime<Utc>,
        after: Uuid,
        batch: usize,
    ) -> StoreResult<PurgeStep> {
        self.store.purge(table, horizon, after, batch).await
    }
    async fn release(
        &self,
        claims: &[(Uuid, Uuid)],
        due: chrono::DateTime<Utc>,
    ) -> StoreResult<()> {
        self.store.release(claims, due).await
    }
    async fn next_due(&self) -> StoreResult<Option<chrono::DateTime<Utc>>> {
        self.store.next_due().await
    }
    async fn wake_held(&self, thorough: bool) -> StoreResult<u64> {
        self.store.wake_held(thorough).await
    }
    async fn queue_stats(&self) -> StoreResult<QueueStats> {
        self.store.queue_stats().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.store.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key_id: Uuid) -> KeyOwner {
        KeyOwner {
            key_id,
            tenant_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            secret_hash: "00".repeat(32),
            revoked: false,
        }
    }

    #[test]
    fn entries_expire_and_revocation_forgets_at_once() {
        let cache = KeyCache::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        cache.put("aaaaaaaaaaaa", &owner(a));
        cache.put("bbbbbbbbbbbb", &owner(b));
        assert_eq!(cache.get("aaaaaaaaaaaa").map(|o| o.key_id), Some(a));
        assert!(cache.get("cccccccccccc").is_none());
        cache.forget(a);
        assert!(cache.get("aaaaaaaaaaaa").is_none());
        assert_eq!(cache.get("bbbbbbbbbbbb").map(|o| o.key_id), Some(b));
        // Age the entry past the TTL.
        cache.lock().get_mut("bbbbbbbbbbbb").unwrap().1 -= KEY_CACHE_TTL;
        assert!(cache.get("bbbbbbbbbbbb").is_none());
    }

    fn sample_key() -> String {
        format!("sk_abc123def456_{}", "A1b2C3d4E5".repeat(4))
    }

    #[test]
    fn generated_keys_have_the_documented_format() {
        let project = Uuid::new_v4();
        let (key, record) = generate_api_key(project);
        let text = key.expose();
        assert_eq!(text.len(), 3 + 12 + 1 + 40);
        assert!(text.starts_with("sk_"));
        assert_eq!(&text[15..16], "_");
        let (lookup, secret) = split_key(text).unwrap();
        assert!(lookup
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(record.lookup_id, lookup);
        assert_eq!(key.lookup_id(), lookup);
        assert_eq!(record.project_id, project);
        assert_eq!(record.revoked_at, None);
        assert_eq!(record.created_at.timestamp_subsec_nanos() % 1000, 0);
        // The record holds the hash of the secret and nothing that reveals it.
        assert_eq!(record.secret_hash, hash_secret(secret));
        assert_eq!(record.secret_hash.len(), 64);
        assert!(!format!("{record:?}").contains(secret));
    }

    #[test]
    fn generated_keys_differ_and_use_the_whole_alphabet() {
        let keys: Vec<ApiKey> = (0..200).map(|_| generate_api_key(Uuid::nil()).0).collect();
        let mut unique: Vec<&str> = keys.iter().map(ApiKey::expose).collect();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
        // 200 keys x 40 characters: every class of the base62 alphabet shows up.
        let secrets: String = keys.iter().map(|k| &k.expose()[16..]).collect();
        assert!(secrets.bytes().any(|b| b.is_ascii_uppercase()));
        assert!(secrets.bytes().any(|b| b.is_ascii_lowercase()));
        assert!(secrets.bytes().any(|b| b.is_ascii_digit()));
    }

    #[test]
    fn hash_is_hex_sha256() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKey(sample_key());
        assert_eq!(format!("{key:?}"), "sk_abc123def456_***");
        assert_eq!(format!("{:?}", Some(&key)), "Some(sk_abc123def456_***)");
        let (generated, _) = generate_api_key(Uuid::nil());
        let debug = format!("{generated:?}");
        assert!(!debug.contains(&generated.expose()[16..]), "{debug}");
    }

    #[test]
    fn bearer_header_is_parsed() {
        let key = sample_key();
        let header = format!("Bearer {key}");
        let (lookup, secret) = parse_bearer(&header).unwrap();
        assert_eq!(lookup, "abc123def456");
        assert_eq!(secret, "A1b2C3d4E5".repeat(4));
        for header in [
            format!("bearer {key}"),
            format!("BEARER {key}"),
            format!("Bearer   {key}"),
            format!(" Bearer {key} "),
        ] {
            assert_eq!(
                parse_bearer(&header).unwrap().0,
                "abc123def456",
                "{header:?}"
            );
        }
    }

    #[test]
    fn malformed_bearer_headers_are_refused() {
        let key = sample_key();
        let secret = "A1b2C3d4E5".repeat(4);
        let cases = [
            String::new(),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            key.clone(),
            format!("Basic {key}"),
            format!("Bearer{key}"),
            format!("Bearer {key} extra"),
            format!("Bearer {key}x"),
            format!("Bearer {}", &key[..key.len() - 1]),
            format!("Bearer pk_abc123def456_{secret}"),
            format!("Bearer sk_ABC123def456_{secret}"),
            format!("Bearer sk_abc123def45_{secret}x"),
            format!("Bearer sk_abc123def456-{secret}"),
            format!("Bearer sk_abc123def456_{}+", &secret[..39]),
            format!("Bearer sk_abc123def456_{}é", &secret[..38]),
            format!("Bearer sk_abc-23def456_{secret}"),
        ];
        for header in &cases {
            match parse_bearer(header) {
                Err(AuthError::Malformed(_)) => {}
                other => panic!("{header:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn api_key_parse_checks_the_format() {
        assert!(split_key(&sample_key()).is_ok());
        assert!(split_key("sk_short").is_err());
        assert!(split_key(&format!("Bearer {}", sample_key())).is_err());
    }

    #[test]
    fn constant_time_comparison_decides_equality() {
        let hash = hash_secret("secret-one");
        assert!(hashes_match(&hash, &hash.clone()));
        assert!(!hashes_match(&hash, &hash_secret("secret-two")));
        // Differs only in the last character.
        let mut last_changed = hash.clone();
        let flipped = if last_changed.ends_with('0') {
            "1"
        } else {
            "0"
        };
        last_changed.replace_range(63.., flipped);
        assert!(!hashes_match(&hash, &last_changed));
        assert!(!hashes_match(&hash, &hash[..63]));
        assert!(!hashes_match(&hash, ""));
        assert!(!hashes_match(&hash, DUMMY_HASH));
    }

    #[test]
    fn only_credential_errors_are_unauthorized() {
        assert!(AuthError::MissingHeader.is_unauthorized());
        assert!(AuthError::Malformed("x").is_unauthorized());
        assert!(AuthError::UnknownKey.is_unauthorized());
        assert!(AuthError::Revoked.is_unauthorized());
        assert!(AuthError::SecretMismatch.is_unauthorized());
        assert!(!AuthError::Store(StoreError::NotFound).is_unauthorized());
    }

    mod with_store {
        use super::super::*;
        use crate::store::sqlite::SqliteStore;

        /// The cached store the server runs on.
        async fn store(dir: &tempfile::TempDir) -> CachedKeys {
            let url = format!("sqlite://{}/auth.db", dir.path().display());
            CachedKeys::new(Arc::new(SqliteStore::connect(&url).await.unwrap()))
        }

        #[tokio::test]
        async fn authenticate_resolves_tenant_and_project() {
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir).await;
            let tenant = store.create_tenant("t").await.unwrap();
            let project = store.create_project(tenant.id, "p").await.unwrap();
            let (key, record) = issue_api_key(&store, project.id).await.unwrap();
            let header = format!("Bearer {}", key.expose());

            let caller = authenticate(&store, Some(&header)).await.unwrap();
            assert_eq!(
                caller,
                Caller {
                    tenant_id: tenant.id,
                    project_id: project.id,
                    key_id: record.id,
                }
            );
            let listed = store.list_api_keys(Some(project.id)).await.unwrap();
            assert_eq!(listed, vec![record.clone()]);

            // Right lookup id, wrong secret.
            let (other, _) = generate_api_key(project.id);
            let forged = format!("Bearer {}_{}", &key.expose()[..15], &other.expose()[16..]);
            assert!(matches!(
                authenticate(&store, Some(&forged)).await,
                Err(AuthError::SecretMismatch)
            ));
            // A well-formed key that was never issued.
            let unknown = format!("Bearer {}", other.expose());
            assert!(matches!(
                authenticate(&store, Some(&unknown)).await,
                Err(AuthError::UnknownKey)
            ));
            assert!(matches!(
                authenticate(&store, None).await,
                Err(AuthError::MissingHeader)
            ));
            assert!(matches!(
                authenticate(&store, Some("Bearer nope")).await,
                Err(AuthError::Malformed(_))
            ));

            // Revoking through the same store takes effect on the next request.
            store.revoke_api_key(record.id).await.unwrap();
            assert!(matches!(
                authenticate(&store, Some(&header)).await,
                Err(AuthError::Revoked)
            ));
            // A revoked key with a wrong secret does not reveal that it is revoked.
            assert!(matches!(
                authenticate(&store, Some(&forged)).await,
                Err(AuthError::SecretMismatch)
            ));
        }

        #[tokio::test]
        async fn keys_of_unknown_projects_are_refused() {
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir).await;
            assert!(matches!(
                issue_api_key(&store, Uuid::new_v4()).await,
                Err(StoreError::NotFound)
            ));
        }
    }
}
