//! What one idle WSS session costs, by allocator: `cargo run --release -p switchboard
//! --example tls_memory -- [SESSIONS] [--buffered]`.
//!
//! Runs SESSIONS real TLS 1.3 handshakes in memory (a rustls client against the
//! gateway's `tls::Session`, which leaves rustls's connection after the handshake, or
//! with `--buffered` against rustls's buffered `ServerConnection`, as before
//! 2026-11-23), exchanges one request and response on each, drops the clients and keeps
//! the server sessions. Prints per session: Rust heap
//! bytes still allocated (a counting wrapper around mimalloc), C heap bytes (glibc's
//! `mallinfo2`: aws-lc allocates its AEAD contexts with `malloc`), and RSS growth.
//! No sockets: the gateway's own per-connection memory is measured by
//! `switchboard-bench storm --tls-ca` (docs/BENCHMARKS.md).

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

/// Counts the bytes live in the Rust heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to mimalloc with the caller's own arguments, so the
// GlobalAlloc contract holds as it does for mimalloc; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { mimalloc::MiMalloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// (Rust heap, C heap, RSS) in bytes.
fn usage() -> (isize, isize, isize) {
    // SAFETY: mallinfo2 takes no arguments and only reads glibc's statistics.
    let m = unsafe { libc::mallinfo2() };
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: isize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("RSS pages");
    (LIVE.load(Ordering::Relaxed), (m.uordblks + m.hblkhd) as isize, pages * 4096)
}

/// One side's TLS output, fed to the other until neither has more to say.
trait Side {
    fn output(&mut self) -> Vec<u8>;
    fn input(&mut self, bytes: &mut [u8], plain: &mut Vec<u8>);
    fn send(&mut self, plain: &[u8]);
}

/// rustls's buffered connections, client or server: the same calls on each.
macro_rules! buffered_side {
    ($conn:ty) => {
        impl Side for $conn {
            fn output(&mut self) -> Vec<u8> {
                let mut out = Vec::new();
                while self.wants_write() {
                    self.write_tls(&mut out).expect("tls output");
                }
                out
            }

            fn input(&mut self, bytes: &mut [u8], plain: &mut Vec<u8>) {
                let mut b = &bytes[..];
                while !b.is_empty() {
                    self.read_tls(&mut b).expect("tls input");
                    self.process_new_packets().expect("the peer's records are accepted");
                }
                let _ = self.reader().read_to_end(plain);
            }

            fn send(&mut self, plain: &[u8]) {
                self.writer().write_all(plain).expect("tls write");
            }
        }
    };
}
buffered_side!(rustls::ClientConnection);
buffered_side!(rustls::ServerConnection);

impl Side for switchboard::tls::Session {
    fn output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.unsent)
    }

    fn input(&mut self, bytes: &mut [u8], plain: &mut Vec<u8>) {
        self.read(bytes, plain).expect("server accepts the client");
    }

    fn send(&mut self, plain: &[u8]) {
        let mut out = std::mem::take(&mut self.unsent);
        self.write(plain, &mut out).expect("server write");
        self.unsent = out;
    }
}

/// Handshake, one request and its response.
fn converse(client: &mut rustls::ClientConnection, server: &mut dyn Side) {
    client.send(b"GET /ws HTTP/1.1\r\n\r\n");
    let (mut request, mut response) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let mut c = client.output();
        server.input(&mut c, &mut request);
        if !request.is_empty() {
            server.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
            request.clear();
        }
        let mut s = server.output();
        client.input(&mut s, &mut response);
        if c.is_empty() && s.is_empty() {
            break;
        }
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "the exchange completes");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(5000);
    let buffered = args.iter().any(|a| a == "--buffered");
    let (server, client) = switchboard::fuzzing::tls_pair(&[&rustls::version::TLS13]);
    let client = Arc::new(client);
    let mut kept: Vec<Box<dyn Side>> = Vec::with_capacity(n);
    let before = usage();
    for _ in 0..n {
        let mut c =
            rustls::ClientConnection::new(client.clone(), "localhost".try_into().expect("a name")).expect("a client");
        let mut s: Box<dyn Side> = if buffered {
            Box::new(rustls::ServerConnection::new(server.clone()).expect("a server session"))
        } else {
            Box::new(switchboard::tls::Session::new(server.clone()).expect("a server session"))
        };
        converse(&mut c, s.as_mut());
        kept.push(s);
    }
    let after = usage();
    let per = |a: isize, b: isize| (a - b) / n as isize;
    println!(
        "{n} idle {} sessions: Rust heap {} B, C heap {} B, RSS {} B per session",
        if buffered { "buffered ServerConnection" } else { "tls::Session" },
        per(after.0, before.0),
        per(after.1, before.1),
        per(after.2, before.2),
    );
}
