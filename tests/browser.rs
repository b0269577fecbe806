//! End-to-end in a real browser: headless Chromium, driven by playwright-core
//! (tests/browser/refusals.mjs), opens WebSockets from a page and reports what the page
//! sees. scripts/test installs Chromium and playwright-core, then runs this.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs a script of tests/browser/ with node (bounded), returning its stdout.
fn node(script: &str, args: &[String]) -> String {
    let path = format!("{}/../tests/browser/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("node")
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let status = wait_exit(&mut child, std::time::Duration::from_secs(120), script);
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{script}: {status}: {out}");
    out
}

#[test]
#[ignore = "needs Chromium and playwright-core: scripts/test installs them and runs it"]
fn a_page_sees_why_it_was_refused_and_can_send_its_token_without_the_url() {
    // The page's origin: a free port, allowed by one gateway and not by the other.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let origin = format!("http://127.0.0.1:{port}");
    let allowing = Server::start_with(1, &format!("allowed_origins = [\"{origin}\"]"));
    let refusing = Server::start_with(1, "allowed_origins = [\"https://chat.example.com\"]");
    let token = allowing.token("page", Some("tab"));
    assert_eq!(token, refusing.token("page", Some("tab")), "both gateways share the test secret");
    let out = node(
        "refusals.mjs",
        &[port.to_string(), format!("ws://{}/ws", allowing.addr), format!("ws://{}/ws", refusing.addr), token],
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let reason = |k: &str| serde_json::from_str::<serde_json::Value>(r[k]["reason"].as_str().unwrap()).unwrap();
    // A bad token: the page sees 4401 and why, not a bare 1006.
    assert_eq!(r["bad_token"]["code"], 4401, "{r}");
    assert_eq!(reason("bad_token")["code"], "unauthorized", "{r}");
    // Without ?refusals=close the browser shows only 1006, as every browser does.
    assert_eq!(r["bad_token_plain"]["code"], 1006, "{r}");
    // A page on an origin the gateway does not allow.
    assert_eq!(r["foreign_origin"]["code"], 4403, "{r}");
    assert_eq!(reason("foreign_origin")["code"], "forbidden_origin", "{r}");
    // The token as a subprotocol entry: connected, and the first frame is `ready`.
    assert_eq!(r["subprotocol_token"]["code"], 1000, "{r}");
    let first: serde_json::Value = serde_json::from_str(r["subprotocol_token"]["first"].as_str().unwrap()).unwrap();
    assert_eq!(first["op"], "ready", "{r}");
}

/// The web console on the admin port, in a real browser: two signed-in pages chat (a DM
/// each way, typing shown), and the live view counts their connections.
#[test]
#[ignore = "needs Chromium and playwright-core: scripts/test installs them and runs it"]
fn the_console_chats_between_two_pages_and_shows_the_gateway_live() {
    let server = Server::start(2);
    let url = format!("http://{}/console", server.admin);
    let out = node("console.mjs", &[url, server.token("alice", Some("web")), server.token("bob", Some("web"))]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(r["bob_log"].as_str().unwrap().contains("alice: hello from the console"), "{r}");
    assert!(r["alice_status"].as_str().unwrap().starts_with("connected as alice"), "{r}");
    assert_eq!(r["connections"], "2", "{r}");
    // The server stored both messages.
    assert_eq!(metric_total(&server, "switchboard_messages_stored_total"), 2);
}
