#!/usr/bin/python3
"""Soak test of `embedd serve`: a long mixed load with its memory watched.

Starts the server as a user would (the bundled model, `--data` in a temp
dir, learning on with its defaults), fills the store with --ids text items,
then runs wrk with --connections connections for --minutes minutes over a
mix of /embed, /v1/embeddings, POST /items (the same bounded set of ids, so
the store stops growing), GET /items/{id}, POST /similar and /health
(scripts/soak.lua). The server's RSS (VmRSS) is read every 5 s.

Passes when wrk saw no error at all (no status other than 200, no socket
error, no timeout) and the RSS stayed within --rss-tolerance (5%) of its
value at --settle minutes (3) until the end. Prints the RSS curve, the
request count and latency, and one RESULT line. Loopback only; stops on its
own (the server is killed at exit).

  scripts/soak_test.py                    # 10 minutes, 64 connections
  scripts/soak_test.py --minutes 1 --settle 0.5
"""
import argparse
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def read_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak_texts(path, n):
    """n texts of 5..60 words: lines of the corpus file, or made-up ones."""
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 5:
                    out.append(" ".join(words[:60]))
                if len(out) >= n:
                    break
    if not out:
        vocab = ("river stone light market music garden window letter winter road "
                 "cat dog bird ship city paper story field engine cloud").split()
        for i in range(n):
            out.append(" ".join(vocab[(i * 7 + k * 3) % len(vocab)] for k in range(5 + i % 30)))
    return out


class Server:
    def __init__(self, binary, data_dir, log_path, extra):
        self.args = [binary, "serve", "--port", "0", "--data", data_dir] + extra
        self.log_path = log_path
        self.port = None
        self.proc = None
        self.ready = threading.Event()

    def start(self, timeout=60):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=ROOT)
        atexit.register(self.kill)
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self.ready.wait(timeout):
            raise SystemExit("soak: the server did not start within %d s (log: %s)"
                             % (timeout, self.log_path))

    def _read_log(self):
        with open(self.log_path, "w", encoding="utf-8", errors="replace") as log:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                log.flush()
                m = re.search(r"listening on http://[^:]+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    self.ready.set()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def fill_store(port, texts, n_ids):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for start in range(0, n_ids, 100):
        items = [{"id": "s%d" % i, "text": texts[i % len(texts)], "payload": {"n": i}}
                 for i in range(start, min(n_ids, start + 100))]
        conn.request("POST", "/items", json.dumps({"items": items}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit("soak: filling the store failed: %d %s" % (resp.status, body[:200]))
    conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0,
                    help="minutes after which the RSS must stay flat")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--ids", type=int, default=2000)
    ap.add_argument("--rss-tolerance", type=float, default=0.05)
    ap.add_argument("--texts", default=os.path.join(SHARED, "corpus", "sample-mixed-2k.txt"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data and log)")
    ap.add_argument("server_args", nargs="*", help="extra `embedd serve` arguments (after --)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("soak: wrk is missing: scripts/install-deps.sh --bench")

    tmp = tempfile.mkdtemp(prefix="embedd-soak-")
    if not args.keep:
        atexit.register(shutil.rmtree, tmp, True)
    texts = soak_texts(args.texts, 2000)
    texts_path = os.path.join(tmp, "texts.txt")
    with open(texts_path, "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    srv = Server(args.binary, os.path.join(tmp, "data"), os.path.join(tmp, "server.log"),
                 args.server_args)
    srv.start()
    fill_store(srv.port, texts, args.ids)
    print("soak: server pid %d on port %d, %d items, %d connections for %.1f min"
          % (srv.proc.pid, srv.port, args.ids, args.connections, args.minutes), flush=True)

    secs = int(args.minutes * 60)
    env = dict(os.environ, SOAK_TEXTS=texts_path, SOAK_IDS=str(args.ids))
    wrk = subprocess.Popen(["wrk", "-t2", "-c%d" % args.connections, "-d%ds" % secs,
                            "--timeout", "10s", "-s", os.path.join(ROOT, "scripts", "soak.lua"),
                            "http://127.0.0.1:%d" % srv.port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    samples = []  # (seconds since start, RSS KiB)
    t0 = time.monotonic()
    while wrk.poll() is None:
        t = time.monotonic() - t0
        if srv.proc.poll() is not None:
            wrk.kill()
            raise SystemExit("soak: FAIL: the server exited (code %s) at %.0f s; log %s"
                             % (srv.proc.returncode, t, srv.log_path))
        samples.append((t, read_rss_kib(srv.proc.pid)))
        time.sleep(5)
    out, err = wrk.communicate()
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    m = re.search(r"RESULT (.*)", out)
    if not m:
        raise SystemExit("soak: wrk printed no RESULT:\n" + out + err)
    res = dict(kv.split("=") for kv in m.group(1).split())
    res = {k: int(v) for k, v in res.items()}

    print("minute  RSS (MiB)")
    for t, rss in samples:
        if int(t) % 30 < 5:
            print("%6.1f  %8.1f" % (t / 60, rss / 1024))
    settle_s = args.settle * 60
    window = [rss for t, rss in samples if t >= settle_s]
    base = window[0] if window else 0
    drift = max(abs(r - base) for r in window) / base if base else 0.0
    errors = (res["non2xx"] + res["connect_err"] + res["read_err"] + res["write_err"]
              + res["timeouts"])
    secs_run = res["duration_us"] / 1e6
    print("requests %d in %.0f s (%.0f/s), p50 %.1f ms, p99 %.1f ms, max %.1f ms"
          % (res["requests"], secs_run, res["requests"] / secs_run, res["p50_us"] / 1e3,
             res["p99_us"] / 1e3, res["max_us"] / 1e3))
    print("errors: non-200 %d, connect %d, read %d, write %d, timeouts %d"
          % (res["non2xx"], res["connect_err"], res["read_err"], res["write_err"],
             res["timeouts"]))
    if err.strip():
        print(err.strip()[:2000])
    print("RSS from minute %.1f: %.1f MiB at start, %.1f MiB at the end, largest deviation %.2f%%"
          % (args.settle, base / 1024, (window[-1] if window else 0) / 1024, drift * 100))
    ok = errors == 0 and drift <= args.rss_tolerance and len(window) > 1
    print("RESULT soak %s requests=%d errors=%d rss_drift_pct=%.2f"
          % ("PASS" if ok else "FAIL", res["requests"], errors, drift * 100))
    srv.kill()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
