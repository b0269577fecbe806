//! `reconnect`: U users connect and exchange `--before` messages per pair; then every
//! client drops at once; while they are away, writers send each of them `--missed`
//! messages; then every client reconnects at once with `hello` and its last seen seq.
//! Reports the time until every client got `synced`, per-client resync time, and
//! whether exactly the missed messages came back (none lost, none replayed twice).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wire::frame::{ClientFrame, ConvId, MsgKind, Send, ServerFrame, SyncPoint, Target as To};

use crate::chat::wait_until;
use crate::net::{self, Target};
use crate::report::{self, hist_json, Live, Progress, ServerProbe};

/// What to run.
#[derive(Clone)]
pub struct ReconnectArgs {
    /// Where to connect.
    pub target: Target,
    /// Users (even: pairs exchange messages before the drop).
    pub users: usize,
    /// Messages each user sends its partner before the drop.
    pub before: usize,
    /// Messages each user is sent while away (at most the server's `sync_per_conv`).
    pub missed: usize,
    /// Writer connections sending while the users are away.
    pub writers: usize,
    /// Client executors.
    pub threads: usize,
    /// User id prefix.
    pub tag: String,
}

struct Phase {
    /// Executors done with each phase (1: exchanged, 2: dropped, 3: missed sent).
    done: [AtomicUsize; 4],
}

#[derive(Default)]
struct Out {
    opened: u64,
    failures: BTreeMap<String, u64>,
    resynced: u64,
    replayed: u64,
    missing: u64,
    unexpected: u64,
    resync: Option<hdrhistogram::Histogram<u64>>,
}

fn user(a: &ReconnectArgs, i: usize) -> String {
    format!("{}-r{i}", a.tag)
}

fn writer(a: &ReconnectArgs, w: usize) -> String {
    format!("{}-w{w}", a.tag)
}

fn text(body: String) -> Vec<u8> {
    body.into_bytes()
}

async fn phase_barrier(p: &Phase, k: usize, threads: usize) {
    p.done[k].fetch_add(1, Ordering::Relaxed);
    wait_until(|| p.done[k].load(Ordering::Relaxed) >= threads, Duration::from_secs(600)).await;
}

async fn exec_main(a: ReconnectArgs, t: usize, p: Arc<Phase>, live: Arc<Live>, reconnect_at: Arc<AtomicUsize>) -> Out {
    let mine: Vec<usize> = (0..a.users).filter(|i| i % a.threads == t).collect();
    let mut out = Out::default();
    // 1. Connect; each user sends `before` messages to its partner; remember the last
    //    seq of the pair's DM once every ack and delivery is in.
    let mut conns = Vec::new();
    for &i in &mine {
        let c = match net::open(&a.target, i, &user(&a, i)).await {
            Ok(c) => c,
            Err(e) => panic!("connecting {}: {e}", user(&a, i)),
        };
        live.open.fetch_add(1, Ordering::Relaxed);
        conns.push((i, c));
    }
    phase_barrier(&p, 0, a.threads).await;
    for (i, c) in conns.iter_mut() {
        for n in 0..a.before {
            let body = text(format!("before {n}"));
            c.tx.queue(&ClientFrame::Send(Send {
                reply_to: None,
                target_seq: None,
                forward: None,
                client_msg_id: format!("b{n}"),
                target: To::User(user(&a, *i ^ 1)),
                body,
                kind: MsgKind::Text,
            }));
            live.sent.fetch_add(1, Ordering::Relaxed);
        }
        c.tx.flush().await.expect("sending before the drop");
    }
    // Each user expects `before` acks and `before` messages from its partner.
    let mut last_seq: HashMap<usize, (ConvId, u64)> = HashMap::new();
    for (i, c) in conns.iter_mut() {
        let (mut acks, mut msgs) = (0, 0);
        while acks < a.before || msgs < a.before {
            match c.rx.frame().await {
                Ok(ServerFrame::Ack(ack)) => {
                    acks += 1;
                    let e = last_seq.entry(*i).or_insert((ack.conv, 0));
                    e.1 = e.1.max(ack.seq);
                }
                Ok(ServerFrame::Msg(m)) => {
                    msgs += 1;
                    live.record_delivery(1);
                    let e = last_seq.entry(*i).or_insert((m.conv, 0));
                    e.1 = e.1.max(m.seq);
                }
                Ok(_) => {}
                Err(e) => panic!("before the drop: {e}"),
            }
        }
    }
    phase_barrier(&p, 1, a.threads).await;
    // 2. Every client drops at once.
    for (_, mut c) in conns.drain(..) {
        c.tx.close().await;
        live.open.fetch_sub(1, Ordering::Relaxed);
    }
    phase_barrier(&p, 2, a.threads).await;
    // 3. Writers (spread over executors) send each user `missed` messages; all acked.
    for w in (0..a.writers).filter(|w| w % a.threads == t) {
        let mut c = net::open(&a.target, a.users + w, &writer(&a, w)).await.expect("writer connects");
        let targets: Vec<usize> = (0..a.users).filter(|i| i % a.writers == w).collect();
        let mut want = 0;
        for &i in &targets {
            for n in 0..a.missed {
                c.tx.queue(&ClientFrame::Send(Send {
                    reply_to: None,
                    target_seq: None,
                    forward: None,
                    client_msg_id: format!("m{i}-{n}"),
                    target: To::User(user(&a, i)),
                    body: text(format!("missed {n}")),
                    kind: MsgKind::Text,
                }));
                want += 1;
            }
            c.tx.flush().await.expect("writer sends");
        }
        let mut acks = 0;
        while acks < want {
            if let ServerFrame::Ack(_) = c.rx.frame().await.expect("writer acks") {
                acks += 1;
            }
        }
        live.sent.fetch_add(want as u64, Ordering::Relaxed);
        c.tx.close().await;
    }
    phase_barrier(&p, 3, a.threads).await;
    // 4. Everyone reconnects at once and syncs. The clock starts at the first attempt.
    let _ = reconnect_at.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
    let results = Rc::new(RefCell::new(Vec::new()));
    let mut tasks = Vec::new();
    for &i in &mine {
        let (a, live, results) = (a.clone(), live.clone(), results.clone());
        let point = last_seq.get(&i).copied();
        let writers = format!("{}-w", a.tag);
        tasks.push(glommio::spawn_local(async move {
            let t0 = Instant::now();
            let r: anyhow::Result<(u64, u64, u64)> = async {
                let mut c = net::open(&a.target, i, &user(&a, i)).await?;
                live.open.fetch_add(1, Ordering::Relaxed);
                let sync = point.map(|(conv, seq)| vec![SyncPoint { conv, seq }]).unwrap_or_default();
                c.tx.send(&ClientFrame::Hello { sync, list_since: None }).await?;
                let (mut missed, mut replayed, mut unexpected) = (0u64, 0u64, 0u64);
                loop {
                    match c.rx.frame().await? {
                        ServerFrame::SyncPage(page) => {
                            for m in page.messages {
                                replayed += 1;
                                if m.body.starts_with(b"missed ") && m.from.starts_with(&writers) {
                                    missed += 1;
                                } else {
                                    unexpected += 1;
                                }
                            }
                        }
                        ServerFrame::Synced { .. } => break,
                        _ => {}
                    }
                }
                c.tx.close().await;
                live.open.fetch_sub(1, Ordering::Relaxed);
                Ok((missed, replayed, unexpected))
            }
            .await;
            results.borrow_mut().push((r.map_err(|e| net::reason(&e)), t0.elapsed()));
        }));
    }
    for t in tasks {
        t.await;
    }
    for (r, took) in results.borrow_mut().drain(..) {
        match r {
            Ok((missed, replayed, unexpected)) => {
                out.opened += 1;
                out.resynced += 1;
                out.replayed += replayed;
                out.unexpected += unexpected;
                out.missing += (a.missed as u64).saturating_sub(missed);
                live.record_delivery(took.as_micros() as u64);
                let _ = out.resync.get_or_insert_with(report::histogram).record((took.as_micros() as u64).max(1));
            }
            Err(reason) => *out.failures.entry(reason).or_default() += 1,
        }
    }
    out
}

/// Runs the scenario; returns the report.
pub fn run(a: ReconnectArgs, server_pid: Option<u32>) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(a.users >= 2 && a.users.is_multiple_of(2), "users must be even and at least 2");
    anyhow::ensure!(a.writers >= 1 && a.threads >= 1, "writers and threads must be at least 1");
    let phase = Arc::new(Phase { done: Default::default() });
    let live = Arc::new(Live::default());
    let reconnect_at = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start("reconnect", live.clone());
    let epoch = Instant::now();
    let handles = crate::spawn_executors(a.threads, "reconnect", |t| {
        let (a, p, l, r) = (a.clone(), phase.clone(), live.clone(), reconnect_at.clone());
        move || exec_main(a, t, p, l, r)
    })?;
    while reconnect_at.load(Ordering::Relaxed) == 0 && !handles.iter().any(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let probe = ServerProbe::start(server_pid)?;
    let storm_start = Instant::now();
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.join().map_err(|e| anyhow::anyhow!("client executor failed: {e}"))?);
    }
    let resync_secs = storm_start.elapsed().as_secs_f64();
    let timeline = progress.finish();
    let mut o = Out::default();
    let mut resync = report::histogram();
    for x in outs {
        o.opened += x.opened;
        o.resynced += x.resynced;
        o.replayed += x.replayed;
        o.missing += x.missing;
        o.unexpected += x.unexpected;
        report::add_counts(&mut o.failures, x.failures);
        if let Some(h) = x.resync {
            let _ = resync.add(&h);
        }
    }
    let server = probe.finish(0, o.replayed)?;
    let mut r = json!({
        "schema": report::SCHEMA, "scenario": "reconnect", "processes": 1,
        "args": { "users": a.users, "before": a.before, "missed": a.missed, "writers": a.writers,
            "threads": a.threads, "encoding": a.target.encoding.subprotocol(), "tag": a.tag },
        "started_unix_ms": shard::ids::now_ms() - epoch.elapsed().as_millis() as u64,
        "wall_secs": epoch.elapsed().as_secs_f64(),
        "active_secs": resync_secs,
        "connections": { "target": a.users, "opened": o.opened, "failed": o.failures.values().sum::<u64>(),
            "failures": o.failures, "connect_secs": resync_secs, "resynced": o.resynced },
        "messages": { "expected_replays": (a.users * a.missed) as u64, "replayed": o.replayed,
            "lost": o.missing, "duplicates": o.unexpected },
        "latency": { "resync": hist_json(&resync) },
        "server": server,
        "timeline": timeline,
    });
    report::rates(&mut r);
    Ok(r)
}
