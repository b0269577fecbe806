//! End-to-end: the first steps a newcomer and an operator take. `token` never invents
//! a secret the server does not have, a second gateway cannot silently share a port, and
//! the admin endpoint answers health checkers' HEAD and says which methods it takes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Waits (bounded) for a child to exit; returns its status and stderr.
fn exit_of(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let status = wait_exit(&mut child, DEADLINE, "the process");
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, err)
}

/// Starts `serve` on `dir` with its stdout and stderr piped, the log settings of the
/// environment removed and `extra` flags; returns it with its WebSocket address once it
/// printed the listening line.
fn serve_piped(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-pin", "--shards", "2", "--data-dir"])
        .arg(dir)
        .args(["--set", "admin_listen=\"127.0.0.1:0\""])
        .args(extra)
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a listening line").unwrap();
        if let Some(rest) = line.strip_prefix("switchboard listening on ws://") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (child, addr)
}

/// Kills a process when dropped during a panic (servers spawned without [`Server`]).
struct KillIfPanicking(u32);

impl Drop for KillIfPanicking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
        }
    }
}

#[test]
fn a_second_gateway_on_the_same_port_is_refused() {
    let first = Server::start(1);
    let other = tempfile::tempdir().unwrap();
    let second = Command::new(BIN)
        .args(["serve", "--listen", &first.addr.to_string(), "--admin-listen", "127.0.0.1:0", "--shards", "1"])
        .arg("--data-dir")
        .arg(other.path())
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = exit_of(second);
    assert!(!status.success());
    assert!(err.contains("already in use by another process"), "{err}");
    assert!(!other.path().join("shard-0").exists(), "nothing was opened in its data directory");
    // The first one still serves every upgrade (none went to the refused process).
    let token = first.token("door", Some("d"));
    for _ in 0..12 {
        assert_eq!(upgrade_status(first.addr, Some(&token)), None);
    }
}

#[test]
fn token_never_creates_a_secret_and_signs_with_the_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token = |data: &std::path::Path| {
        Command::new(BIN)
            .args(["token", "--user", "newcomer", "--device", "laptop", "--data-dir"])
            .arg(data)
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .output()
            .unwrap()
    };
    // Before any server ran there: a clear error, and no directory or secret created.
    let out = token(&data);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token secret") && err.contains("jwt-secret"), "{err}");
    assert!(!data.exists(), "token created {}", data.display());
    // A server with that data directory creates the development secret; `token` then
    // signs with it and the server accepts the result.
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(&data)
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .strip_prefix("switchboard listening on ws://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("listening line: {line}"))
        .parse()
        .unwrap();
    let out = token(&data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jwt = String::from_utf8(out.stdout).unwrap();
    let status = upgrade_status(addr, Some(jwt.trim()));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, None, "the server refused the token `token` minted");
}

#[test]
fn the_admin_endpoint_answers_head_and_refuses_wrong_methods() {
    use std::io::{Read, Write};
    let server = Server::start(1);
    let raw = |request: &str| {
        let mut s = std::net::TcpStream::connect(server.admin).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        let head = raw(&format!("HEAD {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        let get = raw(&format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"), "HEAD {path}: {head}");
        assert!(get.starts_with("HTTP/1.1 200 ") && !get.ends_with("\r\n\r\n"), "GET {path} has a body");
        assert!(head.contains("Content-Length: ") && !head.contains("Content-Length: 0\r\n"), "{head}");
    }
    for (method, path, allow) in
        [("GET", "/drain", "POST"), ("DELETE", "/metrics", "GET, HEAD"), ("GET", "/revoke?user=u&device=d", "POST")]
    {
        let resp = raw(&format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(resp.starts_with("HTTP/1.1 405 "), "{method} {path}: {resp}");
        assert!(resp.contains(&format!("\r\nAllow: {allow}\r\n")), "{resp}");
    }
    assert_eq!(admin_request(&server, "GET", "/nothing-here").0, 404);
    // A GET on /drain did not drain.
    assert_eq!(admin_request(&server, "GET", "/readyz").0, 200);
}

#[test]
fn config_check_prints_the_effective_configuration_and_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |toml: &str, env: &[(&str, &str)], flags: &[&str]| {
        let file = tmp.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["config", "check"]).arg(&file).args(flags).env_remove("SWITCHBOARD_JWT_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    // Precedence: file < environment < flag; the secret never printed.
    let toml = "listen = \"127.0.0.1:9555\"\nshards = 2\nmax_body = 1000\njwt_secret = \"file-secret-0123456789\"\n";
    let (ok, out, err) = check(toml, &[("SWITCHBOARD_LISTEN", "127.0.0.1:9666")], &["--shards", "3"]);
    assert!(ok, "{err}");
    for line in ["listen = \"127.0.0.1:9666\"", "shards = 3", "max_body = 1000", "jwt_secret = \"<redacted>\""] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    assert!(!out.contains("file-secret"), "{out}");
    // The committed example checks clean.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../switchboard.example.toml")).unwrap();
    let (ok, _, err) = check(&example, &[], &[]);
    assert!(ok, "{err}");
    // Nonsense is refused with the key named.
    for (toml, key) in [
        ("io_memory = 1\n", "io_memory"),
        ("bogus = 1\n", "unknown field `bogus`"),
        ("max_body = 70000\n", "max_body"),
        ("ring_entries = 1000\n", "ring_entries"),
        ("shards = 500\n", "shards"),
    ] {
        let (ok, _, err) = check(toml, &[], &[]);
        assert!(!ok && err.contains(key), "{toml}: {err}");
    }
    // Every key has a variable and `--set`: variable over the file, --set over both,
    // dedicated flags over everything.
    let env = [("SWITCHBOARD_TYPING_RATE", "7"), ("SWITCHBOARD_HISTORY_RATE", "9"), ("SWITCHBOARD_TLS_DEV", "true")];
    let (ok, out, err) = check(
        "typing_rate = 1
history_rate = 1
",
        &env,
        &["--set", "history_rate=3"],
    );
    assert!(ok, "{err}");
    for line in ["typing_rate = 7", "history_rate = 3", "tls_dev = true"] {
        assert!(
            out.lines().any(|l| l == line),
            "no `{line}` in:
{out}"
        );
    }
    let (ok, out, err) = check("", &[], &["--set", "shards=4", "--shards", "2"]);
    assert!(ok && out.lines().any(|l| l == "shards = 2"), "{err}{out}");
    // A variable or --set that names no key, or a bad value, is refused, named.
    for (env, flags, named) in [
        (&[("SWITCHBOARD_TYPNG_RATE", "7")][..], &[][..], "SWITCHBOARD_TYPNG_RATE"),
        (&[("SWITCHBOARD_SHARDS", "many")][..], &[][..], "SWITCHBOARD_SHARDS"),
        (&[][..], &["--set", "no_such_key=1"][..], "no_such_key"),
        (&[][..], &["--set", "send_rate=-1"][..], "send_rate"),
    ] {
        let (ok, _, err) = check("", env, flags);
        assert!(!ok && err.contains(named), "{env:?} {flags:?}: {err}");
    }
}

/// Logs: JSON lines when asked, no colour codes in a pipe, no storage-engine chatter at
/// the default level, and refusals visible at debug level.
#[test]
fn logs_are_json_or_plain_text_and_say_why_an_upgrade_was_refused() {
    let run = |extra: &[&str]| -> String {
        let tmp = tempfile::tempdir().unwrap();
        let (child, addr) = serve_piped(&tmp.path().join("d"), extra);
        // A failing assertion below must not leave the server running.
        let _reap = KillIfPanicking(child.id());
        // No token: 401.
        assert_eq!(upgrade_status(addr, None), Some(401));
        // A client the drain closes (1012).
        let token = Command::new(BIN)
            .args(["token", "--user", "log-user", "--device", "log-device"])
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .output()
            .unwrap();
        let token = String::from_utf8(token.stdout).unwrap();
        // Registered once `ready` came (connect waits for it).
        let mut client = Client::connect(addr, token.trim(), wire::Encoding::Json);
        // Stop it cleanly and take everything it logged.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        assert_eq!(client.expect_close(), 1012);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a clean drain exits 0");
        String::from_utf8(out.stderr).unwrap()
    };
    let text = run(&[]);
    assert!(!text.contains('\u{1b}'), "no colour codes in a pipe: {text}");
    assert!(!text.contains("lsm_tree"), "no storage-engine chatter at info: {text}");
    assert!(text.contains("draining") && text.contains("SIGTERM"), "{text}");
    let json = run(&["--set", "log_format=\"json\"", "--set", "log_level=\"debug\""]);
    let events: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        events
            .iter()
            .any(|e| e["status"] == 401 && e["message"].as_str().is_some_and(|m| m.contains("upgrade refused"))),
        "the refusal is logged at debug: {json}"
    );
    assert!(
        events.iter().any(|e| e["code"] == 1012
            && e["user"] == "log-user"
            && e["device"] == "log-device"
            && e["shard"].is_u64()
            && e["conn"].is_u64()),
        "a close is logged at debug with its shard, connection, user and device: {json}"
    );
}

/// A drain leaves an empty commit log, so only a start after a crash replays one (and
/// says so).
#[test]
fn only_a_start_after_a_crash_replays_the_commit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let start = || {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-pin", "--shards", "2", "--data-dir"])
            .arg(&dir)
            .args(["--set", "admin_listen=\"127.0.0.1:0\""])
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A failing assertion below must not leave the server running.
        let _reap = KillIfPanicking(child.id());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr: std::net::SocketAddr = loop {
            let line = lines.next().expect("a listening line").unwrap();
            if let Some(rest) = line.strip_prefix("switchboard listening on ws://") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        (child, addr)
    };
    let chat = |addr, cmid: &str| {
        let token = {
            let out = Command::new(BIN)
                .args(["token", "--user", "log-a", "--data-dir"])
                .arg(&dir)
                .env("SWITCHBOARD_JWT_SECRET", SECRET)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let mut c = Client::connect(addr, &token, wire::Encoding::Json);
        c.send(&send_to("log-b", cmid, "hello"));
        assert!(matches!(c.recv(), wire::frame::ServerFrame::Ack(_)));
    };
    let stop = |child: std::process::Child| {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    // Messages, then a clean stop: the next start replays nothing.
    let (child, addr) = start();
    chat(addr, "first");
    stop(child);
    let (child, _) = start();
    let log = stop(child);
    assert!(!log.contains("did not stop cleanly"), "{log}");
    // Messages, then kill -9: the next start replays and says why.
    let (mut child, addr) = start();
    chat(addr, "second");
    child.kill().unwrap();
    child.wait().unwrap();
    let (child, _) = start();
    let log = stop(child);
    assert!(log.contains("did not stop cleanly"), "{log}");
}

/// Why users fail: refusals by reason, error frames by code, closes by code, bytes and
/// process figures on /metrics.
#[test]
fn metrics_say_why_connections_and_requests_fail() {
    use std::io::Write as _;
    let server = Server::start(2);
    let labelled = |name: &str, label: &str| -> u64 {
        let (_, text) = admin_request(&server, "GET", "/metrics");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    // A refused upgrade (no token), an error frame (not JSON), a protocol error close.
    assert_eq!(upgrade_status(server.addr, None), Some(401));
    let mut c = server.connect("metrics-user", "d", wire::Encoding::Json);
    c.ws.send(tungstenite::Message::text("{not json")).unwrap();
    assert!(matches!(c.recv(), wire::frame::ServerFrame::Error(_)));
    let mut raw = raw_upgrade(server.addr, &server.token("metrics-raw", None));
    raw.write_all(&[0x81, 0x02, b'h', b'i']).unwrap(); // unmasked: 1002
    wait_for_eof(&mut raw);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ok = labelled("switchboard_upgrades_refused_by_reason_total", "reason=\"unauthorized\"") == 1
            && labelled("switchboard_error_frames_total", "code=\"bad_frame\"") == 1
            && labelled("switchboard_closes_total", "code=\"1002\"") == 1
            && labelled("switchboard_bytes_received_total", "shard") > 0
            && labelled("switchboard_bytes_sent_total", "shard") > 0;
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{}", admin_request(&server, "GET", "/metrics").1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, text) = admin_request(&server, "GET", "/metrics");
    for family in [
        "switchboard_process_cpu_seconds_total ",
        "switchboard_process_open_fds ",
        "switchboard_process_start_time_seconds ",
        "switchboard_build_info{version=",
        "switchboard_storage_errors_total{",
        "switchboard_tls_failures_total{",
    ] {
        assert!(text.lines().any(|l| l.starts_with(family)), "no {family} in /metrics");
    }
    let start: f64 =
        text.lines().find_map(|l| l.strip_prefix("switchboard_process_start_time_seconds ")).unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - start).abs() < 120.0, "start time {start} vs now {now}");
}

/// `switchboard admin status|revoke|drain` against a running gateway.
#[test]
fn the_admin_subcommands_drive_a_running_gateway() {
    let mut server = Server::start(2);
    let admin = |args: &[&str]| {
        let out =
            Command::new(BIN).arg("admin").args(["--admin", &server.admin.to_string()]).args(args).output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let _c = server.connect("admin-user", "d", wire::Encoding::Json);
    let (ok, out, err) = admin(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("live: true") && out.contains("ready: true") && out.contains("switchboard_connections{"),
        "{out}"
    );
    // Revoke a device whose ids need escaping in a URL.
    let token = server.token("a b&c", Some("tab/1"));
    let mut victim = Client::connect(server.addr, &token, wire::Encoding::Json);
    let (ok, out, err) = admin(&["revoke", "--user", "a b&c", "--device", "tab/1"]);
    assert!(ok, "{out}{err}");
    assert_eq!(victim.expect_close(), 4003);
    // A wrong address says so.
    let out = Command::new(BIN).args(["admin", "--admin", "127.0.0.1:1", "status"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no admin endpoint"));
    // Drain: the gateway exits 0.
    let (ok, out, err) = admin(&["drain"]);
    assert!(ok && out.contains("drain started"), "{out}{err}");
    assert!(server.terminate_wait().success());
}

/// `allowed_origins`: a browser on another origin is refused with 403 and the reason; a
/// listed origin and a client without `Origin` (an app, a server) are let through.
#[test]
fn allowed_origins_refuses_a_foreign_browser_origin() {
    let server = Server::start_with(1, "allowed_origins = [\"https://chat.example.com\", \"http://localhost:8080\"]");
    let token = server.token("web", Some("d"));
    let foreign = upgrade_response_with(server.addr, &token, "Origin: https://evil.example.net\r\n");
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    assert!(foreign.contains("forbidden_origin") && foreign.contains("https://evil.example.net"), "{foreign}");
    for ok in ["Origin: https://chat.example.com\r\n", "Origin: HTTP://LOCALHOST:8080\r\n", ""] {
        let r = upgrade_response_with(server.addr, &token, ok);
        assert!(r.starts_with("HTTP/1.1 101"), "{ok:?}: {r}");
    }
    assert_eq!(metric_total(&server, "switchboard_upgrades_refused_by_reason_total"), 1);
    let (_, metrics) = admin_request(&server, "GET", "/metrics");
    assert!(metrics.contains("reason=\"forbidden_origin\"} 1"), "{metrics}");
    // Off by default: any origin.
    let open = Server::start(1);
    let r = upgrade_response_with(open.addr, &open.token("web", Some("d")), "Origin: https://evil.example.net\r\n");
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
}

/// A browser's WebSocket API shows no HTTP status: with `?refusals=close` a refusal is
/// an accepted upgrade closed at once with 4000 + the status and a JSON reason.
#[test]
fn refusals_a_browser_can_see_arrive_as_close_codes_with_a_reason() {
    use std::io::{Read, Write};
    let server = Server::start_with(
        2,
        "allowed_origins = [\"https://chat.example.com\"]\nretry_after_secs = 4\nmax_devices_per_user = 1",
    );
    let refused = |query: &str, headers: &str| -> (u16, serde_json::Value) {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            s,
            "GET /ws?{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // The 101, then one close frame (unmasked, short: 0x88, length, code, reason).
        let frame = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            let f = &got[end + 4..];
            if f.len() >= 2 && f.len() >= 2 + usize::from(f[1]) {
                break f[..2 + usize::from(f[1])].to_vec();
            }
        };
        assert_eq!(frame[0], 0x88, "a close frame");
        let code = u16::from_be_bytes([frame[2], frame[3]]);
        (code, serde_json::from_slice(&frame[4..]).expect("a JSON reason"))
    };
    let (code, reason) = refused("refusals=close&token=not-a-jwt", "");
    assert_eq!(code, 4401);
    assert_eq!(reason["code"], "unauthorized");
    assert!(reason["message"].as_str().unwrap().len() > 3, "{reason}");
    let token = server.token("web", Some("d"));
    let (code, reason) =
        refused("refusals=close", &format!("Authorization: Bearer {token}\r\nOrigin: https://evil.example\r\n"));
    assert_eq!((code, reason["code"].as_str()), (4403, Some("forbidden_origin")));
    // Refused at the user's home shard, after the accepting shard upgraded it: one
    // device too many.
    let _first = server.connect("dev", "a", wire::Encoding::Json);
    let second = server.token("dev", Some("b"));
    let (code, reason) = refused("refusals=close", &format!("Authorization: Bearer {second}\r\n"));
    assert_eq!((code, reason["code"].as_str(), reason["retry_after"].as_u64()), (4503, Some("device_limit"), Some(4)));
    // Without the flag: the HTTP status, as before.
    assert!(upgrade_response_with(server.addr, "not-a-jwt", "").starts_with("HTTP/1.1 401"));
    let (_, metrics) = admin_request(&server, "GET", "/metrics");
    assert!(metrics.contains("code=\"4401\"} 1"), "{metrics}");
}

/// `switchboard tune check` on this machine: its open-files limit (20,000 hard here,
/// without CAP_SYS_RESOURCE to raise it) blocks 200,000 connections, with the fix named;
/// exit status 1; JSON for scripts.
#[test]
fn tune_check_names_what_blocks_the_target_and_how_to_fix_it() {
    let out =
        std::process::Command::new(BIN).args(["tune", "check", "--connections", "200000", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["blocking"], true);
    let findings = report["findings"].as_array().unwrap();
    let hard = findings.iter().find(|f| f["setting"] == "nofile (hard)").expect("nofile (hard) is checked");
    assert_eq!(hard["level"], "blocking", "{hard}");
    assert!(hard["fix"].as_str().unwrap().contains("LimitNOFILE=201024"), "{hard}");
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(hard["current"], line.split_whitespace().nth(4).unwrap(), "{line}");
    for setting in ["fs.nr_open", "kernel", "kernel.io_uring_disabled", "memlock (soft)", "net.core.somaxconn"] {
        assert!(findings.iter().any(|f| f["setting"] == setting), "{setting} is checked");
    }
    // The table says the same to a person.
    let out = std::process::Command::new(BIN).args(["tune", "check", "--connections", "200000"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BLOCKING  nofile (hard)") && text.contains("setting(s) block 200000"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot hold 200000 connections"), "{err}");
}

/// With `admin_token`, the admin endpoint's state-changing requests need it; reads and
/// health checks do not; `switchboard admin` sends it from the configuration; a
/// non-loopback admin address without a token is refused at start.
#[test]
fn the_admin_token_guards_drain_and_revoke() {
    let token = "admin-token-0123456789";
    let mut server = Server::start_with(1, &format!("admin_token = \"{token}\""));
    assert_eq!(admin_request(&server, "POST", "/drain").0, 401);
    assert_eq!(admin_request(&server, "POST", "/revoke?user=u&device=d").0, 401);
    assert_eq!(admin_request(&server, "GET", "/healthz").0, 200);
    assert_eq!(admin_request(&server, "GET", "/metrics").0, 200);
    // Still running, not draining.
    assert_eq!(admin_request(&server, "GET", "/readyz").0, 200);
    let cfg = server.dir.with_extension("toml");
    let admin = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["admin", "--admin", &server.admin.to_string(), "--config"])
            .arg(&cfg)
            .args(extra)
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .output()
            .unwrap()
    };
    let out = admin(&["revoke", "--user", "u", "--device", "d"]);
    assert!(out.status.success(), "{out:?}");
    let out = admin(&["drain"]);
    assert!(out.status.success(), "{out:?}");
    assert!(server.terminate_wait().success());
    // An admin endpoint on every interface needs a token.
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--set", "admin_listen=\"0.0.0.0:9100\""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_token is required"), "{out:?}");
}

/// When whatever reads the gateway's stderr goes away (a log collector restarting, a
/// test runner that died), logging must not take the gateway down: it still drains on
/// SIGTERM and exits 0. (It used to hang: the log layer's error report panicked a shard.)
#[test]
fn a_closed_stderr_does_not_stop_a_drain() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = serve_piped(&tmp.path().join("d"), &["--set", "log_level=\"debug\""]);
    let _reap = KillIfPanicking(child.id());
    drop(child.stderr.take());
    // Something to log at debug on both paths: a refused upgrade.
    assert_eq!(upgrade_status(addr, None), Some(401));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = wait_exit(&mut child, DEADLINE, "the gateway after SIGTERM");
    assert!(status.success(), "{status:?}");
}
