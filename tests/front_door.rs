//! End-to-end: the first steps a newcomer takes. `token` never invents a secret the
//! server does not have, and a second gateway cannot silently share a port.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Waits (bounded) for a child to exit; returns its status and stderr.
fn exit_of(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
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
