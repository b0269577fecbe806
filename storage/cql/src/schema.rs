//! The schema: versioned CQL files applied in order at start, the statements the
//! backend prepares, and where a message's seq puts it (its bucket).

/// Messages per bucket: a conversation's messages are partitioned by `(conv, seq /
/// BUCKET)`. At the largest body the gateway accepts by default (48 KiB) a bucket holds
/// at most ~50 MB; at a typical 200-byte message, ~0.25 MB.
pub const BUCKET: u64 = 1024;

/// The bucket of `seq`.
pub fn bucket(seq: u64) -> i64 {
    as_big(seq / BUCKET)
}

/// A seq or time as a CQL `bigint` (values past `i64::MAX` are clamped: no seq or time
/// gets there).
pub fn as_big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A CQL `bigint` read back (negative values, which are never written, read as 0).
pub fn from_big(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The schema files, in order: `(version, text)`. A file's statements are separated by
/// lines holding only `;`, and `{ks}` stands for the keyspace.
pub const FILES: &[(i64, &str)] = &[(1, include_str!("../schema/001_initial.cql"))];

/// The newest schema version this build knows.
pub fn latest() -> i64 {
    FILES.iter().map(|f| f.0).max().unwrap_or(0)
}

/// The statements of a schema file for keyspace `ks` (comments dropped).
pub fn statements(text: &str, ks: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t == ";" {
            push(&mut out, &mut cur);
        } else if !t.starts_with("--") && !t.is_empty() {
            cur.push_str(&line.replace("{ks}", ks));
            cur.push('\n');
        }
    }
    push(&mut out, &mut cur);
    out
}

fn push(out: &mut Vec<String>, cur: &mut String) {
    let s = cur.trim();
    if !s.is_empty() {
        out.push(s.to_owned());
    }
    cur.clear();
}

/// The `CREATE KEYSPACE` statement for `ks` with `class` and `factor`.
pub fn create_keyspace(ks: &str, class: &str, factor: u32) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': '{class}', 'replication_factor': {factor}}}"
    )
}

/// Whether `name` is a keyspace name CQL accepts unquoted (letters, digits, `_`, at most
/// 48 characters, starting with a letter).
pub fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every statement the backend runs, by name (the name labels its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stmt {
    InsMessage,
    InsDedupe,
    InsBucket,
    InsConv,
    InsUserConv,
    DelUserConv,
    InsCursor,
    InsUser,
    InsInbox,
    InsMember,
    InsGroupLast,
    InsHidden,
    InsReaction,
    DelReaction,
    SelConv,
    SelTopBucket,
    SelMessages,
    SelLastSeq,
    SelDedupe,
    SelUserConvs,
    SelCursors,
    SelUser,
    SelMembers,
    SelMember,
    SelReactions,
    SelHidden,
    SelGroupLast,
    SelInbox,
}

impl Stmt {
    /// Every statement, in index order.
    pub const ALL: [Stmt; 28] = [
        Stmt::InsMessage,
        Stmt::InsDedupe,
        Stmt::InsBucket,
        Stmt::InsConv,
        Stmt::InsUserConv,
        Stmt::DelUserConv,
        Stmt::InsCursor,
        Stmt::InsUser,
        Stmt::InsInbox,
        Stmt::InsMember,
        Stmt::InsGroupLast,
        Stmt::InsHidden,
        Stmt::InsReaction,
        Stmt::DelReaction,
        Stmt::SelConv,
        Stmt::SelTopBucket,
        Stmt::SelMessages,
        Stmt::SelLastSeq,
        Stmt::SelDedupe,
        Stmt::SelUserConvs,
        Stmt::SelCursors,
        Stmt::SelUser,
        Stmt::SelMembers,
        Stmt::SelMember,
        Stmt::SelReactions,
        Stmt::SelHidden,
        Stmt::SelGroupLast,
        Stmt::SelInbox,
    ];

    /// Its index in [`Stmt::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Stmt::InsMessage => "insert_message",
            Stmt::InsDedupe => "insert_dedupe",
            Stmt::InsBucket => "insert_bucket",
            Stmt::InsConv => "insert_conv",
            Stmt::InsUserConv => "insert_user_conv",
            Stmt::DelUserConv => "delete_user_conv",
            Stmt::InsCursor => "insert_cursor",
            Stmt::InsUser => "insert_user",
            Stmt::InsInbox => "insert_inbox",
            Stmt::InsMember => "insert_member",
            Stmt::InsGroupLast => "insert_group_last",
            Stmt::InsHidden => "insert_hidden",
            Stmt::InsReaction => "insert_reaction",
            Stmt::DelReaction => "delete_reaction",
            Stmt::SelConv => "select_conv",
            Stmt::SelTopBucket => "select_top_bucket",
            Stmt::SelMessages => "select_messages",
            Stmt::SelLastSeq => "select_last_seq",
            Stmt::SelDedupe => "select_dedupe",
            Stmt::SelUserConvs => "select_user_convs",
            Stmt::SelCursors => "select_cursors",
            Stmt::SelUser => "select_user",
            Stmt::SelMembers => "select_members",
            Stmt::SelMember => "select_member",
            Stmt::SelReactions => "select_reactions",
            Stmt::SelHidden => "select_hidden",
            Stmt::SelGroupLast => "select_group_last",
            Stmt::SelInbox => "select_inbox",
        }
    }

    /// Its CQL text for keyspace `ks`. Every statement is idempotent: an insert or a
    /// delete of a whole row by its full primary key, or a read.
    pub fn text(self, ks: &str) -> String {
        match self {
            Stmt::InsMessage => format!("INSERT INTO {ks}.messages (conv, bucket, seq, msg) VALUES (?, ?, ?, ?)"),
            Stmt::InsDedupe => format!(
                "INSERT INTO {ks}.dedupe (conv, bucket, seq, key, message_id, ts) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
            ),
            Stmt::InsBucket => format!("INSERT INTO {ks}.conv_buckets (conv, bucket) VALUES (?, ?)"),
            Stmt::InsConv => format!("INSERT INTO {ks}.convs (conv, meta) VALUES (?, ?)"),
            Stmt::InsUserConv => format!("INSERT INTO {ks}.user_convs (user, part, conv) VALUES (?, ?, ?)"),
            Stmt::DelUserConv => format!("DELETE FROM {ks}.user_convs WHERE user = ? AND part = ? AND conv = ?"),
            Stmt::InsCursor => {
                format!("INSERT INTO {ks}.cursors (conv, user, delivered, read, private) VALUES (?, ?, ?, ?, ?)")
            }
            Stmt::InsUser => format!("INSERT INTO {ks}.users (user, record) VALUES (?, ?)"),
            Stmt::InsInbox => format!("INSERT INTO {ks}.inbox (user, conv, tag, at, value) VALUES (?, ?, ?, ?, ?)"),
            Stmt::InsMember => format!("INSERT INTO {ks}.members (conv, user, joined, left_at) VALUES (?, ?, ?, ?)"),
            Stmt::InsGroupLast => format!("INSERT INTO {ks}.group_last (conv, part, at, last) VALUES (?, ?, ?, ?)"),
            Stmt::InsHidden => format!("INSERT INTO {ks}.hidden (conv, user, seq) VALUES (?, ?, ?)"),
            Stmt::InsReaction => {
                format!("INSERT INTO {ks}.reactions (conv, bucket, seq, user, emoji) VALUES (?, ?, ?, ?, ?)")
            }
            Stmt::DelReaction => {
                format!("DELETE FROM {ks}.reactions WHERE conv = ? AND bucket = ? AND seq = ? AND user = ?")
            }
            Stmt::SelConv => format!("SELECT meta FROM {ks}.convs WHERE conv = ?"),
            Stmt::SelTopBucket => format!("SELECT bucket FROM {ks}.conv_buckets WHERE conv = ? LIMIT 1"),
            Stmt::SelMessages => format!(
                "SELECT seq, msg FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq > ? AND seq < ? LIMIT ?"
            ),
            Stmt::SelLastSeq => format!("SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? LIMIT 1"),
            Stmt::SelDedupe => format!(
                "SELECT seq, key, message_id, ts FROM {ks}.dedupe WHERE conv = ? AND bucket = ? AND seq <= ? LIMIT ?"
            ),
            Stmt::SelUserConvs => format!("SELECT conv FROM {ks}.user_convs WHERE user = ? AND part = ?"),
            Stmt::SelCursors => format!("SELECT user, delivered, read, private FROM {ks}.cursors WHERE conv = ?"),
            Stmt::SelUser => format!("SELECT record FROM {ks}.users WHERE user = ?"),
            Stmt::SelMembers => format!("SELECT user, joined, left_at FROM {ks}.members WHERE conv = ?"),
            Stmt::SelMember => format!("SELECT joined, left_at FROM {ks}.members WHERE conv = ? AND user = ?"),
            Stmt::SelReactions => format!(
                "SELECT seq, user, emoji FROM {ks}.reactions WHERE conv = ? AND bucket = ? AND seq >= ? AND seq <= ?"
            ),
            Stmt::SelHidden => {
                format!("SELECT seq FROM {ks}.hidden WHERE conv = ? AND user = ? AND seq >= ? AND seq <= ?")
            }
            Stmt::SelGroupLast => format!("SELECT at, last FROM {ks}.group_last WHERE conv = ? AND part = ?"),
            Stmt::SelInbox => format!("SELECT conv, tag, at, value FROM {ks}.inbox WHERE user = ?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_every_1024_seqs() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(1023), 0);
        assert_eq!(bucket(1024), 1);
        assert_eq!(bucket(5 * 1024 + 7), 5);
        assert_eq!(bucket(u64::MAX), as_big(u64::MAX / BUCKET));
        assert_eq!(as_big(u64::MAX), i64::MAX);
        assert_eq!(from_big(-1), 0);
        assert_eq!(from_big(as_big(42)), 42);
    }

    #[test]
    fn schema_files_split_into_statements_for_the_keyspace() {
        let stmts = statements(FILES[0].1, "chat");
        assert_eq!(stmts.len(), 13, "{stmts:#?}");
        assert!(stmts.iter().all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS chat.")), "{stmts:#?}");
        assert!(stmts.iter().all(|s| !s.contains("{ks}") && !s.contains("--")));
        let messages = stmts.iter().find(|s| s.contains("chat.messages")).unwrap();
        assert!(messages.contains("PRIMARY KEY ((conv, bucket), seq)"), "{messages}");
        assert!(messages.contains("CLUSTERING ORDER BY (seq DESC)"), "{messages}");
        assert_eq!(latest(), 1);
    }

    #[test]
    fn statement_texts_bind_every_key_column() {
        assert_eq!(Stmt::ALL.iter().enumerate().filter(|(i, s)| s.index() != *i).count(), 0);
        for s in Stmt::ALL {
            let t = s.text("ks");
            assert!(t.contains("ks."), "{t}");
            assert!(!s.name().is_empty());
        }
        assert_eq!(Stmt::InsMessage.text("ks"), "INSERT INTO ks.messages (conv, bucket, seq, msg) VALUES (?, ?, ?, ?)");
        // Reads of a whole partition's newest rows rely on the clustering order.
        assert!(Stmt::SelLastSeq.text("ks").ends_with("LIMIT 1"));
        assert_eq!(
            create_keyspace("ks", "NetworkTopologyStrategy", 3),
            "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
        );
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(valid_keyspace("switchboard"));
        assert!(valid_keyspace("sb_test_42"));
        assert!(!valid_keyspace("1abc"));
        assert!(!valid_keyspace("a-b"));
        assert!(!valid_keyspace("a; DROP"));
        assert!(!valid_keyspace(""));
        assert!(!valid_keyspace(&"a".repeat(49)));
    }
}
