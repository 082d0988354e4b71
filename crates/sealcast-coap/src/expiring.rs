//! A map bounded in size whose entries expire: the message-id
//! deduplication cache (RFC 7252 §4.5) and the block-wise assembly and
//! response caches are all one of these.
//!
//! Time comes in as `now`; nothing here reads a clock. When full, the
//! oldest insertion is evicted: memory stays bounded under a flood of fresh
//! message ids, at the price that a duplicate arriving after its entry was
//! evicted is processed again. sealcast tolerates that: every COSE object
//! it carries passes a replay window above this layer.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug)]
struct Slot<V> {
    value: V,
    expires: Instant,
    generation: u64,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ExpiringMap<K, V> {
    map: HashMap<K, Slot<V>>,
    order: VecDeque<(K, u64)>,
    capacity: usize,
    next_generation: u64,
    evicted: u64,
}

impl<K: Eq + Hash + Clone, V> ExpiringMap<K, V> {
    /// A map holding at most `capacity` (≥ 1) live entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            next_generation: 0,
            evicted: 0,
        }
    }

    /// Live entries (expired ones not yet purged included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries evicted for room before they expired.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The value of `key` unless it expired.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&V> {
        self.get_mut(key, now).map(|v| &*v)
    }

    /// The value of `key`, mutable, unless it expired.
    pub fn get_mut(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        let expired = self.map.get(key).is_some_and(|s| s.expires <= now);
        if expired {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key).map(|s| &mut s.value)
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|s| s.value)
    }

    /// Inserts or replaces `key`, living until `expires`.
    pub fn insert(&mut self, key: K, value: V, expires: Instant, now: Instant) {
        self.purge(now);
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.capacity {
                if !self.evict_oldest() {
                    break;
                }
            }
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.map.insert(
            key.clone(),
            Slot {
                value,
                expires,
                generation,
            },
        );
        self.order.push_back((key, generation));
        // Replaced keys leave stale queue entries behind; keep the queue
        // proportional to the map.
        if self.order.len() > 2 * self.capacity + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|s| s.generation == *g));
        }
    }

    /// Drops expired entries at the front of the insertion order.
    fn purge(&mut self, now: Instant) {
        while let Some((k, g)) = self.order.front() {
            match self.map.get(k) {
                Some(s) if s.generation == *g => {
                    if s.expires > now {
                        break;
                    }
                    self.map.remove(k);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((k, g)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|s| s.generation == g) {
                self.map.remove(&k);
                self.evicted += 1;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_capacity_and_replacement() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = ExpiringMap::new(3);
        m.insert(1, "a", t0 + s(10), t0);
        m.insert(2, "b", t0 + s(10), t0);
        m.insert(3, "c", t0 + s(10), t0);
        assert_eq!(m.get(&1, t0), Some(&"a"));
        // Full: the oldest insertion goes.
        m.insert(4, "d", t0 + s(10), t0);
        assert_eq!(m.get(&1, t0), None);
        assert_eq!(m.evicted(), 1);
        assert_eq!(m.len(), 3);
        // Replacing a key does not evict.
        m.insert(4, "D", t0 + s(10), t0);
        assert_eq!(m.get(&2, t0), Some(&"b"));
        assert_eq!(m.get(&4, t0), Some(&"D"));
        // Expired entries are gone, and purged on the next insert.
        assert_eq!(m.get(&3, t0 + s(10)), None);
        m.insert(5, "e", t0 + s(30), t0 + s(11));
        assert_eq!(m.len(), 1);
        assert_eq!(m.evicted(), 1);
    }

    #[test]
    fn queue_stays_bounded_under_replacement() {
        let t0 = Instant::now();
        let mut m = ExpiringMap::new(4);
        m.insert(0u32, 0u32, t0 + Duration::from_secs(100), t0);
        for i in 0..10_000u32 {
            m.insert(1, i, t0 + Duration::from_secs(100), t0);
        }
        assert!(m.order.len() <= 2 * 4 + 16 + 1);
        assert_eq!(m.get(&0, t0), Some(&0));
        assert_eq!(m.get(&1, t0), Some(&9_999));
    }
}
