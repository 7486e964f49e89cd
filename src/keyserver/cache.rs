//! A bounded map whose entries expire: the key server's memory of refused pairs and of the
//! EDKs a task flow's playlists named. Entries live a fixed time, so insertion order is
//! expiry order; past `max` entries the oldest goes first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `max` entries, each for `ttl`.
pub struct TtlCache<K, V> {
    ttl: Duration,
    max: usize,
    map: HashMap<K, (Instant, V)>,
    /// Insertion order, with each entry's time (a stale time: the key was inserted again).
    order: VecDeque<(Instant, K)>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache (`max` at least 1).
    pub fn new(ttl: Duration, max: usize) -> Self {
        TtlCache { ttl, max: max.max(1), map: HashMap::new(), order: VecDeque::new() }
    }

    /// The live entry for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// Remembers `value` for `key` from now on.
    pub fn insert(&mut self, key: K, value: V) {
        self.insert_at(key, value, Instant::now())
    }

    /// The entry for `key` if it is live at `now`.
    pub fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        self.map.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl).map(|(_, v)| v.clone())
    }

    /// Remembers `value` for `key` from `now` on.
    pub fn insert_at(&mut self, key: K, value: V, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl && self.order.len() < self.max {
                break;
            }
            let (at, old) = self.order.pop_front().expect("a front exists");
            if self.map.get(&old).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&old);
            }
        }
        self.map.insert(key.clone(), (now, value));
        self.order.push_back((now, key));
    }

    /// Live and expired entries held (at most `max`).
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_max_and_drops_the_oldest() {
        let mut cache = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.insert(i, ());
            assert!(cache.len() <= 3);
        }
        assert_eq!((cache.get(&6), cache.get(&7), cache.get(&9)), (None, Some(()), Some(())));
        // Inserted again, a key is not dropped for its older copy.
        cache.insert(7, ());
        cache.insert(10, ());
        assert_eq!(cache.get(&7), Some(()));
        assert!(cache.order.len() <= 3);
    }

    #[test]
    fn entries_expire() {
        let mut cache = TtlCache::new(Duration::ZERO, 3);
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), None);
    }
}
