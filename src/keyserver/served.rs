//! The keys the key server served lately, kept in memory. A player asks for a key once per
//! segment or so, and every viewer of a video asks for the same few keys; from the store
//! each answer waits for a blocking thread and the store's one connection (SQLite) or a
//! round trip (PostgreSQL), which under load is most of a request's time (BENCHMARKS.md,
//! "The key server against nginx").
//!
//! Exact: an entry is a pair the store tied together and its key, looked up by that pair
//! only (an EDK's key is never served for another file from here either), and the key of a
//! pair never changes (the EDK→DK mapping is fixed; a stored row is never rewritten). Only
//! keys found are kept: a pair the store did not know is asked again next time. Entries
//! expire after [`TTL`] all the same, so a row deleted by hand stops being served within it;
//! at most [`CAPACITY`] entries (about 2 MiB), the oldest going first.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cache::TtlCache;

/// How long a served key is answered from memory.
pub const TTL: Duration = Duration::from_secs(60);
/// Pairs kept at most: the keys of a few thousand videos in play at once.
pub const CAPACITY: usize = 10_000;

/// Served keys by `(fileId, EDK)` (see the module doc).
pub struct Served {
    keys: Mutex<TtlCache<(String, String), [u8; 16]>>,
}

impl Default for Served {
    fn default() -> Self {
        Served { keys: Mutex::new(TtlCache::new(TTL, CAPACITY)) }
    }
}

impl Served {
    /// The key served for `file_id` and `edk` within [`TTL`].
    pub fn get(&self, file_id: &str, edk: &str) -> Option<[u8; 16]> {
        self.get_at(file_id, edk, Instant::now())
    }

    /// Remembers the key the store holds for `file_id` and `edk`.
    pub fn insert(&self, file_id: &str, edk: &str, dk: [u8; 16]) {
        self.insert_at(file_id, edk, dk, Instant::now())
    }

    fn get_at(&self, file_id: &str, edk: &str, now: Instant) -> Option<[u8; 16]> {
        self.lock().get_at(&(file_id.to_string(), edk.to_string()), now)
    }

    fn insert_at(&self, file_id: &str, edk: &str, dk: [u8; 16], now: Instant) {
        self.lock().insert_at((file_id.to_string(), edk.to_string()), dk, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TtlCache<(String, String), [u8; 16]>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_served_for_its_own_pair_only() {
        let served = Served::default();
        served.insert("f1", "edk1", [1; 16]);
        assert_eq!(served.get("f1", "edk1"), Some([1; 16]));
        assert_eq!(served.get("f2", "edk1"), None, "another file, the same EDK");
        assert_eq!(served.get("f1", "edk2"), None);
        assert_eq!(served.get("f1edk1", ""), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let served = Served::default();
        let start = Instant::now();
        served.insert_at("f", "e", [7; 16], start);
        assert_eq!(served.get_at("f", "e", start + TTL - Duration::from_millis(1)), Some([7; 16]));
        assert_eq!(served.get_at("f", "e", start + TTL), None);
        // Inserted again (read again from the store), it lives a TTL from then.
        served.insert_at("f", "e", [7; 16], start + TTL);
        assert_eq!(served.get_at("f", "e", start + TTL + Duration::from_secs(1)), Some([7; 16]));
        assert_eq!(served.len(), 1, "the expired entry went");
    }

    #[test]
    fn at_most_capacity_entries_the_oldest_going_first() {
        let served = Served::default();
        let start = Instant::now();
        for i in 0..CAPACITY + 10 {
            served.insert_at(&i.to_string(), "e", [0; 16], start);
        }
        assert_eq!(served.len(), CAPACITY);
        assert_eq!(served.get_at("9", "e", start), None);
        assert_eq!(served.get_at("10", "e", start), Some([0; 16]));
        assert_eq!(served.get_at(&(CAPACITY + 9).to_string(), "e", start), Some([0; 16]));
        // A pair inserted again is not dropped for its older copy.
        served.insert_at("10", "e", [1; 16], start);
        served.insert_at("new", "e", [0; 16], start);
        assert_eq!(served.get_at("10", "e", start), Some([1; 16]));
    }
}
