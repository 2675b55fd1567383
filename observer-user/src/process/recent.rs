//! A bounded map that keeps what was used recently: two generations of at most half the
//! capacity each. Inserts go to the current one; when it is full it becomes the previous
//! one and the one before is dropped. A key inserted again (an edge reported again) lives
//! on, while a bulk of one-off keys pushes out only what no one asked for since. Unlike
//! clearing everything at the bound, a busy node's one-off edges never make the daemon
//! forget the edges that keep repeating.

use std::{collections::HashMap, hash::Hash};

use foldhash::fast::RandomState;

/// Its keys are looked up for every report of an edge: a fast hasher, seeded per process.
#[derive(Debug)]
pub struct Recent<K, V> {
    current: HashMap<K, V, RandomState>,
    previous: HashMap<K, V, RandomState>,
    half: usize,
}

impl<K: Eq + Hash, V> Recent<K, V> {
    pub fn new(capacity: usize) -> Self {
        Recent {
            current: HashMap::default(),
            previous: HashMap::default(),
            half: (capacity / 2).max(1),
        }
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.previous.remove(&key);
        if !self.current.contains_key(&key) && self.current.len() >= self.half {
            // The oldest generation goes; its table, emptied, takes the next one, so the
            // map does not grow again from nothing (and copy itself each time) every turn.
            let mut next = std::mem::take(&mut self.previous);
            next.clear();
            self.previous = std::mem::replace(&mut self.current, next);
        }
        self.current.insert(key, value);
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_inserted_again_outlives_any_number_of_one_off_keys() {
        let mut recent = Recent::new(8);
        recent.insert("hot", 0);
        for i in 0..1000 {
            recent.insert(format!("once-{i}").leak(), i);
            if i % 3 == 0 {
                recent.insert("hot", i);
            }
            assert!(recent.len() <= 8, "{}", recent.len());
            assert!(recent.get(&"hot").is_some(), "after {i}");
        }
        assert_eq!(recent.get(&"hot"), Some(&999));
        // The newest one-off keys are kept, the oldest are gone.
        assert_eq!(recent.get(&"once-999"), Some(&999));
        assert_eq!(recent.get(&"once-0"), None);
    }

    #[test]
    fn a_key_in_the_previous_generation_is_found_and_replaced_once() {
        let mut recent = Recent::new(4);
        recent.insert(1, "a");
        recent.insert(2, "b");
        recent.insert(3, "c"); // 1 and 2 become the previous generation
        assert_eq!(recent.get(&1), Some(&"a"));
        recent.insert(1, "a2");
        assert_eq!(recent.get(&1), Some(&"a2"));
        assert_eq!(recent.len(), 3);
        recent.insert(4, "d"); // {3, 1} previous, 2 dropped
        assert_eq!(recent.get(&2), None);
        assert_eq!(recent.get(&3), Some(&"c"));
        assert_eq!(recent.get(&1), Some(&"a2"));
        assert!(!recent.is_empty());
    }
}
