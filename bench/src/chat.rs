//! `chat`: U connected users send DMs and group messages at a target rate (open loop)
//! for a duration. Reports send→ack and send→deliver latency (HDR histograms),
//! throughput, loss, duplicates and order, and a per-second timeline.
//!
//! Users come in pairs (user i's DM partner is i ^ 1). With `--groups G --group-size S`,
//! group j's members are users j·S .. j·S+S-1 (wrapping), created by the first member
//! before the clock starts; `--group-share` is the fraction of messages sent to one of
//! the sender's groups instead of its DM. Every body starts with the send time, sender,
//! target and a per-(sender, target) sequence number, so each receiver checks that each
//! message arrives once and in order.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use wire::frame::{ClientFrame, ConvId, GroupAction, GroupOp, MsgKind, Send, ServerFrame, Target as To};

use crate::net::{self, Rx, Target, Tx};
use crate::report::{self, hist_json, Live, Progress, ServerProbe};

/// What message bodies are filled with after their header.
const TEXT: &[u8] =
    b"eeeeeeeeeeeetttttttttaaaaaaaaoooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrrddddllllcccuuummwwffggyyppbbvk    ";

/// Bytes of the header every body starts with.
pub const HEADER: usize = 24;
/// The target key of a DM in the body header.
const DM: u32 = u32::MAX;

/// What to run.
#[derive(Clone)]
pub struct ChatArgs {
    /// Where to connect.
    pub target: Target,
    /// Connected users (even; pairs share a DM).
    pub users: usize,
    /// Messages per second, all users together (open loop).
    pub rate: u64,
    /// Seconds of sending.
    pub secs: u64,
    /// Smallest and largest body (uniform between; at least [`HEADER`]).
    pub body: (usize, usize),
    /// Groups.
    pub groups: usize,
    /// Members per group.
    pub group_size: usize,
    /// Fraction of messages sent to a group.
    pub group_share: f64,
    /// Client executors.
    pub threads: usize,
    /// Prefix for user ids (use a new one per run against the same data).
    pub tag: String,
    /// Receipts mix: every received message is acknowledged with `delivered`, every
    /// other one with `read` too (sent with the receiver's next write).
    pub receipts: bool,
}

/// Receipt frames waiting for their connection's next write: `(user index, frame)`.
type Pending = Rc<RefCell<Vec<(usize, ClientFrame)>>>;

/// Shared by the executors during setup.
struct Setup {
    /// Connections open (all executors).
    connected: AtomicUsize,
    /// Group ids, filled by each group's creator.
    groups: Mutex<Vec<Option<ConvId>>>,
    /// Groups created.
    created: AtomicUsize,
    /// Deliveries the senders expect (all executors, once they finished sending).
    expected: AtomicUsize,
    /// Executors that finished sending.
    done_sending: AtomicUsize,
}

/// One executor's results.
#[derive(Default)]
struct Out {
    sent: u64,
    acked: u64,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    group_sent: u64,
    receipts_sent: u64,
    errors: BTreeMap<String, u64>,
    ack: Option<Histogram<u64>>,
    deliver: Option<Histogram<u64>>,
}

/// A small deterministic generator (xorshift64*): the client's choices are
/// reproducible and cost nothing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn members(args: &ChatArgs, g: usize) -> Vec<usize> {
    (0..args.group_size).map(|m| (g * args.group_size + m) % args.users).collect()
}

fn user(args: &ChatArgs, i: usize) -> String {
    format!("{}-u{i}", args.tag)
}

/// Reads one connection: acks (latency by send time) and messages (latency, order).
async fn reader(
    mut rx: Rx,
    out: Rc<RefCell<Out>>,
    times: Rc<RefCell<Vec<u64>>>,
    live: Arc<Live>,
    epoch: Instant,
    receipts: Option<(usize, Pending)>,
) {
    let mut next: HashMap<(u32, u32), u64> = HashMap::new();
    while let Ok(f) = rx.frame().await {
        let now = epoch.elapsed().as_nanos() as u64;
        let mut o = out.borrow_mut();
        match f {
            ServerFrame::Ack(a) => {
                let sent_at = a.client_msg_id.parse::<usize>().ok().and_then(|n| times.borrow().get(n).copied());
                if let Some(t) = sent_at {
                    o.acked += 1;
                    let _ = o.ack.get_or_insert_with(report::histogram).record((now.saturating_sub(t) / 1000).max(1));
                }
            }
            ServerFrame::Msg(m) if m.kind != MsgKind::System && m.body.len() >= HEADER => {
                let word = |r: std::ops::Range<usize>| -> u64 {
                    let mut b = [0u8; 8];
                    b[..r.len()].copy_from_slice(&m.body[r]);
                    u64::from_le_bytes(b)
                };
                let (sent_at, sender, key, seq) = (word(0..8), word(8..12) as u32, word(12..16) as u32, word(16..24));
                let expect = next.entry((sender, key)).or_insert(0);
                if seq < *expect {
                    o.duplicates += 1;
                    continue;
                }
                if seq > *expect {
                    o.out_of_order += 1;
                }
                *expect = seq + 1;
                o.delivered += 1;
                if let Some((me, pending)) = &receipts {
                    let mut p = pending.borrow_mut();
                    p.push((*me, ClientFrame::Delivered { conv: m.conv, seq: m.seq }));
                    o.receipts_sent += 1;
                    if m.seq % 2 == 0 {
                        p.push((*me, ClientFrame::Read { conv: m.conv, seq: m.seq }));
                        o.receipts_sent += 1;
                    }
                }
                let us = (now.saturating_sub(sent_at) / 1000).max(1);
                let _ = o.deliver.get_or_insert_with(report::histogram).record(us);
                live.record_delivery(us);
            }
            ServerFrame::Error(e) => *o.errors.entry(e.code.name().to_owned()).or_default() += 1,
            _ => {}
        }
    }
}

pub async fn wait_until(mut done: impl FnMut() -> bool, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while !done() {
        if Instant::now() >= until {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    true
}

async fn exec_main(args: ChatArgs, t: usize, setup: Arc<Setup>, live: Arc<Live>, epoch: Instant) -> Out {
    let out = Rc::new(RefCell::new(Out::default()));
    let times: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::new()));
    let mine: Vec<usize> = (0..args.users).filter(|i| i % args.threads == t).collect();
    let mut txs: HashMap<usize, Tx> = HashMap::new();
    let mut readers = Vec::new();
    let pending: Pending = Rc::new(RefCell::new(Vec::new()));
    for &i in &mine {
        match net::open(&args.target, i, &user(&args, i)).await {
            Ok(c) => {
                live.open.fetch_add(1, Ordering::Relaxed);
                txs.insert(i, c.tx);
                let receipts = args.receipts.then(|| (i, pending.clone()));
                let r = reader(c.rx, out.clone(), times.clone(), live.clone(), epoch, receipts);
                readers.push(glommio::spawn_local(r));
            }
            Err(e) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                *out.borrow_mut().errors.entry(format!("connect_{}", net::reason(&e))).or_default() += 1;
            }
        }
        setup.connected.fetch_add(1, Ordering::Relaxed);
    }
    wait_until(|| setup.connected.load(Ordering::Relaxed) >= args.users, Duration::from_secs(600)).await;
    // Groups whose creator is here are created over a second connection of the
    // creator's (its main connection's reader is already running).
    for g in (0..args.groups).filter(|g| members(&args, *g)[0] % args.threads == t) {
        let ms = members(&args, g);
        let creator = user(&args, ms[0]);
        let names: Vec<String> = ms[1..].iter().map(|m| user(&args, *m)).collect();
        let conv = match create_group(&args.target, &creator, &names).await {
            Ok(c) => c,
            Err(e) => panic!("creating group {g}: {e}"),
        };
        setup.groups.lock().expect("setup lock")[g] = Some(conv);
        setup.created.fetch_add(1, Ordering::Relaxed);
    }
    wait_until(|| setup.created.load(Ordering::Relaxed) >= args.groups, Duration::from_secs(600)).await;
    let groups: Vec<ConvId> =
        setup.groups.lock().expect("setup lock").iter().map(|g| g.expect("every group created")).collect();
    let mut my_groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for g in 0..args.groups {
        for m in members(&args, g) {
            my_groups.entry(m).or_default().push(g);
        }
    }
    // Send open loop at this executor's share, round-robin over its users.
    let senders: Vec<usize> = mine.iter().copied().filter(|i| txs.contains_key(i)).collect();
    let per_exec = args.rate as f64 / args.threads as f64;
    let total = (per_exec * args.secs as f64).round() as u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
    let mut seqs: HashMap<(usize, u32), u64> = HashMap::new();
    let start = Instant::now();
    let mut n = 0u64;
    while n < total && !senders.is_empty() {
        let due = start + Duration::from_secs_f64(n as f64 / per_exec);
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        // Catch up on everything due (one write per connection per wake-up).
        let mut dirty = Vec::new();
        while n < total && start + Duration::from_secs_f64(n as f64 / per_exec) <= Instant::now() {
            let from = senders[(n as usize) % senders.len()];
            let gs = my_groups.get(&from).map(Vec::as_slice).unwrap_or(&[]);
            let (to, key, fanout) = if !gs.is_empty() && rng.unit() < args.group_share {
                let g = gs[rng.below(gs.len())];
                (To::Conv(groups[g]), g as u32, args.group_size as u64 - 1)
            } else {
                (To::User(user(&args, from ^ 1)), DM, 1)
            };
            let seq = seqs.entry((from, key)).or_insert(0);
            let len = args.body.0 + rng.below(args.body.1 - args.body.0 + 1);
            // Letters at roughly English frequencies: compresses about as chat text does
            // (what matters for permessage-deflate runs), unlike a run of one byte.
            let mut body: Vec<u8> = (0..len).map(|_| TEXT[rng.below(TEXT.len())]).collect();
            let ts = epoch.elapsed().as_nanos() as u64;
            body[0..8].copy_from_slice(&ts.to_le_bytes());
            body[8..12].copy_from_slice(&(from as u32).to_le_bytes());
            body[12..16].copy_from_slice(&key.to_le_bytes());
            body[16..24].copy_from_slice(&seq.to_le_bytes());
            *seq += 1;
            let id = {
                let mut tv = times.borrow_mut();
                tv.push(ts);
                tv.len() - 1
            };
            let f = ClientFrame::Send(Send {
                reply_to: None,
                target_seq: None,
                forward: None,
                client_msg_id: id.to_string(),
                target: to,
                body,
                kind: MsgKind::Data,
            });
            if let Some(tx) = txs.get_mut(&from) {
                tx.queue(&f);
                dirty.push(from);
            }
            {
                let mut o = out.borrow_mut();
                o.sent += 1;
                o.expected += fanout;
                o.group_sent += u64::from(key != DM);
            }
            live.sent.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        send_receipts(&pending, &mut txs, dirty).await;
    }
    // Done sending: wait (bounded: 10 s) for this executor's acks and for every
    // expected delivery (counted by the receivers' executors), then drop the readers.
    let expected = out.borrow().expected;
    setup.expected.fetch_add(expected as usize, Ordering::Relaxed);
    setup.done_sending.fetch_add(1, Ordering::Relaxed);
    let (o2, s2, l2, threads) = (out.clone(), setup.clone(), live.clone(), args.threads);
    let all_in = move || {
        o2.borrow().acked >= o2.borrow().sent
            && s2.done_sending.load(Ordering::Relaxed) >= threads
            && l2.delivered.load(Ordering::Relaxed) >= s2.expected.load(Ordering::Relaxed) as u64
    };
    let until = Instant::now() + Duration::from_secs(10);
    // Receipts for what still arrives go out meanwhile.
    while !all_in() && Instant::now() < until {
        glommio::timer::sleep(Duration::from_millis(2)).await;
        send_receipts(&pending, &mut txs, Vec::new()).await;
    }
    send_receipts(&pending, &mut txs, Vec::new()).await;
    drop(readers);
    drop(txs);
    out.take()
}

/// Queues the receipts readers produced on their connections and flushes those and
/// `dirty` (one write per connection).
async fn send_receipts(pending: &Pending, txs: &mut HashMap<usize, Tx>, mut dirty: Vec<usize>) {
    let frames: Vec<(usize, ClientFrame)> = pending.borrow_mut().drain(..).collect();
    for (i, f) in frames {
        if let Some(tx) = txs.get_mut(&i) {
            tx.queue(&f);
            dirty.push(i);
        }
    }
    dirty.sort_unstable();
    dirty.dedup();
    for from in dirty {
        if let Some(tx) = txs.get_mut(&from) {
            let _ = tx.flush().await;
        }
    }
}

/// Creates a group from a second device of `creator` and returns its id: created with
/// the first 256 others, the rest added 256 per request.
pub async fn create_group(target: &Target, creator: &str, names: &[String]) -> anyhow::Result<ConvId> {
    let mut c = net::open_device(target, 0, creator, "setup").await?;
    let mut chunks = names.chunks(256);
    let first = chunks.next().map(<[String]>::to_vec).unwrap_or_default();
    let op = |action, conv, members: Vec<String>| {
        ClientFrame::Group(GroupOp {
            req_id: Some("setup".into()),
            action,
            conv,
            name: None,
            members,
            description: None,
            avatar: None,
        })
    };
    c.tx.send(&op(GroupAction::Create, None, first)).await?;
    let conv = group_reply(&mut c.rx).await?;
    for chunk in chunks {
        c.tx.send(&op(GroupAction::Add, Some(conv), chunk.to_vec())).await?;
        group_reply(&mut c.rx).await?;
    }
    c.tx.close().await;
    Ok(conv)
}

async fn group_reply(rx: &mut Rx) -> anyhow::Result<ConvId> {
    loop {
        match rx.frame().await? {
            ServerFrame::GroupInfo(i) => return Ok(i.conv),
            ServerFrame::Error(e) => anyhow::bail!("group request refused: {} {}", e.code.name(), e.message),
            _ => continue,
        }
    }
}

/// Runs the scenario; returns the report.
pub fn run(args: ChatArgs, server_pid: Option<u32>) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.users >= 2 && args.users.is_multiple_of(2), "users must be even and at least 2");
    anyhow::ensure!(args.threads >= 1 && args.rate >= 1, "threads and rate must be at least 1");
    anyhow::ensure!(args.body.0 >= HEADER && args.body.1 >= args.body.0, "body sizes must be >= {HEADER}");
    anyhow::ensure!(
        args.groups == 0 || (2..=args.users).contains(&args.group_size),
        "group size must be between 2 and users"
    );
    let setup = Arc::new(Setup {
        connected: AtomicUsize::new(0),
        groups: Mutex::new(vec![None; args.groups]),
        created: AtomicUsize::new(0),
        expected: AtomicUsize::new(0),
        done_sending: AtomicUsize::new(0),
    });
    let live = Arc::new(Live::default());
    let progress = Progress::start("chat", live.clone());
    let epoch = Instant::now();
    let mut probe = None;
    let handles = crate::spawn_executors(args.threads, "chat", |t| {
        let (a, s, l) = (args.clone(), setup.clone(), live.clone());
        move || exec_main(a, t, s, l, epoch)
    })?;
    // Server CPU is measured from when every user is connected and every group exists.
    while setup.connected.load(Ordering::Relaxed) < args.users || setup.created.load(Ordering::Relaxed) < args.groups {
        std::thread::sleep(Duration::from_millis(2));
        if handles.iter().any(|h| h.is_finished()) {
            break;
        }
    }
    probe.get_or_insert(ServerProbe::start(server_pid)?);
    let active0 = Instant::now();
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.join().map_err(|e| anyhow::anyhow!("client executor failed: {e}"))?);
    }
    let active = active0.elapsed().as_secs_f64();
    let timeline = progress.finish();
    let mut o = Out::default();
    let (mut ack, mut deliver) = (report::histogram(), report::histogram());
    for x in outs {
        o.sent += x.sent;
        o.acked += x.acked;
        o.expected += x.expected;
        o.delivered += x.delivered;
        o.duplicates += x.duplicates;
        o.out_of_order += x.out_of_order;
        o.group_sent += x.group_sent;
        o.receipts_sent += x.receipts_sent;
        report::add_counts(&mut o.errors, x.errors);
        if let Some(h) = x.ack {
            let _ = ack.add(&h);
        }
        if let Some(h) = x.deliver {
            let _ = deliver.add(&h);
        }
    }
    let server = probe.expect("probe started").finish(args.users as u64, o.sent)?;
    let mut r = json!({
        "schema": report::SCHEMA, "scenario": "chat", "processes": 1,
        "args": {
            "users": args.users, "rate": args.rate, "secs": args.secs, "body_min": args.body.0, "body_max": args.body.1,
            "groups": args.groups, "group_size": args.group_size, "group_share": args.group_share,
            "threads": args.threads, "encoding": args.target.encoding.subprotocol(), "tls": args.target.tls.is_some(),
            "tag": args.tag, "receipts": args.receipts,
        },
        "started_unix_ms": shard::ids::now_ms() - epoch.elapsed().as_millis() as u64,
        "wall_secs": epoch.elapsed().as_secs_f64(),
        "active_secs": (args.secs as f64).min(active),
        "connections": { "target": args.users, "opened": live.open.load(Ordering::Relaxed),
            "failed": live.failed.load(Ordering::Relaxed) },
        "messages": {
            "sent": o.sent, "group_sent": o.group_sent, "acked": o.acked, "expected_deliveries": o.expected,
            "delivered": o.delivered, "lost": o.expected.saturating_sub(o.delivered),
            "duplicates": o.duplicates, "out_of_order": o.out_of_order, "errors": o.errors,
            "receipts_sent": o.receipts_sent,
        },
        "latency": { "ack": hist_json(&ack), "deliver": hist_json(&deliver) },
        "server": server,
        "timeline": timeline,
    });
    report::rates(&mut r);
    Ok(r)
}
