//! `storm`: open N authenticated connections at a target rate, spread over loopback
//! source addresses, hold them with heartbeats, and report the achieved rate, failures
//! by reason, upgrade latency and the server's memory per connection.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::net::{self, In, Target};
use crate::report::{self, hist_json, Live, Progress, ServerProbe};

/// What to run.
#[derive(Clone)]
pub struct StormArgs {
    /// Where to connect.
    pub target: Target,
    /// Connections to open (this process).
    pub connections: usize,
    /// Connections per second (all executors together).
    pub rate: u64,
    /// Client executors.
    pub threads: usize,
    /// Seconds to hold every connection after the last one opened.
    pub hold_secs: u64,
    /// Client ping interval while holding.
    pub heartbeat_secs: u64,
    /// User id prefix.
    pub tag: String,
    /// Most upgrades in flight per executor.
    pub max_inflight: usize,
    /// WSS with resumption: every connection is a device with its own session store, and
    /// an unmeasured first pass (connect, then close) gives each one a ticket, so the
    /// measured storm is devices reconnecting.
    pub resume: bool,
}

/// Where the executors meet between the priming pass and the measured storm.
#[derive(Default)]
struct Gate {
    /// Executors done priming.
    primed: std::sync::atomic::AtomicUsize,
    /// Set when the measured storm starts.
    go: std::sync::atomic::AtomicBool,
    /// Priming connections that failed.
    prime_failed: AtomicU64,
}

/// One executor's results.
struct Out {
    opened: u64,
    failures: BTreeMap<String, u64>,
    upgrade: Histogram<u64>,
    closed_early: u64,
    resumed: u64,
    /// TLS handshakes by negotiated cipher suite.
    suites: BTreeMap<String, u64>,
}

/// When held connections close: ms after `epoch`, or `u64::MAX` while not yet known.
type Release = Arc<AtomicU64>;

fn release_at(epoch: Instant, r: &Release) -> Instant {
    match r.load(Ordering::Relaxed) {
        u64::MAX => Instant::now() + Duration::from_secs(1),
        ms => epoch + Duration::from_millis(ms),
    }
}

/// What wakes a held connection.
enum Held<T> {
    /// Something arrived (or the connection broke).
    In(T),
    /// Time to ping.
    Ping,
    /// The release time has come.
    Released,
}

/// Waits until `inflight` is under the limit and the `k`-th start of this executor is due.
async fn pace(start: Instant, k: usize, per_exec: f64, inflight: &std::cell::Cell<usize>, max_inflight: usize) {
    let due = start + Duration::from_secs_f64(k as f64 / per_exec);
    let now = Instant::now();
    if due > now {
        glommio::timer::sleep(due - now).await;
    }
    while inflight.get() >= max_inflight {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    inflight.set(inflight.get() + 1);
}

/// The priming pass: every connection once, closed at once (its ticket stays in its
/// device's store). Returns when all are done, then waits for the gate to open.
async fn prime(args: &StormArgs, targets: &[(usize, Target)], per_exec: f64, gate: &Gate) {
    let inflight = Rc::new(std::cell::Cell::new(0usize));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(targets.len());
    for (k, (i, target)) in targets.iter().enumerate() {
        pace(start, k, per_exec, &inflight, args.max_inflight).await;
        let (target, inflight, user, i) = (target.clone(), inflight.clone(), format!("{}-{i}", args.tag), *i);
        tasks.push(glommio::spawn_local(async move {
            let r = net::open(&target, i, &user).await;
            inflight.set(inflight.get() - 1);
            let Ok(mut c) = r else { return false };
            c.tx.close().await;
            true
        }));
    }
    for t in tasks {
        if !t.await {
            gate.prime_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    gate.primed.fetch_add(1, Ordering::Relaxed);
    while !gate.go.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

async fn exec_main(
    args: StormArgs,
    mine: Vec<usize>,
    live: Arc<Live>,
    epoch: Instant,
    release: Release,
    gate: Arc<Gate>,
) -> Out {
    let out = Rc::new(RefCell::new(Out {
        opened: 0,
        failures: BTreeMap::new(),
        upgrade: report::histogram(),
        closed_early: 0,
        resumed: 0,
        suites: BTreeMap::new(),
    }));
    let per_exec = (args.rate as f64 / args.threads as f64).max(0.001);
    let targets: Vec<(usize, Target)> = mine
        .into_iter()
        .map(|i| {
            let mut t = args.target.clone();
            if args.resume {
                t.tls = t.tls.as_deref().map(net::own_sessions);
            }
            (i, t)
        })
        .collect();
    if args.resume {
        prime(&args, &targets, per_exec, &gate).await;
    }
    // Tokens are minted before the measured phase, as a device holds its token before
    // it connects: signing them inside it measured the client's HMAC, not the server.
    let tokens: Vec<String> =
        targets.iter().map(|(i, t)| net::token(&t.secret, &format!("{}-{i}", args.tag), "bench")).collect();
    let inflight = Rc::new(std::cell::Cell::new(0usize));
    // One task watches for the release time and wakes every held connection at once
    // (a closed semaphore): a timer per connection, re-armed every second, cost the
    // client ~60 % of a core while holding 10,000 idle connections, CPU the gateway
    // and the chat client it shares the host with then lacked.
    let released = Rc::new(glommio::sync::Semaphore::new(0));
    {
        let (released, release) = (released.clone(), release.clone());
        glommio::spawn_local(async move {
            loop {
                let (now, at) = (Instant::now(), release_at(epoch, &release));
                if now >= at {
                    return released.close();
                }
                glommio::timer::sleep((at - now).min(Duration::from_millis(100))).await;
            }
        })
        .detach();
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(targets.len());
    for (k, ((i, target), token)) in targets.into_iter().zip(tokens).enumerate() {
        pace(start, k, per_exec, &inflight, args.max_inflight).await;
        let (out, live, inflight) = (out.clone(), live.clone(), inflight.clone());
        let released = released.clone();
        let heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
        tasks.push(glommio::spawn_local(async move {
            let t0 = Instant::now();
            let r = net::open_with_token(&target, i, &token).await;
            inflight.set(inflight.get() - 1);
            let mut conn = match r {
                Ok(c) => c,
                Err(e) => {
                    live.failed.fetch_add(1, Ordering::Relaxed);
                    *out.borrow_mut().failures.entry(net::reason(&e)).or_default() += 1;
                    return;
                }
            };
            {
                let mut o = out.borrow_mut();
                o.opened += 1;
                o.resumed += u64::from(conn.resumed);
                if let Some(suite) = conn.suite {
                    *o.suites.entry(format!("{suite:?}")).or_default() += 1;
                }
                let _ = o.upgrade.record((t0.elapsed().as_micros() as u64).max(1));
            }
            live.open.fetch_add(1, Ordering::Relaxed);
            // Hold: answer pings, ping every heartbeat, until released.
            let mut next_ping = Instant::now() + heartbeat;
            let early = loop {
                let now = Instant::now();
                if now >= next_ping {
                    conn.tx.queue_control(false, b"hb");
                    if conn.tx.flush().await.is_err() {
                        break true;
                    }
                    next_ping = now + heartbeat;
                }
                let read = async { Held::In(conn.rx.next().await) };
                let ping = async {
                    glommio::timer::sleep(next_ping - now).await;
                    Held::Ping
                };
                let release = async {
                    // Closed at the release time: every waiter (and any later one) fails.
                    let _ = released.acquire(1).await;
                    Held::Released
                };
                match futures_lite::future::or(read, futures_lite::future::or(ping, release)).await {
                    Held::Released => break false,
                    Held::Ping => {}
                    Held::In(Ok(In::Ping(p))) => {
                        conn.tx.queue_control(true, &p);
                        if conn.tx.flush().await.is_err() {
                            break true;
                        }
                    }
                    Held::In(Ok(In::Frame(_))) => {}
                    Held::In(Ok(In::Close(_))) | Held::In(Err(_)) => break true,
                }
            };
            if early {
                out.borrow_mut().closed_early += 1;
            } else {
                conn.tx.close().await;
            }
            live.open.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(out).ok().map(RefCell::into_inner).expect("every connection task finished")
}

/// Waits until `done()` or until a pass of connections started at `from` must be over
/// (the schedule plus the longest an upgrade may take); returns `done()`.
fn pass_done(from: Instant, args: &StormArgs, done: impl Fn() -> bool) -> bool {
    let schedule = Duration::from_secs_f64(args.connections as f64 / args.rate as f64);
    let deadline = from + schedule + net::UPGRADE_TIMEOUT + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// Runs the storm; returns the report.
pub fn run(args: StormArgs, server_pid: Option<u32>) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.connections >= 1 && args.rate >= 1 && args.threads >= 1, "connections, rate, threads >= 1");
    let live = Arc::new(Live::default());
    let epoch = Instant::now();
    let release: Release = Arc::new(AtomicU64::new(u64::MAX));
    let gate = Arc::new(Gate::default());
    let resume = args.resume && args.target.tls.is_some();
    let args = StormArgs { resume, ..args };
    let handles = crate::spawn_executors(args.threads, "storm", |t| {
        let mine: Vec<usize> = (0..args.connections).filter(|i| i % args.threads == t).collect();
        let (a, l, r, g) = (args.clone(), live.clone(), release.clone(), gate.clone());
        move || exec_main(a, mine, l, epoch, r, g)
    })?;
    if resume {
        // The priming pass is not measured; the server's memory is read after it too.
        let primed = pass_done(epoch, &args, || gate.primed.load(Ordering::Relaxed) == args.threads);
        anyhow::ensure!(primed, "the priming pass did not finish");
        std::thread::sleep(Duration::from_secs(1));
    }
    let probe = ServerProbe::start(server_pid)?;
    let progress = Progress::start("storm", live.clone());
    let started = Instant::now();
    gate.go.store(true, Ordering::Relaxed);
    // The connect phase ends when every attempt has succeeded or failed.
    pass_done(started, &args, || {
        live.open.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed) >= args.connections as u64
    });
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the server settle (handshake buffers returned), then read its memory; then
    // hold, then release every connection at once.
    std::thread::sleep(Duration::from_secs(2));
    let open_at_peak = live.open.load(Ordering::Relaxed);
    let server = probe.finish(open_at_peak, 0)?;
    let hold_until = epoch.elapsed() + Duration::from_secs(args.hold_secs.saturating_sub(2));
    release.store(hold_until.as_millis() as u64, Ordering::Relaxed);
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.join().map_err(|e| anyhow::anyhow!("client executor failed: {e}"))?);
    }
    let timeline = progress.finish();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut upgrade = report::histogram();
    let (mut opened, mut closed_early, mut resumed) = (0, 0, 0);
    let mut suites: BTreeMap<String, u64> = BTreeMap::new();
    for o in outs {
        opened += o.opened;
        report::add_counts(&mut suites, o.suites);
        resumed += o.resumed;
        closed_early += o.closed_early;
        let _ = upgrade.add(&o.upgrade);
        report::add_counts(&mut failures, o.failures);
    }
    let mut r = json!({
        "schema": report::SCHEMA, "scenario": "storm", "processes": 1,
        "args": {
            "connections": args.connections, "rate": args.rate, "threads": args.threads, "hold_secs": args.hold_secs,
            "sources": args.target.sources.len(), "tls": args.target.tls.is_some(),
            "encoding": args.target.encoding.subprotocol(), "tag": args.tag, "resume": resume,
        },
        "started_unix_ms": shard::ids::now_ms() - epoch.elapsed().as_millis() as u64,
        "wall_secs": epoch.elapsed().as_secs_f64(),
        "active_secs": connect_secs,
        "connections": {
            "target": args.connections, "opened": opened, "failed": failures.values().sum::<u64>(),
            "failures": failures, "connect_secs": connect_secs, "closed_during_hold": closed_early,
            "tls_resumed": resumed, "tls_suites": suites, "prime_failed": gate.prime_failed.load(Ordering::Relaxed),
        },
        "messages": {},
        "latency": { "upgrade": hist_json(&upgrade) },
        "server": server,
        "timeline": timeline,
    });
    report::rates(&mut r);
    Ok(r)
}
