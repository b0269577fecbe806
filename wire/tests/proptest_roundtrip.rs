//! Property tests: every frame, with arbitrary valid contents, survives encode → decode
//! unchanged in both encodings.

use proptest::collection::vec;
use proptest::prelude::*;
use wire::error::ErrorCode;
use wire::frame::*;
use wire::{fb, json};

fn id() -> impl Strategy<Value = String> {
    // 1..=128 bytes, no control characters (the rules for ids).
    "[a-zA-Z0-9_.:@é✓-]{1,40}"
}

fn conv() -> impl Strategy<Value = ConvId> {
    any::<u128>().prop_map(ConvId)
}

fn kind_body() -> impl Strategy<Value = (MsgKind, Vec<u8>)> {
    prop_oneof![
        ".{0,200}".prop_map(|t: String| (MsgKind::Text, t.into_bytes())),
        vec(any::<u8>(), 0..300).prop_map(|b| (MsgKind::Data, b)),
        (".{0,40}", any::<u64>(), proptest::option::of(1..5000u32)).prop_map(|(caption, size, width)| {
            let m = MediaRef {
                url: "https://cdn.example/a.jpg".into(),
                mime: "image/jpeg".into(),
                size,
                sha256: "ab".repeat(32),
                width,
                caption: Some(caption),
                ..MediaRef::default()
            };
            (MsgKind::Media, serde_json::to_vec(&m).unwrap())
        }),
    ]
}

/// A send's kind, body, reply and target, as the rules allow them together.
fn send_parts() -> impl Strategy<Value = (MsgKind, Vec<u8>, Option<u64>, Option<u64>)> {
    prop_oneof![
        (kind_body(), proptest::option::of(1..u64::MAX)).prop_map(|((k, b), reply)| (k, b, reply, None)),
        (".{0,80}", 1..u64::MAX).prop_map(|(t, target): (String, u64)| (
            MsgKind::Edit,
            t.into_bytes(),
            None,
            Some(target)
        )),
        (1..u64::MAX).prop_map(|target| (MsgKind::Delete, Vec::new(), None, Some(target))),
        (prop_oneof![Just(""), Just("👍"), Just("❤️"), Just("👍🏽")], 1..u64::MAX).prop_map(|(e, target)| (
            MsgKind::Reaction,
            e.as_bytes().to_vec(),
            None,
            Some(target)
        )),
    ]
}

fn extra() -> impl Strategy<Value = Option<Box<MsgExtra>>> {
    proptest::option::of(
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(id()),
            proptest::option::of(any::<u64>()),
            vec(("[😀-🙏]", any::<u32>()), 0..3),
            proptest::option::of("[😀-🙏]"),
            proptest::option::of((conv(), any::<u64>(), id(), any::<u32>())),
        )
            .prop_map(|(reply_to, target, edited_at, deleted_by, deleted_at, rs, my_reaction, fwd)| MsgExtra {
                reply_to,
                target,
                edited_at,
                deleted_by,
                deleted_at,
                reactions: rs.into_iter().map(|(emoji, count)| ReactionCount { emoji, count }).collect(),
                my_reaction,
                forwarded: fwd.map(|(conv, seq, from, times)| Forwarded { conv, seq, from, times }),
            })
            .prop_filter("an empty extra is encoded as none", |x| *x != MsgExtra::default())
            .prop_map(Box::new),
    )
}

/// Kinds and bodies the server may send (client sends never carry `System`).
fn stored_kind_body() -> impl Strategy<Value = (MsgKind, Vec<u8>)> {
    prop_oneof![
        kind_body(),
        (
            prop_oneof![Just(MsgKind::System), Just(MsgKind::Edit), Just(MsgKind::Delete), Just(MsgKind::Reaction)],
            ".{0,200}"
        )
            .prop_map(|(k, t): (MsgKind, String)| (k, t.into_bytes()))
    ]
}

/// A valid `group` request: the fields each action takes, and only those.
fn group_op() -> impl Strategy<Value = GroupOp> {
    (
        0..GroupAction::ALL.len(),
        proptest::option::of(id()),
        conv(),
        proptest::option::of("[^\\p{Cc}]{0,40}"),
        vec(id(), 1..6),
        ("[^\\p{Cc}]{0,40}", prop_oneof![Just(String::new()), Just("https://cdn.example/a.png".to_owned())]),
    )
        .prop_map(|(i, req_id, conv, name, members, (description, avatar))| {
            let action = GroupAction::ALL[i];
            let takes_members = matches!(
                action,
                GroupAction::Create
                    | GroupAction::Add
                    | GroupAction::Remove
                    | GroupAction::Promote
                    | GroupAction::Demote
                    | GroupAction::Transfer
            );
            let describes = matches!(action, GroupAction::Create | GroupAction::Describe);
            GroupOp {
                req_id,
                action,
                conv: (action != GroupAction::Create).then_some(conv),
                name: match action {
                    GroupAction::Create => name,
                    GroupAction::Rename => Some(name.unwrap_or_default()),
                    _ => None,
                },
                members: match action {
                    GroupAction::Transfer => members[..1].to_vec(),
                    _ if takes_members => members,
                    _ => Vec::new(),
                },
                description: describes.then_some(description),
                avatar: describes.then_some(avatar),
            }
        })
}

fn presence_state() -> impl Strategy<Value = PresenceState> {
    prop_oneof![Just(PresenceState::Offline), Just(PresenceState::Online), Just(PresenceState::Away)]
}

fn message() -> impl Strategy<Value = Message> {
    (conv(), any::<u64>(), any::<u64>(), id(), id(), any::<u64>(), stored_kind_body(), id(), extra()).prop_map(
        |(conv, seq, message_id, from, from_device, ts, (kind, body), client_msg_id, extra)| Message {
            conv,
            seq,
            message_id,
            from,
            from_device,
            ts,
            kind,
            body,
            client_msg_id,
            extra,
        },
    )
}

fn page(with_req: bool) -> impl Strategy<Value = Page> {
    (proptest::option::of(id()), conv(), vec(message(), 0..4), any::<bool>()).prop_map(
        move |(req_id, conv, messages, has_more)| Page {
            req_id: if with_req { req_id } else { None },
            conv,
            messages,
            has_more,
        },
    )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (vec((conv(), any::<u64>()), 0..5), proptest::option::of(any::<u64>())).prop_map(|(v, list_since)| {
            ClientFrame::Hello { sync: v.into_iter().map(|(conv, seq)| SyncPoint { conv, seq }).collect(), list_since }
        }),
        (id(), prop_oneof![id().prop_map(Target::User), conv().prop_map(Target::Conv)], send_parts()).prop_map(
            |(client_msg_id, target, (kind, body, reply_to, target_seq))| ClientFrame::Send(Send {
                client_msg_id,
                target,
                body,
                kind,
                reply_to,
                target_seq,
                forward: None
            })
        ),
        (id(), conv(), conv(), 1..u64::MAX).prop_map(|(client_msg_id, to, conv, seq)| ClientFrame::Send(Send {
            client_msg_id,
            target: Target::Conv(to),
            body: Vec::new(),
            kind: MsgKind::Text,
            reply_to: None,
            target_seq: None,
            forward: Some(Box::new(ForwardOf { conv, seq }))
        })),
        (proptest::option::of(id()), conv(), proptest::option::of(any::<u64>()), proptest::option::of(any::<u32>()))
            .prop_map(|(req_id, conv, before_seq, limit)| ClientFrame::History(History {
                req_id,
                conv,
                before_seq,
                limit
            })),
        vec(id(), 0..10).prop_map(|users| ClientFrame::PresenceSub { users }),
        vec(id(), 0..10).prop_map(|users| ClientFrame::PresenceUnsub { users }),
        (prop_oneof![Just(PresenceState::Online), Just(PresenceState::Away)], proptest::option::of(any::<bool>()))
            .prop_map(|(state, hide_last_seen)| ClientFrame::PresenceSet { state, hide_last_seen }),
        (conv(), any::<bool>()).prop_map(|(conv, typing)| ClientFrame::Typing { conv, typing }),
        group_op().prop_map(ClientFrame::Group),
        (conv(), any::<u64>()).prop_map(|(conv, seq)| ClientFrame::Delivered { conv, seq }),
        (conv(), any::<u64>()).prop_map(|(conv, seq)| ClientFrame::Read { conv, seq }),
        (
            proptest::option::of(id()),
            conv(),
            any::<u64>(),
            proptest::option::of(id()),
            proptest::option::of(1..=1000u32)
        )
            .prop_map(|(req_id, conv, seq, after, limit)| ClientFrame::Receipts(ReceiptsReq {
                req_id,
                conv,
                seq,
                after,
                limit
            })),
        proptest::option::of(any::<bool>()).prop_map(|read_receipts| ClientFrame::Settings { read_receipts }),
        (
            proptest::option::of(id()),
            proptest::option::of(id()),
            proptest::option::of(1..=500u32),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(req_id, cursor, limit, since)| ClientFrame::Conversations(ConversationsReq {
                req_id,
                cursor,
                limit,
                since
            })),
        conv_settings().prop_map(ClientFrame::ConvSettings),
        (conv(), vec(1..u64::MAX, 1..20)).prop_map(|(conv, seqs)| ClientFrame::Hide { conv, seqs }),
    ]
}

/// A `conv_settings` that changes something.
fn conv_settings() -> impl Strategy<Value = ConvSettings> {
    (conv(), proptest::option::of(any::<u64>()), proptest::option::of(any::<bool>()), any::<bool>()).prop_map(
        |(conv, muted_until, archived, pinned)| ConvSettings {
            conv,
            muted_until,
            archived,
            pinned: Some(pinned).filter(|_| muted_until.is_none() && archived.is_none() || pinned),
        },
    )
}

fn conv_entry() -> impl Strategy<Value = ConvEntry> {
    (
        (conv(), any::<bool>(), ".{0,40}", any::<u32>(), any::<u64>(), any::<u64>(), id()),
        (stored_kind_body(), ".{0,60}", any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (conv, group, title, members, last_seq, last_ts, last_from),
                ((last_kind, _), preview, read, unread, muted_until, archived, pinned),
            )| ConvEntry {
                conv,
                group,
                title,
                members,
                last_seq,
                last_ts,
                last_from,
                last_kind,
                preview,
                read,
                unread,
                muted_until,
                archived,
                pinned,
                peer_delivered: last_seq / 2,
                peer_read: last_seq / 3,
            },
        )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (id(), id(), any::<u16>(), any::<u32>(), id()).prop_map(|(user, device, shard, max_frame, encoding)| {
            ServerFrame::Ready { user, device, shard, max_frame, encoding }
        }),
        (id(), conv(), any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(client_msg_id, conv, seq, message_id, ts, duplicate)| {
                ServerFrame::Ack(Ack { client_msg_id, conv, seq, message_id, ts, duplicate })
            }
        ),
        message().prop_map(ServerFrame::Msg),
        page(true).prop_map(ServerFrame::HistoryPage),
        page(false).prop_map(ServerFrame::SyncPage),
        any::<u32>().prop_map(|convs| ServerFrame::Synced { convs }),
        (0..ErrorCode::ALL.len(), ".{0,80}", proptest::option::of(id()), proptest::option::of(any::<u32>())).prop_map(
            |(i, message, ref_id, retry_after_ms)| {
                ServerFrame::Error(ErrorFrame { code: ErrorCode::ALL[i], message, ref_id, retry_after_ms })
            }
        ),
        vec((id(), presence_state(), proptest::option::of(any::<u64>())), 0..5).prop_map(|v| ServerFrame::Presence {
            updates: v.into_iter().map(|(user, state, last_seen)| PresenceUpdate { user, state, last_seen }).collect()
        }),
        (conv(), id(), any::<bool>()).prop_map(|(conv, from, typing)| ServerFrame::Typing { conv, from, typing }),
        (
            (proptest::option::of(id()), conv(), ".{0,40}", vec(id(), 0..6), vec(id(), 0..3), any::<u64>()),
            (id(), ".{0,40}", ".{0,20}", any::<bool>())
        )
            .prop_map(|((req_id, conv, name, members, admins, seq), (owner, description, avatar, deleted))| {
                ServerFrame::GroupInfo(Box::new(GroupInfo {
                    req_id,
                    conv,
                    name,
                    members,
                    admins,
                    seq,
                    owner,
                    description,
                    avatar,
                    deleted,
                }))
            }),
        (conv(), id(), any::<u64>(), any::<u64>()).prop_map(|(conv, user, delivered, read)| ServerFrame::Receipt {
            conv,
            user,
            delivered,
            read
        }),
        (conv(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(conv, seq, members, delivered, read)| ServerFrame::ReceiptCount { conv, seq, members, delivered, read }
        ),
        (
            proptest::option::of(id()),
            conv(),
            any::<u64>(),
            vec(id(), 0..5),
            vec(id(), 0..5),
            proptest::option::of(id())
        )
            .prop_map(|(req_id, conv, seq, delivered, read, next)| ServerFrame::ReceiptList(ReceiptList {
                req_id,
                conv,
                seq,
                delivered,
                read,
                next
            })),
        (proptest::option::of(id()), vec(conv_entry(), 0..4), proptest::option::of(id()), any::<u64>()).prop_map(
            |(req_id, items, next, token)| ServerFrame::ConversationList(ConversationList {
                req_id,
                items,
                next,
                token
            })
        ),
        conv_settings().prop_map(ServerFrame::ConvSettings),
        (conv(), vec(any::<u64>(), 0..20)).prop_map(|(conv, seqs)| ServerFrame::Hidden { conv, seqs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_round_trip(f in client_frame()) {
        prop_assert_eq!(json::decode_client(&json::encode_client(&f)).unwrap(), f.clone());
        prop_assert_eq!(fb::decode_client(&fb::encode_client(&f)).unwrap(), f);
    }

    #[test]
    fn server_frames_round_trip(f in server_frame()) {
        let mut out = Vec::new();
        json::encode_server(&f, &mut out);
        prop_assert_eq!(json::decode_server(&out).unwrap(), f.clone());
        let mut out = Vec::new();
        fb::encode_server(&f, &mut out);
        prop_assert_eq!(fb::decode_server(&out).unwrap(), f);
    }

    /// A `msg` encoded from a borrowed message is byte for byte the `msg` frame.
    #[test]
    fn borrowed_messages_encode_like_msg_frames(m in message()) {
        for enc in [wire::Encoding::Json, wire::Encoding::FlatBuffers] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            enc.encode_msg(&m.as_ref(), &mut a);
            enc.encode_server(&ServerFrame::Msg(m.clone()), &mut b);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(data in vec(any::<u8>(), 0..512)) {
        wire::fuzzing::json_client(&data);
        wire::fuzzing::fb_client(&data);
    }
}
