//! A store in memory: the same behaviour as the embedded backend (it passes
//! [`crate::conformance`]), nothing on disk. The shard core's simulation uses it as the
//! durable state a crashed shard replays from; it is not a serving backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use wire::frame::ConvId;

use crate::model::{
    dedupe_key, is_group, ConvMeta, CursorRecord, DedupeEntry, InboxEntry, InboxLast, InboxValue, MemberRow,
    StoredMessage, Tail, UserRecord, Write,
};
use crate::{Slice, Store, StoreError};

#[derive(Default, Clone)]
struct Data {
    msgs: BTreeMap<(ConvId, u64), StoredMessage>,
    convs: HashMap<ConvId, ConvMeta>,
    user_convs: BTreeSet<(String, ConvId)>,
    users: HashMap<String, UserRecord>,
    cursors: BTreeMap<(ConvId, String), CursorRecord>,
    inbox: BTreeMap<(String, ConvId, u8), (u64, InboxValue)>,
    reactions: BTreeMap<(ConvId, u64, String), String>,
    members: BTreeMap<(ConvId, String), MemberRow>,
    group_last: HashMap<ConvId, (u64, InboxLast)>,
    hidden: BTreeSet<(ConvId, String, u64)>,
}

/// One partition in memory.
#[derive(Default)]
pub struct MemStore {
    data: Mutex<Data>,
}

impl MemStore {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        // A panic while holding the lock leaves data that is still consistent: every
        // write below is applied to a copy and swapped in whole.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages stored in `conv`, ascending by seq (for the simulation's checks).
    pub fn messages(&self, conv: ConvId) -> Vec<(u64, StoredMessage)> {
        let d = self.data();
        d.msgs.range((conv, 0)..=(conv, u64::MAX)).map(|((_, s), m)| (*s, m.clone())).collect()
    }

    /// Every conversation with stored messages.
    pub fn convs(&self) -> Vec<ConvId> {
        let d = self.data();
        let mut v: Vec<ConvId> = d.msgs.keys().map(|k| k.0).collect();
        v.dedup();
        v
    }
}

impl Store for MemStore {
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut d = self.data();
        let mut next = d.clone();
        for w in writes {
            match w {
                Write::Conv { conv, meta } => {
                    for u in &meta.members {
                        next.user_convs.insert((u.clone(), *conv));
                    }
                    next.convs.insert(*conv, meta.clone());
                }
                Write::Unindex { conv, user } => {
                    next.user_convs.remove(&(user.clone(), *conv));
                }
                Write::Message { conv, seq, msg } => {
                    next.msgs.insert((*conv, *seq), StoredMessage::clone(msg));
                }
                Write::User { user, record } => {
                    next.users.insert(user.clone(), *record);
                }
                Write::Cursor { conv, user, cursor } => {
                    next.cursors.insert((*conv, user.clone()), *cursor);
                }
                Write::Hide { conv, user, seq } => {
                    next.hidden.insert((*conv, user.clone(), *seq));
                }
                Write::GroupLast { conv, at, last } => {
                    next.group_last.insert(*conv, (*at, last.to_owned()));
                }
                Write::Member { conv, user, row } => {
                    next.user_convs.insert((user.clone(), *conv));
                    next.members.insert((*conv, user.clone()), *row);
                }
                Write::Reaction { conv, seq, user, emoji } => {
                    let k = (*conv, *seq, user.clone());
                    if emoji.is_empty() {
                        next.reactions.remove(&k);
                    } else {
                        next.reactions.insert(k, emoji.clone());
                    }
                }
                Write::Inbox { user, conv, at, value: v } => {
                    next.inbox.insert((user.clone(), *conv, v.tag()), (*at, v.clone()));
                }
            }
        }
        *d = next;
        Ok(())
    }

    fn conv_meta(&self, conv: ConvId) -> Result<Option<ConvMeta>, StoreError> {
        Ok(self.data().convs.get(&conv).cloned())
    }

    fn newest(&self, conv: ConvId, after: u64, before: u64, limit: usize) -> Result<Slice, StoreError> {
        if before <= after.saturating_add(1) {
            return Ok(Slice::default());
        }
        let d = self.data();
        let range = d.msgs.range((conv, after + 1)..(conv, before));
        let mut messages: Vec<(u64, StoredMessage)> =
            range.rev().take(limit + 1).map(|((_, s), m)| (*s, m.clone())).collect();
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(Slice { messages, has_more })
    }

    fn user_convs(&self, user: &str) -> Result<Vec<ConvId>, StoreError> {
        let d = self.data();
        Ok(d.user_convs.iter().filter(|(u, _)| u == user).map(|(_, c)| *c).collect())
    }

    fn conv_tail(&self, conv: ConvId, limit: usize) -> Result<Tail, StoreError> {
        let d = self.data();
        let range = || d.msgs.range((conv, 0)..=(conv, u64::MAX));
        let last_seq = range().next_back().map_or(0, |((_, s), _)| *s);
        let mut recent: Vec<(u64, DedupeEntry)> = range()
            .rev()
            .filter(|(_, m)| !m.client_msg_id.is_empty())
            .take(limit)
            .map(|((_, s), m)| {
                (*s, DedupeEntry { key: dedupe_key(&m.from, &m.client_msg_id), message_id: m.message_id, ts: m.ts })
            })
            .collect();
        recent.reverse();
        Ok(Tail { last_seq, recent })
    }

    fn user_record(&self, user: &str) -> Result<UserRecord, StoreError> {
        Ok(self.data().users.get(user).copied().unwrap_or_default())
    }

    fn cursors(&self, conv: ConvId) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        let d = self.data();
        Ok(d.cursors.iter().filter(|((c, _), _)| *c == conv).map(|((_, u), r)| (u.clone(), *r)).collect())
    }

    fn members(&self, conv: ConvId) -> Result<Vec<(String, MemberRow)>, StoreError> {
        let d = self.data();
        Ok(d.members
            .range((conv, String::new())..)
            .take_while(|((c, _), _)| *c == conv)
            .map(|((_, u), r)| (u.clone(), *r))
            .collect())
    }

    fn member(&self, conv: ConvId, user: &str) -> Result<Option<MemberRow>, StoreError> {
        Ok(self.data().members.get(&(conv, user.to_owned())).copied())
    }

    fn reactions(&self, conv: ConvId, lo: u64, hi: u64) -> Result<Vec<(u64, String, String)>, StoreError> {
        let d = self.data();
        let range = d.reactions.range((conv, lo, String::new())..).take_while(|((c, s, _), _)| *c == conv && *s <= hi);
        Ok(range.map(|((_, s, u), e)| (*s, u.clone(), e.clone())).collect())
    }

    fn hidden(&self, conv: ConvId, user: &str, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        let d = self.data();
        let (a, b) = ((conv, user.to_owned(), lo), (conv, user.to_owned(), hi));
        Ok(d.hidden.range(a..=b).map(|(_, _, s)| *s).collect())
    }

    fn group_last(&self, conv: ConvId) -> Result<Option<(u64, InboxLast)>, StoreError> {
        Ok(self.data().group_last.get(&conv).cloned())
    }

    fn inbox(&self, user: &str) -> Result<Vec<InboxEntry>, StoreError> {
        let d = self.data();
        let mut out: Vec<InboxEntry> = Vec::new();
        for ((u, conv, _), (at, v)) in &d.inbox {
            if u != user {
                continue;
            }
            if out.last().is_none_or(|e| e.conv != *conv) {
                out.push(InboxEntry { conv: *conv, ..InboxEntry::default() });
            }
            if let Some(e) = out.last_mut() {
                e.apply(*at, v.clone());
            }
        }
        for e in out.iter_mut().filter(|e| is_group(e.conv)) {
            if let Some((at, last)) = d.group_last.get(&e.conv) {
                e.with_group_last(*at, last);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        // Reopening "the same directory" must see earlier commits: one store per path.
        let stores: std::sync::Mutex<Vec<(std::path::PathBuf, std::sync::Arc<super::MemStore>)>> = Default::default();
        crate::conformance::run(|dir| {
            let mut s = stores.lock().unwrap();
            let store = match s.iter().find(|(p, _)| p == dir) {
                Some((_, st)) => st.clone(),
                None => {
                    let st = std::sync::Arc::new(super::MemStore::default());
                    s.push((dir.to_path_buf(), st.clone()));
                    st
                }
            };
            Box::new(Shared(store))
        });
    }

    struct Shared(std::sync::Arc<super::MemStore>);

    impl crate::Store for Shared {
        fn commit(&self, w: &[crate::model::Write]) -> Result<(), crate::StoreError> {
            self.0.commit(w)
        }
        fn conv_meta(&self, c: wire::frame::ConvId) -> Result<Option<crate::model::ConvMeta>, crate::StoreError> {
            self.0.conv_meta(c)
        }
        fn newest(&self, c: wire::frame::ConvId, a: u64, b: u64, l: usize) -> Result<crate::Slice, crate::StoreError> {
            self.0.newest(c, a, b, l)
        }
        fn user_convs(&self, u: &str) -> Result<Vec<wire::frame::ConvId>, crate::StoreError> {
            self.0.user_convs(u)
        }
        fn conv_tail(&self, c: wire::frame::ConvId, l: usize) -> Result<crate::model::Tail, crate::StoreError> {
            self.0.conv_tail(c, l)
        }
        fn user_record(&self, u: &str) -> Result<crate::model::UserRecord, crate::StoreError> {
            self.0.user_record(u)
        }
        fn cursors(
            &self,
            c: wire::frame::ConvId,
        ) -> Result<Vec<(String, crate::model::CursorRecord)>, crate::StoreError> {
            self.0.cursors(c)
        }
        fn inbox(&self, u: &str) -> Result<Vec<crate::model::InboxEntry>, crate::StoreError> {
            self.0.inbox(u)
        }
        fn members(&self, c: wire::frame::ConvId) -> Result<Vec<(String, crate::model::MemberRow)>, crate::StoreError> {
            self.0.members(c)
        }
        fn member(
            &self,
            c: wire::frame::ConvId,
            u: &str,
        ) -> Result<Option<crate::model::MemberRow>, crate::StoreError> {
            self.0.member(c, u)
        }
        fn hidden(&self, c: wire::frame::ConvId, u: &str, lo: u64, hi: u64) -> Result<Vec<u64>, crate::StoreError> {
            self.0.hidden(c, u, lo, hi)
        }
        fn group_last(
            &self,
            c: wire::frame::ConvId,
        ) -> Result<Option<(u64, crate::model::InboxLast)>, crate::StoreError> {
            self.0.group_last(c)
        }
        fn reactions(
            &self,
            c: wire::frame::ConvId,
            lo: u64,
            hi: u64,
        ) -> Result<Vec<(u64, String, String)>, crate::StoreError> {
            self.0.reactions(c, lo, hi)
        }
    }
}
