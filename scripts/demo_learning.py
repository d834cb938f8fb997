#!/usr/bin/env python3
"""demo_learning.py: embedd learning while it serves, measured on STS-B.

1. Starts `embedd serve` (the default model unless --model) with a fresh
   --data directory on a free loopback port. /embed inputs do not feed the
   trainer here (--train-from-embed false), so the evaluation below never
   trains on the dev set.
2. Streams the sentences of STS-B train (text only, no scores), or the
   lines of --stream FILE, into POST /train/samples, a chunk every few
   seconds.
3. Runs for --minutes, printing the STS Spearman (x100) of the served
   model on STS-B dev (or --eval FILE) at the start and after every
   publish, plus the gate's verdicts.
4. Stops the server (SIGTERM) and prints the curve.

Usage: scripts/demo_learning.py [--minutes 20] [--model DIR] [--binary build/embedd]
                                [--extra "--publish-every 100"] [--stream FILE] [--eval FILE]
Data: $EMBEDD_SHARED_DATA or ../shared/data.
"""
import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def http(port, method, path, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read()), dict(r.headers)


def read_sts(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                try:
                    rows.append((float(parts[0]), parts[1], parts[2]))
                except ValueError:
                    pass
    return rows


def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb)


def sts_eval(port, dev):
    """Spearman x100 of the served model on dev, and the version that served it."""
    sents = sorted({s for _, a, b in dev for s in (a, b)})
    vecs, versions = {}, set()
    for i in range(0, len(sents), 64):
        chunk = sents[i:i + 64]
        out, hdr = http(port, "POST", "/embed", {"inputs": chunk})
        versions.add(int(hdr.get("X-Embedd-Model-Version", "0")))
        vecs.update(zip(chunk, out))
    cos = [sum(x * y for x, y in zip(vecs[a], vecs[b])) for _, a, b in dev]
    return 100.0 * spearman(cos, [s for s, _, _ in dev]), versions


def start_server(args, data_dir):
    cmd = [args.binary, "serve", "--port", "0", "--data", data_dir,
           "--train-from-embed", "false"] + shlex.split(args.extra)
    if args.model:
        cmd += ["--model", args.model]
    log = open(os.path.join(data_dir, "server.log"), "w+")
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"listening on http://[^:]+:(\d+)", log.read())
        if m:
            return proc, int(m.group(1)), log
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    log.seek(0)
    sys.exit("server did not start:\n" + log.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--model")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--extra", default="", help="more `embedd serve` flags")
    ap.add_argument("--chunk", type=int, default=500, help="sentences per POST /train/samples")
    ap.add_argument("--stream", help="text file (one text per line) to feed instead of the "
                    "STS-B train sentences")
    ap.add_argument("--eval", default=os.path.join(DATA, "stsb", "sts-dev.tsv"),
                    help="score<TAB>s1<TAB>s2 file to measure on (default: STS-B dev)")
    args = ap.parse_args()
    if args.stream:
        with open(args.stream, encoding="utf-8") as f:
            sentences = [line.strip() for line in f if line.strip()]
    else:
        train = read_sts(os.path.join(DATA, "stsb", "sts-train.tsv"))
        sentences = [s for _, a, b in train for s in (a, b)]
    dev = read_sts(args.eval)
    name = os.path.basename(args.eval)
    data_dir = tempfile.mkdtemp(prefix="embedd-demo-")
    proc, port, log = start_server(args, data_dir)
    curve = []
    try:
        rho, v = sts_eval(port, dev)
        print("start: version %s, %s Spearman x100 = %.2f" % (sorted(v), name, rho), flush=True)
        curve.append((0.0, 1, rho))
        t0 = time.time()
        fed, published, rejected = 0, 0, 0
        while time.time() - t0 < args.minutes * 60:
            if fed < len(sentences):
                res, _ = http(port, "POST", "/train/samples",
                              {"texts": sentences[fed:fed + args.chunk]})
                fed += args.chunk
            time.sleep(5)
            st, _ = http(port, "GET", "/train/status")
            if st["rejected"] > rejected:
                rejected = st["rejected"]
                g = st["last_gate"]
                print("%6.1f min: step %d rejected: %s" % ((time.time() - t0) / 60, g["step"],
                                                          g["reason"]), flush=True)
            if st["published"] > published:
                published = st["published"]
                # wait until the store and the served version agree, then measure
                rho, v = sts_eval(port, dev)
                mins = (time.time() - t0) / 60
                g = st["last_gate"]
                print("%6.1f min: step %d published version %d (val loss %.4f vs %.4f): "
                      "%s Spearman x100 = %.2f" % (
                          mins, g["step"], st["versions"]["current"],
                          g["candidate"]["val_loss"], g["current"]["val_loss"], name, rho),
                      flush=True)
                curve.append((mins, st["versions"]["current"], rho))
        st, _ = http(port, "GET", "/train/status")
        print("end: %d steps (%d skipped), %d published, %d rejected, buffer %d texts" % (
            st["steps"], st["skipped_steps"], st["published"], st["rejected"],
            st["buffer"]["train"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    print("\ncurve (minutes, version, %s Spearman x100):" % name)
    for mins, ver, rho in curve:
        print("  %6.1f  v%-3d %.2f" % (mins, ver, rho))
    print("data dir: %s" % data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
