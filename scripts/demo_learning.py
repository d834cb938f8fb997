#!/usr/bin/env python3
"""demo_learning.py: embedd learning while it serves, measured on STS-B.

1. Starts `embedd serve` (the default model unless --model) with a fresh
   --data directory on a free loopback port. /embed inputs do not feed the
   trainer here (--train-from-embed false), so the evaluation below never
   trains on the dev set.
2. Streams unlabelled text into POST /train/samples, a chunk every few
   seconds: by default the sentences of STS-B train and dev (--sets
   train,dev: text only, never a score; deduplicated and shuffled with
   --seed), or the lines of --stream FILE.
3. Runs for --minutes, printing the STS Spearman (x100) of the served
   model on STS-B dev (or --eval FILE) at the start, after every publish
   and every --every seconds, plus the gate's verdicts. --also-eval FILE
   measures a second set alongside (e.g. STS-B train pairs while only the
   dev sentences are streamed: pairs whose text never enters training).
4. Publish modes: when the server holds a candidate that passed the gate
   but is not published (--publish manual), the demo promotes it with
   POST /train/promote, an operator's action, and says so. --auto passes
   `--publish auto` when the server knows that flag.
5. Stops the server (SIGTERM) and prints the curve.

Usage: scripts/demo_learning.py [--minutes 25] [--model DIR] [--binary build/embedd]
                                [--extra "--publish-every 100"] [--stream FILE | --sets train,dev]
                                [--eval FILE] [--also-eval FILE] [--every 60] [--auto]
Data: $EMBEDD_SHARED_DATA or ../shared/data.
"""
import argparse
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def http(port, method, path, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return (json.loads(raw) if raw.strip() else {}), dict(r.headers)


def server_knows(binary, flag):
    """Whether `embedd serve --help` lists --flag."""
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True)
    return ("--" + flag) in (out.stdout + out.stderr)


def try_promote(port):
    """POST /train/promote: (True, answer), or (False, why) when the route is missing or
    refuses (nothing pending)."""
    try:
        res, _ = http(port, "POST", "/train/promote", {})
        return True, res
    except urllib.error.HTTPError as e:
        return False, "%d %s" % (e.code, e.read()[:200].decode("utf-8", "replace"))


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
    if args.auto and server_knows(args.binary, "publish"):
        cmd += ["--publish", "auto"]
    print("server: %s" % " ".join(shlex.quote(c) for c in cmd), flush=True)
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


def measure(port, sets):
    """[(name, rho)] for each (name, pairs) of sets, and the versions that served; measured
    again (up to 3 times) when a publish happened during the measurement, so that one
    version served all of it."""
    for _ in range(3):
        out, versions = [], set()
        for name, pairs in sets:
            rho, v = sts_eval(port, pairs)
            out.append((name, rho))
            versions |= v
        if len(versions) == 1:
            break
    return out, versions


def fmt(scores):
    return ", ".join("%s %.2f" % (n, r) for n, r in scores)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25)
    ap.add_argument("--model")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--extra", default="", help="more `embedd serve` flags")
    ap.add_argument("--chunk", type=int, default=500, help="sentences per POST /train/samples")
    ap.add_argument("--stream", help="text file (one text per line) to feed instead of the "
                    "STS-B sentences")
    ap.add_argument("--sets", default="train,dev",
                    help="STS-B splits whose sentences (text only) are streamed")
    ap.add_argument("--seed", type=int, default=15, help="shuffle seed of the stream")
    ap.add_argument("--eval", default=os.path.join(DATA, "stsb", "sts-dev.tsv"),
                    help="score<TAB>s1<TAB>s2 file to measure on (default: STS-B dev)")
    ap.add_argument("--also-eval", help="a second scored file measured alongside")
    ap.add_argument("--every", type=float, default=60, help="seconds between measurements")
    ap.add_argument("--auto", action="store_true",
                    help="pass --publish auto (when the server has that flag)")
    ap.add_argument("--no-promote", action="store_true",
                    help="never POST /train/promote (manual mode then publishes nothing)")
    args = ap.parse_args()
    if args.stream:
        with open(args.stream, encoding="utf-8") as f:
            sentences = [line.strip() for line in f if line.strip()]
    else:
        sentences = []
        for split in args.sets.split(","):
            rows = read_sts(os.path.join(DATA, "stsb", "sts-%s.tsv" % split))
            sentences += [s for _, a, b in rows for s in (a, b)]
    sentences = sorted(set(sentences))
    random.Random(args.seed).shuffle(sentences)
    print("stream: %d distinct texts (%s), shuffled with seed %d" % (
        len(sentences), args.stream or "STS-B " + args.sets, args.seed), flush=True)
    sets = [(os.path.basename(args.eval), read_sts(args.eval))]
    if args.also_eval:
        sets.append((os.path.basename(args.also_eval), read_sts(args.also_eval)))
    data_dir = tempfile.mkdtemp(prefix="embedd-demo-")
    proc, port, log = start_server(args, data_dir)
    curve = []
    try:
        scores, v = measure(port, sets)
        print("start: version %s: %s" % (sorted(v), fmt(scores)), flush=True)
        curve.append((0.0, max(v), scores, "start"))
        t0 = time.time()
        last_measure = t0
        fed, published, rejected, promoted = 0, 0, 0, 0
        can_promote = not args.no_promote
        served = max(v)
        while time.time() - t0 < args.minutes * 60:
            if fed < len(sentences):
                http(port, "POST", "/train/samples", {"texts": sentences[fed:fed + args.chunk]})
                fed += args.chunk
            time.sleep(5)
            st, _ = http(port, "GET", "/train/status")
            mins = (time.time() - t0) / 60
            g = st.get("last_gate") or {}
            if st["rejected"] > rejected:
                rejected = st["rejected"]
                print("%6.1f min: step %d rejected: %s" % (mins, g.get("step", -1),
                                                          g.get("reason")), flush=True)
            current = st["versions"]["current"]
            if (can_promote and g.get("passed") and g.get("candidate_id", 0) > current
                    and st["published"] == published):
                ok, res = try_promote(port)
                if ok:
                    promoted += 1
                    print("%6.1f min: operator: POST /train/promote -> %s" % (
                        mins, json.dumps(res)[:200]), flush=True)
                elif res.startswith("404") and "promote" not in res:
                    can_promote = False  # no such route: the server publishes by itself
                st, _ = http(port, "GET", "/train/status")
                current = st["versions"]["current"]
            event = None
            if st["published"] > published or current != served:
                published = st["published"]
                served = current
                event = "published v%d (step %d)" % (current, g.get("step", -1))
            elif time.time() - last_measure >= args.every:
                event = "tick"
            if event is None:
                continue
            scores, v = measure(port, sets)
            last_measure = time.time()
            mins = (last_measure - t0) / 60
            print("%6.1f min: %s: served %s, %d steps, fed %d: %s" % (
                mins, event, sorted(v), st["steps"], min(fed, len(sentences)), fmt(scores)),
                flush=True)
            curve.append((mins, current, scores, event))
        st, _ = http(port, "GET", "/train/status")
        print("end: %d steps (%d skipped), %d published (%d promoted by the demo), %d rejected, "
              "buffer %d texts" % (st["steps"], st["skipped_steps"], st["published"], promoted,
                                   st["rejected"], st["buffer"]["train"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    print("\ncurve (minutes, version, Spearman x100):")
    for mins, ver, scores, event in curve:
        print("  %6.1f  v%-3d %s%s" % (mins, ver, fmt(scores),
                                      "" if event == "tick" else "   <- " + event))
    first, last = curve[0][2], curve[-1][2]
    print("change: " + ", ".join("%s %+.2f" % (n, r - r0) for (n, r0), (_, r) in zip(first, last)))
    print("data dir: %s" % data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
