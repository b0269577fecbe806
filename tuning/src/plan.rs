//! `switchboard plan`: sizes a fleet from measured load-generator reports and a target.
//!
//! Every figure is either measured (taken from a `switchboard-bench` JSON report, named
//! with its file and field) or an assumption (a flag, with its default documented in
//! the project's capacity guide (docs/CAPACITY.md)). Each step of the arithmetic is printed with where its inputs came
//! from, so an operator can check it and replace any assumption with a measurement.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use crate::report::Report;

/// The target and the assumptions.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Load-generator reports (`switchboard-bench ... --json`): storm or idle (memory per
    /// connection), chat (CPU per message), fanout (CPU per delivery).
    #[arg(long = "report", required = true)]
    pub reports: Vec<PathBuf>,
    /// Concurrent connections at peak.
    #[arg(long, default_value_t = 10_000_000.0)]
    pub connections: f64,
    /// Messages sent per day.
    #[arg(long, default_value_t = 50_000_000_000.0)]
    pub messages_per_day: f64,
    /// Peak rate over the daily average.
    #[arg(long, default_value_t = 3.0)]
    pub peak_factor: f64,
    /// Average devices a message is delivered to (recipients' devices online).
    #[arg(long, default_value_t = 2.0)]
    pub fanout: f64,
    /// Average message body, bytes.
    #[arg(long, default_value_t = 200.0)]
    pub message_bytes: f64,
    /// Days messages are kept.
    #[arg(long, default_value_t = 365.0)]
    pub retention_days: f64,
    /// ScyllaDB replication factor.
    #[arg(long, default_value_t = 3.0)]
    pub replication: f64,
    /// Cores per gateway host.
    #[arg(long, default_value_t = 32.0)]
    pub host_cores: f64,
    /// RAM per gateway host, GiB.
    #[arg(long, default_value_t = 128.0)]
    pub host_ram_gib: f64,
    /// Share of a host's cores and RAM the plan may use (headroom for failover, spikes).
    #[arg(long, default_value_t = 0.5)]
    pub utilisation: f64,
    /// Kernel memory per idle TCP socket, bytes (assumption: socket, tcp_sock, file,
    /// dentry with empty buffers; measure with /proc/net/sockstat on the real host).
    #[arg(long, default_value_t = 4096.0)]
    pub kernel_per_socket: f64,
    /// Bytes on the wire per delivered message besides the body (WebSocket, TLS,
    /// TCP/IP headers and the frame's fields).
    #[arg(long, default_value_t = 150.0)]
    pub wire_overhead: f64,
    /// Bytes stored per message besides the body (key, ids, sender, compression ignored).
    #[arg(long, default_value_t = 100.0)]
    pub storage_overhead: f64,
    /// Usable disk per ScyllaDB node, TB (at the planned utilisation).
    #[arg(long, default_value_t = 4.0)]
    pub scylla_disk_tb: f64,
    /// Replica writes per second one ScyllaDB node sustains (assumption; measure).
    #[arg(long, default_value_t = 100_000.0)]
    pub scylla_writes_per_node: f64,
}

/// One measured figure and where it came from.
struct Measured {
    value: f64,
    source: String,
}

/// Which figure of a report.
#[derive(Clone, Copy)]
enum Figure {
    /// `server.bytes_per_conn`.
    ServerBytesPerConn,
    /// `bytes_per_conn` (the idle driver's own figure).
    BytesPerConn,
    /// `server.cpu_us_per_msg`.
    CpuPerMsg,
}

impl Figure {
    fn of(self, r: &Report) -> Option<f64> {
        match self {
            Figure::ServerBytesPerConn => r.server.as_ref()?.bytes_per_conn,
            Figure::BytesPerConn => r.bytes_per_conn,
            Figure::CpuPerMsg => r.server.as_ref()?.cpu_us_per_msg,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Figure::ServerBytesPerConn => "server.bytes_per_conn",
            Figure::BytesPerConn => "bytes_per_conn",
            Figure::CpuPerMsg => "server.cpu_us_per_msg",
        }
    }
}

fn pick(reports: &[(PathBuf, Report)], scenarios: &[&str], fig: Figure, what: &str) -> anyhow::Result<Measured> {
    let mut found: Option<Measured> = None;
    for (file, r) in reports {
        if !scenarios.contains(&r.scenario.as_str()) {
            continue;
        }
        if let Some(x) = fig.of(r).filter(|x| x.is_finite() && *x > 0.0) {
            // The most conservative (largest) figure among the reports wins.
            if found.as_ref().is_none_or(|f| x > f.value) {
                let source = format!("{} ({}: {})", file.display(), r.scenario, fig.path());
                found = Some(Measured { value: x, source });
            }
        }
    }
    found.ok_or_else(|| {
        anyhow::anyhow!("no report gives {what}: pass a {} report with {}", scenarios.join(" or "), fig.path())
    })
}

fn human(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e12 => (x / 1e12, "T"),
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "K"),
        _ => (x, ""),
    };
    format!("{v:.2}{unit}")
}

fn bytes(x: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = x;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2} {}", units[i])
}

/// Reads the reports and returns the plan as text.
pub fn plan(a: &PlanArgs) -> anyhow::Result<String> {
    anyhow::ensure!(a.utilisation > 0.0 && a.utilisation <= 1.0, "utilisation must be in (0, 1]");
    let mut reports = Vec::new();
    for f in &a.reports {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let v: Report = serde_json::from_str(text.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        reports.push((f.clone(), v));
    }
    let mem = pick(&reports, &["storm", "idle"], Figure::ServerBytesPerConn, "memory per connection")
        .or_else(|_| pick(&reports, &["idle"], Figure::BytesPerConn, "memory per connection"))?;
    let cpu_msg = pick(&reports, &["chat"], Figure::CpuPerMsg, "server CPU per message")?;
    let cpu_delivery = pick(&reports, &["fanout"], Figure::CpuPerMsg, "server CPU per delivery").ok();

    let mut o = String::new();
    let w = &mut o;
    writeln!(w, "Target: {} concurrent connections, {} messages/day, peak x{}, {} deliveries per message, {} B bodies, {} days retention, RF {}",
        human(a.connections), human(a.messages_per_day), a.peak_factor, a.fanout, a.message_bytes, a.retention_days, a.replication)?;
    writeln!(
        w,
        "Gateway host: {} cores, {} GiB RAM, planned at {:.0}% utilisation",
        a.host_cores,
        a.host_ram_gib,
        a.utilisation * 100.0
    )?;
    writeln!(w, "\nMeasured:")?;
    writeln!(w, "  M1 server memory per connection   {:>12.0} B      {}", mem.value, mem.source)?;
    writeln!(w, "  M2 server CPU per message         {:>12.1} us     {}", cpu_msg.value, cpu_msg.source)?;
    if let Some(d) = &cpu_delivery {
        writeln!(w, "  M3 server CPU per group delivery  {:>12.1} us     {}", d.value, d.source)?;
    }
    writeln!(w, "\nSteps:")?;
    // Traffic.
    let avg = a.messages_per_day / 86_400.0;
    let peak = avg * a.peak_factor;
    let deliveries = peak * a.fanout;
    writeln!(
        w,
        "  1. average rate  = {} / 86,400 s                  = {} msg/s",
        human(a.messages_per_day),
        human(avg)
    )?;
    writeln!(
        w,
        "  2. peak rate     = {} x {}                        = {} msg/s",
        human(avg),
        a.peak_factor,
        human(peak)
    )?;
    writeln!(
        w,
        "  3. deliveries    = {} x {}                        = {} deliveries/s",
        human(peak),
        a.fanout,
        human(deliveries)
    )?;
    // CPU: a message's cost (M2 covers one DM delivery); extra deliveries at M3 (or M2).
    let extra_delivery_us = cpu_delivery.as_ref().map_or(cpu_msg.value, |d| d.value);
    let cpu_us = peak * cpu_msg.value + (deliveries - peak).max(0.0) * extra_delivery_us;
    let cores = cpu_us / 1e6;
    writeln!(
        w,
        "  4. CPU           = {} x M2 + {} extra deliveries x {:.1} us = {:.1} cores busy at peak",
        human(peak),
        human((deliveries - peak).max(0.0)),
        extra_delivery_us,
        cores
    )?;
    let hosts_cpu = (cores / (a.host_cores * a.utilisation)).ceil();
    writeln!(
        w,
        "  5. hosts for CPU = {:.1} / ({} x {})              = {hosts_cpu}",
        cores, a.host_cores, a.utilisation
    )?;
    // Memory.
    let per_conn = mem.value + a.kernel_per_socket;
    let ram = a.connections * per_conn;
    writeln!(
        w,
        "  6. RAM per conn  = M1 {:.0} B + kernel {:.0} B     = {:.0} B",
        mem.value, a.kernel_per_socket, per_conn
    )?;
    writeln!(
        w,
        "  7. RAM           = {} x {:.0} B                   = {}",
        human(a.connections),
        per_conn,
        bytes(ram)
    )?;
    let host_ram = a.host_ram_gib * 1024.0 * 1024.0 * 1024.0 * a.utilisation;
    let hosts_ram = (ram / host_ram).ceil();
    writeln!(
        w,
        "  8. hosts for RAM = {} / ({} GiB x {})             = {hosts_ram}",
        bytes(ram),
        a.host_ram_gib,
        a.utilisation
    )?;
    let hosts = hosts_cpu.max(hosts_ram).max(1.0);
    writeln!(
        w,
        "  9. gateway hosts = max(step 5, step 8)            = {hosts}  ({} cores, {} RAM in total)",
        hosts * a.host_cores,
        bytes(hosts * a.host_ram_gib * 1024.0 * 1024.0 * 1024.0)
    )?;
    writeln!(w, "     per host: {} connections, {} msg/s at peak", human(a.connections / hosts), human(peak / hosts))?;
    // Bandwidth.
    let wire = a.message_bytes + a.wire_overhead;
    let bw = (peak + deliveries) * wire * 8.0;
    writeln!(
        w,
        " 10. bandwidth     = ({} in + {} out) x ({} + {}) B x 8 = {}bit/s at peak ({}bit/s per host)",
        human(peak),
        human(deliveries),
        a.message_bytes,
        a.wire_overhead,
        human(bw),
        human(bw / hosts)
    )?;
    // Storage.
    let stored = a.message_bytes + a.storage_overhead;
    let per_day = a.messages_per_day * stored * a.replication;
    writeln!(
        w,
        " 11. storage/day   = {} x ({} + {}) B x RF {}  = {}",
        human(a.messages_per_day),
        a.message_bytes,
        a.storage_overhead,
        a.replication,
        bytes(per_day)
    )?;
    let per_year = per_day * 365.0;
    let retained = per_day * a.retention_days;
    writeln!(
        w,
        " 12. storage/year  = step 11 x 365                  = {}; retained ({} days) = {}",
        bytes(per_year),
        a.retention_days,
        bytes(retained)
    )?;
    // ScyllaDB.
    let nodes_disk = (retained / (a.scylla_disk_tb * 1e12)).ceil();
    let writes = peak * a.replication;
    let nodes_writes = (writes / a.scylla_writes_per_node).ceil();
    let nodes = nodes_disk.max(nodes_writes).max(a.replication);
    writeln!(
        w,
        " 13. Scylla (disk) = {} / {} TB per node            = {nodes_disk}",
        bytes(retained),
        a.scylla_disk_tb
    )?;
    writeln!(
        w,
        " 14. Scylla (writes)= {} msg/s x RF {} / {} per node = {nodes_writes}",
        human(peak),
        a.replication,
        human(a.scylla_writes_per_node)
    )?;
    writeln!(w, " 15. Scylla nodes  = max(13, 14, RF)                = {nodes}")?;
    writeln!(
        w,
        "\nPlan: {hosts} gateway hosts ({} cores, {} RAM), {}bit/s, {} stored per day, {nodes} ScyllaDB nodes.",
        hosts * a.host_cores,
        bytes(hosts * a.host_ram_gib * 1024.0 * 1024.0 * 1024.0),
        human(bw),
        bytes(per_day)
    )?;
    writeln!(w, "Assumptions (flags): kernel memory per socket, wire and storage overheads, Scylla disk and writes per node, utilisation.")?;
    Ok(o)
}
