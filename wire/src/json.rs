//! The JSON codec: one JSON object per WebSocket text frame, `op` names the frame.
//!
//! Bodies are strings: the text itself for `kind: "text"`, standard base64 for
//! `kind: "data"`. Conversation ids are 32 hex digits and `message_id` is a decimal
//! string (JavaScript numbers cannot hold 64 bits). See docs/PROTOCOL.md.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::frame::{
    check, ClientFrame, ConvEntry, ConvId, ConvSettings, ConversationList, ConversationsReq, ForwardOf, Forwarded,
    GroupAction, GroupInfo, GroupOp, History, Message, MsgExtra, MsgKind, MsgRef, Page, PresenceState, PresenceUpdate,
    ReactionCount, ReceiptList, ReceiptsReq, ServerFrame, SyncPoint,
};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JsonClient {
    Hello {
        #[serde(default)]
        sync: Vec<JsonSyncPoint>,
        list_since: Option<u64>,
    },
    Send {
        client_msg_id: Option<String>,
        to: Option<String>,
        conv: Option<String>,
        body: Option<String>,
        kind: Option<String>,
        reply_to: Option<u64>,
        target: Option<u64>,
        forward: Option<JsonForwardOf>,
    },
    History {
        req_id: Option<String>,
        conv: Option<String>,
        before_seq: Option<u64>,
        limit: Option<u32>,
    },
    PresenceSub {
        users: Option<Vec<String>>,
    },
    PresenceUnsub {
        users: Option<Vec<String>>,
    },
    PresenceSet {
        state: Option<String>,
        hide_last_seen: Option<bool>,
    },
    Typing {
        conv: Option<String>,
        typing: Option<bool>,
    },
    Group {
        req_id: Option<String>,
        action: Option<String>,
        conv: Option<String>,
        name: Option<String>,
        #[serde(default)]
        members: Vec<String>,
        description: Option<String>,
        avatar: Option<String>,
    },
    Delivered {
        conv: Option<String>,
        seq: Option<u64>,
    },
    Read {
        conv: Option<String>,
        seq: Option<u64>,
    },
    Receipts {
        req_id: Option<String>,
        conv: Option<String>,
        seq: Option<u64>,
        after: Option<String>,
        limit: Option<u32>,
    },
    Settings {
        read_receipts: Option<bool>,
    },
    Conversations {
        req_id: Option<String>,
        cursor: Option<String>,
        limit: Option<u32>,
        since: Option<u64>,
    },
    ConvSettings {
        conv: Option<String>,
        muted_until: Option<u64>,
        archived: Option<bool>,
        pinned: Option<bool>,
    },
    Hide {
        conv: Option<String>,
        seqs: Option<Vec<u64>>,
    },
}

fn presence_state(s: &str) -> Result<PresenceState, DecodeError> {
    PresenceState::from_name(s)
        .ok_or(DecodeError::BadValue { field: "state", reason: "state is \"online\", \"away\" or \"offline\"" })
}

#[derive(Deserialize)]
struct JsonForwardOf {
    conv: Option<String>,
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct JsonSyncPoint {
    conv: Option<String>,
    seq: Option<u64>,
}

fn conv(field: &'static str, s: &str) -> Result<ConvId, DecodeError> {
    ConvId::parse_hex(s).ok_or(DecodeError::BadValue { field, reason: "a conversation id is 32 hex digits" })
}

fn kind(s: Option<&str>) -> Result<MsgKind, DecodeError> {
    match s {
        None => Ok(MsgKind::Text),
        Some(name) => MsgKind::from_name(name).ok_or(DecodeError::BadValue {
            field: "kind",
            reason: "kind is text, data, media, edit, delete or reaction",
        }),
    }
}

/// A body as JSON carries it: the text for text-like kinds, base64 for `data`.
fn body_bytes(kind: MsgKind, body: &str) -> Result<Vec<u8>, DecodeError> {
    if kind.is_text() {
        return Ok(body.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|_| DecodeError::BadValue { field: "body", reason: "a data body is standard base64" })
}

/// What a frame that failed to decode still tells: its op and the id its error should
/// carry. Parsed only after a failure, so a good frame is parsed once.
#[derive(Deserialize)]
struct Head {
    op: Option<serde_json::Value>,
    client_msg_id: Option<serde_json::Value>,
    req_id: Option<serde_json::Value>,
}

/// The client frame ops, as they appear in `op`.
const CLIENT_OPS: [&str; 15] = [
    "hello",
    "send",
    "history",
    "presence_sub",
    "presence_unsub",
    "presence_set",
    "typing",
    "group",
    "delivered",
    "read",
    "receipts",
    "settings",
    "conversations",
    "conv_settings",
    "hide",
];

fn head(payload: &[u8]) -> Option<Head> {
    serde_json::from_slice(payload).ok()
}

/// Classifies a frame serde refused by its structure, not by the error's text: no op,
/// an op that is not a client frame, or else malformed (serde's message says where).
fn decode_error(payload: &[u8], e: serde_json::Error) -> DecodeError {
    match head(payload).map(|h| h.op) {
        Some(None) => DecodeError::MissingField("op"),
        Some(Some(serde_json::Value::String(op))) if !CLIENT_OPS.contains(&op.as_str()) => DecodeError::UnknownOp(op),
        Some(Some(op)) if !op.is_string() => DecodeError::BadValue { field: "op", reason: "op is a string" },
        _ => DecodeError::Malformed(e.to_string()),
    }
}

/// The id an `error` frame about this (refused) frame should carry: its `client_msg_id`
/// (a send) or `req_id`, when the frame is a JSON object that has a valid one.
pub fn ref_id(payload: &[u8]) -> Option<String> {
    let h = head(payload)?;
    let id = match h.op.as_ref().and_then(|o| o.as_str()) {
        Some("send") => h.client_msg_id,
        _ => h.req_id,
    };
    match id {
        Some(serde_json::Value::String(id)) if check::client_id("ref_id", &id).is_ok() => Some(id),
        _ => None,
    }
}

/// Decodes one client frame from a text frame's payload.
pub fn decode_client(payload: &[u8]) -> Result<ClientFrame, DecodeError> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::Malformed("a frame is one JSON object".into()));
    }
    let frame: JsonClient = serde_json::from_slice(payload).map_err(|e| decode_error(payload, e))?;
    Ok(match frame {
        JsonClient::Hello { sync, list_since } => {
            let mut points = Vec::with_capacity(sync.len());
            for p in sync {
                let c = p.conv.ok_or(DecodeError::MissingField("sync.conv"))?;
                points.push(SyncPoint { conv: conv("sync.conv", &c)?, seq: p.seq.unwrap_or(0) });
            }
            ClientFrame::Hello { sync: points, list_since }
        }
        JsonClient::Send { client_msg_id, to, conv: c, body, kind: k, reply_to, target, forward } => {
            let kind = kind(k.as_deref())?;
            let c = c.map(|c| conv("conv", &c)).transpose()?;
            let forward = match forward {
                None => None,
                Some(f) => Some(ForwardOf {
                    conv: conv("forward.conv", &f.conv.ok_or(DecodeError::MissingField("forward.conv"))?)?,
                    seq: f.seq.ok_or(DecodeError::MissingField("forward.seq"))?,
                }),
            };
            // A forward has no body of its own.
            let body = match (body, &forward) {
                (None, Some(_)) => Some(Vec::new()),
                (b, _) => b.map(|b| body_bytes(kind, &b)).transpose()?,
            };
            ClientFrame::Send(check::send(client_msg_id, to, c, body, kind, reply_to, target, forward)?)
        }
        JsonClient::History { req_id, conv: c, before_seq, limit } => {
            if let Some(r) = &req_id {
                check::client_id("req_id", r)?;
            }
            let c = c.ok_or(DecodeError::MissingField("conv"))?;
            ClientFrame::History(History { req_id, conv: conv("conv", &c)?, before_seq, limit })
        }
        JsonClient::PresenceSub { users } => {
            let users = users.ok_or(DecodeError::MissingField("users"))?;
            check::users(&users)?;
            ClientFrame::PresenceSub { users }
        }
        JsonClient::PresenceUnsub { users } => {
            let users = users.ok_or(DecodeError::MissingField("users"))?;
            check::users(&users)?;
            ClientFrame::PresenceUnsub { users }
        }
        JsonClient::PresenceSet { state, hide_last_seen } => {
            let state = presence_state(&state.ok_or(DecodeError::MissingField("state"))?)?;
            ClientFrame::PresenceSet { state: check::settable(state)?, hide_last_seen }
        }
        JsonClient::Typing { conv: c, typing } => {
            let c = c.ok_or(DecodeError::MissingField("conv"))?;
            ClientFrame::Typing { conv: conv("conv", &c)?, typing: typing.unwrap_or(true) }
        }
        JsonClient::Group { req_id, action, conv: c, name, members, description, avatar } => {
            let action = action.ok_or(DecodeError::MissingField("action"))?;
            let action = GroupAction::from_name(&action).ok_or(DecodeError::BadValue {
                field: "action",
                reason:
                    "action is create, add, remove, leave, rename, promote, demote, info, describe, transfer or delete",
            })?;
            let conv = c.map(|c| conv("conv", &c)).transpose()?;
            ClientFrame::Group(check::group(GroupOp { req_id, action, conv, name, members, description, avatar })?)
        }
        JsonClient::Delivered { conv: c, seq } => {
            let (conv, seq) = cursor(c, seq)?;
            ClientFrame::Delivered { conv, seq }
        }
        JsonClient::Read { conv: c, seq } => {
            let (conv, seq) = cursor(c, seq)?;
            ClientFrame::Read { conv, seq }
        }
        JsonClient::Receipts { req_id, conv: c, seq, after, limit } => {
            let (conv, seq) = cursor(c, seq)?;
            ClientFrame::Receipts(check::receipts(ReceiptsReq { req_id, conv, seq, after, limit })?)
        }
        JsonClient::Settings { read_receipts } => ClientFrame::Settings { read_receipts },
        JsonClient::Conversations { req_id, cursor, limit, since } => {
            ClientFrame::Conversations(check::conversations(ConversationsReq { req_id, cursor, limit, since })?)
        }
        JsonClient::Hide { conv: c, seqs } => {
            let conv = conv("conv", &c.ok_or(DecodeError::MissingField("conv"))?)?;
            check::hide(conv, seqs.ok_or(DecodeError::MissingField("seqs"))?)?
        }
        JsonClient::ConvSettings { conv: c, muted_until, archived, pinned } => {
            let conv = conv("conv", &c.ok_or(DecodeError::MissingField("conv"))?)?;
            ClientFrame::ConvSettings(check::conv_settings(ConvSettings { conv, muted_until, archived, pinned })?)
        }
    })
}

fn cursor(c: Option<String>, seq: Option<u64>) -> Result<(ConvId, u64), DecodeError> {
    let c = c.ok_or(DecodeError::MissingField("conv"))?;
    Ok((conv("conv", &c)?, seq.ok_or(DecodeError::MissingField("seq"))?))
}

// ---- encoding server frames ----

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JsonServer<'a> {
    Ready {
        user: &'a str,
        device: &'a str,
        shard: u16,
        max_frame: u32,
        encoding: &'a str,
    },
    Ack {
        client_msg_id: &'a str,
        conv: String,
        seq: u64,
        message_id: String,
        ts: u64,
        duplicate: bool,
    },
    Msg(JsonMessage<'a>),
    HistoryPage(JsonPage<'a>),
    SyncPage(JsonPage<'a>),
    Synced {
        convs: u32,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        ref_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u32>,
    },
    Presence {
        updates: Vec<JsonPresence<'a>>,
    },
    Typing {
        conv: String,
        from: &'a str,
        typing: bool,
    },
    GroupInfo {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a str>,
        conv: String,
        name: &'a str,
        members: &'a [String],
        admins: &'a [String],
        seq: u64,
        owner: &'a str,
        description: &'a str,
        avatar: &'a str,
        deleted: bool,
    },
    Receipt {
        conv: String,
        user: &'a str,
        delivered: u64,
        read: u64,
    },
    ReceiptCount {
        conv: String,
        seq: u64,
        members: u32,
        delivered: u32,
        read: u32,
    },
    ReceiptList {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a str>,
        conv: String,
        seq: u64,
        delivered: &'a [String],
        read: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
    },
    ConversationList {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a str>,
        items: Vec<JsonConvEntry<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
        token: u64,
    },
    ConvSettings(JsonConvSettings),
    Hidden {
        conv: String,
        seqs: &'a [u64],
    },
}

#[derive(Serialize)]
struct JsonConvEntry<'a> {
    conv: String,
    group: bool,
    title: &'a str,
    members: u32,
    last_seq: u64,
    last_ts: u64,
    last_from: &'a str,
    last_kind: &'static str,
    preview: &'a str,
    read: u64,
    unread: u64,
    muted_until: u64,
    archived: bool,
    pinned: bool,
    peer_delivered: u64,
    peer_read: u64,
}

#[derive(Serialize)]
struct JsonConvSettings {
    conv: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    muted_until: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    archived: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned: Option<bool>,
}

fn conv_settings(s: &ConvSettings) -> JsonConvSettings {
    JsonConvSettings { conv: s.conv.to_string(), muted_until: s.muted_until, archived: s.archived, pinned: s.pinned }
}

#[derive(Serialize)]
struct JsonPresence<'a> {
    user: &'a str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
}

#[derive(Serialize)]
struct JsonMessage<'a> {
    conv: String,
    seq: u64,
    message_id: String,
    from: &'a str,
    from_device: &'a str,
    ts: u64,
    kind: &'static str,
    body: JsonBody<'a>,
    client_msg_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    reactions: &'a [ReactionCount],
    #[serde(skip_serializing_if = "Option::is_none")]
    my_reaction: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded: Option<JsonForwarded<'a>>,
}

#[derive(Serialize)]
struct JsonForwarded<'a> {
    conv: String,
    seq: u64,
    from: &'a str,
    times: u32,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonBody<'a> {
    Text(&'a str),
    Base64(String),
}

#[derive(Serialize)]
struct JsonPage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    req_id: Option<&'a str>,
    conv: String,
    messages: Vec<JsonMessage<'a>>,
    has_more: bool,
}

fn message<'a>(m: &MsgRef<'a>) -> JsonMessage<'a> {
    let body = match (m.kind.is_text(), std::str::from_utf8(m.body)) {
        (true, Ok(text)) => JsonBody::Text(text),
        // Stored text-like bodies are always UTF-8 (checked on send, written by the
        // server); base64 keeps the codec total.
        _ => JsonBody::Base64(base64::engine::general_purpose::STANDARD.encode(m.body)),
    };
    let x = m.extra;
    JsonMessage {
        conv: m.conv.to_string(),
        seq: m.seq,
        message_id: m.message_id.to_string(),
        from: m.from,
        from_device: m.from_device,
        ts: m.ts,
        kind: m.kind.name(),
        body,
        client_msg_id: m.client_msg_id,
        reply_to: x.and_then(|x| x.reply_to),
        target: x.and_then(|x| x.target),
        edited_at: x.and_then(|x| x.edited_at),
        deleted_by: x.and_then(|x| x.deleted_by.as_deref()),
        deleted_at: x.and_then(|x| x.deleted_at),
        reactions: x.map_or(&[], |x| &x.reactions),
        my_reaction: x.and_then(|x| x.my_reaction.as_deref()),
        forwarded: x.and_then(|x| x.forwarded.as_ref()).map(|f| JsonForwarded {
            conv: f.conv.to_string(),
            seq: f.seq,
            from: &f.from,
            times: f.times,
        }),
    }
}

fn kind_name(k: MsgKind) -> &'static str {
    k.name()
}

fn page(p: &Page) -> JsonPage<'_> {
    JsonPage {
        req_id: p.req_id.as_deref(),
        conv: p.conv.to_string(),
        messages: p.messages.iter().map(|m| message(&m.as_ref())).collect(),
        has_more: p.has_more,
    }
}

/// Appends the JSON encoding of a server frame to `out`.
pub fn encode_server(frame: &ServerFrame, out: &mut Vec<u8>) {
    let j = match frame {
        ServerFrame::Ready { user, device, shard, max_frame, encoding } => {
            JsonServer::Ready { user, device, shard: *shard, max_frame: *max_frame, encoding }
        }
        ServerFrame::Ack(a) => JsonServer::Ack {
            client_msg_id: &a.client_msg_id,
            conv: a.conv.to_string(),
            seq: a.seq,
            message_id: a.message_id.to_string(),
            ts: a.ts,
            duplicate: a.duplicate,
        },
        ServerFrame::Msg(m) => return encode_msg(&m.as_ref(), out),
        ServerFrame::HistoryPage(p) => JsonServer::HistoryPage(page(p)),
        ServerFrame::SyncPage(p) => JsonServer::SyncPage(page(p)),
        ServerFrame::Synced { convs } => JsonServer::Synced { convs: *convs },
        ServerFrame::Error(e) => JsonServer::Error {
            code: e.code.name(),
            message: &e.message,
            ref_id: e.ref_id.as_deref(),
            retry_after_ms: e.retry_after_ms,
        },
        ServerFrame::Presence { updates } => JsonServer::Presence {
            updates: updates
                .iter()
                .map(|u| JsonPresence { user: &u.user, state: u.state.name(), last_seen: u.last_seen })
                .collect(),
        },
        ServerFrame::Typing { conv, from, typing } => {
            JsonServer::Typing { conv: conv.to_string(), from, typing: *typing }
        }
        ServerFrame::Receipt { conv, user, delivered, read } => {
            JsonServer::Receipt { conv: conv.to_string(), user, delivered: *delivered, read: *read }
        }
        ServerFrame::ReceiptCount { conv, seq, members, delivered, read } => JsonServer::ReceiptCount {
            conv: conv.to_string(),
            seq: *seq,
            members: *members,
            delivered: *delivered,
            read: *read,
        },
        ServerFrame::ReceiptList(l) => JsonServer::ReceiptList {
            req_id: l.req_id.as_deref(),
            conv: l.conv.to_string(),
            seq: l.seq,
            delivered: &l.delivered,
            read: &l.read,
            next: l.next.as_deref(),
        },
        ServerFrame::ConversationList(l) => JsonServer::ConversationList {
            req_id: l.req_id.as_deref(),
            items: l
                .items
                .iter()
                .map(|e| JsonConvEntry {
                    conv: e.conv.to_string(),
                    group: e.group,
                    title: &e.title,
                    members: e.members,
                    last_seq: e.last_seq,
                    last_ts: e.last_ts,
                    last_from: &e.last_from,
                    last_kind: kind_name(e.last_kind),
                    preview: &e.preview,
                    read: e.read,
                    unread: e.unread,
                    muted_until: e.muted_until,
                    archived: e.archived,
                    pinned: e.pinned,
                    peer_delivered: e.peer_delivered,
                    peer_read: e.peer_read,
                })
                .collect(),
            next: l.next.as_deref(),
            token: l.token,
        },
        ServerFrame::ConvSettings(c) => JsonServer::ConvSettings(conv_settings(c)),
        ServerFrame::Hidden { conv, seqs } => JsonServer::Hidden { conv: conv.to_string(), seqs },
        ServerFrame::GroupInfo(i) => JsonServer::GroupInfo {
            req_id: i.req_id.as_deref(),
            conv: i.conv.to_string(),
            name: &i.name,
            members: &i.members,
            admins: &i.admins,
            seq: i.seq,
            owner: &i.owner,
            description: &i.description,
            avatar: &i.avatar,
            deleted: i.deleted,
        },
    };
    // Serializing plain structs of strings and integers into a Vec cannot fail.
    serde_json::to_writer(out, &j).expect("JSON encoding of a server frame is infallible");
}

/// Appends the JSON encoding of a `msg` frame to `out`.
pub fn encode_msg(m: &MsgRef<'_>, out: &mut Vec<u8>) {
    serde_json::to_writer(out, &JsonServer::Msg(message(m))).expect("JSON encoding of a msg frame is infallible");
}

/// Encodes a client frame (for client libraries, tests and the load generator).
pub fn encode_client(frame: &ClientFrame) -> Vec<u8> {
    let v = match frame {
        ClientFrame::Hello { sync, list_since } => {
            let mut v = serde_json::json!({
                "op": "hello",
                "sync": sync.iter().map(|p| serde_json::json!({"conv": p.conv.to_string(), "seq": p.seq})).collect::<Vec<_>>(),
            });
            if let Some(t) = list_since {
                v["list_since"] = (*t).into();
            }
            v
        }
        ClientFrame::Send(s) => {
            let mut v = serde_json::json!({
                "op": "send",
                "client_msg_id": s.client_msg_id,
                "kind": kind_name(s.kind),
                "body": if s.kind.is_text() {
                    String::from_utf8_lossy(&s.body).into_owned()
                } else {
                    base64::engine::general_purpose::STANDARD.encode(&s.body)
                },
            });
            if let Some(r) = s.reply_to {
                v["reply_to"] = r.into();
            }
            if let Some(t) = s.target_seq {
                v["target"] = t.into();
            }
            if let Some(f) = &s.forward {
                v["forward"] = serde_json::json!({"conv": f.conv.to_string(), "seq": f.seq});
            }
            match &s.target {
                crate::frame::Target::User(u) => v["to"] = u.as_str().into(),
                crate::frame::Target::Conv(c) => v["conv"] = c.to_string().into(),
            }
            v
        }
        ClientFrame::PresenceSub { users } => serde_json::json!({"op": "presence_sub", "users": users}),
        ClientFrame::PresenceUnsub { users } => serde_json::json!({"op": "presence_unsub", "users": users}),
        ClientFrame::PresenceSet { state, hide_last_seen } => {
            let mut v = serde_json::json!({"op": "presence_set", "state": state.name()});
            if let Some(h) = hide_last_seen {
                v["hide_last_seen"] = (*h).into();
            }
            v
        }
        ClientFrame::Typing { conv, typing } => {
            serde_json::json!({"op": "typing", "conv": conv.to_string(), "typing": typing})
        }
        ClientFrame::Delivered { conv, seq } => {
            serde_json::json!({"op": "delivered", "conv": conv.to_string(), "seq": seq})
        }
        ClientFrame::Read { conv, seq } => serde_json::json!({"op": "read", "conv": conv.to_string(), "seq": seq}),
        ClientFrame::Receipts(r) => {
            let mut v = serde_json::json!({"op": "receipts", "conv": r.conv.to_string(), "seq": r.seq});
            if let Some(x) = &r.req_id {
                v["req_id"] = x.as_str().into();
            }
            if let Some(x) = &r.after {
                v["after"] = x.as_str().into();
            }
            if let Some(x) = r.limit {
                v["limit"] = x.into();
            }
            v
        }
        ClientFrame::Settings { read_receipts } => {
            let mut v = serde_json::json!({"op": "settings"});
            if let Some(x) = read_receipts {
                v["read_receipts"] = (*x).into();
            }
            v
        }
        ClientFrame::Conversations(c) => {
            let mut v = serde_json::json!({"op": "conversations"});
            if let Some(x) = &c.req_id {
                v["req_id"] = x.as_str().into();
            }
            if let Some(x) = &c.cursor {
                v["cursor"] = x.as_str().into();
            }
            if let Some(x) = c.limit {
                v["limit"] = x.into();
            }
            if let Some(x) = c.since {
                v["since"] = x.into();
            }
            v
        }
        ClientFrame::Hide { conv, seqs } => serde_json::json!({"op": "hide", "conv": conv.to_string(), "seqs": seqs}),
        ClientFrame::ConvSettings(c) => {
            let mut v = serde_json::to_value(conv_settings(c)).expect("plain struct");
            v["op"] = "conv_settings".into();
            v
        }
        ClientFrame::History(h) => {
            let mut v = serde_json::json!({"op": "history", "conv": h.conv.to_string()});
            if let Some(r) = &h.req_id {
                v["req_id"] = r.as_str().into();
            }
            if let Some(b) = h.before_seq {
                v["before_seq"] = b.into();
            }
            if let Some(l) = h.limit {
                v["limit"] = l.into();
            }
            v
        }
        ClientFrame::Group(op) => {
            let mut v = serde_json::json!({"op": "group", "action": op.action.name()});
            if let Some(r) = &op.req_id {
                v["req_id"] = r.as_str().into();
            }
            if let Some(c) = op.conv {
                v["conv"] = c.to_string().into();
            }
            if let Some(n) = &op.name {
                v["name"] = n.as_str().into();
            }
            if !op.members.is_empty() {
                v["members"] = op.members.clone().into();
            }
            if let Some(d) = &op.description {
                v["description"] = d.as_str().into();
            }
            if let Some(a) = &op.avatar {
                v["avatar"] = a.as_str().into();
            }
            v
        }
    };
    serde_json::to_vec(&v).expect("JSON encoding of a client frame is infallible")
}

/// Decodes a server frame (for client libraries, tests and the load generator).
pub fn decode_server(payload: &[u8]) -> Result<ServerFrame, DecodeError> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let s = |k: &'static str| v.get(k).and_then(|x| x.as_str()).ok_or(DecodeError::MissingField(k));
    let u = |k: &'static str| v.get(k).and_then(|x| x.as_u64()).ok_or(DecodeError::MissingField(k));
    let b = |k: &'static str| v.get(k).and_then(|x| x.as_bool()).ok_or(DecodeError::MissingField(k));
    let mid = |x: &str| x.parse::<u64>().map_err(|_| DecodeError::BadValue { field: "message_id", reason: "decimal" });
    let list = |k: &'static str| -> Result<Vec<String>, DecodeError> {
        v.get(k)
            .and_then(|x| x.as_array())
            .ok_or(DecodeError::MissingField(k))?
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or(DecodeError::BadValue { field: k, reason: "strings" }))
            .collect()
    };
    fn msg(v: &serde_json::Value) -> Result<Message, DecodeError> {
        let s = |k: &'static str| v.get(k).and_then(|x| x.as_str()).ok_or(DecodeError::MissingField(k));
        let u = |k: &'static str| v.get(k).and_then(|x| x.as_u64()).ok_or(DecodeError::MissingField(k));
        let kind = kind(Some(s("kind")?))?;
        let body = body_bytes(kind, s("body")?)?;
        let reactions = match v.get("reactions").and_then(|r| r.as_array()) {
            None => Vec::new(),
            Some(rs) => rs
                .iter()
                .map(|r| {
                    let emoji = r.get("emoji").and_then(|e| e.as_str()).ok_or(DecodeError::MissingField("emoji"))?;
                    let count = r.get("count").and_then(|c| c.as_u64()).ok_or(DecodeError::MissingField("count"))?;
                    Ok(ReactionCount { emoji: emoji.to_owned(), count: count as u32 })
                })
                .collect::<Result<_, DecodeError>>()?,
        };
        let extra = MsgExtra {
            reply_to: v.get("reply_to").and_then(|x| x.as_u64()),
            target: v.get("target").and_then(|x| x.as_u64()),
            edited_at: v.get("edited_at").and_then(|x| x.as_u64()),
            deleted_by: v.get("deleted_by").and_then(|x| x.as_str()).map(str::to_owned),
            deleted_at: v.get("deleted_at").and_then(|x| x.as_u64()),
            reactions,
            my_reaction: v.get("my_reaction").and_then(|x| x.as_str()).map(str::to_owned),
            forwarded: match v.get("forwarded") {
                None => None,
                Some(f) => Some(Forwarded {
                    conv: conv(
                        "forwarded.conv",
                        f.get("conv").and_then(|c| c.as_str()).ok_or(DecodeError::MissingField("forwarded.conv"))?,
                    )?,
                    seq: f.get("seq").and_then(|x| x.as_u64()).ok_or(DecodeError::MissingField("forwarded.seq"))?,
                    from: f.get("from").and_then(|x| x.as_str()).unwrap_or_default().to_owned(),
                    times: f.get("times").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
                }),
            },
        };
        Ok(Message {
            conv: conv("conv", s("conv")?)?,
            seq: u("seq")?,
            message_id: s("message_id")?
                .parse()
                .map_err(|_| DecodeError::BadValue { field: "message_id", reason: "decimal" })?,
            from: s("from")?.to_owned(),
            from_device: s("from_device")?.to_owned(),
            ts: u("ts")?,
            kind,
            body,
            client_msg_id: s("client_msg_id")?.to_owned(),
            extra: (extra != MsgExtra::default()).then(|| Box::new(extra)),
        })
    }
    let page = |v: &serde_json::Value| -> Result<Page, DecodeError> {
        let messages = v
            .get("messages")
            .and_then(|m| m.as_array())
            .ok_or(DecodeError::MissingField("messages"))?
            .iter()
            .map(msg)
            .collect::<Result<_, _>>()?;
        Ok(Page {
            req_id: v.get("req_id").and_then(|r| r.as_str()).map(str::to_owned),
            conv: conv("conv", v.get("conv").and_then(|x| x.as_str()).ok_or(DecodeError::MissingField("conv"))?)?,
            messages,
            has_more: v.get("has_more").and_then(|x| x.as_bool()).unwrap_or(false),
        })
    };
    Ok(match s("op")? {
        "ready" => ServerFrame::Ready {
            user: s("user")?.to_owned(),
            device: s("device")?.to_owned(),
            shard: u("shard")? as u16,
            max_frame: u("max_frame")? as u32,
            encoding: s("encoding")?.to_owned(),
        },
        "ack" => ServerFrame::Ack(crate::frame::Ack {
            client_msg_id: s("client_msg_id")?.to_owned(),
            conv: conv("conv", s("conv")?)?,
            seq: u("seq")?,
            message_id: mid(s("message_id")?)?,
            ts: u("ts")?,
            duplicate: b("duplicate")?,
        }),
        "msg" => ServerFrame::Msg(msg(&v)?),
        "history_page" => ServerFrame::HistoryPage(page(&v)?),
        "sync_page" => ServerFrame::SyncPage(page(&v)?),
        "synced" => ServerFrame::Synced { convs: u("convs")? as u32 },
        "error" => ServerFrame::Error(crate::frame::ErrorFrame {
            code: crate::error::ErrorCode::from_name(s("code")?)
                .ok_or(DecodeError::BadValue { field: "code", reason: "unknown code" })?,
            message: s("message")?.to_owned(),
            ref_id: v.get("ref_id").and_then(|r| r.as_str()).map(str::to_owned),
            retry_after_ms: v.get("retry_after_ms").and_then(|r| r.as_u64()).map(|r| r as u32),
        }),
        "presence" => ServerFrame::Presence {
            updates: v
                .get("updates")
                .and_then(|u| u.as_array())
                .ok_or(DecodeError::MissingField("updates"))?
                .iter()
                .map(|u| {
                    Ok(PresenceUpdate {
                        user: u
                            .get("user")
                            .and_then(|x| x.as_str())
                            .ok_or(DecodeError::MissingField("user"))?
                            .to_owned(),
                        state: presence_state(
                            u.get("state").and_then(|x| x.as_str()).ok_or(DecodeError::MissingField("state"))?,
                        )?,
                        last_seen: u.get("last_seen").and_then(|x| x.as_u64()),
                    })
                })
                .collect::<Result<_, DecodeError>>()?,
        },
        "typing" => {
            ServerFrame::Typing { conv: conv("conv", s("conv")?)?, from: s("from")?.to_owned(), typing: b("typing")? }
        }
        "receipt" => ServerFrame::Receipt {
            conv: conv("conv", s("conv")?)?,
            user: s("user")?.to_owned(),
            delivered: u("delivered")?,
            read: u("read")?,
        },
        "receipt_count" => {
            let n = |k: &'static str| -> Result<u32, DecodeError> {
                u32::try_from(u(k)?).map_err(|_| DecodeError::BadValue { field: k, reason: "a 32-bit count" })
            };
            ServerFrame::ReceiptCount {
                conv: conv("conv", s("conv")?)?,
                seq: u("seq")?,
                members: n("members")?,
                delivered: n("delivered")?,
                read: n("read")?,
            }
        }
        "receipt_list" => ServerFrame::ReceiptList(ReceiptList {
            req_id: v.get("req_id").and_then(|r| r.as_str()).map(str::to_owned),
            conv: conv("conv", s("conv")?)?,
            seq: u("seq")?,
            delivered: list("delivered")?,
            read: list("read")?,
            next: v.get("next").and_then(|r| r.as_str()).map(str::to_owned),
        }),
        "conversation_list" => {
            let items = v.get("items").and_then(|x| x.as_array()).ok_or(DecodeError::MissingField("items"))?;
            let items = items.iter().map(conv_entry).collect::<Result<_, _>>()?;
            ServerFrame::ConversationList(ConversationList {
                req_id: v.get("req_id").and_then(|r| r.as_str()).map(str::to_owned),
                items,
                next: v.get("next").and_then(|r| r.as_str()).map(str::to_owned),
                token: u("token")?,
            })
        }
        "hidden" => ServerFrame::Hidden {
            conv: conv("conv", s("conv")?)?,
            seqs: v
                .get("seqs")
                .and_then(|x| x.as_array())
                .ok_or(DecodeError::MissingField("seqs"))?
                .iter()
                .map(|x| x.as_u64().ok_or(DecodeError::BadValue { field: "seqs", reason: "integers" }))
                .collect::<Result<_, _>>()?,
        },
        "conv_settings" => ServerFrame::ConvSettings(ConvSettings {
            conv: conv("conv", s("conv")?)?,
            muted_until: v.get("muted_until").and_then(|x| x.as_u64()),
            archived: v.get("archived").and_then(|x| x.as_bool()),
            pinned: v.get("pinned").and_then(|x| x.as_bool()),
        }),
        "group_info" => ServerFrame::GroupInfo(Box::new(GroupInfo {
            req_id: v.get("req_id").and_then(|r| r.as_str()).map(str::to_owned),
            conv: conv("conv", s("conv")?)?,
            name: s("name")?.to_owned(),
            members: list("members")?,
            admins: list("admins")?,
            seq: u("seq")?,
            owner: s("owner")?.to_owned(),
            description: s("description")?.to_owned(),
            avatar: s("avatar")?.to_owned(),
            deleted: b("deleted")?,
        })),
        other => return Err(DecodeError::UnknownOp(other.to_owned())),
    })
}

fn conv_entry(v: &serde_json::Value) -> Result<ConvEntry, DecodeError> {
    let s = |k: &'static str| v.get(k).and_then(|x| x.as_str()).ok_or(DecodeError::MissingField(k));
    let u = |k: &'static str| v.get(k).and_then(|x| x.as_u64()).ok_or(DecodeError::MissingField(k));
    let b = |k: &'static str| v.get(k).and_then(|x| x.as_bool()).ok_or(DecodeError::MissingField(k));
    Ok(ConvEntry {
        conv: conv("conv", s("conv")?)?,
        group: b("group")?,
        title: s("title")?.to_owned(),
        members: u32::try_from(u("members")?).map_err(|_| DecodeError::BadValue { field: "members", reason: "u32" })?,
        last_seq: u("last_seq")?,
        last_ts: u("last_ts")?,
        last_from: s("last_from")?.to_owned(),
        last_kind: kind(Some(s("last_kind")?))?,
        preview: s("preview")?.to_owned(),
        read: u("read")?,
        unread: u("unread")?,
        muted_until: u("muted_until")?,
        archived: b("archived")?,
        pinned: b("pinned")?,
        peer_delivered: u("peer_delivered")?,
        peer_read: u("peer_read")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn refused_frames_are_classified_by_structure_and_keep_their_id() {
        let code = |t: &str| decode_client(t.as_bytes()).unwrap_err().code();
        assert_eq!(code(r#"{"body":"no op"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"op":"teleport"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":5}"#), ErrorCode::BadValue);
        assert_eq!(code(r#"{"op":"send","client_msg_id":5}"#), ErrorCode::BadFrame);
        assert_eq!(ref_id(br#"{"op":"send","client_msg_id":"c9","to":"a","conv":"zz"}"#).as_deref(), Some("c9"));
        assert_eq!(ref_id(br#"{"op":"group","req_id":"r1","action":"dance"}"#).as_deref(), Some("r1"));
        let long = format!(r#"{{"op":"history","req_id":"{}"}}"#, "x".repeat(200));
        assert_eq!(ref_id(long.as_bytes()), None, "an invalid id is not echoed");
        assert_eq!(ref_id(b"{not json"), None);
    }
}
