#!/usr/bin/env python3
"""Runs the Autobahn|Testsuite fuzzing client against Switchboard's echo mode.

For each transport (plain WS, WSS with the development certificate) it starts the
echo build of `switchboard serve` on an ephemeral loopback port, mints a token with the
binary's own `token` command, runs `wstest -m fuzzingclient` (bounded in time) and
compares every case's result with tests/autobahn/expected.json. Any case that does
worse than expected, or is missing, fails the run. The server is always stopped.

Usage: run.py --bin target/debug/switchboard-echo --wstest PATH [--transports ws,wss]
"""

import argparse
import ctypes
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "autobahn-secret-0123456789abcdef"
# How a case's result ranks: a result below the expected one is a regression.
RANK = {"FAILED": 0, "WRONG CODE": 0, "UNCLEAN": 1, "INFORMATIONAL": 2, "UNIMPLEMENTED": 2, "NON-STRICT": 3, "OK": 4}

# Sections 1-7 and 10 whole (247 cases, ~10 s), and of the permessage-deflate sections
# 12 and 13 every parameter set with messages up to 32 KiB, whole and in 256-byte
# fragments (cases x.y.1-8 and x.y.11-13: 132 cases, ~120 s). The 64 and 128 KiB cases
# (x.y.9, 10, 14-18) take another ~430 s per transport; `--exclude 9.*` runs them too.
# wstest matches case patterns as prefixes ("12.*.1" also selects 12.1.10-18): say what
# to leave out with patterns that are prefixes of nothing else.
DEFAULT_EXCLUDE = ["9.*"] + [f"{section}.*.{i}" for section in (12, 13) for i in (9, 10, 14, 15, 16, 17, 18)]

SERVER_TOML = """\
admin_listen = "127.0.0.1:0"
echo = true
permessage_deflate = true
commit_log_mib = 0
# Autobahn sends messages up to 16 MiB in sections 1-13 (9 is left out) and
# thousands of frames a second from one connection.
max_frame = 16777216
max_body = 49152
max_frames_per_sec = 65535
max_fragments = 1000000
max_outbound = 67108864
handshake_rate = 0
max_devices_per_user = 1000
closing_grace_secs = 2
"""


def die_with_parent():
    """In the child before exec: killed when this script dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_server(binary, data_dir, tls, log):
    cfg = os.path.join(data_dir, "autobahn.toml")
    with open(cfg, "w") as f:
        f.write(SERVER_TOML)
    args = [binary, "serve", "--echo", "--listen", "127.0.0.1:0", "--no-pin", "--shards", "2",
            "--data-dir", os.path.join(data_dir, "data"), "--config", cfg]
    if tls:
        args.append("--tls-dev")
    env = dict(os.environ, SWITCHBOARD_JWT_SECRET=SECRET, RUST_LOG="warn")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        for prefix in ("switchboard listening on ws://", "switchboard listening on wss://"):
            if line.startswith(prefix):
                return proc, line[len(prefix):].split()[0]
    proc.kill()
    raise SystemExit(f"autobahn: the echo server did not start (exit {proc.wait()})")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def token(binary, data_dir):
    out = subprocess.run([binary, "token", "--user", "autobahn", "--device", "wstest",
                          "--data-dir", os.path.join(data_dir, "data")],
                         env=dict(os.environ, SWITCHBOARD_JWT_SECRET=SECRET),
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def run_transport(args, transport, expected):
    tls = transport == "wss"
    with tempfile.TemporaryDirectory(prefix=f"autobahn-{transport}-") as tmp, \
            open(os.path.join(args.out, f"server-{transport}.log"), "w") as log:
        proc, addr = start_server(args.bin, tmp, tls, log)
        try:
            url = f"{transport}://{addr}/ws?token={token(args.bin, tmp)}"
            reports = os.path.join(args.out, transport)
            spec = {
                "outdir": reports,
                "servers": [{"agent": "switchboard", "url": url}],
                "cases": args.cases.split(","),
                "exclude-cases": args.exclude.split(","),
                "exclude-agent-cases": {},
            }
            spec_path = os.path.join(tmp, "fuzzingclient.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            started = time.monotonic()
            with open(os.path.join(args.out, f"wstest-{transport}.log"), "w") as wlog:
                try:
                    subprocess.run([args.wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=tmp,
                                   stdout=wlog, stderr=subprocess.STDOUT, timeout=args.timeout, check=True,
                                   preexec_fn=die_with_parent)
                except subprocess.TimeoutExpired:
                    raise SystemExit(f"autobahn {transport}: wstest did not finish within {args.timeout} s")
            took = time.monotonic() - started
            if proc.poll() is not None:
                raise SystemExit(f"autobahn {transport}: the server exited during the run ({proc.returncode})")
        finally:
            stop(proc)
    with open(os.path.join(reports, "index.json")) as f:
        results = json.load(f)["switchboard"]
    return compare(transport, results, expected, took, args)


def selected(case, args):
    """Whether wstest runs `case` for these --cases and --exclude (prefix patterns)."""
    def hit(pattern):
        return fnmatch.fnmatchcase(case, pattern) or fnmatch.fnmatchcase(case, pattern + "*")
    return any(hit(p) for p in args.cases.split(",")) and not any(hit(p) for p in args.exclude.split(","))


def compare(transport, results, expected, took, args):
    """Prints regressions and improvements; returns the number of regressions."""
    cases = expected["cases"]
    bad, better, counts = [], [], {}
    for case, r in results.items():
        got = r["behavior"]
        counts[got] = counts.get(got, 0) + 1
        want = cases.get(case, {}).get("behavior", expected["default"])
        if RANK.get(got, 0) < RANK[want] or r.get("behaviorClose") in ("FAILED", "WRONG CODE"):
            bad.append(f"{case}: {got} (close {r.get('behaviorClose')}), expected {want}")
        elif RANK.get(got, 0) > RANK[want]:
            better.append(f"{case}: {got}, expected {want}: update tests/autobahn/expected.json")
    # A case named in expected.json that the run should have covered, and did not.
    wanted = [c for c in cases if selected(c, args)]
    missing = sorted(set(wanted) - set(results))
    bad += [f"{c}: not run" for c in missing]
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"autobahn {transport}: {len(results)} cases in {took:.0f} s: {summary}")
    for line in better:
        print(f"autobahn {transport}: better than expected: {line}")
    for line in bad:
        print(f"autobahn {transport}: REGRESSION: {line}")
    return len(bad)


def main():
    # SIGTERM (a timeout, a CI stop) unwinds like an error: servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("autobahn: terminated"))
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--wstest", required=True)
    p.add_argument("--transports", default="ws,wss")
    p.add_argument("--out", default="target/autobahn")
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--cases", default="*", help="comma-separated case patterns (prefixes)")
    p.add_argument("--exclude", default=",".join(DEFAULT_EXCLUDE), help="comma-separated patterns to leave out")
    args = p.parse_args()
    # wstest runs in a temporary directory: give it absolute paths.
    args.out = os.path.abspath(args.out)
    args.bin = os.path.abspath(args.bin)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(HERE, "expected.json")) as f:
        expected = json.load(f)
    failures = sum(run_transport(args, t, expected) for t in args.transports.split(","))
    if failures:
        print(f"autobahn: {failures} regressions (reports in {args.out})")
        sys.exit(1)


if __name__ == "__main__":
    main()
