//! A conversation's dedupe window: the `(sender, client_msg_id)` keys of its newest
//! messages and the ack each got, so a resend is answered with the original ack and
//! never stored twice.
//!
//! Keys are [`storage::model::dedupe_key`] (128-bit hashes): an entry is ~60 bytes in
//! memory whatever the ids' length, and loading a conversation reads the same keys from
//! the store's dedupe index, never message bodies. Two different keys of a conversation
//! collide with probability about 2^-128 per pair.

use std::collections::{HashMap, VecDeque};

/// What a resend is answered with: the original ack's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The seq the message was stored under.
    pub seq: u64,
    /// Its message id.
    pub message_id: u64,
    /// Its acceptance time.
    pub ts: u64,
}

/// The newest `window` keys of a conversation.
#[derive(Debug)]
pub struct Dedupe {
    /// Keys, oldest first. Invariant: `recent.len() == seen.len() <= window`.
    recent: VecDeque<u128>,
    /// Key -> original ack.
    seen: HashMap<u128, Accepted>,
    /// How many keys are remembered.
    window: usize,
}

impl Dedupe {
    /// An empty window of `window` keys (at least 1).
    pub fn new(window: usize) -> Dedupe {
        Dedupe { recent: VecDeque::new(), seen: HashMap::new(), window: window.max(1) }
    }

    /// The original acceptance of `key`, if remembered.
    pub fn get(&self, key: u128) -> Option<Accepted> {
        self.seen.get(&key).copied()
    }

    /// Remembers `key` (a key already present keeps its first acceptance).
    pub fn insert(&mut self, key: u128, a: Accepted) {
        if self.seen.contains_key(&key) {
            return;
        }
        self.seen.insert(key, a);
        self.recent.push_back(key);
        while self.recent.len() > self.window {
            if let Some(old) = self.recent.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Approximate heap bytes held (hash table slots and the ring).
    pub fn heap_bytes(&self) -> usize {
        self.seen.capacity() * (16 + 24 + 1) + self.recent.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_window_and_the_first_ack() {
        let mut d = Dedupe::new(3);
        let a = |seq| Accepted { seq, message_id: 100 + seq, ts: 1 };
        for k in 1..=3u128 {
            d.insert(k, a(k as u64));
        }
        d.insert(2, a(9));
        assert_eq!(d.get(2), Some(a(2)), "a key keeps its first acceptance");
        d.insert(4, a(4));
        assert_eq!(d.len(), 3);
        assert_eq!(d.get(1), None, "the oldest key left the window");
        assert_eq!(d.get(4), Some(a(4)));
    }
}
