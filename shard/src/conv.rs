//! A conversation's state on its home shard: the next sequence number, the members and
//! the dedupe window. Only the home shard touches it, so assigning a `seq` is a plain
//! increment.

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

/// Home-shard state of one conversation.
#[derive(Debug)]
pub struct ConvState {
    /// Member user ids. Invariant: sorted, no duplicates.
    pub members: Vec<Box<str>>,
    /// Highest seq assigned (stored or in flight). Invariant: dense, starts at 0.
    last_seq: u64,
    /// `(sender, client_msg_id)` of recent messages, newest last; bounded by `window`.
    recent: VecDeque<(Box<str>, Box<str>)>,
    /// Lookup for `recent`.
    seen: HashMap<(Box<str>, Box<str>), Accepted>,
    /// How many recent messages are remembered for dedupe.
    window: usize,
}

impl ConvState {
    /// State for a conversation whose highest stored seq is `last_seq`.
    pub fn new(members: Vec<Box<str>>, last_seq: u64, window: usize) -> ConvState {
        ConvState { members, last_seq, recent: VecDeque::new(), seen: HashMap::new(), window: window.max(1) }
    }

    /// Is `user` a member?
    pub fn is_member(&self, user: &str) -> bool {
        self.members.binary_search_by(|m| (**m).cmp(user)).is_ok()
    }

    /// Highest seq assigned so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The original acceptance if `(sender, client_msg_id)` is in the window.
    pub fn duplicate(&self, sender: &str, client_msg_id: &str) -> Option<Accepted> {
        // The key type is owned; build it only for the lookup. (Cheap: two short strings.)
        self.seen.get(&(Box::from(sender), Box::from(client_msg_id))).copied()
    }

    /// Assigns the next seq to a new message and remembers it for dedupe.
    pub fn accept(&mut self, sender: &str, client_msg_id: &str, message_id: u64, ts: u64) -> Accepted {
        self.last_seq += 1;
        let a = Accepted { seq: self.last_seq, message_id, ts };
        self.remember(sender, client_msg_id, a);
        a
    }

    /// Records an already stored message (when loading the window from storage).
    pub fn remember(&mut self, sender: &str, client_msg_id: &str, a: Accepted) {
        let key: (Box<str>, Box<str>) = (sender.into(), client_msg_id.into());
        if self.seen.insert(key.clone(), a).is_none() {
            self.recent.push_back(key);
        }
        while self.recent.len() > self.window {
            if let Some(old) = self.recent.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Forgets a message whose durable write failed, so a retry can take its place.
    /// Only valid for the newest seq (the write failed before anything later was stored).
    pub fn rollback(&mut self, sender: &str, client_msg_id: &str, seq: u64) {
        let key: (Box<str>, Box<str>) = (sender.into(), client_msg_id.into());
        if self.seen.get(&key).map(|a| a.seq) == Some(seq) {
            self.seen.remove(&key);
            self.recent.retain(|k| *k != key);
        }
        if seq == self.last_seq {
            self.last_seq -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_dense_and_duplicates_found_within_window() {
        let mut c = ConvState::new(vec!["alice".into(), "bob".into()], 4, 3);
        assert!(c.is_member("bob") && !c.is_member("carol"));
        let a = c.accept("alice", "m1", 10, 1);
        assert_eq!(a.seq, 5);
        assert_eq!(c.duplicate("alice", "m1"), Some(a));
        assert_eq!(c.duplicate("bob", "m1"), None, "ids are per sender");
        for i in 2..=4 {
            c.accept("alice", &format!("m{i}"), 10 + i, 1);
        }
        assert_eq!(c.last_seq(), 8);
        assert_eq!(c.duplicate("alice", "m1"), None, "evicted past the window");
        assert!(c.duplicate("alice", "m4").is_some());
    }
}
