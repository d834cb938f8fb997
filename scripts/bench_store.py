#!/usr/bin/python3
"""bench_store.py: item-store benchmark of `embedd serve` against FAISS.

  scripts/bench_store.py [--sizes 10000,100000,1000000] [--uniform-sizes 10000,100000]
                         [--queries 300] [--faiss-hnsw-max N] [--no-ann]
                         [--hnsw-m 16] [--hnsw-ef-construction 200] [--hnsw-ef 64]
                         [--ann-efs 32,128]

On the same vectors in the same run (issue 4, Evidence -> Benchmark):
 1. ingest throughput through HTTP (POST /items), memory store and --data
    (write-ahead log, fsync before each reply): items/s from raw 384-d vectors
    (batches of 256, several concurrent clients) and from text (batches of 64
    texts of bench-out/minilm/texts.txt, cycled with unique ids);
 2. query latency, one query at a time, p50 and p99: embedd POST /similar
    {"vector": q, "limit": 10} (includes HTTP + JSON on loopback), exact
    (no index) and with its HNSW index (a second server, --hnsw-threshold at
    the smallest size, --hnsw-m/--hnsw-ef-construction as given; the default
    search width and each --ann-efs width through "params": {"hnsw_ef": n};
    the load waits for the background build, GET /items/count says when it is
    done), and FAISS IndexFlatIP (exact) and IndexHNSWFlat (the same M,
    efConstruction and efSearch, METRIC_INNER_PRODUCT on normalised vectors)
    in-process with faiss.omp_set_num_threads(2); clustered data (1,000
    Gaussian clusters + noise, normalised, fixed seed) at each --sizes,
    uniform random data (the worst case for HNSW) at each --uniform-sizes;
    recall@10 of every engine against IndexFlatIP (target for embedd's HNSW:
    recall >= 0.95 with p50 < 2 ms at 100k).
Model: bench-out/minilm (scripts/gen_bench_model.py --shape minilm, made when
missing). Servers listen on 127.0.0.1 only and are killed at exit.
Needs python3-numpy and python3-faiss (scripts/install-deps.sh --bench).
"""
import argparse
import http.client
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 384
SERVERS = []


def log(*a):
    print(*a, flush=True)


# ---- data ----------------------------------------------------------------------
def normalise(x):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(n, seed, n_clusters=1000, noise=0.03, center_seed=1234):
    """n points around n_clusters random unit centres (per-dim noise sigma), normalised."""
    crng = np.random.default_rng(center_seed)
    centres = normalise(crng.standard_normal((n_clusters, DIM), dtype=np.float32))
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    step = 100000
    for s in range(0, n, step):
        e = min(n, s + step)
        lab = rng.integers(0, n_clusters, e - s)
        out[s:e] = centres[lab] + noise * rng.standard_normal((e - s, DIM), dtype=np.float32)
    return normalise(out)


def uniform(n, seed):
    rng = np.random.default_rng(seed)
    return normalise(rng.standard_normal((n, DIM), dtype=np.float32))


def vec_json(v):
    return json.dumps(np.round(v.astype(np.float64), 6).tolist())


def items_body(x, start, end, id0=0):
    parts = ['{"id":%d,"vector":%s}' % (id0 + i, vec_json(x[i])) for i in range(start, end)]
    return ('{"items":[' + ",".join(parts) + "]}").encode()


# ---- server --------------------------------------------------------------------
class Server:
    def __init__(self, bin_, model, extra, workdir, name):
        self.cmd = [bin_, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                    "--threads", "2"] + extra
        self.log_path = os.path.join(workdir, name + ".log")
        log("+ " + " ".join(self.cmd))
        self.logf = open(self.log_path, "w")
        env = dict(os.environ)
        env.setdefault("OPENBLAS_CORETYPE", "Haswell")
        self.proc = subprocess.Popen(self.cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        SERVERS.append(self)
        self.port = None
        for _ in range(600):
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(self.log_path).read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise SystemExit("server exited: " + open(self.log_path).read())
            time.sleep(0.1)
        if self.port is None:
            raise SystemExit("server not listening after 60 s")

    def conn(self, timeout=600):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        if self in SERVERS:
            SERVERS.remove(self)


def post(conn, path, body):
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError("%s -> %d %s" % (path, r.status, data[:300]))
    return data


def count_info(srv):
    c = srv.conn()
    c.request("GET", "/items/count")
    j = json.loads(c.getresponse().read())
    c.close()
    return j


def count(srv):
    return count_info(srv)["count"]


def wait_index(srv, n, limit=7200):
    """Waits until the HNSW index is built and holds n live items; returns seconds."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        ix = count_info(srv)["index"]
        if ix["kind"] == "hnsw" and not ix["building"] and ix["nodes"] - ix["deleted"] >= n:
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise SystemExit("index not built after %d s" % limit)


def send_bodies(srv, bodies, clients):
    """POST /items with each body from `clients` threads; returns seconds."""
    lock = threading.Lock()
    it = iter(bodies)
    errs = []

    def worker():
        c = srv.conn()
        try:
            while True:
                with lock:
                    b = next(it, None)
                if b is None:
                    return
                post(c, "/items", b)
        except Exception as e:  # noqa: BLE001
            errs.append(e)
        finally:
            c.close()

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errs:
        raise errs[0]
    return dt


# Bulk load (for the latency sizes): worker processes encode and POST their own
# slices of the array, so client-side JSON encoding runs in parallel.
_LOAD = {}


def _load_worker(args):
    port, start, end, batch = args
    x = _LOAD["x"]
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for s in range(start, end, batch):
        post(c, "/items", items_body(x, s, min(end, s + batch)))
    c.close()
    return end - start


def bulk_load(srv, x, start, end, batch, procs):
    _LOAD["x"] = x
    chunk = batch * 8
    tasks = [(srv.port, s, min(end, s + chunk), batch) for s in range(start, end, chunk)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(procs) as pool:
        for _ in pool.imap_unordered(_load_worker, tasks):
            pass
    return time.perf_counter() - t0


# ---- measurements ----------------------------------------------------------------
def pct(lat):
    a = np.array(lat) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def embedd_queries(srv, q, k=10, ef=None):
    params = ',"params":{"hnsw_ef":%d}' % ef if ef else ""
    bodies = [('{"vector":%s,"limit":%d%s}' % (vec_json(v), k, params)).encode() for v in q]
    c = srv.conn()
    # warm-up (and, with --hnsw-threshold, waits for the index build)
    t0 = time.perf_counter()
    post(c, "/similar", bodies[0])
    first = time.perf_counter() - t0
    lat, ids = [], []
    for b in bodies:
        t0 = time.perf_counter()
        data = post(c, "/similar", b)
        lat.append(time.perf_counter() - t0)
        ids.append([r["id"] for r in json.loads(data)["result"]])
    c.close()
    return lat, ids, first


def faiss_queries(index, q, k=10):
    index.search(q[:1], k)
    lat, ids = [], []
    for i in range(len(q)):
        t0 = time.perf_counter()
        _, I = index.search(q[i:i + 1], k)
        lat.append(time.perf_counter() - t0)
        ids.append(I[0].tolist())
    return lat, ids


def recall(got, exact, k=10):
    return float(np.mean([len(set(g[:k]) & set(e[:k])) / k for g, e in zip(got, exact)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--uniform-sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--faiss-hnsw-max", type=int, default=10 ** 9,
                    help="skip FAISS IndexHNSWFlat above this size (build time)")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--hnsw-ef-construction", type=int, default=200)
    ap.add_argument("--hnsw-ef", type=int, default=64, help="embedd's --hnsw-ef and FAISS efSearch")
    ap.add_argument("--ann-efs", default="32,128", help="further widths, per request")
    ap.add_argument("--no-ann", action="store_true", help="no embedd HNSW server")
    ap.add_argument("--no-ingest", action="store_true")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--load-batch", type=int, default=1024)
    ap.add_argument("--model", default="bench-out/minilm")
    ap.add_argument("--bin", default=os.environ.get("EMBEDD_BIN", "build/embedd"))
    args = ap.parse_args()
    os.chdir(ROOT)
    try:
        import faiss
    except ImportError:
        raise SystemExit("python3-faiss is missing: scripts/install-deps.sh --bench")
    faiss.omp_set_num_threads(2)
    if not os.access(args.bin, os.X_OK):
        raise SystemExit("no %s (make build/embedd)" % args.bin)
    if not os.path.exists(os.path.join(args.model, "texts.txt")):
        cmd = ["/usr/bin/python3", "scripts/gen_bench_model.py", "--out", args.model, "--shape", "minilm"]
        log("+ " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    usizes = [int(s) for s in args.uniform_sizes.split(",") if s]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet"]).returncode != 0
    log("embedd item-store benchmark: %s%s, %d cores, faiss %s, %s" % (
        rev, " (dirty tree)" if dirty else "", os.cpu_count(), faiss.__version__,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    log("command: " + " ".join([sys.argv[0]] + sys.argv[1:]))
    work = tempfile.mkdtemp(prefix="embedd-bench-store.")
    big = ["--payload-limit", "64000000", "--max-client-batch-size", "2048"]
    ingest_rows, lat_rows = [], []
    try:
        # ---- 1. ingest -----------------------------------------------------------
        if not args.no_ingest:
            xi = clustered(256 * 100, seed=7)
            vbodies = [items_body(xi, s, s + 256) for s in range(0, len(xi), 256)]
            texts = [t for t in open(os.path.join(args.model, "texts.txt")).read().split("\n") if t]
            n_text = 64 * 48

            def tbodies(id0):
                out = []
                for s in range(0, n_text, 64):
                    its = [{"id": "t%d" % (id0 + s + i), "text": texts[(s + i) % len(texts)]} for i in range(64)]
                    out.append(json.dumps({"items": its}).encode())
                return out
            for store in ("memory", "data"):
                extra = []
                if store == "data":
                    d = os.path.join(work, "data")
                    os.makedirs(d)
                    extra = ["--data", d]
                srv = Server(args.bin, args.model, extra, work, "ingest-" + store)
                try:
                    send_bodies(srv, vbodies[:4], 1)  # warm-up (ids reused below)
                    dt = send_bodies(srv, vbodies, args.clients)
                    ingest_rows.append((store, "vectors, batches of 256, %d clients" % args.clients,
                                        len(xi), dt, len(xi) / dt))
                    send_bodies(srv, tbodies(10 ** 6)[:2], 1)  # warm-up
                    dt = send_bodies(srv, tbodies(0), args.clients)
                    ingest_rows.append((store, "text, batches of 64, %d clients" % args.clients,
                                        n_text, dt, n_text / dt))
                    assert count(srv) == len(xi) + n_text + 128, count(srv)
                finally:
                    srv.stop()
            log("\ningest through HTTP (POST /items):")
            log("%-7s %-38s %8s %8s %10s" % ("store", "input", "items", "s", "items/s"))
            for r in ingest_rows:
                log("%-7s %-38s %8d %8.2f %10.1f" % r)
            del xi, vbodies

        # ---- 2. latency ------------------------------------------------------------
        hnsw_flags = ["--hnsw-m", str(args.hnsw_m), "--hnsw-ef-construction",
                      str(args.hnsw_ef_construction), "--hnsw-ef", str(args.hnsw_ef)]
        efs = [int(e) for e in args.ann_efs.split(",") if e]

        def run_dataset(kind, x, q, ns):
            # the exact server never builds an index (the default threshold would)
            srv = Server(args.bin, args.model, big + ["--hnsw-threshold", "0"], work,
                         "latency-" + kind)
            ann = None
            if not args.no_ann:
                ann = Server(args.bin, args.model, big + ["--timeout", "3600", "--hnsw-threshold",
                                                          str(min(ns))] + hnsw_flags,
                             work, "ann-" + kind)
            try:
                loaded = 0
                for n in ns:
                    dt = bulk_load(srv, x, loaded, n, args.load_batch, args.clients)
                    log("  loaded %d..%d into embedd in %.1f s (%.0f items/s, client JSON encoding included)"
                        % (loaded, n, dt, (n - loaded) / dt, ))
                    assert count(srv) == n
                    flat = faiss.IndexFlatIP(DIM)
                    flat.add(x[:n])
                    fl, exact = faiss_queries(flat, q)
                    el, eids, _ = embedd_queries(srv, q)
                    first = len(lat_rows)
                    lat_rows.append((kind, n, "embedd exact (HTTP)", *pct(el), recall(eids, exact), ""))
                    if ann is not None:
                        dt = bulk_load(ann, x, loaded, n, args.load_batch, args.clients)
                        wt = wait_index(ann, n)
                        note = "load %.1f s + build wait %.1f s" % (dt, wt)
                        for ef in [args.hnsw_ef] + [e for e in efs if e != args.hnsw_ef]:
                            al, aids, _ = embedd_queries(ann, q, ef=None if ef == args.hnsw_ef else ef)
                            lat_rows.append((kind, n, "embedd HNSW ef=%d (HTTP)" % ef, *pct(al),
                                             recall(aids, exact), note))
                            note = ""
                    loaded = n
                    lat_rows.append((kind, n, "FAISS IndexFlatIP", *pct(fl), 1.0, ""))
                    if n <= args.faiss_hnsw_max:
                        h = faiss.IndexHNSWFlat(DIM, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                        h.hnsw.efConstruction = args.hnsw_ef_construction
                        t0 = time.perf_counter()
                        h.add(x[:n])
                        bt = time.perf_counter() - t0
                        note = "build %.1f s" % bt
                        for ef in [args.hnsw_ef] + [e for e in efs if e != args.hnsw_ef]:
                            h.hnsw.efSearch = ef
                            hl, hids = faiss_queries(h, q)
                            lat_rows.append((kind, n, "FAISS IndexHNSWFlat ef=%d" % ef, *pct(hl),
                                             recall(hids, exact), note))
                            note = ""
                        del h
                    for r in lat_rows[first:]:
                        log("  %-9s %8d %-28s p50 %8.3f ms p99 %8.3f ms recall@10 %.4f %s" % r)
                    del flat
            finally:
                srv.stop()
                if ann is not None:
                    ann.stop()

        nq = args.queries
        if sizes:
            log("\nclustered data (1,000 Gaussian clusters, noise sigma 0.03/dim, normalised, seed 1):")
            xc = clustered(max(sizes), seed=1)
            qc = clustered(nq, seed=2)
            run_dataset("clustered", xc, qc, sorted(sizes))
        if usizes:
            log("\nuniform random data (normalised Gaussian, seed 3):")
            xu = uniform(max(usizes), seed=3)
            qu = uniform(nq, seed=4)
            run_dataset("uniform", xu, qu, sorted(usizes))
            del xu

        # ---- table -------------------------------------------------------------------
        log("\n==== results (command: %s) ====" % " ".join([sys.argv[0]] + sys.argv[1:]))
        if ingest_rows:
            log("\n| store | input | items | seconds | items/s |\n|---|---|---:|---:|---:|")
            for r in ingest_rows:
                log("| %s | %s | %d | %.2f | %.1f |" % r)
        if lat_rows:
            log("\n| data | N | engine | p50 ms | p99 ms | recall@10 | note |\n|---|---:|---|---:|---:|---:|---|")
            for r in lat_rows:
                log("| %s | %d | %s | %.3f | %.3f | %.4f | %s |" % r)
        log("\nembedd latencies include HTTP + JSON on loopback (one query at a time, keep-alive); "
            "FAISS is in-process, omp_set_num_threads(2); %d queries each." % nq)
    finally:
        for s in list(SERVERS):
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
