//! Stored records and the writes a shard commits.

use serde::{Deserialize, Serialize};
use wire::frame::ConvId;

/// A message as stored (its `conv` and `seq` are the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Globally unique, time-ordered id.
    pub message_id: u64,
    /// Sender's user id.
    pub from: String,
    /// Sender's device id.
    pub from_device: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Acceptance time, ms since the Unix epoch.
    pub ts: u64,
    /// `wire::frame::MsgKind` tag.
    pub kind: u8,
    /// Opaque body.
    pub body: Vec<u8>,
    /// Reply, event target, edit and delete marks (absent on most messages). Always
    /// the last field: a record written before it existed ends before it.
    pub ext: Option<Box<wire::frame::MsgExtra>>,
}

/// A message as stored before `ext` existed.
#[derive(Serialize, Deserialize)]
pub struct StoredMessageV1 {
    message_id: u64,
    from: String,
    from_device: String,
    client_msg_id: String,
    ts: u64,
    kind: u8,
    body: Vec<u8>,
}

impl From<StoredMessageV1> for StoredMessage {
    fn from(m: StoredMessageV1) -> StoredMessage {
        let StoredMessageV1 { message_id, from, from_device, client_msg_id, ts, kind, body } = m;
        StoredMessage { message_id, from, from_device, client_msg_id, ts, kind, body, ext: None }
    }
}

impl StoredMessage {
    /// Decodes a stored message record, of this format or the one before `ext`. A
    /// record of the older format ends where `ext` would start, so decoding it as this
    /// format fails (and a current record never decodes as the older one first).
    pub fn decode(bytes: &[u8]) -> Result<StoredMessage, postcard::Error> {
        match postcard::from_bytes::<StoredMessage>(bytes) {
            Ok(m) => Ok(m),
            Err(e) => postcard::from_bytes::<StoredMessageV1>(bytes).map(StoredMessage::from).map_err(|_| e),
        }
    }

    /// This message as the `msg` frame of `(conv, seq)` is encoded from.
    pub fn msg_ref(&self, conv: ConvId, seq: u64) -> wire::frame::MsgRef<'_> {
        wire::frame::MsgRef {
            conv,
            seq,
            message_id: self.message_id,
            from: &self.from,
            from_device: &self.from_device,
            ts: self.ts,
            kind: wire::frame::MsgKind::from_tag(self.kind).unwrap_or(wire::frame::MsgKind::Data),
            body: &self.body,
            client_msg_id: &self.client_msg_id,
            extra: self.ext.as_deref(),
        }
    }
}

/// What kind of conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvKind {
    /// Two users (or one user's notes to self).
    Direct,
    /// A group (its id has the top bit set; members are in [`ConvMeta::members`]).
    Group(GroupMeta),
}

/// What a group has beyond its members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMeta {
    /// Display name (may be empty).
    pub name: String,
    /// Admins, oldest first (the order they became admins). Invariant: no duplicates,
    /// each a member, the owner among them.
    pub admins: Vec<String>,
    /// The one member who may delete the group or hand it over.
    pub owner: String,
    /// Description (may be empty).
    pub description: String,
    /// Avatar image (`https://` URL; empty: none).
    pub avatar: String,
    /// Deleted by its owner: no more messages or changes; history stays readable.
    pub deleted: bool,
}

/// A conversation's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "disk::ConvMetaDisk", from = "disk::ConvMetaDisk")]
pub struct ConvMeta {
    /// Its kind.
    pub kind: ConvKind,
    /// Member user ids. Invariant: sorted, no duplicates.
    pub members: Vec<String>,
    /// Creation time, ms since the epoch.
    pub created: u64,
}

impl ConvMeta {
    /// Decodes a stored metadata record, of this format or the one before groups had
    /// owners, descriptions and avatars (whose records end where those would start).
    pub fn decode(bytes: &[u8]) -> Result<ConvMeta, postcard::Error> {
        match postcard::from_bytes::<ConvMeta>(bytes) {
            Ok(m) => Ok(m),
            Err(e) => postcard::from_bytes::<disk::ConvMetaV1>(bytes).map(ConvMeta::from).map_err(|_| e),
        }
    }
}

/// How metadata is laid out on disk: the first format's fields, then what groups
/// gained later, last (so older records decode, see [`ConvMeta::decode`]).
pub mod disk {
    use super::*;

    /// A group's first-format fields.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct GroupV1 {
        name: String,
        admins: Vec<String>,
    }

    /// The first format's kind.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub enum KindV1 {
        /// A DM.
        Direct,
        /// A group.
        Group(GroupV1),
    }

    /// What groups gained after the first format.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct GroupExt {
        owner: String,
        description: String,
        avatar: String,
        deleted: bool,
    }

    /// The first format.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ConvMetaV1 {
        kind: KindV1,
        members: Vec<String>,
        created: u64,
    }

    #[cfg(test)]
    impl ConvMetaV1 {
        /// A first-format group.
        pub fn sample() -> ConvMetaV1 {
            ConvMetaV1 {
                kind: KindV1::Group(GroupV1 { name: "g".into(), admins: vec!["ann".into(), "bob".into()] }),
                members: vec!["ann".into(), "bob".into(), "cat".into()],
                created: 1,
            }
        }
    }

    /// The current format.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ConvMetaDisk {
        kind: KindV1,
        members: Vec<String>,
        created: u64,
        group: Option<GroupExt>,
    }

    impl From<ConvMeta> for ConvMetaDisk {
        fn from(m: ConvMeta) -> ConvMetaDisk {
            let (kind, group) = match m.kind {
                ConvKind::Direct => (KindV1::Direct, None),
                ConvKind::Group(g) => (
                    KindV1::Group(GroupV1 { name: g.name, admins: g.admins }),
                    Some(GroupExt { owner: g.owner, description: g.description, avatar: g.avatar, deleted: g.deleted }),
                ),
            };
            ConvMetaDisk { kind, members: m.members, created: m.created, group }
        }
    }

    impl From<ConvMetaDisk> for ConvMeta {
        fn from(d: ConvMetaDisk) -> ConvMeta {
            let kind = match d.kind {
                KindV1::Direct => ConvKind::Direct,
                KindV1::Group(g) => {
                    let ext = d.group.unwrap_or_else(|| GroupExt {
                        // The first format had no owner: the first admin becomes it.
                        owner: g.admins.first().cloned().unwrap_or_default(),
                        description: String::new(),
                        avatar: String::new(),
                        deleted: false,
                    });
                    ConvKind::Group(GroupMeta {
                        name: g.name,
                        admins: g.admins,
                        owner: ext.owner,
                        description: ext.description,
                        avatar: ext.avatar,
                        deleted: ext.deleted,
                    })
                }
            };
            ConvMeta { kind, members: d.members, created: d.created }
        }
    }

    impl From<ConvMetaV1> for ConvMeta {
        fn from(v: ConvMetaV1) -> ConvMeta {
            ConvMeta::from(ConvMetaDisk { kind: v.kind, members: v.members, created: v.created, group: None })
        }
    }
}

/// One durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create (or overwrite) a conversation's metadata and index it under each member.
    Conv {
        /// The conversation.
        conv: ConvId,
        /// Its metadata.
        meta: ConvMeta,
    },
    /// Remove a former member from the user's conversation list (after a `Conv` write
    /// without them, in the same batch).
    Unindex {
        /// The conversation.
        conv: ConvId,
        /// The former member.
        user: String,
    },
    /// A member's receipt cursors in a conversation, at the conversation's home.
    Cursor {
        /// The conversation.
        conv: ConvId,
        /// The member.
        user: String,
        /// The cursors.
        cursor: CursorRecord,
    },
    /// Record a user's durable presence facts (last seen, privacy), at the user's home.
    User {
        /// The user id.
        user: String,
        /// What to keep.
        record: UserRecord,
    },
    /// A part of a user's entry for a conversation in their conversation list, at the
    /// user's home (each part is its own record: no write reads another first).
    Inbox {
        /// The user.
        user: String,
        /// The conversation.
        conv: ConvId,
        /// When the user's home recorded it (ms): what `since` compares.
        at: u64,
        /// What changed.
        value: InboxValue,
    },
    /// A group member's row: when they joined and (if they did) left. Also indexes the
    /// group under the user (a former member keeps it: their sync ends where they left).
    Member {
        /// The group.
        conv: ConvId,
        /// The member.
        user: String,
        /// Joined and left.
        row: MemberRow,
    },
    /// A group's newest message as its members' lists show it, once per partition (at
    /// each member's home shard): a group message updates one record per shard, not one
    /// per member.
    GroupLast {
        /// The group.
        conv: ConvId,
        /// When the home recorded it (ms).
        at: u64,
        /// The message, as lists show it.
        last: LastOf,
    },
    /// Delete for me: `user` no longer sees message `seq` (history and sync skip it).
    Hide {
        /// The conversation.
        conv: ConvId,
        /// The user.
        user: String,
        /// The message.
        seq: u64,
    },
    /// A member's reaction to a message (empty `emoji`: removed).
    Reaction {
        /// The conversation.
        conv: ConvId,
        /// The message reacted to.
        seq: u64,
        /// The member.
        user: String,
        /// One emoji, or empty.
        emoji: String,
    },
    /// Append a message (or, for an edit or a delete, replace the stored message at
    /// `seq` with its new state).
    Message {
        /// The conversation.
        conv: ConvId,
        /// Its sequence number. Invariant: dense per conversation, assigned by the home shard.
        seq: u64,
        /// The message (shared with its deliveries: never copied to be stored).
        msg: std::sync::Arc<StoredMessage>,
    },
}

/// What a conversation's home tells its members' homes with each message, for their
/// conversation lists (one shared copy per conversation until it changes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConvSummary {
    /// A group (else a DM).
    pub group: bool,
    /// The group's name.
    pub name: String,
    /// A DM's members (one for notes to self); empty for a group.
    pub pair: Vec<String>,
    /// How many members.
    pub members: u32,
}

/// Longest preview kept of a message body, in bytes.
pub const PREVIEW_BYTES: usize = 100;

/// The last message of a conversation, as a user's list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InboxLast {
    /// Its seq.
    pub seq: u64,
    /// Acceptance time (ms).
    pub ts: u64,
    /// Sender.
    pub from: String,
    /// `wire::frame::MsgKind` tag.
    pub kind: u8,
    /// The body's first bytes (text and group events), cut at a character boundary.
    pub preview: String,
    /// A group (else a DM).
    pub group: bool,
    /// The group's name or the DM peer.
    pub title: String,
    /// Members.
    pub members: u32,
}

impl InboxLast {
    /// Message `seq` as `user`'s list shows it (see [`LastOf::shared`]).
    pub fn of(seq: u64, msg: &StoredMessage, summary: &ConvSummary, user: &str) -> InboxLast {
        LastOf::shared(seq, msg.clone().into(), summary.clone().into(), user).to_owned()
    }
}

/// The same fields as [`InboxLast`], borrowed: what a shared [`LastOf`] is encoded as.
#[derive(Serialize)]
struct InboxLastRef<'a> {
    seq: u64,
    ts: u64,
    from: &'a str,
    kind: u8,
    preview: &'a str,
    group: bool,
    title: &'a str,
    members: u32,
}

/// A conversation's last message for a list: owned (as read back), or still shared
/// with the delivered message it came from (as written: encoded without a copy).
#[derive(Debug, Clone)]
pub enum LastOf {
    /// Read back.
    Owned(InboxLast),
    /// Being written.
    Shared {
        /// Its seq.
        seq: u64,
        /// The message.
        msg: std::sync::Arc<StoredMessage>,
        /// The conversation as of it.
        summary: std::sync::Arc<ConvSummary>,
        /// For a DM: which of `summary.pair` is the title (the other member).
        peer: u8,
    },
}

impl LastOf {
    /// Message `seq` as `user`'s list shows it: the body reduced to its preview (text
    /// and events; none for data), the title resolved (a DM's is the other member; a
    /// group's, its name).
    pub fn shared(
        seq: u64,
        msg: std::sync::Arc<StoredMessage>,
        summary: std::sync::Arc<ConvSummary>,
        user: &str,
    ) -> LastOf {
        let peer = summary.pair.iter().position(|m| m != user).unwrap_or(0) as u8;
        LastOf::Shared { seq, msg, summary, peer }
    }

    fn as_ref(&self) -> InboxLastRef<'_> {
        match self {
            LastOf::Owned(l) => InboxLastRef {
                seq: l.seq,
                ts: l.ts,
                from: &l.from,
                kind: l.kind,
                preview: &l.preview,
                group: l.group,
                title: &l.title,
                members: l.members,
            },
            LastOf::Shared { seq, msg, summary, peer } => {
                let text = match wire::frame::MsgKind::from_tag(msg.kind) {
                    Some(wire::frame::MsgKind::Data) | None => "",
                    _ => std::str::from_utf8(&msg.body).unwrap_or(""),
                };
                let mut cut = text.len().min(PREVIEW_BYTES);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                let title = if summary.group {
                    &summary.name
                } else {
                    summary.pair.get(*peer as usize).map_or("", String::as_str)
                };
                InboxLastRef {
                    seq: *seq,
                    ts: msg.ts,
                    from: &msg.from,
                    kind: msg.kind,
                    preview: &text[..cut],
                    group: summary.group,
                    title,
                    members: summary.members,
                }
            }
        }
    }

    /// The owned form.
    pub fn to_owned(&self) -> InboxLast {
        let r = self.as_ref();
        InboxLast {
            seq: r.seq,
            ts: r.ts,
            from: r.from.to_owned(),
            kind: r.kind,
            preview: r.preview.to_owned(),
            group: r.group,
            title: r.title.to_owned(),
            members: r.members,
        }
    }
}

impl From<InboxLast> for LastOf {
    fn from(l: InboxLast) -> LastOf {
        LastOf::Owned(l)
    }
}

impl PartialEq for LastOf {
    fn eq(&self, other: &LastOf) -> bool {
        self.to_owned() == other.to_owned()
    }
}

impl Eq for LastOf {}

impl Serialize for LastOf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(s)
    }
}

impl<'de> Deserialize<'de> for LastOf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LastOf, D::Error> {
        InboxLast::deserialize(d).map(LastOf::Owned)
    }
}

/// One part of a user's entry for a conversation, as stored (each its own record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboxValue {
    /// The newest message that reached the user's home (a DM's, or the one a group
    /// event removing the user left them with).
    Last(LastOf),
    /// The user's durable read cursor.
    Read(u64),
    /// The newest seq the user sent.
    Own(u64),
    /// Muted until (ms; 0: not muted).
    Muted(u64),
    /// Archived.
    Archived(bool),
    /// Pinned.
    Pinned(bool),
    /// The user joined the group at this seq (a group's entry exists from then on; its
    /// last message is the group's, shared by its members on the partition).
    Joined(u64),
    /// The user left the group at this seq (their entry keeps its own last message: the
    /// event that removed them).
    Left(u64),
    /// A DM peer's cursors as shown to the user: `(delivered, read)` (read 0 when the
    /// peer hides reads).
    Peer(u64, u64),
}

impl InboxValue {
    /// The part's one-byte tag (the last byte of its key).
    pub fn tag(&self) -> u8 {
        match self {
            InboxValue::Last(_) => 0,
            InboxValue::Read(_) => 1,
            InboxValue::Own(_) => 2,
            InboxValue::Muted(_) => 3,
            InboxValue::Archived(_) => 4,
            InboxValue::Pinned(_) => 5,
            InboxValue::Joined(_) => 6,
            InboxValue::Left(_) => 7,
            InboxValue::Peer(..) => 8,
        }
    }
}

/// A user's entry for one conversation: its parts put together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboxEntry {
    /// The conversation.
    pub conv: ConvId,
    /// The newest message (absent: only settings so far).
    pub last: Option<InboxLast>,
    /// Read cursor.
    pub read: u64,
    /// The user's own newest seq.
    pub own: u64,
    /// Muted until (ms).
    pub muted_until: u64,
    /// Archived.
    pub archived: bool,
    /// Pinned.
    pub pinned: bool,
    /// When any part last changed (ms, the user's home's clock).
    pub changed: u64,
    /// For a group: the seq of the event that last added the user.
    pub joined: u64,
    /// For a group the user left: the seq of the event that removed them (0: never).
    pub left: u64,
    /// For a DM: the peer's delivered cursor.
    pub peer_delivered: u64,
    /// For a DM: the peer's read cursor (0 when hidden).
    pub peer_read: u64,
}

impl InboxEntry {
    /// Applies one part recorded at `at`. Seqs only move forward, so parts may be
    /// applied in any order.
    pub fn apply(&mut self, at: u64, v: InboxValue) {
        self.changed = self.changed.max(at);
        match v {
            InboxValue::Last(l) => {
                let l = l.to_owned();
                if self.last.as_ref().is_none_or(|x| x.seq <= l.seq) {
                    self.last = Some(l);
                }
            }
            InboxValue::Read(s) => self.read = self.read.max(s),
            InboxValue::Own(s) => self.own = self.own.max(s),
            InboxValue::Muted(t) => self.muted_until = t,
            InboxValue::Archived(b) => self.archived = b,
            InboxValue::Pinned(b) => self.pinned = b,
            InboxValue::Joined(s) => self.joined = self.joined.max(s),
            InboxValue::Left(s) => self.left = self.left.max(s),
            InboxValue::Peer(d, r) => {
                self.peer_delivered = self.peer_delivered.max(d);
                self.peer_read = self.peer_read.max(r);
            }
        }
    }

    /// For a group the user is in, its last message as shared on the partition
    /// (`group`: when it was recorded, and the message), if newer than the entry's own.
    pub fn with_group_last(&mut self, at: u64, last: &InboxLast) {
        if self.in_group() && self.last.as_ref().is_none_or(|l| l.seq < last.seq) {
            self.last = Some(last.clone());
            self.changed = self.changed.max(at);
        }
    }

    /// Not removed since last added (always true for a DM).
    pub fn in_group(&self) -> bool {
        self.left == 0 || self.joined > self.left
    }

    /// Messages from others after the read cursor and after the user's own last message.
    pub fn unread(&self) -> u64 {
        self.last.as_ref().map_or(0, |l| l.seq.saturating_sub(self.read.max(self.own)))
    }
}

impl Write {
    /// Bytes of key and value the embedded store writes for it (what a change costs in
    /// storage, before the engine's own overhead).
    pub fn stored_bytes(&self) -> usize {
        fn pc<T: Serialize + ?Sized>(v: &T) -> usize {
            postcard::experimental::serialized_size(v).unwrap_or(0)
        }
        match self {
            Write::Conv { meta, .. } => 16 + pc(meta) + meta.members.iter().map(|m| m.len() + 17).sum::<usize>(),
            Write::Unindex { user, .. } => user.len() + 17,
            Write::Member { user, row, .. } => 2 * (16 + user.len()) + 1 + pc(row),
            Write::Reaction { user, emoji, .. } => 24 + user.len() + emoji.len(),
            Write::GroupLast { last, .. } => 16 + 8 + pc(last),
            Write::Hide { user, .. } => 16 + user.len() + 1 + 8,
            Write::Cursor { user, .. } => 16 + user.len() + 17,
            Write::User { user, record } => user.len() + pc(record),
            Write::Inbox { user, value, .. } => user.len() + 18 + 8 + pc(value),
            Write::Message { msg, .. } => 24 + pc(&**msg) + if msg.client_msg_id.is_empty() { 0 } else { 56 },
        }
    }
}

/// Is `conv` a group (its id's top bit)?
pub fn is_group(conv: ConvId) -> bool {
    conv.0 >> 127 == 1
}

/// A group member's place in the group's order: they see messages from `joined` (the
/// seq of the event that added them; 0: since the start) and, once they left, up to
/// `left` (the seq of the event that removed them; 0: still a member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberRow {
    /// First visible seq.
    pub joined: u64,
    /// Last visible seq once they left (0: a member).
    pub left: u64,
}

impl MemberRow {
    /// The seqs `(after, before)` (both exclusive) this member may read, within the
    /// asked `(after, before)`.
    pub fn clamp(&self, after: u64, before: u64) -> (u64, u64) {
        let after = after.max(self.joined.saturating_sub(1));
        let before = if self.left > 0 { before.min(self.left + 1) } else { before };
        (after, before)
    }
}

/// What a user's home keeps about them across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserRecord {
    /// When the last device went offline (ms since the epoch); `None`: never seen.
    pub last_seen: Option<u64>,
    /// The user hides `last_seen` from others.
    pub hide_last_seen: bool,
    /// The user turned read receipts off: their reads are not shown to others, and
    /// they see no one's.
    pub receipts_off: bool,
}

/// A member's receipt cursors in a conversation: every message up to `delivered` reached
/// one of their devices, every message up to `read` was shown. Invariant: `read <= delivered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CursorRecord {
    /// Highest seq received.
    pub delivered: u64,
    /// Highest seq read.
    pub read: u64,
    /// The member had read receipts off when `read` last moved: it is not shown to others.
    pub private: bool,
}

/// One entry of a conversation's dedupe index: enough to answer a resend with the
/// original ack, without the message body (32 bytes stored, beside the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeEntry {
    /// [`dedupe_key`] of the sender and the client's idempotency key.
    pub key: u128,
    /// The stored message's id.
    pub message_id: u64,
    /// Its acceptance time.
    pub ts: u64,
}

/// The dedupe key of `(sender, client_msg_id)`: a 128-bit hash, so two different keys
/// of one conversation collide with probability about 2^-128 per pair (user ids never
/// contain NUL, so the concatenation is unambiguous).
pub fn dedupe_key(sender: &str, client_msg_id: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(client_msg_id.as_bytes());
    h.digest128()
}

/// A conversation's newest seq and the dedupe index of its newest messages (what a
/// home shard loads; no message bodies).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// The highest stored seq (0: none).
    pub last_seq: u64,
    /// `(seq, entry)` of the newest messages that carry a client idempotency key,
    /// ascending.
    pub recent: Vec<(u64, DedupeEntry)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_ext_existed_still_decode() {
        let old = StoredMessageV1 {
            message_id: 7,
            from: "a".into(),
            from_device: "d".into(),
            client_msg_id: "c".into(),
            ts: 9,
            kind: 0,
            body: b"hi".to_vec(),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let m = StoredMessage::decode(&bytes).unwrap();
        assert_eq!((m.message_id, m.body.as_slice(), m.ext), (7, &b"hi"[..], None));
        // Group metadata of the first format gets its first admin as owner.
        let v1 = disk::ConvMetaV1::sample();
        let m = ConvMeta::decode(&postcard::to_allocvec(&v1).unwrap()).unwrap();
        let ConvKind::Group(g) = &m.kind else { panic!("a group") };
        assert_eq!((g.owner.as_str(), g.admins.len()), ("ann", 2));
        assert_eq!(ConvMeta::decode(&postcard::to_allocvec(&m).unwrap()).unwrap(), m);
        let m = StoredMessage::decode(&bytes).unwrap();
        // A current record with lifecycle fields decodes as itself.
        let ext = wire::frame::MsgExtra { reply_to: Some(3), edited_at: Some(11), ..Default::default() };
        let new = StoredMessage { ext: Some(Box::new(ext)), ..m };
        assert_eq!(StoredMessage::decode(&postcard::to_allocvec(&new).unwrap()).unwrap(), new);
        assert!(StoredMessage::decode(&bytes[..bytes.len() - 1]).is_err(), "a torn record is refused");
    }
}
