#!/usr/bin/env python3
"""bench_learning.py: /embed latency and throughput with training on and off.

Starts `embedd serve` twice per round, alternating (off, on, off, on, ...):
  off: --train off
  on:  training running (STS-B train sentences fed into /train/samples first,
       --train-min-samples 64, the default --train-max-cpu 50 and publishing)
and measures, against each, for --seconds:
  light load: --clients threads each sending one sentence to /embed, then
              waiting an exponential think time (mean --think ms), so the
              server has idle gaps that training fills: p50 and p99 latency;
  saturation: --sat-clients threads without think time: requests/s.
Prints the best of the rounds for each mode and the ratios against the
targets (p50 on <= 1.25 x off; throughput on >= 0.8 x off), and the
training steps taken during each load (under saturation they come from
--train-min-share, default 0.1; pass --extra "--train-min-share 0" to see
the trainer starve).

--idle-cpu S: instead, the resting trainer: start with training on, feed
--idle-texts texts, wait until /train/status says "resting" (every text used
--train-max-epochs times), then read utime+stime of the server from
/proc/PID/stat over S seconds (the issue's bound: below 1 s over 60 s).

Usage: scripts/bench_learning.py [--model DIR] [--rounds 2] [--seconds 20]
       scripts/bench_learning.py --idle-cpu 60 [--model DIR] [--idle-texts 3000]
Loopback only; every run is bounded in time.
"""
import argparse
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.environ.get("EMBEDD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def post(port, path, body, timeout=60):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def start(args, train, data_dir):
    cmd = [args.binary, "serve", "--port", "0", "--data", data_dir,
           "--train", "on" if train else "off", "--train-min-samples", "64"]
    cmd += shlex.split(args.extra)
    if args.model:
        cmd += ["--model", args.model]
    log = open(os.path.join(data_dir, "log"), "w+")
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
    for _ in range(300):
        log.seek(0)
        m = re.search(r"listening on http://[^:]+:(\d+)", log.read())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.1)
    proc.kill()
    sys.exit("server did not start")


def load(port, sentences, clients, think_ms, seconds):
    lat, done = [], [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def worker(seed):
        rng = random.Random(seed)
        while time.time() < stop:
            t0 = time.perf_counter()
            post(port, "/embed", {"inputs": rng.choice(sentences)})
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                done[0] += 1
            if think_ms > 0:
                time.sleep(rng.expovariate(1000.0 / think_ms))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return {"p50": lat[len(lat) // 2] * 1e3, "p99": lat[int(len(lat) * 0.99)] * 1e3,
            "rps": done[0] / (time.time() - t0), "n": len(lat)}


def status(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/train/status" % port) as r:
        return json.loads(r.read())


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(args, sentences):
    d = tempfile.mkdtemp(prefix="embedd-bench-idle-")
    proc, port = start(args, True, d)
    try:
        texts = sentences[:args.idle_texts]
        for i in range(0, len(texts), 500):
            post(port, "/train/samples", {"texts": texts[i:i + 500]})
        t0 = time.time()
        while True:
            st = status(port)
            if st.get("resting"):
                break
            if time.time() - t0 > args.idle_wait:
                sys.exit("not resting after %.0f s: %s" % (args.idle_wait, st))
            time.sleep(1)
        print("resting after %.0f s: %d steps, %d texts in the buffer" % (
            time.time() - t0, st["steps"], st["buffer"]["train"]), flush=True)
        time.sleep(2)   # a gate or save in flight settles
        c0 = cpu_seconds(proc.pid)
        time.sleep(args.idle_cpu)
        used = cpu_seconds(proc.pid) - c0
        st2 = status(port)
        print("idle CPU: %.2f s over %.0f s (target < 1 s over 60 s); steps %d -> %d" % (
            used, args.idle_cpu, st["steps"], st2["steps"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["rm", "-rf", d])
    return 0


def run(args, train, sentences):
    d = tempfile.mkdtemp(prefix="embedd-bench-learn-")
    proc, port = start(args, train, d)
    try:
        if train:
            for i in range(0, 4000, 500):
                post(port, "/train/samples", {"texts": sentences[i:i + 500]})
            time.sleep(2)   # training under way
        s0 = status(port)["steps"] if train else 0
        light = load(port, sentences, args.clients, args.think, args.seconds)
        s1 = status(port)["steps"] if train else 0
        sat = load(port, sentences, args.sat_clients, 0, args.seconds)
        st = None
        if train:
            st = status(port)
            st["light_steps"] = s1 - s0
            st["sat_steps"] = st["steps"] - s1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["rm", "-rf", d])
    return light, sat, st


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "embedd"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--think", type=float, default=50, help="mean think time, ms")
    ap.add_argument("--sat-clients", type=int, default=16)
    ap.add_argument("--extra", default="")
    ap.add_argument("--idle-cpu", type=float, default=0,
                    help="measure the resting server's CPU over this many seconds instead")
    ap.add_argument("--idle-texts", type=int, default=3000)
    ap.add_argument("--idle-wait", type=float, default=1800,
                    help="longest wait for the trainer to rest, s")
    args = ap.parse_args()
    sentences = []
    with open(os.path.join(DATA, "stsb", "sts-train.tsv"), encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 3:
                sentences += [p[1], p[2]]
    if args.idle_cpu > 0:
        return idle_cpu(args, sentences)
    best = {}
    for r in range(args.rounds):
        for train in (False, True):
            light, sat, status = run(args, train, sentences)
            mode = "on" if train else "off"
            extra = ""
            if status:
                extra = (" (training: %d steps under light load, %d under saturation, "
                         "%d published)" % (status["light_steps"], status["sat_steps"],
                                            status["published"]))
            print("round %d training %-3s: light p50 %.2f ms p99 %.2f ms (%.0f req/s); "
                  "saturated %.0f req/s%s" % (r + 1, mode, light["p50"], light["p99"],
                                              light["rps"], sat["rps"], extra), flush=True)
            b = best.setdefault(mode, {"p50": 1e9, "p99": 1e9, "rps": 0})
            b["p50"] = min(b["p50"], light["p50"])
            b["p99"] = min(b["p99"], light["p99"])
            b["rps"] = max(b["rps"], sat["rps"])
    off, on = best["off"], best["on"]
    print("best: p50 off %.2f ms, on %.2f ms (%.2fx, target <= 1.25x); p99 off %.2f, on %.2f; "
          "throughput off %.0f, on %.0f req/s (%.2fx, target >= 0.8x)" % (
              off["p50"], on["p50"], on["p50"] / off["p50"], off["p99"], on["p99"],
              off["rps"], on["rps"], on["rps"] / off["rps"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
