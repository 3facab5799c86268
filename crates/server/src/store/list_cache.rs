//! Webhook listings kept in memory. A project with a thousand webhooks lists about a
//! quarter of a megabyte, and reading it from the database and decoding it took most
//! of the listing's time. Each listing is kept with the version of the project's list
//! it was read at (`webhook_list_versions`, moved by database triggers on every change
//! a listing shows, whichever process or code path makes it), and served only while
//! that version is still the stored one, so a listing is never older than the
//! database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::Webhook;

/// Shorter listings are read from the database each time: they are cheap to read,
/// and a cache of them would hold many entries for little gain.
const MIN_CACHED: usize = 32;

/// The most the cache holds, in estimated bytes (about 64 listings of 1,000).
const BUDGET_BYTES: usize = 16 << 20;

struct Entry {
    version: i64,
    list: Arc<Vec<Webhook>>,
    bytes: usize,
    used: u64,
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

/// What one webhook holds in memory, roughly.
fn size_of(list: &[Webhook]) -> usize {
    list.iter()
        .map(|w| {
            std::mem::size_of::<Webhook>()
                + w.event_type.len()
                + w.webhook_url.len()
                + w.auth_header.as_ref().map_or(0, String::len)
        })
        .sum()
}

impl ListCache {
    /// The listing of `project` read at `version`, if it is kept.
    pub fn get(&self, project: Uuid, version: i64) -> Option<Arc<Vec<Webhook>>> {
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

    /// Keeps a copy of the listing of `project` read at `version` (read after the
    /// version was), unless it is short, or older than the one kept.
    pub fn put(&self, project: Uuid, version: i64, list: &[Webhook]) {
        if list.len() < MIN_CACHED {
            return;
        }
        let bytes = size_of(list);
        if bytes > BUDGET_BYTES {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner
            .entries
            .get(&project)
            .is_some_and(|kept| kept.version > version)
        {
            return;
        }
        inner.tick += 1;
        let used = inner.tick;
        if let Some(old) = inner.entries.insert(
            project,
            Entry {
                version,
                list: Arc::new(list.to_vec()),
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
        cache.put(p, 3, &webhooks(MIN_CACHED, 10));
        assert_eq!(cache.get(p, 3).map(|l| l.len()), Some(MIN_CACHED));
        assert!(cache.get(p, 4).is_none(), "a newer version is a miss");
        // A listing read at an older version than the one kept does not replace it.
        cache.put(p, 2, &webhooks(MIN_CACHED + 1, 10));
        assert_eq!(cache.get(p, 3).map(|l| l.len()), Some(MIN_CACHED));
        // Short listings are not kept.
        let q = Uuid::now_v7();
        cache.put(q, 1, &webhooks(MIN_CACHED - 1, 10));
        assert!(cache.get(q, 1).is_none());
    }

    #[test]
    fn the_least_recently_used_listing_goes_first_once_over_budget() {
        let cache = ListCache::default();
        // Each about a quarter of the budget.
        let url_len = BUDGET_BYTES / 4 / 1_000;
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for id in &ids[..3] {
            cache.put(*id, 1, &webhooks(1_000, url_len));
        }
        assert!(cache.get(ids[0], 1).is_some(), "the first is used again");
        cache.put(ids[3], 1, &webhooks(1_000, url_len));
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
