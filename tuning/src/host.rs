//! `switchboard tune check --connections N`: every host setting that would stop this host
//! from holding N connections, with its current value, the value to set and the command
//! that sets it. Read-only: it reads `/proc` and `/sys` and changes nothing.
//!
//! The rules are pure functions of what was read ([`Facts`]), so they are unit-tested
//! without the host; [`Facts::read`] reads this host.

use std::path::Path;

use serde::Serialize;

/// Arguments of `switchboard tune check`.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// Connections this host must hold.
    #[arg(long, default_value_t = 200_000)]
    pub connections: u64,
    /// Shards the gateway will run (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub shards: u64,
    /// io_uring memory each shard locks, in bytes (`io_memory`).
    #[arg(long, default_value_t = 1 << 20)]
    pub io_memory: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What was read off the host (`None`: not readable here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Open files (soft, hard) of this process, as a child of the same shell gets them.
    pub nofile: Option<(u64, u64)>,
    /// Locked memory (soft, hard) in bytes (`u64::MAX`: unlimited).
    pub memlock: Option<(u64, u64)>,
    /// `fs.nr_open`.
    pub nr_open: Option<u64>,
    /// `fs.file-max`.
    pub file_max: Option<u64>,
    /// `uname -r`, e.g. `6.1.0-18-amd64`.
    pub kernel: Option<String>,
    /// `kernel.io_uring_disabled` (absent before Linux 6.6).
    pub io_uring_disabled: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_mem` (pages: low, pressure, high).
    pub tcp_mem: Option<(u64, u64, u64)>,
    /// `net.ipv4.tcp_rmem` (bytes: min, default, max).
    pub tcp_rmem: Option<(u64, u64, u64)>,
    /// `net.ipv4.tcp_wmem` (bytes: min, default, max).
    pub tcp_wmem: Option<(u64, u64, u64)>,
    /// `net.core.netdev_max_backlog`.
    pub netdev_backlog: Option<u64>,
    /// The selected mode of `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp: Option<String>,
    /// Online CPUs.
    pub cpus: Option<u64>,
}

/// How much a finding matters for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine for the target.
    Ok,
    /// Works, but costs latency or headroom under load (connection storms, bursts).
    Warn,
    /// The gateway cannot reach the target (or cannot start) until it changes.
    Blocking,
    /// Not readable on this host.
    Unknown,
}

/// One setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The setting (`nofile (hard)`, `fs.nr_open`, ...).
    pub setting: &'static str,
    /// Its value here.
    pub current: String,
    /// What the target needs.
    pub recommended: String,
    /// Fine, warn or blocking.
    pub level: Level,
    /// Why it matters.
    pub why: String,
    /// The command (or unit line) that fixes it; empty when fine.
    pub fix: String,
}

/// Sockets kept per connection beyond the connection itself (listeners, rings, files).
const FD_SLACK: u64 = 1024;

/// Kernel the gateway needs (io_uring multishot accept and receive, ring features).
const MIN_KERNEL: (u64, u64) = (5, 19);

fn finding(
    setting: &'static str,
    current: String,
    recommended: String,
    level: Level,
    why: &str,
    fix: String,
) -> Finding {
    let fix = if level == Level::Ok { String::new() } else { fix };
    Finding { setting, current, recommended, level, why: why.to_owned(), fix }
}

fn show<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// `at_least` for a value that may be unreadable.
fn at_least(v: Option<u64>, need: u64, short: Level) -> Level {
    match v {
        None => Level::Unknown,
        Some(v) if v >= need => Level::Ok,
        Some(_) => short,
    }
}

/// Parses `5.19.0-foo` into `(5, 19)`.
pub fn kernel_version(release: &str) -> Option<(u64, u64)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Every finding for `args` on a host described by `f`.
pub fn check(args: &TuneArgs, f: &Facts) -> Vec<Finding> {
    let n = args.connections;
    let fds = n + FD_SLACK;
    let shards = if args.shards == 0 { f.cpus.unwrap_or(1) } else { args.shards };
    let mut out = Vec::new();
    let unit = format!("LimitNOFILE={fds} in the systemd unit (tuning/switchboard.service)");
    out.push(finding(
        "nofile (soft)",
        show(&f.nofile.map(|l| l.0)),
        format!(">= {fds}"),
        at_least(f.nofile.map(|l| l.0), fds, Level::Blocking),
        "one file descriptor per connection; accept fails with EMFILE past it",
        format!("{unit}, or `ulimit -n {fds}` in the starting shell"),
    ));
    out.push(finding(
        "nofile (hard)",
        show(&f.nofile.map(|l| l.1)),
        format!(">= {fds}"),
        at_least(f.nofile.map(|l| l.1), fds, Level::Blocking),
        "the soft limit cannot be raised above it without CAP_SYS_RESOURCE",
        format!("{unit}, or `* hard nofile {fds}` in /etc/security/limits.conf (and a new login)"),
    ));
    out.push(finding(
        "fs.nr_open",
        show(&f.nr_open),
        format!(">= {fds}"),
        at_least(f.nr_open, fds, Level::Blocking),
        "the most any process may set nofile to",
        format!("sysctl -w fs.nr_open={}", fds.max(1_048_576)),
    ));
    out.push(finding(
        "fs.file-max",
        show(&f.file_max),
        format!(">= {}", 2 * fds),
        at_least(f.file_max, 2 * fds, Level::Blocking),
        "open files on the whole host",
        format!("sysctl -w fs.file-max={}", (2 * fds).max(2_097_152)),
    ));
    let lock_need = shards * args.io_memory + (512 << 10);
    let memlock = f.memlock.map(|l| l.0);
    out.push(finding(
        "memlock (soft)",
        memlock.map_or_else(|| "unknown".into(), |v| if v == u64::MAX { "unlimited".into() } else { v.to_string() }),
        format!(">= {lock_need} bytes ({shards} shards x io_memory + 512 KiB)"),
        at_least(memlock, lock_need, Level::Blocking),
        "glommio locks its io_uring buffers; it refuses to start without enough",
        "LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited`".into(),
    ));
    let kernel = f.kernel.as_deref().and_then(kernel_version);
    out.push(finding(
        "kernel",
        show(&f.kernel),
        format!(">= {}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
        match kernel {
            None => Level::Unknown,
            Some(v) if v >= MIN_KERNEL => Level::Ok,
            Some(_) => Level::Blocking,
        },
        "io_uring features the reactor uses (multishot accept and receive)",
        "upgrade the kernel (Debian 12 ships 6.1)".into(),
    ));
    out.push(finding(
        "kernel.io_uring_disabled",
        f.io_uring_disabled.map_or_else(|| "absent (io_uring allowed)".into(), |v| v.to_string()),
        "0".into(),
        match f.io_uring_disabled {
            None | Some(0) => Level::Ok,
            Some(_) => Level::Blocking,
        },
        "1 allows io_uring only to a group, 2 to nobody",
        "sysctl -w kernel.io_uring_disabled=0".into(),
    ));
    for (setting, v, need, why) in [
        ("net.core.somaxconn", f.somaxconn, 4096, "accept queue per listener: a reconnect storm overflows a short one"),
        ("net.ipv4.tcp_max_syn_backlog", f.syn_backlog, 4096, "half-open connections during a storm"),
        ("net.core.netdev_max_backlog", f.netdev_backlog, 16_384, "packets queued per CPU before the stack drops them"),
    ] {
        out.push(finding(
            setting,
            show(&v),
            format!(">= {need}"),
            at_least(v, need, Level::Warn),
            why,
            format!("sysctl -w {setting}={need}"),
        ));
    }
    let ports = f.port_range.map(|(lo, hi)| hi.saturating_sub(lo) + 1);
    out.push(finding(
        "net.ipv4.ip_local_port_range",
        f.port_range.map_or_else(|| "unknown".into(), |(lo, hi)| format!("{lo} {hi}")),
        "wide, for load generators on this host (not the gateway)".into(),
        match ports {
            None => Level::Unknown,
            Some(p) if p >= 60_000 || n <= p => Level::Ok,
            Some(_) => Level::Warn,
        },
        "a client host needs one port per connection per source address (bench --sources spreads them)",
        "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into(),
    ));
    // An idle connection's socket holds almost no buffer; budget 8 KiB each for traffic.
    let tcp_need_pages = n * 8 * 1024 / 4096;
    out.push(finding(
        "net.ipv4.tcp_mem (pages)",
        f.tcp_mem.map_or_else(|| "unknown".into(), |(a, b, c)| format!("{a} {b} {c}")),
        format!("high >= {tcp_need_pages} (8 KiB of buffers per connection)"),
        at_least(f.tcp_mem.map(|m| m.2), tcp_need_pages, Level::Warn),
        "past the high mark the kernel refuses socket buffer memory and drops",
        format!("sysctl -w net.ipv4.tcp_mem=\"{} {} {}\"", tcp_need_pages / 2, tcp_need_pages * 3 / 4, tcp_need_pages),
    ));
    for (setting, v) in [("net.ipv4.tcp_rmem", f.tcp_rmem), ("net.ipv4.tcp_wmem", f.tcp_wmem)] {
        let default = v.map(|m| m.1);
        out.push(finding(
            setting,
            v.map_or_else(|| "unknown".into(), |(a, b, c)| format!("{a} {b} {c}")),
            "default <= 131072 (chat frames are small)".into(),
            match default {
                None => Level::Unknown,
                Some(d) if d <= 131_072 => Level::Ok,
                Some(_) => Level::Warn,
            },
            "the default buffer a busy socket grows to; large defaults multiply by N",
            format!("sysctl -w {setting}=\"4096 16384 4194304\""),
        ));
    }
    out.push(finding(
        "transparent huge pages",
        show(&f.thp),
        "any (the gateway turns them off for itself unless huge_pages = true)".into(),
        if f.thp.is_some() { Level::Ok } else { Level::Unknown },
        "2 MiB pages make per-connection memory grow in steps",
        String::new(),
    ));
    out.push(finding(
        "CPUs for the shards",
        show(&f.cpus),
        format!(">= {shards} (one shard per CPU)"),
        at_least(f.cpus, shards, Level::Warn),
        "two shards on one CPU share it and add latency",
        format!("run with --shards {}", f.cpus.unwrap_or(1)),
    ));
    out
}

impl Facts {
    /// Reads this host (what is not readable stays `None`).
    pub fn read() -> Facts {
        let num = |p: &str| read(p).and_then(|s| s.trim().parse().ok());
        let triple = |p: &str| {
            let v: Vec<u64> = read(p)?.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        };
        let limits = read("/proc/self/limits").unwrap_or_default();
        Facts {
            nofile: limit(&limits, "Max open files"),
            memlock: limit(&limits, "Max locked memory"),
            nr_open: num("/proc/sys/fs/nr_open"),
            file_max: num("/proc/sys/fs/file-max"),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            io_uring_disabled: num("/proc/sys/kernel/io_uring_disabled"),
            somaxconn: num("/proc/sys/net/core/somaxconn"),
            syn_backlog: num("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            port_range: read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|s| {
                let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
                Some((it.next()?, it.next()?))
            }),
            tcp_mem: triple("/proc/sys/net/ipv4/tcp_mem"),
            tcp_rmem: triple("/proc/sys/net/ipv4/tcp_rmem"),
            tcp_wmem: triple("/proc/sys/net/ipv4/tcp_wmem"),
            netdev_backlog: num("/proc/sys/net/core/netdev_max_backlog"),
            thp: read("/sys/kernel/mm/transparent_hugepage/enabled").and_then(|s| {
                let start = s.find('[')? + 1;
                Some(s[start..start + s[start..].find(']')?].to_owned())
            }),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get() as u64),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(path)).ok()
}

/// `(soft, hard)` of a `/proc/PID/limits` line (`unlimited` as `u64::MAX`).
pub fn limit(limits: &str, name: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let mut it = line[name.len()..].split_whitespace().map(|v| match v {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    });
    Some((it.next()??, it.next()??))
}

/// The report as a table, and whether anything blocks the target.
pub fn render(args: &TuneArgs, findings: &[Finding]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "Host check for {} connections (read-only; nothing was changed):", args.connections);
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Blocking => "BLOCKING",
            Level::Unknown => "unknown",
        };
        let _ = writeln!(out, "{tag:>8}  {:<30} {}  (want {})", f.setting, f.current, f.recommended);
        if !f.fix.is_empty() {
            let _ = writeln!(out, "          {}; fix: {}", f.why, f.fix);
        }
    }
    let blocking = findings.iter().filter(|f| f.level == Level::Blocking).count();
    let _ = writeln!(
        out,
        "{}",
        if blocking == 0 {
            format!("Nothing blocks {} connections.", args.connections)
        } else {
            format!("{blocking} setting(s) block {} connections.", args.connections)
        }
    );
    out
}

/// Runs `tune check`: the text or JSON report, and `Err` (exit 1) when a setting blocks
/// the target.
pub fn tune_check(args: &TuneArgs) -> anyhow::Result<String> {
    let findings = check(args, &Facts::read());
    let blocking = findings.iter().any(|f| f.level == Level::Blocking);
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "connections": args.connections,
            "blocking": blocking,
            "findings": findings,
        }))? + "\n"
    } else {
        render(args, &findings)
    };
    if blocking {
        print!("{text}");
        anyhow::bail!("the host cannot hold {} connections until the BLOCKING settings change", args.connections);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(n: u64) -> TuneArgs {
        TuneArgs { connections: n, shards: 2, io_memory: 1 << 20, json: false }
    }

    fn good() -> Facts {
        Facts {
            nofile: Some((1 << 20, 1 << 20)),
            memlock: Some((u64::MAX, u64::MAX)),
            nr_open: Some(1 << 20),
            file_max: Some(1 << 23),
            kernel: Some("6.1.0-18-amd64".into()),
            io_uring_disabled: None,
            somaxconn: Some(4096),
            syn_backlog: Some(8192),
            port_range: Some((1024, 65535)),
            tcp_mem: Some((400_000, 600_000, 800_000)),
            tcp_rmem: Some((4096, 131_072, 6_291_456)),
            tcp_wmem: Some((4096, 16_384, 4_194_304)),
            netdev_backlog: Some(16_384),
            thp: Some("madvise".into()),
            cpus: Some(2),
        }
    }

    fn level(fs: &[Finding], setting: &str) -> Level {
        fs.iter().find(|f| f.setting == setting).unwrap().level
    }

    #[test]
    fn a_tuned_host_has_nothing_blocking() {
        let fs = check(&args(200_000), &good());
        assert!(fs.iter().all(|f| f.level == Level::Ok), "{fs:#?}");
        assert!(fs.iter().all(|f| f.fix.is_empty()));
    }

    #[test]
    fn each_short_limit_is_named_with_its_fix() {
        let mut f = good();
        f.nofile = Some((1024, 20_000));
        f.kernel = Some("5.10.0".into());
        f.io_uring_disabled = Some(2);
        f.memlock = Some((65_536, 65_536));
        f.somaxconn = Some(128);
        let fs = check(&args(200_000), &f);
        for s in ["nofile (soft)", "nofile (hard)", "kernel", "kernel.io_uring_disabled", "memlock (soft)"] {
            assert_eq!(level(&fs, s), Level::Blocking, "{s}");
        }
        assert_eq!(level(&fs, "net.core.somaxconn"), Level::Warn);
        let hard = fs.iter().find(|f| f.setting == "nofile (hard)").unwrap();
        assert!(hard.fix.contains("LimitNOFILE=201024"), "{}", hard.fix);
        // The same host is fine for fewer connections than its hard limit.
        let fs = check(&args(15_000), &f);
        assert_eq!(level(&fs, "nofile (hard)"), Level::Ok);
        assert_eq!(level(&fs, "nofile (soft)"), Level::Blocking);
    }

    #[test]
    fn proc_limits_and_kernel_releases_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 20000                files\n\
                      Max locked memory         8388608              unlimited            bytes\n";
        assert_eq!(limit(limits, "Max open files"), Some((1024, 20_000)));
        assert_eq!(limit(limits, "Max locked memory"), Some((8_388_608, u64::MAX)));
        assert_eq!(limit(limits, "Max processes"), None);
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.19.17"), Some((5, 19)));
        assert_eq!(kernel_version("weird"), None);
        assert!(Facts::read().cpus.is_some());
    }
}
