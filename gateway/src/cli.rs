//! The `switchboard` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_duration, Config};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "A thread-per-core chat gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Mint a development token signed with the configured secret.
    Token(TokenArgs),
    /// Size a fleet from load-generator reports and a target (docs/CAPACITY.md).
    Plan(tuning::plan::PlanArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Talk to a running gateway's admin endpoint.
    Admin(AdminArgs),
    /// Host tuning.
    #[command(subcommand)]
    Tune(TuneCmd),
}

#[derive(Subcommand)]
enum TuneCmd {
    /// Report every host setting that would stop N connections (current value, value to
    /// set, the command that sets it); exit status 1 when one blocks the target.
    Check(tuning::host::TuneArgs),
}

#[derive(Args)]
struct AdminArgs {
    #[command(flatten)]
    common: Common,
    /// The admin endpoint (default: the configured `admin_listen`).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Liveness, readiness and connections per shard.
    Status,
    /// Start a graceful drain (as SIGTERM does): no new connections, 1012 to the others,
    /// storage flushed, exit 0.
    Drain,
    /// Revoke a device: its connections close with 4003 and its tokens issued so far
    /// stop working.
    Revoke {
        /// The user.
        #[arg(long)]
        user: String,
        /// The device.
        #[arg(long)]
        device: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration `serve` would run with (defaults, FILE or --config,
    /// SWITCHBOARD_* variables, flags) and print it as TOML, secrets redacted.
    Check {
        /// The TOML file to check (the same as --config).
        file: Option<PathBuf>,
        /// Everything `serve` takes, so the check sees what `serve` would.
        #[command(flatten)]
        serve: ServeArgs,
    },
}

/// Settings shared by every subcommand (flags override env, env overrides the file).
#[derive(Args)]
struct Common {
    /// TOML config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HS256 token secret (default: a development secret kept in the data dir).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Set any configuration key, as in the TOML file: `--set typing_rate=10` (repeatable;
    /// over the file and SWITCHBOARD_* variables, under the dedicated flags).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Listen address (default 127.0.0.1:9000; port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin endpoint address (default 127.0.0.1:9100).
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Number of shards (default: one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Largest WebSocket frame/message in bytes (default 65536).
    #[arg(long)]
    max_frame: Option<usize>,
    /// Largest message body in bytes (default 49152).
    #[arg(long)]
    max_body: Option<usize>,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Serve WSS with a self-signed certificate for localhost (written to the data dir).
    #[arg(long)]
    tls_dev: bool,
    /// TLS certificate chain (PEM); with --tls-key, serve WSS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Accept permessage-deflate when clients offer it (config key `permessage_deflate`).
    #[arg(long)]
    permessage_deflate: bool,
    /// Where messages are stored: `embedded` (default) or `cql` (config key `storage`).
    #[arg(long)]
    storage: Option<String>,
    /// CQL contact points, comma-separated `host:port` (config key `cql_nodes`).
    #[arg(long, value_delimiter = ',')]
    cql_nodes: Option<Vec<String>>,
    /// Conformance testing only: write every message back instead of handling it.
    #[cfg(feature = "echo")]
    #[arg(long)]
    echo: bool,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    common: Common,
    /// User id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// Device id to bind into the token.
    #[arg(long)]
    device: Option<String>,
    /// Lifetime, e.g. 90s, 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: std::time::Duration,
}

fn load(common: &Common) -> anyhow::Result<Config> {
    let mut cfg = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    for (key, value) in Config::env_overrides(std::env::vars()) {
        let var = format!("SWITCHBOARD_{}", key.to_ascii_uppercase());
        cfg.apply_overrides(&[(key, value)], &var)?;
    }
    cfg.apply_overrides(&common.set, "--set")?;
    if let Some(d) = &common.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(s) = &common.jwt_secret {
        cfg.jwt_secret = Some(s.clone());
    }
    Ok(cfg)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = effective(args)?;
    init_logs(&cfg.log_level, &cfg.log_format);
    crate::server::serve(cfg)
}

/// Starts logging to stderr: `RUST_LOG` if set, else `level`; the storage engine's
/// own chatter only from `warn` up unless named; ANSI colours only on a terminal.
fn init_logs(level: &str, format: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG").ok().and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| {
        let quiet =
            if level.contains("lsm_tree") || level.contains("fjall") { "" } else { ",lsm_tree=warn,fjall=warn" };
        EnvFilter::try_new(format!("{level}{quiet}")).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    // A log line that cannot be written (stderr's reader gone) is dropped: by default the
    // subscriber reports it with eprintln!, which panics on the same closed stderr and took
    // a shard (and the drain) down with it.
    let builder =
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).log_internal_errors(false);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// `config check`: the configuration `serve` would run with, validated, as TOML.
fn check(file: Option<PathBuf>, mut args: ServeArgs) -> anyhow::Result<String> {
    if file.is_some() {
        args.common.config = file;
    }
    let mut cfg = effective(args)?;
    cfg.validate()?;
    if cfg.jwt_secret.is_some() {
        cfg.jwt_secret = Some("<redacted>".into());
    }
    if cfg.cql_password.is_some() {
        cfg.cql_password = Some("<redacted>".into());
    }
    if cfg.admin_token.is_some() {
        cfg.admin_token = Some("<redacted>".into());
    }
    Ok(toml::to_string(&cfg)?)
}

/// Defaults, the file, environment variables, then flags: what `serve` runs with.
fn effective(args: ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = load(&args.common)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(a) = args.admin_listen {
        cfg.admin_listen = a;
    }
    if let Some(n) = args.shards {
        cfg.shards = n;
    }
    if let Some(n) = args.max_frame {
        cfg.max_frame = n;
    }
    if let Some(n) = args.max_body {
        cfg.max_body = n;
    }
    if args.no_pin {
        cfg.pin = false;
    }
    if args.tls_dev {
        cfg.tls_dev = true;
    }
    if args.tls_cert.is_some() {
        cfg.tls_cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        cfg.tls_key = args.tls_key;
    }
    if let Some(s) = args.storage {
        cfg.storage = s;
    }
    if let Some(n) = args.cql_nodes {
        cfg.cql_nodes = n;
    }
    if args.permessage_deflate {
        cfg.permessage_deflate = true;
    }
    #[cfg(feature = "echo")]
    if args.echo {
        cfg.echo = true;
    }
    Ok(cfg)
}

/// One request to the admin endpoint: (status, body).
fn admin_request(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| anyhow::anyhow!("no admin endpoint at {addr}: {e} (is the gateway running? see --admin)"))?;
    s.set_read_timeout(Some(timeout))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn admin(args: AdminArgs) -> anyhow::Result<String> {
    let cfg = load(&args.common)?;
    let addr = args.admin.unwrap_or(cfg.admin_listen);
    let token = cfg.admin_token.as_deref();
    match args.cmd {
        AdminCmd::Status => {
            let (live, _) = admin_request(addr, token, "GET", "/healthz")?;
            let (ready, _) = admin_request(addr, token, "GET", "/readyz")?;
            let (_, metrics) = admin_request(addr, token, "GET", "/metrics")?;
            let mut out = format!("live: {}\nready: {}\n", live == 200, ready == 200);
            for l in metrics.lines().filter(|l| l.starts_with("switchboard_connections{")) {
                out.push_str(&format!("{l}\n"));
            }
            Ok(out)
        }
        AdminCmd::Drain => match admin_request(addr, token, "POST", "/drain")? {
            (200 | 202, body) => Ok(format!("drain started: {}\n", body.trim())),
            (status, body) => anyhow::bail!("drain refused ({status}): {}", body.trim()),
        },
        AdminCmd::Revoke { user, device } => {
            let path = format!("/revoke?user={}&device={}", encode_query(&user), encode_query(&device));
            match admin_request(addr, token, "POST", &path)? {
                (200, body) => Ok(format!("{}\n", body.trim())),
                (status, body) => anyhow::bail!("revocation refused ({status}): {}", body.trim()),
            }
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let cfg = load(&args.common)?;
    let secret = cfg.read_secret()?;
    println!("{}", crate::auth::mint(&secret, &args.user, args.device.as_deref(), args.ttl)?);
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cmd = Cli::parse().cmd;
    if !matches!(cmd, Cmd::Serve(_)) {
        // `serve` starts logging once its configuration is known.
        init_logs("info", "text");
    }
    let result = match cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Token(a) => token(a),
        Cmd::Plan(a) => tuning::plan::plan(&a).map(|text| print!("{text}")),
        Cmd::Config(ConfigCmd::Check { file, serve }) => check(file, serve).map(|text| print!("{text}")),
        Cmd::Admin(a) => admin(a).map(|text| print!("{text}")),
        Cmd::Tune(TuneCmd::Check(a)) => tuning::host::tune_check(&a).map(|text| print!("{text}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
