#!/usr/bin/python3
"""slow_clients.py: slow and non-reading clients against a running embedd,
while /health is probed from another address.

Default mode (issue 16, item 6): N connections (--connections, default 600)
from --source (default 127.0.0.2; loopback accepts any 127.x source, so the
server's per-IP limit applies to them and not to the probe) each send a
partial request head and then one header line every --interval seconds
(default 10). A connection the server closes is reopened (at most once a
second each), as a real slowloris would. Meanwhile GET /health is sent from
127.0.0.1 every 0.2 s on a fresh connection.

--non-reading N (item 5): first fills the store with --items items (default
10,000) with vectors of the model's dimension (GET /info), then N clients
each send POST /similar with limit --items and with_vector, and never read.
With --pid, the server's VmRSS is sampled before, at its peak and after.

Reports p50/p99/max /health latency and what happened to the slow
connections: refused (the connect failed or the server closed it within a
second, before any header line after the first), cut (closed later, by a
deadline), still open at the end. Runs --duration seconds (default 60) and
stops on its own. Exit status 1 if any /health took longer than --max-ms
(default 100) or failed; 0 otherwise.

  scripts/slow_clients.py --port 8080
  scripts/slow_clients.py --port 8080 --non-reading 64 --pid $(pgrep -n embedd)
"""
import argparse
import json
import selectors
import socket
import sys
import threading
import time
import urllib.request


def vmrss_kib(pid):
    if not pid:
        return None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Prober(threading.Thread):
    """GET /health from 127.0.0.1 every period seconds, fresh connection each."""

    def __init__(self, host, port, period, timeout):
        super().__init__(daemon=True)
        self.host, self.port, self.period, self.timeout = host, port, period, timeout
        self.latencies = []
        self.failures = []
        self.stop = threading.Event()

    def probe(self):
        t0 = time.monotonic()
        try:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(data[:80])
            self.latencies.append(time.monotonic() - t0)
        except Exception as e:  # a failure is a result here, not a crash
            self.failures.append("%s after %.2fs" % (e, time.monotonic() - t0))

    def run(self):
        while not self.stop.is_set():
            self.probe()
            self.stop.wait(self.period)


class Slow:
    """One slowloris connection."""

    def __init__(self, i):
        self.i = i
        self.sock = None
        self.opened_at = 0.0
        self.next_line = 0.0
        self.lines = 0
        self.retry_at = 0.0


def open_slow(c, args, sel, now, stats):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.bind((args.source, 0))
        s.connect_ex((args.host, args.port))
    except OSError:
        stats["refused"] += 1
        s.close()
        c.retry_at = now + 1.0
        return
    c.sock, c.opened_at, c.lines = s, now, 0
    c.next_line = now  # the partial head goes out once connected
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    stats["opened"] += 1


def closed_slow(c, sel, now, stats):
    try:
        sel.unregister(c.sock)
    except (KeyError, ValueError):
        pass
    c.sock.close()
    c.sock = None
    if c.lines <= 1 and now - c.opened_at < 1.0:
        stats["refused"] += 1
    else:
        stats["cut"] += 1
        stats["cut_after"].append(now - c.opened_at)
    c.retry_at = now + 1.0


def slowloris(args, stop_at, stats):
    sel = selectors.DefaultSelector()
    conns = [Slow(i) for i in range(args.connections)]
    head = b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    while time.monotonic() < stop_at:
        now = time.monotonic()
        for c in conns:
            if c.sock is None and now >= c.retry_at:
                open_slow(c, args, sel, now, stats)
        for key, ev in sel.select(timeout=0.05):
            c = key.data
            if c.sock is None:
                continue
            now = time.monotonic()
            if ev & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed_slow(c, sel, now, stats)
                    continue
                stats["answered"] += 1
            if ev & selectors.EVENT_WRITE and now >= c.next_line:
                line = head if c.lines == 0 else b"X-Slow-%d: %d\r\n" % (c.lines, c.i)
                try:
                    c.sock.send(line)
                except OSError:
                    closed_slow(c, sel, now, stats)
                    continue
                c.lines += 1
                c.next_line = now + args.interval
                sel.modify(c.sock, selectors.EVENT_READ, c)
        # connections waiting for their next line want EVENT_WRITE again
        now = time.monotonic()
        for c in conns:
            if c.sock is not None and now >= c.next_line:
                try:
                    sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
                except (KeyError, ValueError):
                    pass
    stats["open_at_end"] = sum(1 for c in conns if c.sock is not None)
    for c in conns:
        if c.sock is not None:
            c.sock.close()


def http_json(args, method, path, body=None):
    req = urllib.request.Request("http://%s:%d%s" % (args.host, args.port, path), method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def non_reading(args, stop_at, stats):
    dim = http_json(args, "GET", "/info")["dimension"]
    for start in range(0, args.items, 200):
        items = [{"id": i, "vector": [((i * 31 + d * 7) % 97) / 97.0 + 0.01 for d in range(dim)]}
                 for i in range(start, min(start + 200, args.items))]
        http_json(args, "POST", "/items", {"items": items})
    stats["rss_before_kib"] = vmrss_kib(args.pid)
    q = json.dumps({"vector": [1.0] * dim, "limit": args.items, "with_vector": True}).encode()
    req = (b"POST /similar HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(q)) + q
    socks = []
    for i in range(args.non_reading):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.bind((args.source, 0))
            s.connect((args.host, args.port))
            s.sendall(req)
            socks.append(s)
        except OSError:
            stats["refused"] += 1
            s.close()
    stats["opened"] = len(socks)
    peak = stats["rss_before_kib"] or 0
    while time.monotonic() < stop_at:
        rss = vmrss_kib(args.pid)
        if rss is not None:
            peak = max(peak, rss)
        time.sleep(0.1)
    stats["rss_peak_kib"] = peak if args.pid else None
    stats["rss_after_kib"] = vmrss_kib(args.pid)
    for s in socks:
        s.close()


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--source", default="127.0.0.2", help="source address of the slow clients")
    ap.add_argument("--connections", type=int, default=600)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between header lines")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--probe-period", type=float, default=0.2)
    ap.add_argument("--max-ms", type=float, default=100.0, help="slowest acceptable /health")
    ap.add_argument("--non-reading", type=int, default=0, metavar="N")
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--pid", type=int, default=0, help="server pid, for VmRSS")
    args = ap.parse_args()

    stats = {"opened": 0, "refused": 0, "cut": 0, "answered": 0, "cut_after": []}
    prober = Prober(args.host, args.port, args.probe_period, timeout=10.0)
    if args.non_reading:
        stop_at = time.monotonic() + args.duration
        prober.start()
        non_reading(args, stop_at, stats)
    else:
        stop_at = time.monotonic() + args.duration
        prober.start()
        slowloris(args, stop_at, stats)
    prober.stop.set()
    prober.join()

    lat = [x * 1000 for x in prober.latencies]
    print("/health probes: %d ok, %d failed; p50 %.1f ms, p99 %.1f ms, max %.1f ms"
          % (len(lat), len(prober.failures), percentile(lat, 50), percentile(lat, 99),
             max(lat) if lat else float("nan")))
    for f in prober.failures[:5]:
        print("  failed: %s" % f)
    if args.non_reading:
        print("non-reading clients: %d connected, %d refused" % (stats["opened"],
                                                                 stats["refused"]))
        print("server VmRSS (MiB): before %s, peak %s, after %s" % tuple(
            "%.1f" % (v / 1024.0) if v is not None else "?" for v in
            (stats.get("rss_before_kib"), stats.get("rss_peak_kib"),
             stats.get("rss_after_kib"))))
    else:
        cut = stats["cut_after"]
        print("slow connections from %s: %d opened, %d refused, %d cut (after %.1f..%.1f s),"
              " %d still open at the end, %d got an answer"
              % (args.source, stats["opened"], stats["refused"], stats["cut"],
                 min(cut) if cut else 0, max(cut) if cut else 0, stats["open_at_end"],
                 stats["answered"]))
    bad = prober.failures or (lat and max(lat) > args.max_ms) or not lat
    print("RESULT: %s" % ("FAIL" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
