//! The FlatBuffers codec: one `Envelope` per WebSocket binary frame.
//!
//! Every decode runs the FlatBuffers verifier first (bounded depth and table count), so
//! a hostile buffer is rejected with [`DecodeError::Malformed`] and never read out of
//! bounds. Encoding reuses one builder per thread (each shard is one thread).

use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};

use crate::error::{DecodeError, ErrorCode};
use crate::frame::{
    check, Ack, ClientFrame, ConvEntry, ConvId, ConvSettings, ConversationList, ConversationsReq, ErrorFrame,
    ForwardOf, Forwarded, GroupAction, GroupInfo, GroupOp, History, Message, MsgExtra, MsgKind, MsgRef, Page,
    PresenceState, PresenceUpdate, ReactionCount, ReceiptList, ReceiptsReq, ServerFrame, SyncPoint, Target,
};
use crate::generated::switchboard::v_1 as g;

thread_local! {
    static BUILDER: RefCell<FlatBufferBuilder<'static>> = RefCell::new(FlatBufferBuilder::with_capacity(1024));
}

fn verifier_options() -> VerifierOptions {
    VerifierOptions { max_depth: 16, max_tables: 100_000, max_apparent_size: 1 << 26, ..Default::default() }
}

fn envelope(payload: &[u8]) -> Result<g::Envelope<'_>, DecodeError> {
    // The verifier's own text names offsets and Rust types: a client gets what it can act on.
    g::root_as_envelope_with_opts(&verifier_options(), payload).map_err(|_| {
        DecodeError::Malformed(
            "not a switchboard.v1 FlatBuffers Envelope (one unprefixed buffer per binary message)".into(),
        )
    })
}

fn conv_id(c: &g::ConvId) -> ConvId {
    ConvId(((c.hi() as u128) << 64) | c.lo() as u128)
}

fn g_conv(c: ConvId) -> g::ConvId {
    g::ConvId::new((c.0 >> 64) as u64, c.0 as u64)
}

fn kind(k: g::MsgKind) -> Result<MsgKind, DecodeError> {
    MsgKind::from_tag(k.0).ok_or(DecodeError::BadValue { field: "kind", reason: "unknown kind" })
}

fn g_kind(k: MsgKind) -> g::MsgKind {
    g::MsgKind(k.tag())
}

fn group_action(a: g::GroupAction) -> Result<GroupAction, DecodeError> {
    GroupAction::ALL
        .get(a.0 as usize)
        .copied()
        .ok_or(DecodeError::BadValue { field: "action", reason: "unknown group action" })
}

fn g_group_action(a: GroupAction) -> g::GroupAction {
    g::GroupAction(GroupAction::ALL.iter().position(|x| *x == a).unwrap_or(0) as u8)
}

fn strings(v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>) -> Vec<String> {
    v.iter().flatten().map(str::to_owned).collect()
}

fn presence_state(p: g::PresenceState) -> Result<PresenceState, DecodeError> {
    match p {
        g::PresenceState::Offline => Ok(PresenceState::Offline),
        g::PresenceState::Online => Ok(PresenceState::Online),
        g::PresenceState::Away => Ok(PresenceState::Away),
        _ => Err(DecodeError::BadValue { field: "state", reason: "unknown presence state" }),
    }
}

fn g_presence(p: PresenceState) -> g::PresenceState {
    match p {
        PresenceState::Offline => g::PresenceState::Offline,
        PresenceState::Online => g::PresenceState::Online,
        PresenceState::Away => g::PresenceState::Away,
    }
}

fn users(v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>) -> Result<Vec<String>, DecodeError> {
    let users: Vec<String> = v.ok_or(DecodeError::MissingField("users"))?.iter().map(str::to_owned).collect();
    check::users(&users)?;
    Ok(users)
}

fn frame_name(t: g::Frame) -> String {
    t.variant_name().map(str::to_owned).unwrap_or_else(|| format!("#{}", t.0))
}

/// The id an `error` frame about this (refused) frame should carry: a send's
/// `client_msg_id`, or a history or group request's `req_id`, when the buffer verifies
/// and the id is valid.
pub fn ref_id(payload: &[u8]) -> Option<String> {
    let env = envelope(payload).ok()?;
    let id = match env.frame_type() {
        g::Frame::Send => env.frame_as_send()?.client_msg_id(),
        g::Frame::History => env.frame_as_history()?.req_id(),
        g::Frame::GroupOp => env.frame_as_group_op()?.req_id(),
        g::Frame::Receipts => env.frame_as_receipts()?.req_id(),
        g::Frame::Conversations => env.frame_as_conversations()?.req_id(),
        _ => None,
    }?;
    check::client_id("ref_id", id).ok().map(|()| id.to_owned())
}

/// Decodes one client frame from a binary frame's payload.
pub fn decode_client(payload: &[u8]) -> Result<ClientFrame, DecodeError> {
    let env = envelope(payload)?;
    let t = env.frame_type();
    Ok(match t {
        g::Frame::Hello => {
            let h = env.frame_as_hello().ok_or(DecodeError::MissingField("frame"))?;
            let mut sync = Vec::new();
            for p in h.sync().iter().flatten() {
                let c = p.conv();
                sync.push(SyncPoint { conv: conv_id(c), seq: p.seq() });
            }
            ClientFrame::Hello { sync, list_since: h.list_since().val() }
        }
        g::Frame::Send => {
            let s = env.frame_as_send().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Send(check::send(
                s.client_msg_id().map(str::to_owned),
                s.to().map(str::to_owned),
                s.conv().map(conv_id),
                s.body().map(|b| b.bytes().to_vec()),
                kind(s.kind())?,
                s.reply_to().val(),
                s.target().val(),
                match (s.forward_conv(), s.forward_seq().val()) {
                    (Some(c), Some(seq)) => Some(ForwardOf { conv: conv_id(c), seq }),
                    (None, None) => None,
                    _ => return Err(DecodeError::MissingField("forward_seq")),
                },
            )?)
        }
        g::Frame::History => {
            let h = env.frame_as_history().ok_or(DecodeError::MissingField("frame"))?;
            let req_id = h.req_id().map(str::to_owned);
            if let Some(r) = &req_id {
                check::client_id("req_id", r)?;
            }
            ClientFrame::History(History {
                req_id,
                conv: conv_id(h.conv()),
                before_seq: h.before_seq().val(),
                limit: h.limit().val(),
            })
        }
        g::Frame::PresenceSub => ClientFrame::PresenceSub {
            users: users(env.frame_as_presence_sub().ok_or(DecodeError::MissingField("frame"))?.users())?,
        },
        g::Frame::PresenceUnsub => ClientFrame::PresenceUnsub {
            users: users(env.frame_as_presence_unsub().ok_or(DecodeError::MissingField("frame"))?.users())?,
        },
        g::Frame::PresenceSet => {
            let p = env.frame_as_presence_set().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::PresenceSet {
                state: check::settable(presence_state(p.state())?)?,
                hide_last_seen: p.hide_last_seen().val(),
            }
        }
        g::Frame::Typing => {
            let t = env.frame_as_typing().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Typing { conv: conv_id(t.conv()), typing: t.typing() }
        }
        g::Frame::GroupOp => {
            let o = env.frame_as_group_op().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Group(check::group(GroupOp {
                req_id: o.req_id().map(str::to_owned),
                action: group_action(o.action())?,
                conv: o.conv().map(conv_id),
                name: o.name().map(str::to_owned),
                members: strings(o.members()),
                description: o.description().map(str::to_owned),
                avatar: o.avatar().map(str::to_owned),
            })?)
        }
        g::Frame::Delivered => {
            let d = env.frame_as_delivered().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Delivered { conv: conv_id(d.conv()), seq: d.seq() }
        }
        g::Frame::Read => {
            let d = env.frame_as_read().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Read { conv: conv_id(d.conv()), seq: d.seq() }
        }
        g::Frame::Receipts => {
            let r = env.frame_as_receipts().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Receipts(check::receipts(ReceiptsReq {
                req_id: r.req_id().map(str::to_owned),
                conv: conv_id(r.conv()),
                seq: r.seq(),
                after: r.after().map(str::to_owned),
                limit: r.limit().val(),
            })?)
        }
        g::Frame::Settings => {
            let s = env.frame_as_settings().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Settings { read_receipts: s.read_receipts().val() }
        }
        g::Frame::Conversations => {
            let c = env.frame_as_conversations().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::Conversations(check::conversations(ConversationsReq {
                req_id: c.req_id().map(str::to_owned),
                cursor: c.cursor().map(str::to_owned),
                limit: c.limit().val(),
                since: c.since().val(),
            })?)
        }
        g::Frame::ConvSettings => {
            let c = env.frame_as_conv_settings().ok_or(DecodeError::MissingField("frame"))?;
            ClientFrame::ConvSettings(check::conv_settings(conv_settings(c)?)?)
        }
        g::Frame::Hide => {
            let h = env.frame_as_hide().ok_or(DecodeError::MissingField("frame"))?;
            let conv = conv_id(h.conv());
            check::hide(conv, h.seqs().map(|v| v.iter().collect()).unwrap_or_default())?
        }
        g::Frame::NONE => return Err(DecodeError::MissingField("frame")),
        other => return Err(DecodeError::UnknownOp(frame_name(other))),
    })
}

fn conv_settings(c: g::ConvSettings<'_>) -> Result<ConvSettings, DecodeError> {
    Ok(ConvSettings {
        conv: conv_id(c.conv()),
        muted_until: c.muted_until().val(),
        archived: c.archived().val(),
        pinned: c.pinned().val(),
    })
}

fn g_conv_settings<'a>(b: &mut FlatBufferBuilder<'a>, s: &ConvSettings) -> WIPOffset<g::ConvSettings<'a>> {
    let conv = g_conv(s.conv);
    let (muted_until, archived, pinned) = (s.muted_until.wrap(), s.archived.wrap(), s.pinned.wrap());
    let args = g::ConvSettingsArgs {
        conv: Some(&conv),
        muted_until: muted_until.as_ref(),
        archived: archived.as_ref(),
        pinned: pinned.as_ref(),
    };
    g::ConvSettings::create(b, &args)
}

fn g_users<'a>(
    b: &mut FlatBufferBuilder<'a>,
    users: &[String],
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<&'a str>>> {
    let offs: Vec<_> = users.iter().map(|u| b.create_string(u)).collect();
    b.create_vector(&offs)
}

fn g_message<'a>(b: &mut FlatBufferBuilder<'a>, m: &MsgRef<'_>) -> WIPOffset<g::Msg<'a>> {
    let from = b.create_string(m.from);
    let from_device = b.create_string(m.from_device);
    let body = b.create_vector(m.body);
    let cmid = b.create_string(m.client_msg_id);
    let conv = g_conv(m.conv);
    let mut fwd_conv = None;
    // The optional numbers, wrapped before the arguments borrow them.
    let opt = |f: fn(&crate::frame::MsgExtra) -> Option<u64>| m.extra.and_then(f).wrap();
    let (reply_to, target) = (opt(|x| x.reply_to), opt(|x| x.target));
    let (edited_at, deleted_at) = (opt(|x| x.edited_at), opt(|x| x.deleted_at));
    let mut args = g::MsgArgs {
        conv: Some(&conv),
        seq: m.seq,
        message_id: m.message_id,
        from: Some(from),
        from_device: Some(from_device),
        ts: m.ts,
        kind: g_kind(m.kind),
        body: Some(body),
        client_msg_id: Some(cmid),
        ..g::MsgArgs::default()
    };
    if let Some(x) = m.extra {
        args.reply_to = reply_to.as_ref();
        args.target = target.as_ref();
        args.edited_at = edited_at.as_ref();
        args.deleted_by = x.deleted_by.as_deref().map(|d| b.create_string(d));
        args.deleted_at = deleted_at.as_ref();
        if !x.reactions.is_empty() {
            let rs: Vec<_> = x
                .reactions
                .iter()
                .map(|r| {
                    let emoji = Some(b.create_string(&r.emoji));
                    g::ReactionCount::create(b, &g::ReactionCountArgs { emoji, count: r.count })
                })
                .collect();
            args.reactions = Some(b.create_vector(&rs));
        }
        args.my_reaction = x.my_reaction.as_deref().map(|r| b.create_string(r));
        if let Some(f) = &x.forwarded {
            fwd_conv = Some(g_conv(f.conv));
            args.forwarded_seq = f.seq;
            args.forwarded_from = Some(b.create_string(&f.from));
            args.forwarded_times = f.times;
        }
    }
    args.forwarded_conv = fwd_conv.as_ref();
    g::Msg::create(b, &args)
}

fn g_messages<'a>(
    b: &mut FlatBufferBuilder<'a>,
    ms: &[Message],
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<g::Msg<'a>>>> {
    let offs: Vec<_> = ms.iter().map(|m| g_message(b, &m.as_ref())).collect();
    b.create_vector(&offs)
}

/// Appends the FlatBuffers encoding of a server frame to `out`.
pub fn encode_server(frame: &ServerFrame, out: &mut Vec<u8>) {
    BUILDER.with(|cell| {
        let mut b = cell.borrow_mut();
        b.reset();
        let (t, off) = match frame {
            ServerFrame::Ready { user, device, shard, max_frame, encoding } => {
                let user = b.create_string(user);
                let device = b.create_string(device);
                let encoding = b.create_string(encoding);
                let o = g::Ready::create(
                    &mut b,
                    &g::ReadyArgs {
                        user: Some(user),
                        device: Some(device),
                        shard: *shard,
                        max_frame: *max_frame,
                        encoding: Some(encoding),
                    },
                );
                (g::Frame::Ready, o.as_union_value())
            }
            ServerFrame::Ack(a) => {
                let cmid = b.create_string(&a.client_msg_id);
                let conv = g_conv(a.conv);
                let o = g::Ack::create(
                    &mut b,
                    &g::AckArgs {
                        client_msg_id: Some(cmid),
                        conv: Some(&conv),
                        seq: a.seq,
                        message_id: a.message_id,
                        ts: a.ts,
                        duplicate: a.duplicate,
                    },
                );
                (g::Frame::Ack, o.as_union_value())
            }
            ServerFrame::Msg(m) => (g::Frame::Msg, g_message(&mut b, &m.as_ref()).as_union_value()),
            ServerFrame::HistoryPage(p) => {
                let req_id = p.req_id.as_deref().map(|r| b.create_string(r));
                let messages = g_messages(&mut b, &p.messages);
                let conv = g_conv(p.conv);
                let o = g::HistoryPage::create(
                    &mut b,
                    &g::HistoryPageArgs { req_id, conv: Some(&conv), messages: Some(messages), has_more: p.has_more },
                );
                (g::Frame::HistoryPage, o.as_union_value())
            }
            ServerFrame::SyncPage(p) => {
                let messages = g_messages(&mut b, &p.messages);
                let conv = g_conv(p.conv);
                let o = g::SyncPage::create(
                    &mut b,
                    &g::SyncPageArgs { conv: Some(&conv), messages: Some(messages), has_more: p.has_more },
                );
                (g::Frame::SyncPage, o.as_union_value())
            }
            ServerFrame::Synced { convs } => {
                let o = g::Synced::create(&mut b, &g::SyncedArgs { convs: *convs });
                (g::Frame::Synced, o.as_union_value())
            }
            ServerFrame::Error(e) => {
                let name = b.create_string(e.code.name());
                let message = b.create_string(&e.message);
                let ref_id = e.ref_id.as_deref().map(|r| b.create_string(r));
                let o = g::ErrorFrame::create(
                    &mut b,
                    &g::ErrorFrameArgs {
                        code: e.code.number(),
                        name: Some(name),
                        message: Some(message),
                        ref_id,
                        retry_after_ms: e.retry_after_ms.wrap().as_ref(),
                    },
                );
                (g::Frame::ErrorFrame, o.as_union_value())
            }
            ServerFrame::Presence { updates } => {
                let offs: Vec<_> = updates
                    .iter()
                    .map(|u| {
                        let user = b.create_string(&u.user);
                        g::PresenceUpdate::create(
                            &mut b,
                            &g::PresenceUpdateArgs {
                                user: Some(user),
                                state: g_presence(u.state),
                                last_seen: u.last_seen.wrap().as_ref(),
                            },
                        )
                    })
                    .collect();
                let updates = b.create_vector(&offs);
                let o = g::Presence::create(&mut b, &g::PresenceArgs { updates: Some(updates) });
                (g::Frame::Presence, o.as_union_value())
            }
            ServerFrame::Typing { conv, from, typing } => {
                let from = b.create_string(from);
                let conv = g_conv(*conv);
                let o =
                    g::Typing::create(&mut b, &g::TypingArgs { conv: Some(&conv), from: Some(from), typing: *typing });
                (g::Frame::Typing, o.as_union_value())
            }
            ServerFrame::GroupInfo(i) => {
                let req_id = i.req_id.as_deref().map(|r| b.create_string(r));
                let name = b.create_string(&i.name);
                let members = g_users(&mut b, &i.members);
                let admins = g_users(&mut b, &i.admins);
                let owner = b.create_string(&i.owner);
                let description = b.create_string(&i.description);
                let avatar = b.create_string(&i.avatar);
                let conv = g_conv(i.conv);
                let o = g::GroupInfo::create(
                    &mut b,
                    &g::GroupInfoArgs {
                        req_id,
                        conv: Some(&conv),
                        name: Some(name),
                        members: Some(members),
                        admins: Some(admins),
                        seq: i.seq,
                        owner: Some(owner),
                        description: Some(description),
                        avatar: Some(avatar),
                        deleted: i.deleted,
                    },
                );
                (g::Frame::GroupInfo, o.as_union_value())
            }
            ServerFrame::Receipt { conv, user, delivered, read } => {
                let user = b.create_string(user);
                let conv = g_conv(*conv);
                let args = g::ReceiptArgs { conv: Some(&conv), user: Some(user), delivered: *delivered, read: *read };
                (g::Frame::Receipt, g::Receipt::create(&mut b, &args).as_union_value())
            }
            ServerFrame::ReceiptCount { conv, seq, members, delivered, read } => {
                let conv = g_conv(*conv);
                let args = g::ReceiptCountArgs {
                    conv: Some(&conv),
                    seq: *seq,
                    members: *members,
                    delivered: *delivered,
                    read: *read,
                };
                (g::Frame::ReceiptCount, g::ReceiptCount::create(&mut b, &args).as_union_value())
            }
            ServerFrame::ReceiptList(l) => {
                let req_id = l.req_id.as_deref().map(|r| b.create_string(r));
                let delivered = g_users(&mut b, &l.delivered);
                let read = g_users(&mut b, &l.read);
                let next = l.next.as_deref().map(|n| b.create_string(n));
                let conv = g_conv(l.conv);
                let args = g::ReceiptListArgs {
                    req_id,
                    conv: Some(&conv),
                    seq: l.seq,
                    delivered: Some(delivered),
                    read: Some(read),
                    next,
                };
                (g::Frame::ReceiptList, g::ReceiptList::create(&mut b, &args).as_union_value())
            }
            ServerFrame::ConversationList(l) => {
                let req_id = l.req_id.as_deref().map(|r| b.create_string(r));
                let items: Vec<_> = l.items.iter().map(|e| g_conv_entry(&mut b, e)).collect();
                let items = b.create_vector(&items);
                let next = l.next.as_deref().map(|n| b.create_string(n));
                let args = g::ConversationListArgs { req_id, items: Some(items), next, token: l.token };
                (g::Frame::ConversationList, g::ConversationList::create(&mut b, &args).as_union_value())
            }
            ServerFrame::ConvSettings(s) => (g::Frame::ConvSettings, g_conv_settings(&mut b, s).as_union_value()),
            ServerFrame::Hidden { conv, seqs } => {
                let seqs = b.create_vector(seqs);
                let conv = g_conv(*conv);
                let o = g::Hidden::create(&mut b, &g::HiddenArgs { conv: Some(&conv), seqs: Some(seqs) });
                (g::Frame::Hidden, o.as_union_value())
            }
        };
        let env = g::Envelope::create(&mut b, &g::EnvelopeArgs { frame_type: t, frame: Some(off) });
        b.finish(env, None);
        out.extend_from_slice(b.finished_data());
    })
}

/// Appends the FlatBuffers encoding of a `msg` frame to `out`.
pub fn encode_msg(m: &MsgRef<'_>, out: &mut Vec<u8>) {
    BUILDER.with(|cell| {
        let mut b = cell.borrow_mut();
        b.reset();
        let off = g_message(&mut b, m).as_union_value();
        let env = g::Envelope::create(&mut b, &g::EnvelopeArgs { frame_type: g::Frame::Msg, frame: Some(off) });
        b.finish(env, None);
        out.extend_from_slice(b.finished_data());
    })
}

/// Encodes a client frame (for client libraries, tests and the load generator).
pub fn encode_client(frame: &ClientFrame) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(256);
    let (t, off) = match frame {
        ClientFrame::Hello { sync, list_since } => {
            let points: Vec<_> = sync
                .iter()
                .map(|p| {
                    let c = g_conv(p.conv);
                    g::SyncPoint::create(&mut b, &g::SyncPointArgs { conv: Some(&c), seq: p.seq })
                })
                .collect();
            let sync = b.create_vector(&points);
            let list_since = list_since.wrap();
            let args = g::HelloArgs { sync: Some(sync), list_since: list_since.as_ref() };
            (g::Frame::Hello, g::Hello::create(&mut b, &args).as_union_value())
        }
        ClientFrame::Send(s) => {
            let cmid = b.create_string(&s.client_msg_id);
            let body = b.create_vector(&s.body);
            let (to, conv) = match &s.target {
                Target::User(u) => (Some(b.create_string(u)), None),
                Target::Conv(c) => (None, Some(g_conv(*c))),
            };
            let fwd_conv = s.forward.as_ref().map(|f| g_conv(f.conv));
            let o = g::Send::create(
                &mut b,
                &g::SendArgs {
                    client_msg_id: Some(cmid),
                    to,
                    conv: conv.as_ref(),
                    body: Some(body),
                    kind: g_kind(s.kind),
                    reply_to: s.reply_to.wrap().as_ref(),
                    target: s.target_seq.wrap().as_ref(),
                    forward_conv: fwd_conv.as_ref(),
                    forward_seq: s.forward.as_ref().map(|f| g::OptU64::new(f.seq)).as_ref(),
                },
            );
            (g::Frame::Send, o.as_union_value())
        }
        ClientFrame::PresenceSub { users } => {
            let users = g_users(&mut b, users);
            (
                g::Frame::PresenceSub,
                g::PresenceSub::create(&mut b, &g::PresenceSubArgs { users: Some(users) }).as_union_value(),
            )
        }
        ClientFrame::PresenceUnsub { users } => {
            let users = g_users(&mut b, users);
            let o = g::PresenceUnsub::create(&mut b, &g::PresenceUnsubArgs { users: Some(users) });
            (g::Frame::PresenceUnsub, o.as_union_value())
        }
        ClientFrame::PresenceSet { state, hide_last_seen } => {
            let o = g::PresenceSet::create(
                &mut b,
                &g::PresenceSetArgs { state: g_presence(*state), hide_last_seen: hide_last_seen.wrap().as_ref() },
            );
            (g::Frame::PresenceSet, o.as_union_value())
        }
        ClientFrame::Typing { conv, typing } => {
            let conv = g_conv(*conv);
            let o = g::Typing::create(&mut b, &g::TypingArgs { conv: Some(&conv), from: None, typing: *typing });
            (g::Frame::Typing, o.as_union_value())
        }
        ClientFrame::History(h) => {
            let req_id = h.req_id.as_deref().map(|r| b.create_string(r));
            let conv = g_conv(h.conv);
            let o = g::History::create(
                &mut b,
                &g::HistoryArgs {
                    req_id,
                    conv: Some(&conv),
                    before_seq: h.before_seq.wrap().as_ref(),
                    limit: h.limit.wrap().as_ref(),
                },
            );
            (g::Frame::History, o.as_union_value())
        }
        ClientFrame::Group(op) => {
            let req_id = op.req_id.as_deref().map(|r| b.create_string(r));
            let name = op.name.as_deref().map(|n| b.create_string(n));
            let members = g_users(&mut b, &op.members);
            let description = op.description.as_deref().map(|d| b.create_string(d));
            let avatar = op.avatar.as_deref().map(|a| b.create_string(a));
            let conv = op.conv.map(g_conv);
            let o = g::GroupOp::create(
                &mut b,
                &g::GroupOpArgs {
                    req_id,
                    action: g_group_action(op.action),
                    conv: conv.as_ref(),
                    name,
                    members: Some(members),
                    description,
                    avatar,
                },
            );
            (g::Frame::GroupOp, o.as_union_value())
        }
        ClientFrame::Delivered { conv, seq } => {
            let conv = g_conv(*conv);
            let o = g::Delivered::create(&mut b, &g::DeliveredArgs { conv: Some(&conv), seq: *seq });
            (g::Frame::Delivered, o.as_union_value())
        }
        ClientFrame::Read { conv, seq } => {
            let conv = g_conv(*conv);
            let o = g::Read::create(&mut b, &g::ReadArgs { conv: Some(&conv), seq: *seq });
            (g::Frame::Read, o.as_union_value())
        }
        ClientFrame::Receipts(r) => {
            let req_id = r.req_id.as_deref().map(|x| b.create_string(x));
            let after = r.after.as_deref().map(|x| b.create_string(x));
            let conv = g_conv(r.conv);
            let limit = r.limit.wrap();
            let args = g::ReceiptsArgs { req_id, conv: Some(&conv), seq: r.seq, after, limit: limit.as_ref() };
            (g::Frame::Receipts, g::Receipts::create(&mut b, &args).as_union_value())
        }
        ClientFrame::Settings { read_receipts } => {
            let o = g::Settings::create(&mut b, &g::SettingsArgs { read_receipts: read_receipts.wrap().as_ref() });
            (g::Frame::Settings, o.as_union_value())
        }
        ClientFrame::Conversations(c) => {
            let req_id = c.req_id.as_deref().map(|x| b.create_string(x));
            let cursor = c.cursor.as_deref().map(|x| b.create_string(x));
            let (limit, since) = (c.limit.wrap(), c.since.wrap());
            let args = g::ConversationsArgs { req_id, cursor, limit: limit.as_ref(), since: since.as_ref() };
            (g::Frame::Conversations, g::Conversations::create(&mut b, &args).as_union_value())
        }
        ClientFrame::ConvSettings(s) => (g::Frame::ConvSettings, g_conv_settings(&mut b, s).as_union_value()),
        ClientFrame::Hide { conv, seqs } => {
            let seqs = b.create_vector(seqs);
            let conv = g_conv(*conv);
            let o = g::Hide::create(&mut b, &g::HideArgs { conv: Some(&conv), seqs: Some(seqs) });
            (g::Frame::Hide, o.as_union_value())
        }
    };
    let env = g::Envelope::create(&mut b, &g::EnvelopeArgs { frame_type: t, frame: Some(off) });
    b.finish(env, None);
    b.finished_data().to_vec()
}

fn message(m: g::Msg<'_>) -> Result<Message, DecodeError> {
    Ok(Message {
        conv: conv_id(m.conv()),
        seq: m.seq(),
        message_id: m.message_id(),
        from: m.from().unwrap_or_default().to_owned(),
        from_device: m.from_device().unwrap_or_default().to_owned(),
        ts: m.ts(),
        kind: kind(m.kind())?,
        body: m.body().map(|b| b.bytes().to_vec()).unwrap_or_default(),
        client_msg_id: m.client_msg_id().unwrap_or_default().to_owned(),
        extra: extra(&m),
    })
}

fn extra(m: &g::Msg<'_>) -> Option<Box<MsgExtra>> {
    let x = MsgExtra {
        reply_to: m.reply_to().val(),
        target: m.target().val(),
        edited_at: m.edited_at().val(),
        deleted_by: m.deleted_by().map(str::to_owned),
        deleted_at: m.deleted_at().val(),
        reactions: m
            .reactions()
            .iter()
            .flatten()
            .map(|r| ReactionCount { emoji: r.emoji().unwrap_or_default().to_owned(), count: r.count() })
            .collect(),
        my_reaction: m.my_reaction().map(str::to_owned),
        forwarded: m.forwarded_conv().map(|c| Forwarded {
            conv: conv_id(c),
            seq: m.forwarded_seq(),
            from: m.forwarded_from().unwrap_or_default().to_owned(),
            times: m.forwarded_times(),
        }),
    };
    (x != MsgExtra::default()).then(|| Box::new(x))
}

fn page(
    req_id: Option<&str>,
    conv: &g::ConvId,
    ms: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<g::Msg<'_>>>>,
    has_more: bool,
) -> Result<Page, DecodeError> {
    Ok(Page {
        req_id: req_id.map(str::to_owned),
        conv: conv_id(conv),
        messages: ms.iter().flatten().map(message).collect::<Result<_, _>>()?,
        has_more,
    })
}

/// Decodes a server frame (for client libraries, tests and the load generator).
pub fn decode_server(payload: &[u8]) -> Result<ServerFrame, DecodeError> {
    let env = envelope(payload)?;
    let missing = DecodeError::MissingField("frame");
    Ok(match env.frame_type() {
        g::Frame::Ready => {
            let r = env.frame_as_ready().ok_or(missing)?;
            ServerFrame::Ready {
                user: r.user().unwrap_or_default().to_owned(),
                device: r.device().unwrap_or_default().to_owned(),
                shard: r.shard(),
                max_frame: r.max_frame(),
                encoding: r.encoding().unwrap_or_default().to_owned(),
            }
        }
        g::Frame::Ack => {
            let a = env.frame_as_ack().ok_or(missing)?;
            ServerFrame::Ack(Ack {
                client_msg_id: a.client_msg_id().unwrap_or_default().to_owned(),
                conv: conv_id(a.conv()),
                seq: a.seq(),
                message_id: a.message_id(),
                ts: a.ts(),
                duplicate: a.duplicate(),
            })
        }
        g::Frame::Msg => ServerFrame::Msg(message(env.frame_as_msg().ok_or(missing)?)?),
        g::Frame::HistoryPage => {
            let p = env.frame_as_history_page().ok_or(missing)?;
            ServerFrame::HistoryPage(page(p.req_id(), p.conv(), p.messages(), p.has_more())?)
        }
        g::Frame::SyncPage => {
            let p = env.frame_as_sync_page().ok_or(missing)?;
            ServerFrame::SyncPage(page(None, p.conv(), p.messages(), p.has_more())?)
        }
        g::Frame::Synced => ServerFrame::Synced { convs: env.frame_as_synced().ok_or(missing)?.convs() },
        g::Frame::ErrorFrame => {
            let e = env.frame_as_error_frame().ok_or(missing)?;
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::from_number(e.code())
                    .ok_or(DecodeError::BadValue { field: "code", reason: "unknown code" })?,
                message: e.message().unwrap_or_default().to_owned(),
                ref_id: e.ref_id().map(str::to_owned),
                retry_after_ms: e.retry_after_ms().val(),
            })
        }
        g::Frame::Presence => {
            let p = env.frame_as_presence().ok_or(missing)?;
            let mut updates = Vec::new();
            for u in p.updates().iter().flatten() {
                updates.push(PresenceUpdate {
                    user: u.user().unwrap_or_default().to_owned(),
                    state: presence_state(u.state())?,
                    last_seen: u.last_seen().val(),
                });
            }
            ServerFrame::Presence { updates }
        }
        g::Frame::Typing => {
            let t = env.frame_as_typing().ok_or(missing)?;
            ServerFrame::Typing {
                conv: conv_id(t.conv()),
                from: t.from().unwrap_or_default().to_owned(),
                typing: t.typing(),
            }
        }
        g::Frame::GroupInfo => {
            let i = env.frame_as_group_info().ok_or(missing)?;
            ServerFrame::GroupInfo(Box::new(GroupInfo {
                req_id: i.req_id().map(str::to_owned),
                conv: conv_id(i.conv()),
                name: i.name().unwrap_or_default().to_owned(),
                members: strings(i.members()),
                admins: strings(i.admins()),
                seq: i.seq(),
                owner: i.owner().unwrap_or_default().to_owned(),
                description: i.description().unwrap_or_default().to_owned(),
                avatar: i.avatar().unwrap_or_default().to_owned(),
                deleted: i.deleted(),
            }))
        }
        g::Frame::Receipt => {
            let r = env.frame_as_receipt().ok_or(missing)?;
            ServerFrame::Receipt {
                conv: conv_id(r.conv()),
                user: r.user().unwrap_or_default().to_owned(),
                delivered: r.delivered(),
                read: r.read(),
            }
        }
        g::Frame::ReceiptCount => {
            let r = env.frame_as_receipt_count().ok_or(missing)?;
            ServerFrame::ReceiptCount {
                conv: conv_id(r.conv()),
                seq: r.seq(),
                members: r.members(),
                delivered: r.delivered(),
                read: r.read(),
            }
        }
        g::Frame::ReceiptList => {
            let r = env.frame_as_receipt_list().ok_or(missing)?;
            ServerFrame::ReceiptList(ReceiptList {
                req_id: r.req_id().map(str::to_owned),
                conv: conv_id(r.conv()),
                seq: r.seq(),
                delivered: strings(r.delivered()),
                read: strings(r.read()),
                next: r.next().map(str::to_owned),
            })
        }
        g::Frame::ConversationList => {
            let l = env.frame_as_conversation_list().ok_or(missing)?;
            let mut items = Vec::new();
            for e in l.items().iter().flatten() {
                items.push(ConvEntry {
                    conv: conv_id(e.conv()),
                    group: e.group(),
                    title: e.title().unwrap_or_default().to_owned(),
                    members: e.members(),
                    last_seq: e.last_seq(),
                    last_ts: e.last_ts(),
                    last_from: e.last_from().unwrap_or_default().to_owned(),
                    last_kind: kind(e.last_kind())?,
                    preview: e.preview().unwrap_or_default().to_owned(),
                    read: e.read(),
                    unread: e.unread(),
                    muted_until: e.muted_until(),
                    archived: e.archived(),
                    pinned: e.pinned(),
                    peer_delivered: e.peer_delivered(),
                    peer_read: e.peer_read(),
                });
            }
            ServerFrame::ConversationList(ConversationList {
                req_id: l.req_id().map(str::to_owned),
                items,
                next: l.next().map(str::to_owned),
                token: l.token(),
            })
        }
        g::Frame::ConvSettings => {
            ServerFrame::ConvSettings(conv_settings(env.frame_as_conv_settings().ok_or(missing)?)?)
        }
        g::Frame::Hidden => {
            let h = env.frame_as_hidden().ok_or(missing)?;
            ServerFrame::Hidden {
                conv: conv_id(h.conv()),
                seqs: h.seqs().map(|v| v.iter().collect()).unwrap_or_default(),
            }
        }
        other => return Err(DecodeError::UnknownOp(frame_name(other))),
    })
}

fn g_conv_entry<'a>(b: &mut FlatBufferBuilder<'a>, e: &ConvEntry) -> WIPOffset<g::ConvEntry<'a>> {
    let title = b.create_string(&e.title);
    let last_from = b.create_string(&e.last_from);
    let preview = b.create_string(&e.preview);
    let conv = g_conv(e.conv);
    let args = g::ConvEntryArgs {
        conv: Some(&conv),
        group: e.group,
        title: Some(title),
        members: e.members,
        last_seq: e.last_seq,
        last_ts: e.last_ts,
        last_from: Some(last_from),
        last_kind: g_kind(e.last_kind),
        preview: Some(preview),
        read: e.read,
        unread: e.unread,
        muted_until: e.muted_until,
        archived: e.archived,
        pinned: e.pinned,
        peer_delivered: e.peer_delivered,
        peer_read: e.peer_read,
    };
    g::ConvEntry::create(b, &args)
}

/// An optional value read from its struct wrapper (`OptU64`, `OptU32`, `OptBool`: absent
/// when the field was not written).
trait Val<T> {
    fn val(self) -> Option<T>;
}

impl Val<u64> for Option<&g::OptU64> {
    fn val(self) -> Option<u64> {
        self.map(|v| v.value())
    }
}

impl Val<u32> for Option<&g::OptU32> {
    fn val(self) -> Option<u32> {
        self.map(|v| v.value())
    }
}

impl Val<bool> for Option<&g::OptBool> {
    fn val(self) -> Option<bool> {
        self.map(|v| v.value())
    }
}

/// An optional value as its struct wrapper, to be written by reference.
trait Wrap {
    type W;
    fn wrap(self) -> Option<Self::W>;
}

impl Wrap for Option<u64> {
    type W = g::OptU64;
    fn wrap(self) -> Option<g::OptU64> {
        self.map(g::OptU64::new)
    }
}

impl Wrap for Option<u32> {
    type W = g::OptU32;
    fn wrap(self) -> Option<g::OptU32> {
        self.map(g::OptU32::new)
    }
}

impl Wrap for Option<bool> {
    type W = g::OptBool;
    fn wrap(self) -> Option<g::OptBool> {
        self.map(g::OptBool::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_buffer_is_refused_without_verifier_internals() {
        let e = decode_client(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("not a switchboard.v1 FlatBuffers Envelope"), "{text}");
        assert!(!text.contains("position") && !text.contains("i32"), "{text}");
    }

    #[test]
    fn a_refused_send_still_names_its_client_msg_id() {
        // A send with both `to` and `conv`, which no ClientFrame can express.
        let mut b = FlatBufferBuilder::with_capacity(256);
        let cmid = b.create_string("fb-both");
        let to = b.create_string("x");
        let body = b.create_vector(b"hi");
        let conv = g_conv(ConvId(42));
        let args = g::SendArgs {
            client_msg_id: Some(cmid),
            to: Some(to),
            conv: Some(&conv),
            body: Some(body),
            kind: g_kind(MsgKind::Text),
            ..g::SendArgs::default()
        };
        let o = g::Send::create(&mut b, &args).as_union_value();
        let env = g::Envelope::create(&mut b, &g::EnvelopeArgs { frame_type: g::Frame::Send, frame: Some(o) });
        b.finish(env, None);
        let bytes = b.finished_data();
        assert_eq!(decode_client(bytes).unwrap_err().code(), crate::error::ErrorCode::BadValue);
        assert_eq!(ref_id(bytes).as_deref(), Some("fb-both"));
        assert_eq!(ref_id(b"\x00\x01garbage"), None);
    }
}
