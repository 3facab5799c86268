//! Webhook listings kept in memory. A project with a thousand webhooks lists about a
//! quarter of a megabyte, and reading it from the database and decoding it took most
//! of the listing's time. Each listing is kept with the version of the project's list
//! it was read at (`webhook_list_versions`, moved by database triggers on every change
//! a listing shows, whichever process or code path makes it), and served only while
//! that version is still the stored one, so a listing is never older than the
//! database.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

use sonzai_webhooks_api::reply::Encoded;
use uuid::Uuid;

use super::Webhook;

/// Shorter listings are read from the database each time: they are cheap to read,
/// and a cache of them would hold many entries for little gain.
const MIN_CACHED: usize = 32;

/// The most the cache holds, in estimated bytes (about 40 listings of 1,000 with their
/// answers).
const BUDGET_BYTES: usize = 16 << 20;

struct Entry {
    version: i64,
    list: Arc<Kept>,
    bytes: usize,
    used: u64,
}

/// A kept listing, and its API answer once encoded: the answer depends on nothing but
/// the listing, so it is encoded once for as long as the listing is kept.
#[derive(Debug)]
pub struct Kept {
    webhooks: Vec<Webhook>,
    encoded: OnceLock<Encoded>,
}

impl Kept {
    /// The answer `encode` makes of the listing, made once.
    pub fn encoded<E>(
        &self,
        encode: impl FnOnce(&[Webhook]) -> Result<Encoded, E>,
    ) -> Result<Encoded, E> {
        if let Some(encoded) = self.encoded.get() {
            return Ok(encoded.clone());
        }
        // Two first listings at once may both encode; either result is the same.
        let encoded = encode(&self.webhooks)?;
        Ok(self.encoded.get_or_init(|| encoded).clone())
    }
}

/// A project's webhooks, in listing order: read for this call, or kept and shared.
#[derive(Debug, Clone)]
pub enum Listing {
    Read(Vec<Webhook>),
    Kept(Arc<Kept>),
}

impl Deref for Listing {
    type Target = [Webhook];
    fn deref(&self) -> &[Webhook] {
        match self {
            Listing::Read(list) => list,
            Listing::Kept(kept) => &kept.webhooks,
        }
    }
}

impl PartialEq for Listing {
    fn eq(&self, other: &Listing) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<Webhook>> for Listing {
    fn eq(&self, other: &Vec<Webhook>) -> bool {
        **self == **other
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Uuid, Entry>,
    bytes: usize,
    tick: u64,
}

/// Per-project listings, least recently used evicted first, within [`BUDGET_BYTES`].
#[derive(Default)]
pub(crate) struct ListCache {
    inner: Mutex<Inner>,
}

/// What a kept listing holds in memory, roughly: each webhook, and its share of the
/// encoded answer, which is about as large.
fn size_of(list: &[Webhook]) -> usize {
    list.iter()
        .map(|w| {
            2 * (std::mem::size_of::<Webhook>()
                + w.event_type.len()
                + w.webhook_url.len()
                + w.auth_header.as_ref().map_or(0, String::len))
        })
        .sum()
}

impl ListCache {
    /// The listing of `project` read at `version`, if it is kept.
    pub fn get(&self, project: Uuid, version: i64) -> Option<Arc<Kept>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&project)?;
        if entry.version != version {
            return None;
        }
        entry.used = tick;
        Some(entry.list.clone())
    }

    /// Keeps the listing of `project` read at `version` (read after the version was),
    /// unless it is short, too large, or older than the one kept; answers the listing,
    /// shared when kept.
    pub fn put(&self, project: Uuid, version: i64, list: Vec<Webhook>) -> Listing {
        if list.len() < MIN_CACHED {
            return Listing::Read(list);
        }
        let bytes = size_of(&list);
        if bytes > BUDGET_BYTES {
            return Listing::Read(list);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner
            .entries
            .get(&project)
            .is_some_and(|kept| kept.version > version)
        {
            return Listing::Read(list);
        }
        inner.tick += 1;
        let used = inner.tick;
        let kept = Arc::new(Kept {
            webhooks: list,
            encoded: OnceLock::new(),
        });
        if let Some(old) = inner.entries.insert(
            project,
            Entry {
                version,
                list: kept.clone(),
                bytes,
                used,
            },
        ) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.bytes > BUDGET_BYTES {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.bytes;
            }
        }
        Listing::Kept(kept)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }
}

impl std::fmt::Debug for ListCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ListCache")
            .field("listings", &inner.entries.len())
            .field("bytes", &inner.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn webhooks(n: usize, url_len: usize) -> Vec<Webhook> {
        (0..n)
            .map(|i| Webhook {
                id: Uuid::now_v7(),
                project_id: Uuid::nil(),
                event_type: format!("type.{i}"),
                webhook_url: "u".repeat(url_len),
                auth_header: None,
                is_active: true,
                created_at: Utc::now(),
                updated_at: Utc::now(),
                rate_limit: None,
                ordered: false,
            })
            .collect()
    }

    #[test]
    fn a_listing_is_served_only_at_the_version_it_was_read_at() {
        let cache = ListCache::default();
        let p = Uuid::now_v7();
        assert!(matches!(
            cache.put(p, 3, webhooks(MIN_CACHED, 10)),
            Listing::Kept(_)
        ));
        assert_eq!(cache.get(p, 3).map(|l| l.webhooks.len()), Some(MIN_CACHED));
        assert!(cache.get(p, 4).is_none(), "a newer version is a miss");
        // A listing read at an older version than the one kept does not replace it.
        cache.put(p, 2, webhooks(MIN_CACHED + 1, 10));
        assert_eq!(cache.get(p, 3).map(|l| l.webhooks.len()), Some(MIN_CACHED));
        // Short listings are not kept.
        let q = Uuid::now_v7();
        assert!(matches!(
            cache.put(q, 1, webhooks(MIN_CACHED - 1, 10)),
            Listing::Read(_)
        ));
        assert!(cache.get(q, 1).is_none());
    }

    #[test]
    fn a_kept_listing_is_encoded_once_and_a_failed_encoding_is_not_kept() {
        let cache = ListCache::default();
        let p = Uuid::now_v7();
        let Listing::Kept(kept) = cache.put(p, 1, webhooks(MIN_CACHED, 10)) else {
            panic!("a listing of {MIN_CACHED} is kept");
        };
        let calls = std::cell::Cell::new(0);
        let encode = |list: &[Webhook]| {
            calls.set(calls.get() + 1);
            sonzai_webhooks_api::reply::Encoded::new(
                sonzai_webhooks_api::models::ListWebhooksOutputBody {
                    schema: None,
                    webhooks: Some(
                        list.iter()
                            .map(|w| sonzai_webhooks_api::models::Webhook {
                                schema: None,
                                project_id: w.project_id,
                                event_type: w.event_type.clone(),
                                webhook_url: w.webhook_url.clone(),
                                auth_header: None,
                                is_active: w.is_active,
                                created_at: w.created_at,
                                updated_at: w.updated_at,
                                rate_limit: None,
                                ordered: None,
                            })
                            .collect(),
                    ),
                },
            )
        };
        assert!(kept.encoded(|_| Err("failed")).is_err());
        let first = kept.encoded(encode).unwrap();
        assert_eq!(calls.get(), 1, "the failure was not kept");
        let again = cache.get(p, 1).unwrap().encoded(encode).unwrap();
        assert_eq!(calls.get(), 1, "encoded once");
        assert_eq!(first.as_bytes(), again.as_bytes());
        let answer: serde_json::Value = serde_json::from_slice(first.as_bytes()).unwrap();
        assert_eq!(answer["webhooks"].as_array().unwrap().len(), MIN_CACHED);
        assert_eq!(
            answer["$schema"],
            "/api/v1/schemas/ListWebhooksOutputBody.json"
        );
    }

    #[test]
    fn the_least_recently_used_listing_goes_first_once_over_budget() {
        let cache = ListCache::default();
        // Each about a quarter of the budget.
        let url_len = BUDGET_BYTES / 8 / 1_000;
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for id in &ids[..3] {
            cache.put(*id, 1, webhooks(1_000, url_len));
        }
        assert!(cache.get(ids[0], 1).is_some(), "the first is used again");
        cache.put(ids[3], 1, webhooks(1_000, url_len));
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(ids[1], 1).is_none(),
            "the least recently used went"
        );
        for id in [ids[0], ids[2], ids[3]] {
            assert!(cache.get(id, 1).is_some());
        }
    }
}
