//! The JSON report every scenario prints (schema in docs/BENCHMARKS.md), the merge of
//! several processes' reports, the live progress line, and server-side readings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The schema id in every report.
pub const SCHEMA: &str = "switchboard-bench/1";

/// A latency histogram in µs (1 µs .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as a report object: percentiles plus its buckets (for exact merging).
pub fn hist_json(h: &Histogram<u64>) -> Value {
    let buckets: Vec<[u64; 2]> = h.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect();
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
        "buckets": buckets,
    })
}

fn hist_from_json(v: &Value) -> Histogram<u64> {
    let mut h = histogram();
    for b in v["buckets"].as_array().into_iter().flatten() {
        if let (Some(val), Some(n)) = (b[0].as_u64(), b[1].as_u64()) {
            let _ = h.record_n(val.max(1), n);
        }
    }
    h
}

/// Counters shared by a scenario's executors and the progress printer.
#[derive(Default)]
pub struct Live {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connection attempts that failed.
    pub failed: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages delivered (per recipient).
    pub delivered: AtomicU64,
    /// Delivery latency in the current second (the printer swaps it out).
    pub window: Mutex<Option<Histogram<u64>>>,
}

impl Live {
    /// Records one delivery's latency.
    pub fn record_delivery(&self, us: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        // The client is not the system under test: one uncontended lock per delivery.
        if let Ok(mut w) = self.window.lock() {
            let _ = w.get_or_insert_with(histogram).record(us.max(1));
        }
    }
}

/// Prints a progress line every second on stderr and keeps a per-second timeline
/// (unix ms, open connections, sent, delivered, window p99) until stopped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Value>>>,
}

impl Progress {
    /// Starts printing for `scenario`.
    pub fn start(scenario: &'static str, live: Arc<Live>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut timeline = Vec::new();
            let (mut last_sent, mut last_deliv) = (0, 0);
            let mut tick = 1;
            loop {
                let due = started + Duration::from_secs(tick);
                while Instant::now() < due && !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                tick += 1;
                let (sent, deliv) = (live.sent.load(Ordering::Relaxed), live.delivered.load(Ordering::Relaxed));
                let window = live.window.lock().ok().and_then(|mut w| w.take());
                let p99 = window.as_ref().map_or(0, |h| h.value_at_quantile(0.99));
                let open = live.open.load(Ordering::Relaxed);
                let failed = live.failed.load(Ordering::Relaxed);
                eprint!(
                    "\r[{scenario} {:>4}s] conns {open} (failed {failed})  sent {sent} ({}/s)  delivered {deliv} ({}/s)  p99 {:.2} ms   ",
                    started.elapsed().as_secs(),
                    sent - last_sent,
                    deliv - last_deliv,
                    p99 as f64 / 1000.0
                );
                timeline.push(json!({
                    "unix_ms": shard::ids::now_ms(), "open": open, "sent": sent - last_sent,
                    "delivered": deliv - last_deliv, "p99_us": p99,
                }));
                (last_sent, last_deliv) = (sent, deliv);
                // A last line when stopped, so even a short run shows its totals.
                if st.load(Ordering::Relaxed) {
                    break;
                }
            }
            eprintln!();
            timeline
        });
        Progress { stop, handle: Some(handle) }
    }

    /// Stops printing; returns the timeline.
    pub fn finish(mut self) -> Vec<Value> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

/// A process's resident memory, from /proc.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb * 1024)
}

/// A process's CPU time (user + system) in µs, from /proc.
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    // After the command name: utime and stime are fields 14 and 15 (1-based), in ticks.
    let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Ok(ticks * 10_000)
}

/// Adds two JSON numbers (integers stay integers).
fn add(a: &Value, b: &Value) -> Value {
    match (a.as_u64(), b.as_u64()) {
        (Some(x), Some(y)) => json!(x + y),
        _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
    }
}

/// Adds counts by name (failures by reason, errors by code...) into `into`.
pub fn add_counts(into: &mut BTreeMap<String, u64>, from: impl IntoIterator<Item = (String, u64)>) {
    for (name, n) in from {
        *into.entry(name).or_default() += n;
    }
}

/// Merges reports of one scenario run by several processes against one server:
/// counters and failures add up, histograms merge exactly, rates are recomputed over
/// the longest wall time, server readings take the earliest "before" and latest
/// "after" (so memory per connection covers every process's connections).
pub fn merge(reports: &[Value]) -> anyhow::Result<Value> {
    anyhow::ensure!(!reports.is_empty(), "nothing to merge");
    let scenario = reports[0]["scenario"].clone();
    anyhow::ensure!(
        reports.iter().all(|r| r["scenario"] == scenario && r["schema"] == SCHEMA),
        "reports must share scenario and schema"
    );
    let mut out = reports[0].clone();
    for section in ["connections", "messages"] {
        let mut merged = serde_json::Map::new();
        for r in reports {
            for (k, v) in r[section].as_object().into_iter().flatten() {
                if let Some(tally) = v.as_object() {
                    // Counts by name (failures, errors, TLS suites): summed per name.
                    let mut f: BTreeMap<String, u64> =
                        serde_json::from_value(merged.get(k).cloned().unwrap_or(json!({}))).unwrap_or_default();
                    add_counts(&mut f, tally.iter().map(|(name, n)| (name.clone(), n.as_u64().unwrap_or(0))));
                    merged.insert(k.clone(), json!(f));
                } else if k.ends_with("_secs") {
                    // Processes run together: the phase lasts as long as the longest.
                    let prev = merged.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                    merged.insert(k.clone(), json!(prev.max(v.as_f64().unwrap_or(0.0))));
                } else if v.is_number() && !k.ends_with("_per_sec") {
                    let prev = merged.get(k).cloned().unwrap_or(json!(0));
                    merged.insert(k.clone(), add(&prev, v));
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
        out[section] = Value::Object(merged);
    }
    let mut lat = serde_json::Map::new();
    for name in reports[0]["latency"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
        let mut h = histogram();
        for r in reports {
            let _ = h.add(hist_from_json(&r["latency"][&name]));
        }
        lat.insert(name, hist_json(&h));
    }
    out["latency"] = Value::Object(lat);
    let wall = reports.iter().filter_map(|r| r["wall_secs"].as_f64()).fold(0.0, f64::max);
    let active = reports.iter().filter_map(|r| r["active_secs"].as_f64()).fold(0.0, f64::max);
    out["wall_secs"] = json!(wall);
    out["active_secs"] = json!(active);
    out["processes"] = json!(reports.iter().map(|r| r["processes"].as_u64().unwrap_or(1)).sum::<u64>());
    rates(&mut out);
    let before = reports.iter().filter_map(|r| r["server"]["rss_before"].as_u64()).min();
    let after = reports.iter().filter_map(|r| r["server"]["rss_after"].as_u64()).max();
    if let (Some(b), Some(a)) = (before, after) {
        out["server"]["rss_before"] = json!(b);
        out["server"]["rss_after"] = json!(a);
        let n = out["connections"]["opened"].as_u64().unwrap_or(0).max(1);
        out["server"]["bytes_per_conn"] = json!((a.saturating_sub(b)) as f64 / n as f64);
    }
    out["timeline"] = json!([]);
    Ok(out)
}

/// Fills the derived rates from counters and times.
pub fn rates(r: &mut Value) {
    let active = r["active_secs"].as_f64().unwrap_or(0.0).max(1e-9);
    if let (Some(opened), Some(secs)) = (r["connections"]["opened"].as_u64(), r["connections"]["connect_secs"].as_f64())
    {
        r["connections"]["opened_per_sec"] = json!(opened as f64 / secs.max(1e-9));
    }
    if let Some(sent) = r["messages"]["sent"].as_u64() {
        r["messages"]["sent_per_sec"] = json!(sent as f64 / active);
    }
    if let Some(d) = r["messages"]["delivered"].as_u64() {
        r["messages"]["delivered_per_sec"] = json!(d as f64 / active);
    }
}

/// Server readings around a run: RSS and CPU time of `pid`.
pub struct ServerProbe {
    pid: Option<u32>,
    rss0: u64,
    cpu0: u64,
}

impl ServerProbe {
    /// Reads the "before" values.
    pub fn start(pid: Option<u32>) -> anyhow::Result<ServerProbe> {
        let (rss0, cpu0) = match pid {
            Some(p) => (rss(p)?, cpu_us(p)?),
            None => (0, 0),
        };
        Ok(ServerProbe { pid, rss0, cpu0 })
    }

    /// The `server` section: RSS before/after, per connection, CPU per message.
    pub fn finish(&self, connections: u64, messages: u64) -> anyhow::Result<Value> {
        let Some(pid) = self.pid else { return Ok(json!({})) };
        let (rss1, cpu1) = (rss(pid)?, cpu_us(pid)?);
        let cpu = cpu1.saturating_sub(self.cpu0);
        // The planner's schema (tuning::report): the same types write and read it.
        let f = tuning::report::ServerFigures::from_readings(pid, (self.rss0, rss1), cpu, connections, messages);
        Ok(serde_json::to_value(f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_counts_by_name_in_every_section() {
        let part = |errors: Value, suites: Value| {
            json!({
                "schema": SCHEMA, "scenario": "chat", "processes": 1, "wall_secs": 1.0, "active_secs": 1.0,
                "connections": { "opened": 2, "tls_suites": suites },
                "messages": { "sent": 5, "errors": errors },
                "latency": {},
            })
        };
        let a = part(json!({"rate_limited": 2}), json!({"TLS13_AES_128_GCM_SHA256": 2}));
        let b = part(json!({"rate_limited": 1, "not_member": 4}), json!({"TLS13_AES_256_GCM_SHA384": 2}));
        let m = merge(&[a, b]).unwrap();
        assert_eq!(m["messages"]["errors"], json!({"not_member": 4, "rate_limited": 3}));
        assert_eq!(
            m["connections"]["tls_suites"],
            json!({"TLS13_AES_128_GCM_SHA256": 2, "TLS13_AES_256_GCM_SHA384": 2})
        );
        assert_eq!((m["messages"]["sent"].as_u64(), m["processes"].as_u64()), (Some(10), Some(2)));
    }
}
