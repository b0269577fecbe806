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

/// One remembered message for dedupe.
#[derive(Debug)]
struct Seen {
    /// Sender's user id.
    sender: Box<str>,
    /// The sender's idempotency key.
    client_msg_id: Box<str>,
    /// What its ack said.
    accepted: Accepted,
}

/// Home-shard state of one conversation.
#[derive(Debug)]
pub struct ConvState {
    /// Member user ids. Invariant: sorted, no duplicates.
    pub members: Vec<Box<str>>,
    /// Highest seq assigned (stored or in flight). Invariant: dense, starts at 0.
    last_seq: u64,
    /// Keys of recent messages, oldest first; bounded by `window`.
    recent: VecDeque<u64>,
    /// Recent messages by key (a hash of sender and client_msg_id; the strings are
    /// compared, so a hash collision never merges two messages). Lookups borrow the
    /// strings: no allocation per send.
    seen: HashMap<u64, Vec<Seen>>,
    /// How many recent messages are remembered for dedupe.
    window: usize,
}

/// The dedupe key of `(sender, client_msg_id)` (user ids never contain NUL).
fn key(sender: &str, client_msg_id: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(client_msg_id.as_bytes());
    h.digest()
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
        self.seen
            .get(&key(sender, client_msg_id))?
            .iter()
            .find(|s| &*s.sender == sender && &*s.client_msg_id == client_msg_id)
            .map(|s| s.accepted)
    }

    /// Assigns the next seq to a new message and remembers it for dedupe.
    pub fn accept(&mut self, sender: &str, client_msg_id: &str, message_id: u64, ts: u64) -> Accepted {
        self.last_seq += 1;
        let a = Accepted { seq: self.last_seq, message_id, ts };
        self.remember(sender, client_msg_id, a);
        a
    }

    /// Assigns the next seq to a server-written event (never deduplicated).
    pub fn accept_event(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Records an already stored message (when loading the window from storage).
    pub fn remember(&mut self, sender: &str, client_msg_id: &str, a: Accepted) {
        if self.duplicate(sender, client_msg_id).is_some() {
            return;
        }
        let k = key(sender, client_msg_id);
        self.seen.entry(k).or_default().push(Seen {
            sender: sender.into(),
            client_msg_id: client_msg_id.into(),
            accepted: a,
        });
        self.recent.push_back(k);
        while self.recent.len() > self.window {
            if let Some(old) = self.recent.pop_front() {
                self.forget_oldest(old);
            }
        }
    }

    /// Drops the oldest entry under key `k` (entries under one key are in arrival order).
    fn forget_oldest(&mut self, k: u64) {
        if let Some(list) = self.seen.get_mut(&k) {
            if !list.is_empty() {
                list.remove(0);
            }
            if list.is_empty() {
                self.seen.remove(&k);
            }
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
