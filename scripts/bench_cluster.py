#!/usr/bin/env python3
"""bench_cluster.py: issue 18's benchmark, on this machine, in one run.

1. /embed throughput through haproxy with 1, 2 and 3 replicas
   (`embedd serve --store postgres://...`, a throwaway PostgreSQL from
   scripts/cluster_lib.py, --train off so that only inference runs). Several
   replicas on a two-core machine get --threads 1 each; the one-replica
   baseline is also run with its best setting, --threads 2 (all cores), and
   once straight to its port, without haproxy; and the haproxy rows again
   with OMP_WAIT_POLICY=passive in the replicas' environment (libgomp's
   default spin-wait burns the cores that the other replicas need: on two
   cores, 3 x 1 thread measured 0.41x one 2-thread replica spinning, 0.95x
   passive). wrk drives each setup
   (one wrk thread, --connections connections, --duration seconds) with
   POST /embed bodies of --texts-per-request texts from the shared corpus.
   Per row: requests/s, texts/s, p50/p99 latency, the cores the replicas may
   use (min(replicas x threads, cores)), texts/s per such core, and the
   share of the machine other processes used meanwhile (only rows near 0
   are clean: the machine is shared).
2. Write and search latency, --store postgres against the local --data store:
   one replica of each, started side by side (--threads 1, --train off),
   both loaded with the same --preload items, then --requests sequential
   POST /items (one item) and POST /similar (by text, limit 10) alternated
   request by request between the two, so both see the same machine. p50
   and p99 per store and operation.

Usage: scripts/bench_cluster.py [--binary build/embedd] [--duration 10]
           [--connections 16] [--texts-per-request 4] [--requests 300]
           [--preload 2000] [--quick]
`make bench-cluster` runs it (BENCH_CLUSTER_ARGS). One run takes about
two minutes with the defaults (--quick: 20 s). Python 3 standard library, plus wrk
(scripts/install-deps.sh --bench installs it).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib  # noqa: E402
from cluster_lib import Cluster, ClusterError  # noqa: E402

WRK_LUA = r"""
-- bodies: one complete JSON request body per line of BENCH_BODIES
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, "/embed", nil, bodies[n % #bodies + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def load_texts():
    base = os.environ.get("EMBEDD_SHARED_DATA") or os.path.join(cluster_lib.ROOT, "..", "shared", "data")
    path = os.path.join(base, "corpus", "sample-mixed-2k.txt")
    with open(path, encoding="utf-8") as f:
        return [l.strip() for l in f if 20 <= len(l.strip()) <= 400]


def cpu_jiffies():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total


def proc_jiffies(pids):
    n = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                f_ = f.read().rsplit(")", 1)[1].split()
            n += int(f_[11]) + int(f_[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return n


class Usage:
    """Share of the machine's CPU used by processes other than ours over a phase."""

    def __init__(self, pids):
        self.pids = pids
        self.b0, self.t0 = cpu_jiffies()
        self.p0 = proc_jiffies(pids)
        self.c0 = os.times()

    def other_share(self):
        b1, t1 = cpu_jiffies()
        ours = proc_jiffies(self.pids) - self.p0
        c1 = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        ours += int(((c1.children_user - self.c0.children_user) +
                     (c1.children_system - self.c0.children_system)) * hz)  # wrk, once waited for
        busy = b1 - self.b0
        return max(0.0, (busy - ours) / max(t1 - self.t0, 1))


def run_wrk(port, bodies_path, lua_path, connections, duration):
    env = dict(os.environ, BENCH_BODIES=bodies_path)
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--timeout", "10s",
           "-s", lua_path, "http://127.0.0.1:%d/embed" % port]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=duration + 30)
    out = r.stdout.decode(errors="replace")
    m = re.search(r"RESULT (.*)", out)
    if r.returncode != 0 or not m:
        raise ClusterError("wrk failed (%d): %s" % (r.returncode, out[-500:]))
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def warm(port, body, n=20):
    c = cluster_lib.Client(port, 30)
    for _ in range(n):
        st, _, _ = c.request("POST", "/embed", json.loads(body))
        if st != 200:
            raise ClusterError("warm-up /embed on %d: %s" % (port, st))
    c.close()


def throughput(c, args, bodies_path, lua_path, first_body):
    cores = os.cpu_count() or 1
    passive = {"OMP_WAIT_POLICY": "passive"}
    # (replicas, threads, through haproxy, environment)
    setups = [(1, 2, False, {}), (1, 2, True, {}), (1, 1, True, {}), (2, 1, True, {}), (3, 1, True, {}),
              (1, 2, True, passive), (2, 1, True, passive), (3, 1, True, passive)]
    if args.quick:
        setups = [(1, 2, True, {}), (3, 1, True, {}), (3, 1, True, passive)]
    rows = []
    print("\n/embed throughput: %d texts per request, wrk -t1 -c%d, %d s per row, --train off, "
          "%d cores; several replicas get --threads 1 each" % (args.texts_per_request, args.connections,
                                                             args.duration, cores))
    print("OMP wait: 'spin' is libgomp's default, 'passive' is OMP_WAIT_POLICY=passive in the replicas' "
          "environment (idle OpenMP threads sleep instead of spinning on cores other replicas need)")
    print("%-9s %-8s %-8s %-8s %9s %9s %8s %8s %5s %14s %7s %6s" % (
        "replicas", "threads", "via", "OMP wait", "req/s", "texts/s", "p50", "p99", "cores", "texts/s/core",
        "errors", "other"))
    for n, threads, via_lb, env in setups:
        for r in list(c.replicas):
            c.remove_replica(r)
        c.stop_haproxy()
        reps = c.start_replicas(n, ["--threads", str(threads), "--train", "off"],
                                names=["b%d" % (i + 1) for i in range(n)], env=env)
        port = reps[0].port
        pids = [r.proc.pid for r in reps]
        if via_lb:
            port = c.start_haproxy(reps)
            pids.append(c.haproxy_proc.pid)
        for r in reps:
            warm(r.port, first_body)
        u = Usage(pids)
        res = run_wrk(port, bodies_path, lua_path, args.connections, args.duration)
        other = u.other_share()
        secs = res["duration_us"] / 1e6
        rps = (res["requests"] - res["non2xx"]) / secs  # answers that carry embeddings
        tps = rps * args.texts_per_request
        used = min(n * threads, cores)
        row = {"replicas": n, "threads": threads, "via": "haproxy" if via_lb else "direct",
               "omp": "passive" if env else "spin",
               "req_s": rps, "texts_s": tps, "p50_ms": res["p50_us"] / 1e3, "p99_ms": res["p99_us"] / 1e3,
               "cores": used, "texts_s_core": tps / used, "errors": res["non2xx"] + res["errors"],
               "other": other}
        rows.append(row)
        print("%-9d %-8d %-8s %-8s %9.0f %9.0f %6.1fms %6.1fms %5d %14.0f %7d %5.0f%%" % (
            n, threads, row["via"], row["omp"], rps, tps, row["p50_ms"], row["p99_ms"], used, row["texts_s_core"],
            row["errors"], 100 * other), flush=True)
    for r in list(c.replicas):
        c.remove_replica(r)
    c.stop_haproxy()
    ones = [r for r in rows if r["replicas"] == 1 and r["via"] == "haproxy"]
    base = max(ones, key=lambda r: r["texts_s"]) if ones else rows[0]
    if any(r["errors"] for r in rows):
        print("rows with errors (non-2xx answers or socket errors) are not clean: req/s counts 2xx answers only")
    for r in rows:
        if r["replicas"] > 1:
            print("%d replicas x %d thread, OMP %s: %.2fx the best one-replica row (1 x %d threads via "
                  "haproxy, OMP %s), per-core efficiency %.0f%% of it" % (
                      r["replicas"], r["threads"], r["omp"], r["texts_s"] / base["texts_s"], base["threads"],
                      base["omp"], 100 * r["texts_s_core"] / base["texts_s_core"]))
    return rows


def pcts(values):
    s = sorted(values)

    def p(q):
        return s[max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))] * 1000
    return p(50), p(99)


def latency(c, args, texts):
    print("\nwrite/search latency, one replica per store side by side (--threads 1, --train off), "
          "%d items preloaded, %d sequential requests of each kind alternated between the stores"
          % (args.preload, args.requests))
    pg = c.add_replica("pg", ["--threads", "1", "--train", "off"], store="postgres")
    local = c.add_replica("local", ["--threads", "1", "--train", "off"], store="local")
    pg.wait_ready()
    local.wait_ready()
    stores = [("postgres", pg), ("local --data", local)]
    clients = {name: r.client(30) for name, r in stores}
    for name, r in stores:
        cl = clients[name]
        for start in range(0, args.preload, 100):
            items = [{"id": "pre-%d" % i, "text": texts[i % len(texts)]}
                     for i in range(start, min(start + 100, args.preload))]
            st, _, body = cl.request("POST", "/items", {"items": items})
            if not 200 <= st < 300:
                raise ClusterError("preload into %s: %s %s" % (name, st, body))
    times = {(name, op): [] for name, _ in stores for op in ("write", "search")}
    u = Usage([pg.proc.pid, local.proc.pid, c.pg_proc.pid])
    for i in range(args.requests):
        text = texts[(i * 31 + 7) % len(texts)]
        for name, _ in stores:
            cl = clients[name]
            t0 = time.perf_counter()
            st, _, body = cl.request("POST", "/items", {"items": [{"id": "lat-%d" % i, "text": text}]})
            times[(name, "write")].append(time.perf_counter() - t0)
            if not 200 <= st < 300:
                raise ClusterError("write to %s: %s %s" % (name, st, body))
            t0 = time.perf_counter()
            st, _, body = cl.request("POST", "/similar", {"text": text, "limit": 10})
            times[(name, "search")].append(time.perf_counter() - t0)
            if st != 200:
                raise ClusterError("search on %s: %s %s" % (name, st, body))
    other = u.other_share()
    for cl in clients.values():
        cl.close()
    print("%-14s %-7s %9s %9s" % ("store", "op", "p50", "p99"))
    out = {}
    for (name, op), v in times.items():
        p50, p99 = pcts(v)
        out["%s %s" % (name, op)] = (p50, p99)
        print("%-14s %-7s %7.2fms %7.2fms" % (name, op, p50, p99))
    print("other processes used %.0f%% of the machine meanwhile" % (100 * other))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(cluster_lib.ROOT, "build", "embedd"))
    ap.add_argument("--duration", type=int, default=10, help="seconds of wrk per throughput row")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--texts-per-request", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300, help="latency: requests of each kind per store")
    ap.add_argument("--preload", type=int, default=2000, help="latency: items in each store first")
    ap.add_argument("--quick", action="store_true", help="two throughput rows, 3 s each, 50 requests")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.requests, args.preload = 3, 50, 200
    binary = os.path.abspath(args.binary)
    if not shutil.which("wrk"):
        print("bench_cluster: wrk is missing (scripts/install-deps.sh --bench)")
        return 1
    missing = cluster_lib.which_missing()
    if missing:
        print("bench_cluster: missing %s (scripts/install-deps.sh)" % ", ".join(missing))
        return 1
    texts = load_texts()
    rev = subprocess.run(["git", "-C", cluster_lib.ROOT, "rev-parse", "--short", "HEAD"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
    b, t = cpu_jiffies()
    time.sleep(1)
    b2, t2 = cpu_jiffies()
    print("embedd cluster benchmark: %s, %d cores, %s, model models/embedd-small, OPENBLAS_CORETYPE=%s"
          % (rev or "?", os.cpu_count() or 0, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             os.environ.get("OPENBLAS_CORETYPE", "(unset)")))
    print("background CPU use before the run: %.0f%% of the machine" % (100.0 * (b2 - b) / max(t2 - t, 1)))
    t0 = time.monotonic()
    with Cluster(binary=binary, keep=args.keep) as c:
        c.start_postgres()
        lua_path = os.path.join(c.tmp, "bench.lua")
        with open(lua_path, "w") as f:
            f.write(WRK_LUA)
        bodies_path = os.path.join(c.tmp, "bodies.txt")
        k = args.texts_per_request
        bodies = [json.dumps({"inputs": texts[i:i + k]}) for i in range(0, len(texts) - k, k)]
        with open(bodies_path, "w") as f:
            f.write("\n".join(bodies) + "\n")
        throughput(c, args, bodies_path, lua_path, bodies[0])
        latency(c, args, texts)
    print("\ndone in %.0f s" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
