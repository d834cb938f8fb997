#!/usr/bin/python3
"""Crash test for the persistent item store of embedd (issue 4).

Each round starts `embedd serve --data DIR` (one DIR for all rounds, so the
state accumulates and recovery runs every time), verifies everything that was
acknowledged before the previous SIGKILL, lets several client threads ingest
at once (upserts of vector and text items, replacements, deletes, re-adds),
and kills the server with SIGKILL at a random moment. A final restart verifies
the last round.

The model is exact but fair: every id belongs to one client thread, which
sends its requests one after another and stops at the first request that does
not get an acknowledgement. So each id has one acknowledged state (absent,
deleted, or the last acknowledged version) plus at most one "maybe" state
from the single unacknowledged request. After the restart the item must be in
one of those states, and /items/count must equal the number of ids present.

With probability --tear, random bytes are appended to DATA/wal and, on
their own draw, to DATA/samples.log after a kill (an unacknowledged torn
write): recovery must cut them off and the server must start.

Usage: scripts/crash_test.py [--rounds 10] [--clients 6] [--seed 1]
`make check` runs a short round: --rounds 5 --clients 4 --max-delay 1.5 --tear 0.6
(about 10 s). Exits 1 on any failure. Standard library only.
"""
import argparse
import atexit
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "build", "embedd")
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-f16")
DIM = 32
HTTP_TIMEOUT = 10.0
READY_TIMEOUT = 30.0
ROUND_TIMEOUT = 20.0
VEC_TOL = 1e-6
ABSENT = None  # an id's state when it has no item (never added, or deleted)

_servers = []  # every Popen we started, killed at exit


def _kill_all():
    for p in _servers:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_kill_all)


class Server:
    def __init__(self, data_dir, log_path):
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None
        self.port = None
        self.stderr_lines = []
        self._reader = None
        self._ready = threading.Event()

    def start(self):
        args = [BIN, "serve", "--model", MODEL, "--port", "0", "--data", self.data_dir]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        _servers.append(self.proc)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._ready.wait(0.05):
                return True
            if self.proc.poll() is not None:
                self._reader.join(2)
                return False
        return False

    def _read_stderr(self):
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as log:
            log.write("---- start pid %d ----\n" % self.proc.pid)
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stderr_lines.append(line)
                log.write(line + "\n")
                log.flush()
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    self._ready.set()

    def sigkill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)
        if self._reader:
            self._reader.join(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._reader:
            self._reader.join(5)

    def recovery_lines(self):
        return [l for l in self.stderr_lines
                if not re.search(r"listening on|loading model|BLAS kernel| info request ", l)]


class Client:
    """One keep-alive connection; request() returns (status, parsed json or text)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except Exception:
            self.close()
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode("utf-8", "replace")

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


# ---------------------------------------------------------------- model state

class Model:
    """state[id] = the acknowledged state (ABSENT or an item dict);
    maybe[id] = list of states from unacknowledged requests of this round."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state = {}
        self.maybe = {}
        self.next_id = 1

    def new_id(self, rng):
        with self.lock:
            n = self.next_id
            self.next_id += 1
        if rng.random() < 0.1:
            return 2 ** 53 - n  # ids near the top of the allowed range
        return n


WORDS = ("cat dog kitten bird fish tree house river stone light dark quick "
         "brown fox jumps over lazy red green blue small large happy sad").split()
STRINGS = ["plain", "ünïcødé ✓", "quote \" and \\ backslash", "tab\tnew\nline",
           "", "日本語", "emoji 😀", "<tag>&amp;"]


def rand_payload(rng):
    p = {"n": rng.randrange(-10 ** 9, 10 ** 9), "s": rng.choice(STRINGS)}
    r = rng.random()
    if r < 0.3:
        p["list"] = [rng.randrange(100), rng.choice(STRINGS), None, True, False]
    elif r < 0.5:
        p["nested"] = {"a": {"b": [rng.randrange(10)]}, "k": rng.choice(WORDS)}
    elif r < 0.6:
        p = {}
    return p


def rand_item(rng):
    payload = rand_payload(rng)
    if rng.random() < 0.7:
        vec = [rng.gauss(0, 1) for _ in range(DIM)]
        return {"kind": "vector", "vector": vec, "payload": payload}
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    return {"kind": "text", "text": text, "payload": payload}


def to_wire(iid, item):
    d = {"id": iid, "payload": item["payload"]}
    if item["kind"] == "vector":
        d["vector"] = item["vector"]
    else:
        d["text"] = item["text"]
    return d


def client_thread(cid, port, model, rng, stop, stats, errors):
    cl = Client(port)
    own = []  # ids this client owns (from earlier rounds and this one)
    with model.lock:
        own = [i for i, owner in model.owner.items() if owner == cid]
    try:
        while not stop.is_set():
            r = rng.random()
            if r < 0.15 and own:
                # delete 1-4 own ids (some possibly already deleted)
                ids = rng.sample(own, min(len(own), rng.randint(1, 4)))
                with model.lock:
                    expect = sum(1 for i in ids if model.state.get(i) is not ABSENT)
                    for i in ids:
                        model.maybe.setdefault(i, []).append(ABSENT)
                try:
                    st, body = cl.request("POST", "/items/delete", {"ids": ids})
                except Exception:
                    return  # unacknowledged: stays "maybe"
                if st != 200:
                    if st not in (503,):
                        errors.append("client %d: delete %s -> %d %r" % (cid, ids, st, body))
                    return
                with model.lock:
                    for i in ids:
                        model.state[i] = ABSENT
                        model.maybe[i].pop()
                    stats["acked_deletes"] += len(ids)
                if not isinstance(body, dict) or body.get("deleted") != expect:
                    errors.append("client %d: delete %s answered %r, expected deleted=%d"
                                  % (cid, ids, body, expect))
                continue
            # upsert batch of 1-8 distinct ids: new ids, replacements, re-adds
            n = rng.randint(1, 8)
            ids = []
            for _ in range(n):
                if own and rng.random() < 0.3:
                    i = rng.choice(own)
                    if i in ids:
                        continue
                else:
                    i = model.new_id(rng)
                    with model.lock:
                        model.owner[i] = cid
                        model.state.setdefault(i, ABSENT)
                    own.append(i)
                ids.append(i)
            items = [rand_item(rng) for _ in ids]
            with model.lock:
                for i, it in zip(ids, items):
                    model.maybe.setdefault(i, []).append(it)
            try:
                st, body = cl.request("POST", "/items",
                                      {"items": [to_wire(i, it) for i, it in zip(ids, items)]})
            except Exception:
                return
            if st != 200:
                if st not in (503,):
                    errors.append("client %d: upsert -> %d %r" % (cid, st, body))
                return
            if not isinstance(body, dict) or body.get("status") != "ok" or body.get("upserted") != len(ids):
                errors.append("client %d: upsert of %d items answered %r" % (cid, len(ids), body))
            with model.lock:
                for i, it in zip(ids, items):
                    model.state[i] = it
                    model.maybe[i].pop()
                stats["acked_upserts"] += len(ids)
                stats["acked_batches"] += 1
    finally:
        cl.close()


# ---------------------------------------------------------------- verification

def normalise(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def matches(obs, want):
    """obs: ABSENT or the GET body; want: ABSENT or an item dict. Returns reason or None."""
    if want is ABSENT:
        return None if obs is ABSENT else "present, expected absent"
    if obs is ABSENT:
        return "absent"
    if obs.get("payload") != want["payload"]:
        return "payload %r != %r" % (obs.get("payload"), want["payload"])
    vec = obs.get("vector")
    if not isinstance(vec, list) or len(vec) != DIM:
        return "vector missing or wrong length"
    if want["kind"] == "vector":
        if obs.get("text") is not None:
            return "text %r for a vector item" % obs.get("text")
        exp = normalise(want["vector"])
        diff = max(abs(a - b) for a, b in zip(vec, exp))
        if diff > VEC_TOL:
            return "vector differs by %.3g" % diff
    else:
        if obs.get("text") != want["text"]:
            return "text %r != %r" % (obs.get("text"), want["text"])
        norm = math.sqrt(sum(x * x for x in vec))
        if abs(norm - 1) > 1e-4:
            return "text vector norm %g" % norm
    return None


def verify(port, model, label):
    """Check every tracked id; resolve the maybe states. Returns list of failures."""
    fails = []
    ids = sorted(model.state)
    results = {}
    chunks = [ids[k::4] for k in range(4)]

    def worker(chunk):
        cl = Client(port)
        try:
            for i in chunk:
                for attempt in range(3):
                    try:
                        st, body = cl.request("GET", "/items/%d?with_vector=true" % i)
                        break
                    except Exception as e:
                        if attempt == 2:
                            results[i] = ("error", str(e))
                            st = None
                if st is None:
                    continue
                if st == 404:
                    results[i] = ("ok", ABSENT)
                elif st == 200 and isinstance(body, dict) and body.get("id") == i:
                    results[i] = ("ok", body)
                else:
                    results[i] = ("error", "GET -> %d %r" % (st, body))
        finally:
            cl.close()

    ths = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in ths:
        t.start()
    for t in ths:
        t.join()

    present = 0
    used_maybe = 0
    lost_maybe = 0
    for i in ids:
        kind, obs = results.get(i, ("error", "no result"))
        if kind != "ok":
            fails.append("%s: id %d: %s" % (label, i, obs))
            continue
        acked = model.state[i]
        maybes = model.maybe.get(i, [])
        why = matches(obs, acked)
        if why is None:
            if maybes:
                lost_maybe += 1
        else:
            found, hit = False, None
            for m in maybes:
                if matches(obs, m) is None:
                    found, hit = True, m
                    break
            if not found and not maybes:
                fails.append("%s: id %d (acknowledged %s): %s"
                             % (label, i, describe(acked), why))
            elif not found:
                fails.append("%s: id %d (acknowledged %s, in flight %s): %s"
                             % (label, i, describe(acked),
                                ", ".join(describe(m) for m in maybes), why))
            else:
                used_maybe += 1
                model.state[i] = hit  # the unacknowledged write was applied
        if obs is not ABSENT:
            present += 1
    model.maybe = {}

    cl = Client(port)
    try:
        st, body = cl.request("GET", "/items/count")
        if st != 200 or not isinstance(body, dict) or body.get("count") != present:
            fails.append("%s: /items/count -> %d %r, expected %d (ids present)"
                         % (label, st, body, present))
    except Exception as e:
        fails.append("%s: /items/count: %s" % (label, e))
    finally:
        cl.close()
    return fails, present, used_maybe, lost_maybe


def describe(s):
    if s is ABSENT:
        return "absent"
    return "%s item" % s["kind"]


# ---------------------------------------------------------------- main

def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--binary", default=BIN,
                    help="the embedd to test (default build/embedd; a copy keeps a long run "
                         "safe from rebuilds)")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-delay", type=float, default=0.3)
    ap.add_argument("--max-delay", type=float, default=2.5)
    ap.add_argument("--tear", type=float, default=0.3,
                    help="probability of appending 1-64 random bytes to DATA/wal after a kill "
                         "(an unacknowledged torn write; recovery must cut it off); drawn "
                         "again for DATA/samples.log")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()
    BIN = os.path.abspath(args.binary)

    if not os.path.exists(BIN):
        subprocess.run(["make"], cwd=ROOT, check=True)
    rng = random.Random(args.seed)
    samples_rng = random.Random(args.seed + 7919)  # its own: rng's rounds stay as they were
    tmp = tempfile.mkdtemp(prefix="embedd-crash-")
    data_dir = os.path.join(tmp, "data")
    log_path = os.path.join(tmp, "server.log")
    print("crash test: seed %d, %d rounds, %d clients, data %s, log %s"
          % (args.seed, args.rounds, args.clients, data_dir, log_path))

    model = Model()
    model.owner = {}
    round_failed = {}
    all_fails = []
    server = None
    t_start = time.monotonic()
    try:
        for rnd in range(args.rounds + 1):
            server = Server(data_dir, log_path)
            if not server.start():
                msg = "round %d: server did not become ready; stderr:\n  %s" % (
                    rnd, "\n  ".join(server.stderr_lines[-20:]))
                print(msg)
                all_fails.append(msg)
                round_failed[max(rnd, 1)] = True
                break
            rec = server.recovery_lines()
            if rnd > 0:
                t0 = time.monotonic()
                fails, present, used_maybe, lost_maybe = verify(server.port, model, "round %d" % rnd)
                status = "PASS" if not fails else "FAIL"
                print("round %d %s: %d ids tracked, %d present; in-flight writes applied %d, not applied %d; "
                      "verify %.2fs; recovery: %s"
                      % (rnd, status, len(model.state), present, used_maybe, lost_maybe,
                         time.monotonic() - t0, "; ".join(rec) if rec else "(no messages)"))
                for f in fails[:20]:
                    print("  " + f)
                if len(fails) > 20:
                    print("  ... %d more" % (len(fails) - 20))
                all_fails.extend(fails)
                round_failed.setdefault(rnd, bool(fails))
                if fails:
                    round_failed[rnd] = True
            if rnd == args.rounds:
                server.stop()
                break
            # ingest from several clients, kill -9 at a random moment
            stop = threading.Event()
            stats = {"acked_upserts": 0, "acked_deletes": 0, "acked_batches": 0}
            errors = []
            ths = []
            for c in range(args.clients):
                crng = random.Random(rng.random())
                t = threading.Thread(target=client_thread,
                                     args=(c, server.port, model, crng, stop, stats, errors),
                                     daemon=True)
                ths.append(t)
            for t in ths:
                t.start()
            delay = rng.uniform(args.min_delay, args.max_delay)
            time.sleep(delay)
            server.sigkill()
            stop.set()
            torn = 0
            wal_path = os.path.join(data_dir, "wal")
            if rng.random() < args.tear and os.path.exists(wal_path):
                torn = rng.randint(1, 64)
                with open(wal_path, "ab") as f:
                    f.write(bytes(rng.randrange(256) for _ in range(torn)))
            # The sample log is the same kind of record log (model/base/reclog.h):
            # its torn tail must be cut off too, and the server must start.
            samples_path = os.path.join(data_dir, "samples.log")
            torn_samples = 0
            if samples_rng.random() < args.tear and os.path.exists(samples_path):
                torn_samples = samples_rng.randint(1, 64)
                with open(samples_path, "ab") as f:
                    f.write(bytes(samples_rng.randrange(256) for _ in range(torn_samples)))
            deadline = time.monotonic() + ROUND_TIMEOUT
            for t in ths:
                t.join(max(0.1, deadline - time.monotonic()))
            if any(t.is_alive() for t in ths):
                errors.append("round %d: client threads did not finish" % (rnd + 1))
            inflight = sum(1 for v in model.maybe.values() if v)
            tears = ""
            if torn:
                tears += ", appended %d torn bytes to wal" % torn
            if torn_samples:
                tears += ", appended %d torn bytes to samples.log" % torn_samples
            print("round %d: killed after %.2fs%s: acked %d upserts in %d batches, %d deletes; %d ids in flight"
                  % (rnd + 1, delay, tears, stats["acked_upserts"], stats["acked_batches"],
                     stats["acked_deletes"], inflight))
            for e in errors[:10]:
                print("  client error: " + e)
            if errors:
                all_fails.extend(errors)
                round_failed[rnd + 1] = True  # the round that verifies this ingestion
            if any(t.is_alive() for t in ths):
                break
        failed = sum(1 for v in round_failed.values() if v)
        passed = sum(1 for v in round_failed.values() if not v)
        not_run = args.rounds - len(round_failed)
        if not_run > 0:
            failed += not_run
        print("%d passed, %d failed (%.1fs)" % (passed, failed, time.monotonic() - t_start))
    finally:
        if server is not None:
            server.sigkill()
        _kill_all()
        if not args.keep and not all_fails:
            shutil.rmtree(tmp, ignore_errors=True)
        elif all_fails:
            print("data and server log kept in %s" % tmp)
    return 1 if (failed or all_fails) else 0


if __name__ == "__main__":
    sys.exit(main())
