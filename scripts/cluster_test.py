#!/usr/bin/env python3
"""cluster_test.py: issue 18's process-level cluster test, without Docker.

Starts a throwaway PostgreSQL cluster, three `embedd serve --store
postgres://...` replicas (r1, r2, r3, --threads 1 each: the machine has two
cores) and haproxy in front of them (scripts/cluster_lib.py), then runs:

  a) propagation: N items written through r1 (POST /items straight to its
     port) are readable on r1 at once (read-your-writes) and found by
     /similar (by their exact text) on r2 and r3; reports p50/p99/max of
     the delay from r1's acknowledgement to each find; p99 must be < 5 s.
     Then every replica's /metrics has the replication gauges, at lag 0.
  b) kill -9 of a non-training replica while writer and reader threads run
     through haproxy: haproxy takes it out of the rotation, at most 2% of
     the requests fail (those in flight on the killed replica), every write
     that got a 2xx is on every replica afterwards, and the killed replica,
     started again on its port, catches up (lag 0, the same ids present as
     on the others, the same count).
  c) kill -9 of the training replica (/info replication.trainer) while
     texts feed the learner and queries run: another replica takes the
     advisory lock within 30 s and its training steps advance (within 60 s:
     it may be re-embedding first); every /similar answer's model_version
     equals its X-Embedd-Model-Version header; a query with an item's
     exact text finds that item first with score ~1 (a query compared with
     vectors of another version would not); after the killed one restarts,
     all replicas serve the same version and exactly one reports
     embedd_trainer_leader 1. Whether the new trainer published a version
     within 30 s is reported, not required (its gate decides).
  d) PostgreSQL restart (pg_ctl stop -m fast, 5 s down, start): meanwhile
     writes on every replica get 503 with a JSON error, reads (/similar,
     GET /items/{id}) answer 200 from the caches, directly and through
     haproxy, and /info says connected: false and /metrics
     embedd_postgres_up 0; afterwards writes succeed again on every replica
     without restarting any, all replicas converge (same change, same
     serving version), and no write answered 503 shows up.

Reads through the balancer pick items acknowledged at least 1 s before; one
that a replica has not applied yet is a "stale read" (reported with the
replica and the time; an error only when the item is over 5 s old).

Prints one line per scenario with its numbers, then PASS or FAIL; exits 0
only when every scenario passed. The whole run is bounded (--timeout,
default 360 s): past it, everything started is killed and the test fails.

Usage: scripts/cluster_test.py [--binary build/embedd] [--only abcd]
                               [--writes 120] [--timeout 360] [--keep] [-v]
Python 3 standard library only; run from anywhere.
"""

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib  # noqa: E402
from cluster_lib import Client, Cluster, ClusterError, wait_until  # noqa: E402

# Settings that make the learner publish versions within seconds (as
# tests/test_server.c's learn_flags): a gate every 6 steps, candidates that move.
REPLICA_ARGS = ["--threads", "1", "--http-threads", "2",
                "--publish", "auto", "--publish-every", "6", "--train-min-samples", "16",
                "--train-batch-size", "8", "--train-max-seq-len", "16", "--train-lr", "2e-4",
                "--train-ema", "0.5", "--train-max-cpu", "60"]

PROPAGATION_P99_BOUND = 5.0   # seconds
PROPAGATION_ITEM_BOUND = 15.0  # one item not found past this: fail at once
ERROR_SHARE_BOUND = 0.02      # failed requests through haproxy during a kill
TAKEOVER_BOUND = 30.0         # seconds for another replica to take the trainer lock
CONVERGE_BOUND = 45.0
RECOVER_BOUND = 30.0          # writes succeed again after PostgreSQL is back
SELF_SCORE_MIN = 0.999        # an item's exact text finds it with this score
STALE_BOUND = PROPAGATION_P99_BOUND  # an acked item still absent after this is an error
PUBLISH_WAIT = 30.0
STEPS_WAIT = 60.0             # for the new trainer's first step (it may be re-embedding first)           # seconds scenario c waits for the new trainer to publish


class Fail(Exception):
    pass


class Timeout(BaseException):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def log(msg):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def pct(values, p):
    """The p-th percentile (nearest rank) of values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def ms(x):
    return "%.0f ms" % (x * 1000) if x < 10 else "%.1f s" % x


def load_texts(n):
    """n distinct texts from the shared corpus (or made up when it is absent)."""
    base = os.environ.get("EMBEDD_SHARED_DATA") or os.path.join(cluster_lib.ROOT, "..", "shared", "data")
    path = os.path.join(base, "corpus", "sample-mixed-2k.txt")
    lines = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = [l.strip() for l in f if 20 <= len(l.strip()) <= 300]
    except OSError:
        pass
    if not lines:
        words = "cat dog river stone music light garden train winter paper city song ocean field".split()
        rnd = random.Random(7)
        lines = [" ".join(rnd.choice(words) for _ in range(8)) for _ in range(2000)]
    return [lines[i % len(lines)] for i in range(n)]


# ---- small helpers over the HTTP API ------------------------------------

def get(r, path, timeout=5, kind=dict):
    """r's answer to GET path when it is 200 with a body of type kind, else None."""
    c = Client(r.port, timeout)
    try:
        st, _, body = c.request("GET", path)
    finally:
        c.close()
    return body if st == 200 and isinstance(body, kind) else None


def info(r, timeout=5):
    return get(r, "/info", timeout)


def replication(r):
    i = info(r)
    return i.get("replication") if i else None


def put_item(client, item_id, text, payload=None):
    item = {"id": item_id, "text": text}
    if payload is not None:
        item["payload"] = payload
    return client.request("POST", "/items", {"items": [item]})


def get_item(client, item_id):
    return client.request("GET", "/items/" + urllib.parse.quote(str(item_id), safe=""))


def similar(client, text, limit=5):
    return client.request("POST", "/similar", {"text": text, "limit": limit})


def result_ids(body):
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        return []
    return [h.get("id") for h in body["result"] if isinstance(h, dict)]


def version_mismatch(headers, body):
    """None when the /similar answer's model_version equals its header, else why not."""
    h = headers.get("x-embedd-model-version")
    v = body.get("model_version") if isinstance(body, dict) else None
    if h is None or v is None:
        return "model_version %r, header %r" % (v, h)
    try:
        if int(h) != int(v):
            return "model_version %r, header %r" % (v, h)
    except ValueError:
        return "model_version %r, header %r" % (v, h)
    return None


def metrics(r):
    """{name: value} of r's /metrics samples without labels, or None."""
    body = get(r, "/metrics", kind=str)
    if body is None:
        return None
    out = {}
    for line in body.splitlines():
        f = line.split()
        if len(f) == 2 and not line.startswith("#") and "{" not in f[0]:
            try:
                out[f[0]] = float(f[1])
            except ValueError:
                pass
    return out


def wait_metric(r, name, want, timeout=5.0):
    """Polls r's /metrics until name == want (the gauges are refreshed once a
    second); returns the last value seen."""
    last = [None]

    def ok():
        last[0] = (metrics(r) or {}).get(name)
        return last[0] == want
    try:
        wait_until("%s %s" % (r.name, name), ok, timeout, 0.2)
    except ClusterError:
        pass
    return last[0]


REPLICATION_METRICS = ("embedd_replication_applied_seq", "embedd_replication_head_seq",
                       "embedd_replication_lag_changes", "embedd_replication_lag_seconds",
                       "embedd_postgres_up", "embedd_trainer_leader")


def alive_replicas(c):
    return [r for r in c.replicas if r.alive()]


def wait_converged(c, timeout=CONVERGE_BOUND, replicas=None):
    """Waits until every replica (alive ones, or those given) is connected,
    has applied everything (lag 0, applied_seq == head_seq) and all have the
    same applied_seq. Returns {name: replication}."""
    rs = replicas or alive_replicas(c)
    last = {}

    def done():
        last.clear()
        for r in rs:
            rep = replication(r)
            last[r.name] = rep
            if not rep or not rep.get("connected") or rep.get("lag_changes") != 0 \
                    or rep.get("applied_seq") != rep.get("head_seq"):
                return False
        return len({last[r.name].get("applied_seq") for r in rs}) == 1
    try:
        wait_until("replicas converged", done, timeout, 0.1)
    except ClusterError:
        raise Fail("replicas did not converge within %.0f s: %s" % (timeout, short_repl(last)))
    return dict(last)


def short_repl(reps):
    out = []
    for name, rep in sorted(reps.items()):
        if not rep:
            out.append("%s: no /info" % name)
            continue
        out.append("%s: connected=%s applied=%s head=%s lag=%s trainer=%s version=%s" % (
            name, rep.get("connected"), rep.get("applied_seq"), rep.get("head_seq"),
            rep.get("lag_changes"), rep.get("trainer"), rep.get("serving_version")))
    return "; ".join(out)


def ensure_all_running(c):
    """Before a scenario: PostgreSQL up, every replica running, haproxy routing to all."""
    if not c.pg_running():
        c.pg_start_again()
    for r in c.replicas:
        if not r.alive():
            r.start()
    c.wait_haproxy_up(len(c.replicas))


def trainers(c):
    out = []
    for r in alive_replicas(c):
        rep = replication(r)
        if rep and rep.get("trainer"):
            out.append(r)
    return out


# ---- load threads --------------------------------------------------------

class Load:
    """Writer and reader threads through one port (haproxy's) until stop()."""

    def __init__(self, port, texts, prefix, writers=4, readers=2, write_gap=0.01, feed=False):
        self.port = port
        self.texts = texts
        self.prefix = prefix
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}          # id -> (text, time acked)
        self.attempted = []
        self.write_fail = []     # (status, body)
        self.read_fail = []
        self.counts = {"writes": 0, "reads": 0, "feeds": 0}
        self.version_bad = []
        self.self_scores = []
        self.answered_by = {}    # X-Embedd-Replica -> answers
        self.stale = []          # (replica, age, when): an item acked >= 1 s before, not there yet
        self.t0 = time.monotonic()
        # distinct texts per load: a near-twin from another scenario would
        # blur "its own text finds it first"
        self.offset = sum(map(ord, prefix)) * 131
        self.threads = []
        for k in range(writers):
            self.threads.append(threading.Thread(target=self._writer, args=(k, write_gap), daemon=True))
        for k in range(readers):
            self.threads.append(threading.Thread(target=self._reader, args=(k,), daemon=True))
        if feed:
            self.threads.append(threading.Thread(target=self._feeder, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(40)
        check(not any(t.is_alive() for t in self.threads), "a load thread did not stop within 40 s")

    def _writer(self, k, gap):
        c = Client(self.port, 20)
        i = 0
        while not self.stop_ev.is_set():
            item_id = "%s-w%d-%d" % (self.prefix, k, i)
            text = "%s (%s)" % (self.texts[(self.offset + k * 7919 + i) % len(self.texts)], item_id)
            with self.lock:
                self.attempted.append(item_id)
            st, h, body = put_item(c, item_id, text)
            with self.lock:
                self.counts["writes"] += 1
                by = h.get("x-embedd-replica", "(none)")
                self.answered_by[by] = self.answered_by.get(by, 0) + 1
                if 200 <= st < 300:
                    self.acked[item_id] = (text, time.monotonic())
                else:
                    self.write_fail.append((st, self._where(h, body)))
            i += 1
            time.sleep(gap)
        c.close()

    def _pick_old(self, rnd, age=1.0):
        """An acknowledged item at least `age` s old (so every replica
        normally has it): (id, text, seconds since its ack)."""
        now = time.monotonic()
        with self.lock:
            old = [i for i, (_, t) in self.acked.items() if now - t >= age]
            if not old:
                return None, None, None
            i = rnd.choice(old)
            return i, self.acked[i][0], now - self.acked[i][1]

    def _reader(self, k):
        c = Client(self.port, 20)
        rnd = random.Random(k)
        n = 0
        while not self.stop_ev.is_set():
            item_id, text, age = self._pick_old(rnd)
            if item_id is None:
                time.sleep(0.05)
                continue
            if n % 2 == 0:
                st, h, body = similar(c, text, 3)
                h = h or {}
                ok = st == 200
                if ok:
                    bad = version_mismatch(h, body)
                    if bad:
                        self.version_bad.append(bad)
                    hits = body.get("result") or []
                    top = hits[0] if hits else {}
                    if top.get("id") == item_id:
                        self.self_scores.append(top.get("score", 0))
                    else:
                        ok = False
                        body = "its exact text does not find %s first: %s" % (item_id, str(body)[:200])
            else:
                st, h, body = get_item(c, item_id)
                ok = st == 200
            with self.lock:
                self.counts["reads"] += 1
                if not ok and st in (200, 404) and age < STALE_BOUND:
                    # not an error of the balancer: that replica has not
                    # applied the item yet (bounded like propagation)
                    self.stale.append((h.get("x-embedd-replica", "?"), age,
                                       time.strftime("%H:%M:%S", time.gmtime())))
                elif not ok:
                    self.read_fail.append((st, self._where(h, body)))
            n += 1
        c.close()

    def _where(self, headers, body):
        """A failure's body, with the replica that answered and when."""
        return "%s at +%.1f s (%s): %s" % (headers.get("x-embedd-replica", "?"), time.monotonic() - self.t0,
                                           time.strftime("%H:%M:%S", time.gmtime()), str(body)[:160])

    def _feeder(self):
        """Texts to /embed, for the learner's sample buffer."""
        c = Client(self.port, 20)
        i = 0
        while not self.stop_ev.is_set():
            batch = [self.texts[(i + j) % len(self.texts)] for j in range(8)]
            st, _, _ = c.request("POST", "/embed", {"inputs": batch})
            with self.lock:
                self.counts["feeds"] += 1
                if st != 200:
                    self.read_fail.append((st, "/embed"))
            i += 8
            time.sleep(0.02)
        c.close()

    def errors(self):
        return len(self.write_fail) + len(self.read_fail)

    def total(self):
        return self.counts["writes"] + self.counts["reads"] + self.counts["feeds"]


def presence(c, ids, replicas):
    """{replica name: set of the ids it has}, with GET /items/{id}, one thread per replica."""
    out = {}
    errs = []

    def scan(r):
        cl = r.client(10)
        have = set()
        for i in ids:
            st, _, body = get_item(cl, i)
            if st == 200:
                have.add(i)
            elif st != 404:
                errs.append("%s GET %s: %s %s" % (r.name, i, st, str(body)[:100]))
        cl.close()
        out[r.name] = have
    ts = [threading.Thread(target=scan, args=(r,), daemon=True) for r in replicas]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    check(not any(t.is_alive() for t in ts), "reading back the ids took over 60 s")
    check(not errs, "reading back the ids: %s" % "; ".join(errs[:5]))
    return out


def count(r):
    body = get(r, "/items/count", 10)
    return body.get("count") if body else None


# ---- the scenarios -------------------------------------------------------

def scenario_a(c, texts, n_writes):
    """Propagation: written through r1, found on r2 and r3."""
    ensure_all_running(c)
    a, b, cc = c.replicas[0], c.replicas[1], c.replicas[2]
    ca = a.client(10)
    readers = {r.name: r.client(10) for r in (b, cc)}
    delays = []
    get_checked = 0
    for i in range(n_writes):
        item_id = "prop-%d" % i
        text = "%s (probe %d)" % (texts[i], i)
        st, h, body = put_item(ca, item_id, text, {"n": i})
        check(200 <= st < 300, "write %s through %s: %s %s" % (item_id, a.name, st, body))
        t0 = time.monotonic()
        check(h.get("x-embedd-replica") == a.name,
              "write through %s answered with X-Embedd-Replica %r" % (a.name, h.get("x-embedd-replica")))
        st, _, body = get_item(ca, item_id)
        check(st == 200, "read-your-writes: %s GET /items/%s right after its ack: %s %s"
              % (a.name, item_id, st, body))
        pending = dict(readers)
        while pending:
            for name, cl in list(pending.items()):
                st, _, body = similar(cl, text, 5)
                if st == 200 and item_id in result_ids(body):
                    delays.append(time.monotonic() - t0)
                    del pending[name]
                    # the item itself, with its text, on that replica
                    st2, _, item = get_item(cl, item_id)
                    check(st2 == 200 and isinstance(item, dict) and item.get("text") == text,
                          "%s: /similar finds %s but GET /items gives %s %s" % (name, item_id, st2, item))
                    get_checked += 1
                elif st not in (200,):
                    raise Fail("%s /similar: %s %s" % (name, st, body))
            if pending:
                if time.monotonic() - t0 > PROPAGATION_ITEM_BOUND:
                    raise Fail("%s written through %s not found by /similar on %s within %.0f s: %s"
                               % (item_id, a.name, ",".join(pending), PROPAGATION_ITEM_BOUND,
                                  short_repl({r.name: replication(r) for r in c.replicas})))
                time.sleep(0.002)
    for cl in list(readers.values()) + [ca]:
        cl.close()
    wait_converged(c)
    for r in c.replicas:
        m = metrics(r) or {}
        absent = [k for k in REPLICATION_METRICS if k not in m]
        check(not absent, "%s /metrics lacks %s" % (r.name, absent))
        check(m["embedd_replication_applied_seq"] == m["embedd_replication_head_seq"]
              and m["embedd_replication_lag_changes"] == 0 and m["embedd_postgres_up"] == 1,
              "%s /metrics after convergence: %s" % (r.name, {k: m[k] for k in REPLICATION_METRICS}))
    p50, p99 = pct(delays, 50), pct(delays, 99)
    line = ("%d writes through %s, found by /similar on %s,%s: propagation p50 %s p99 %s max %s "
            "(bound p99 < %.0f s); %d GET /items checks"
            % (n_writes, a.name, b.name, cc.name, ms(p50), ms(p99), ms(max(delays)),
               PROPAGATION_P99_BOUND, get_checked))
    check(p99 < PROPAGATION_P99_BOUND, "p99 propagation %s over the bound: %s" % (ms(p99), line))
    return line


def scenario_b(c, texts):
    """kill -9 of a replica under load through haproxy."""
    ensure_all_running(c)
    wait_converged(c)
    names = {r.name for r in trainers(c)}
    victim = next((r for r in c.replicas[1:] if r.name not in names), c.replicas[1])
    load = Load(c.haproxy_port, texts, "kill", writers=4, readers=2).start()
    time.sleep(2.5)
    t_kill = time.monotonic()
    victim.kill9()
    log("b: killed %s (pid %d)" % (victim.name, victim.proc.pid))
    out_after = None
    while time.monotonic() - t_kill < 4.0:
        if out_after is None and c.haproxy_up().get(victim.name) is False:
            out_after = time.monotonic() - t_kill
        time.sleep(0.05)
    load.stop()
    total, errs = load.total(), load.errors()
    check(load.counts["writes"] >= 20 and load.counts["reads"] >= 20,
          "too little load to judge: %s" % load.counts)
    # back on its port: it must catch up by itself
    t_start = time.monotonic()
    victim.start()
    wait_converged(c)
    catch_up = time.monotonic() - t_start
    c.wait_haproxy_up(len(c.replicas))
    ids = list(load.attempted)
    have = presence(c, ids, c.replicas)
    acked = set(load.acked)
    lost = {n: sorted(acked - s)[:5] for n, s in have.items() if acked - s}
    counts = {r.name: count(r) for r in c.replicas}
    line = ("killed %s under load (%d writes, %d reads through haproxy): %d failed (%.2f%%, bound %.0f%%), "
            "out of rotation after %s; restarted, caught up in %s; %d acked writes, %d unacked present; "
            "present on %s: %s; counts %s; writes answered by %s"
            % (victim.name, load.counts["writes"], load.counts["reads"], errs, 100.0 * errs / max(total, 1),
               100 * ERROR_SHARE_BOUND, ms(out_after) if out_after is not None else "never (in 4 s)",
               ms(catch_up), len(acked), len(have[victim.name] - acked),
               ",".join(sorted(have)), ",".join(str(len(s)) for _, s in sorted(have.items())),
               counts, dict(sorted(load.answered_by.items()))))
    fails = load.write_fail + load.read_fail
    check(not lost, "acknowledged writes missing: %s; %s" % (lost, line))
    check(len({frozenset(s) for s in have.values()}) == 1,
          "replicas hold different ids: %s; %s" % (
              {n: len(s ^ have[victim.name]) for n, s in have.items()}, line))
    check(len(set(counts.values())) == 1, "item counts differ: %s" % line)
    check(errs <= ERROR_SHARE_BOUND * total,
          "too many failed requests: %s; first: %s" % (line, fails[:5]))
    check(out_after is not None, "haproxy did not take %s out within 4 s: %s" % (victim.name, line))
    check(not load.version_bad, "answers with mismatched versions: %s" % load.version_bad[:3])
    check(all(load.answered_by.get(r.name, 0) > 0 for r in c.replicas),
          "haproxy did not spread the writes over every replica: %s" % line)
    line += stale_summary(load.stale)
    if fails:
        line += "; failures: %s" % failure_kinds(fails)
    return line


def stale_summary(stale):
    """'N stale reads (on r3 at 18:15:37..18:15:39, items up to 2.6 s old)' or ''."""
    if not stale:
        return ""
    by = {}
    for name, age, when in stale:
        n, a, first, last = by.get(name, (0, 0.0, when, when))
        by[name] = (n + 1, max(a, age), min(first, when), max(last, when))
    return "; %d stale reads of items acked %.0f-%.0f s before (%s)" % (
        len(stale), 1, STALE_BOUND, ", ".join("%d on %s at %s..%s, oldest %.1f s" % (n, name, f, l, a)
                                              for name, (n, a, f, l) in sorted(by.items())))


def failure_kinds(fails):
    """{status: count} of failed requests, with one example body each."""
    kinds = {}
    for st, body in fails:
        n, ex = kinds.get(st, (0, body))
        kinds[st] = (n + 1, ex)
    return ", ".join("%d x %s (first: %s)" % (n, st, ex[:200]) for st, (n, ex) in sorted(kinds.items()))


def train_steps(r):
    body = get(r, "/train/status")
    return body.get("steps") if body else None


def serving_versions(c, replicas=None):
    out = {}
    for r in replicas or alive_replicas(c):
        rep = replication(r)
        out[r.name] = rep.get("serving_version") if rep else None
    return out


def scenario_c(c, texts):
    """kill -9 of the trainer: another takes over; versions stay consistent."""
    ensure_all_running(c)
    wait_converged(c)
    ts = wait_until("one trainer", lambda: trainers(c) or None, TAKEOVER_BOUND, 0.2)
    check(len(ts) == 1, "%d replicas say they train: %s" % (len(ts), [r.name for r in ts]))
    old = ts[0]
    v_start = serving_versions(c)
    load = Load(c.haproxy_port, texts, "train", writers=1, readers=2, write_gap=0.05, feed=True).start()
    direct = [Load(r.port, texts, "train-" + r.name, writers=0, readers=1) for r in c.replicas if r is not old]
    # direct readers share the haproxy load's acknowledged items
    for d in direct:
        d.acked = load.acked
        d.lock = load.lock
        d.start()
    # let it train (and publish, with these settings) before the kill
    steps0 = train_steps(old) or 0
    try:
        wait_until("training steps on %s" % old.name, lambda: (train_steps(old) or 0) > steps0 + 6, 30, 0.5)
    except ClusterError:
        pass  # judged below: the takeover is the point, the steps are reported
    steps_before = train_steps(old)
    v_before = serving_versions(c)
    t_kill = time.monotonic()
    old.kill9()
    log("c: killed trainer %s at +%.1f s of the load" % (old.name, t_kill - load.t0))
    survivors = [r for r in c.replicas if r is not old]

    def new_trainer():
        ns = [r for r in survivors if (replication(r) or {}).get("trainer")]
        return ns or None
    try:
        ns = wait_until("a new trainer", new_trainer, TAKEOVER_BOUND, 0.1)
    except ClusterError:
        load.stop()
        for d in direct:
            d.stop()
        raise Fail("no replica took the trainer lock within %.0f s after %s was killed: %s"
                   % (TAKEOVER_BOUND, old.name,
                      short_repl({r.name: replication(r) for r in survivors})))
    takeover = time.monotonic() - t_kill
    v_takeover = serving_versions(c, survivors)
    check(len(ns) == 1, "%d replicas train after the takeover: %s" % (len(ns), [r.name for r in ns]))
    new = ns[0]
    s0 = train_steps(new) or 0
    try:
        wait_until("steps on the new trainer", lambda: (train_steps(new) or 0) > s0, STEPS_WAIT, 0.5)
        continued = True
    except ClusterError:
        continued = False
    # queries keep running while the new trainer may publish (its gate
    # decides): a switch under load is what the version checks are for
    # (the old trainer's last version may still be switching in: count from the newest seen)
    seen = [v for v in list(v_before.values()) + list(v_takeover.values()) + [
        (replication(new) or {}).get("serving_version")] if v is not None]
    top = max(seen) if seen else 0
    t_pub = time.monotonic()
    try:
        wait_until("a version from the new trainer",
                   lambda: (lambda v: v is not None and v > top)((replication(new) or {}).get("serving_version")),
                   PUBLISH_WAIT, 0.5)
        published = "the new trainer's version served after %s" % ms(time.monotonic() - t_pub)
    except ClusterError:
        published = "no new version within %.0f s (its gate decides)" % PUBLISH_WAIT
    time.sleep(1.0)
    load.stop()
    for d in direct:
        d.stop()
    old.start()
    wait_converged(c)

    def same_version():
        v = serving_versions(c)
        return v if len(set(v.values())) == 1 and None not in v.values() else None
    try:
        v_end = wait_until("one serving_version", same_version, CONVERGE_BOUND, 0.2)
    except ClusterError:
        raise Fail("replicas serve different versions %.0f s after the restart: %s"
                   % (CONVERGE_BOUND, serving_versions(c)))
    leaders = {r.name: (metrics(r) or {}).get("embedd_trainer_leader") for r in c.replicas}
    scores = load.self_scores + [s for d in direct for s in d.self_scores]
    bad = load.version_bad + [b for d in direct for b in d.version_bad]
    reads = load.counts["reads"] + sum(d.counts["reads"] for d in direct)
    read_fail = load.read_fail + [f for d in direct for f in d.read_fail]
    seen_versions = set(v_start.values()) | set(v_before.values()) | set(v_end.values())
    total = load.total() + sum(d.total() for d in direct)
    errs = load.errors() + sum(d.errors() for d in direct)
    line = ("trainer %s (steps %s) killed at +%.1f s; %s took the lock after %s (bound %.0f s), its steps %s; "
            "serving versions start %s, before kill %s, end %s; %d /similar and GET reads "
            "(haproxy and direct), %d version mismatches, min self-score %s; %d of %d requests failed; "
            "embedd_trainer_leader %s; %s"
            % (old.name, steps_before, t_kill - load.t0, new.name, ms(takeover), TAKEOVER_BOUND,
               "advance" if continued else "DID NOT advance in %.0f s" % STEPS_WAIT,
               sorted(set(v_start.values())), sorted(set(v_before.values())), v_end, reads, len(bad),
               "%.5f" % min(scores) if scores else "n/a", errs, total, leaders, published))
    check(not bad, "version header and body differ: %s; %s" % (bad[:3], line))
    check(continued, "the new trainer does not train: %s" % line)
    check(not scores or min(scores) >= SELF_SCORE_MIN,
          "an item's own text scored %.5f against it (versions mixed?): %s" % (min(scores), line))
    check(errs <= ERROR_SHARE_BOUND * max(total, 1),
          "too many failed requests: %s; first: %s" % (line, (load.write_fail + read_fail)[:5]))
    check(sum(v or 0 for v in leaders.values()) == 1, "not one embedd_trainer_leader: %s" % line)
    line += stale_summary(load.stale + [x for d in direct for x in d.stale])
    if errs:
        line += "; failures: %s" % failure_kinds(load.write_fail + read_fail)
    if len(seen_versions) < 2:
        line += " (no version was published during the scenario: the consistency check saw one version)"
    return line


def scenario_d(c, texts):
    """PostgreSQL restart: 503 on writes, reads from the caches, recovery without restarts."""
    ensure_all_running(c)
    wait_converged(c)
    pids = {r.name: r.proc.pid for r in c.replicas}
    v_before = serving_versions(c)
    # items every replica has, to read during the outage
    cl = c.replicas[0].client(10)
    known = []
    for i in range(5):
        item_id = "pg-known-%d" % i
        text = "%s (known %d)" % (texts[500 + i], i)
        st, _, body = put_item(cl, item_id, text)
        check(200 <= st < 300, "write before the outage: %s %s" % (st, body))
        known.append((item_id, text))
    cl.close()
    wait_converged(c)
    t_stop = time.monotonic()
    out = c.pg_ctl_stop("fast")
    stop_took = time.monotonic() - t_stop
    log("d: postgres stopped (%s)" % out.strip().replace("\n", " "))
    writes = {"503": 0, "other": []}
    reads = {"ok": 0, "bad": []}
    lb_reads = {"ok": 0, "bad": []}
    disconnected = set()
    pg_down_metric = set()
    refused_ids = []
    clients = {r.name: r.client(15) for r in c.replicas}
    lb = c.haproxy_client(15)
    down_until = time.monotonic() + 5.0
    k = 0
    while time.monotonic() < down_until:
        for r in c.replicas:
            cl = clients[r.name]
            refused_ids.append("pg-down-%s-%d" % (r.name, k))
            st, _, body = put_item(cl, refused_ids[-1], "written while postgres is down %d" % k)
            if st == 503 and isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
                writes["503"] += 1
            else:
                writes["other"].append("%s: %s %s" % (r.name, st, str(body)[:150]))
            item_id, text = known[k % len(known)]
            for where, cli, acc in ((r.name, cl, reads), ("haproxy", lb, lb_reads)):
                st, _, body = similar(cli, text, 3)
                ok = st == 200 and item_id in result_ids(body)
                st2, _, body2 = get_item(cli, item_id)
                ok2 = st2 == 200
                if ok and ok2:
                    acc["ok"] += 1
                else:
                    acc["bad"].append("%s: /similar %s %s, GET %s %s" % (where, st, str(body)[:100],
                                                                          st2, str(body2)[:100]))
            rep = replication(r)
            if rep is not None and rep.get("connected") is False:
                disconnected.add(r.name)
            if (metrics(r) or {}).get("embedd_postgres_up") == 0:
                pg_down_metric.add(r.name)
        k += 1
        time.sleep(0.2)
    t_start = time.monotonic()
    c.pg_start_again()
    log("d: postgres started again")
    recovered = {}
    n = 0
    while len(recovered) < len(c.replicas) and time.monotonic() - t_start < RECOVER_BOUND:
        for r in c.replicas:
            if r.name in recovered:
                continue
            st, _, _ = put_item(clients[r.name], "pg-back-%s-%d" % (r.name, n), "written after the restart %d" % n)
            if 200 <= st < 300:
                recovered[r.name] = (time.monotonic() - t_start, "pg-back-%s-%d" % (r.name, n))
        n += 1
        time.sleep(0.1)
    for x in list(clients.values()) + [lb]:
        x.close()
    check(len(recovered) == len(c.replicas),
          "writes still fail %.0f s after PostgreSQL is back on %s"
          % (RECOVER_BOUND, [r.name for r in c.replicas if r.name not in recovered]))
    check({r.name: r.proc.pid for r in c.replicas} == pids and all(r.alive() for r in c.replicas),
          "a replica restarted or died during the PostgreSQL restart")
    t_conv = time.monotonic()
    wait_converged(c)
    conv = time.monotonic() - t_conv
    back_ids = [v[1] for v in recovered.values()]
    have = presence(c, back_ids + [i for i, _ in known] + refused_ids, c.replicas)
    missing = {n: sorted(set(back_ids) - s) for n, s in have.items() if set(back_ids) - s}
    resurrected = {n: sorted(set(refused_ids) & s)[:3] for n, s in have.items() if set(refused_ids) & s}
    pg_up_after = {r.name: wait_metric(r, "embedd_postgres_up", 1) for r in c.replicas}
    try:
        v_after = wait_until("one serving_version after the restart", lambda: (lambda v: v if len(set(
            v.values())) == 1 and None not in v.values() else None)(serving_versions(c)), CONVERGE_BOUND, 0.2)
    except ClusterError:
        v_after = None
    line = ("postgres stopped (pg_ctl -m fast, %s) for 5 s: %d writes got 503 JSON, %d other; "
            "%d direct reads ok, %d bad; %d reads through haproxy ok, %d bad; connected=false seen on %s, "
            "embedd_postgres_up 0 on %s; "
            "writes back after %s; converged %s later; serving versions before %s, after %s"
            % (ms(stop_took), writes["503"], len(writes["other"]), reads["ok"], len(reads["bad"]),
               lb_reads["ok"], len(lb_reads["bad"]), ",".join(sorted(disconnected)) or "none",
               ",".join(sorted(pg_down_metric)) or "none",
               ", ".join("%s %s" % (n, ms(v[0])) for n, v in sorted(recovered.items())), ms(conv),
               v_before, v_after or serving_versions(c)))
    check(not writes["other"], "writes during the outage not answered 503 JSON: %s; %s"
          % (writes["other"][:3], line))
    check(not reads["bad"], "reads from the caches failed: %s; %s" % (reads["bad"][:3], line))
    check(not lb_reads["bad"], "reads through haproxy failed: %s; %s" % (lb_reads["bad"][:3], line))
    check(len(disconnected) == len(c.replicas), "/info replication.connected stayed true: %s" % line)
    check(len(pg_down_metric) == len(c.replicas), "embedd_postgres_up stayed 1: %s" % line)
    check(all(v == 1 for v in pg_up_after.values()), "embedd_postgres_up after the restart: %s" % pg_up_after)
    check(not missing, "writes made after the restart are missing: %s; %s" % (missing, line))
    check(v_after is not None, "replicas serve different versions %.0f s after the restart: %s"
          % (CONVERGE_BOUND, line))
    check(not resurrected, "writes answered 503 during the outage were stored after all: %s; %s"
          % (resurrected, line))
    return line


SCENARIOS = [("a", "propagation", scenario_a), ("b", "kill -9 replica", scenario_b),
             ("c", "kill -9 trainer", scenario_c), ("d", "postgres restart", scenario_d)]


def preflight(binary):
    """None when the binary and the machine can run the test, else why not."""
    missing = cluster_lib.which_missing()
    if missing:
        return "missing %s (scripts/install-deps.sh installs postgresql and haproxy)" % ", ".join(missing)
    if not os.access(binary, os.X_OK):
        return "no binary at %s (make)" % binary
    r = subprocess.run([binary, "serve", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    text = r.stdout.decode(errors="replace")
    for flag in ("--store", "--replica-name"):
        if flag not in text:
            return "%s serve has no %s (issue 18's server side is not in this build)" % (binary, flag)
    return None


def log_tail(path, n):
    """The last n lines of a replica's log that are not request lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [l for l in f if " request " not in l and not l.startswith("NOTICE:")]
    except OSError:
        return "(no log)"
    return "".join(l[:300] if l.endswith("\n") else l[:300] + "\n" for l in lines[-n:])


def on_alarm(signum, frame):
    raise Timeout()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(cluster_lib.ROOT, "build", "embedd"))
    ap.add_argument("--only", default="abcd", help="scenarios to run, e.g. ad")
    ap.add_argument("--writes", type=int, default=120, help="writes of the propagation scenario (>= 100)")
    ap.add_argument("--timeout", type=int, default=360, help="seconds for the whole run")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (logs, haproxy.cfg)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    why = preflight(binary)
    if why:
        print("cluster test: FAIL: %s" % why)
        return 1
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)
    texts = load_texts(2000)
    results = []
    t0 = time.monotonic()
    cluster = None
    try:
        with Cluster(binary=binary, keep=args.keep, verbose=args.verbose) as c:
            cluster = c
            c.start_postgres()
            c.start_replicas(3, REPLICA_ARGS)
            c.start_haproxy()
            log("cluster up: postgres %d, replicas %s, haproxy %d (%s)" % (
                c.pg_port, ", ".join("%s:%d" % (r.name, r.port) for r in c.replicas), c.haproxy_port, c.tmp))
            for key, name, fn in SCENARIOS:
                if key not in args.only:
                    continue
                ts = time.monotonic()
                try:
                    line = fn(c, texts, args.writes) if key == "a" else fn(c, texts)
                    results.append((key, name, True, line, time.monotonic() - ts))
                except (Fail, ClusterError) as e:
                    results.append((key, name, False, str(e), time.monotonic() - ts))
                print("cluster %s %s: %s (%.0f s): %s" % (results[-1][0], results[-1][1],
                      "PASS" if results[-1][2] else "FAIL", results[-1][4], results[-1][3]), flush=True)
            if not all(r[2] for r in results):
                for r in c.replicas:
                    print("---- %s, without request lines ----\n%s" % (r.log, log_tail(r.log, 25)))
                print("---- tail of %s ----\n%s" % (c.pg_log, cluster_lib.tail(c.pg_log, 15)))
                c.keep = True  # the logs stay for a look; the next run removes them
    except Timeout:
        print("cluster test: FAIL: the run passed its %d s bound; everything it started was killed"
              % args.timeout)
        if cluster is not None:
            cluster.close()
        return 1
    except ClusterError as e:
        print("cluster test: FAIL: setting up the cluster: %s" % e)
        return 1
    finally:
        signal.alarm(0)
    ok = bool(results) and all(r[2] for r in results)
    print("cluster test: %s, %d of %d scenarios passed in %.0f s"
          % ("PASS" if ok else "FAIL", sum(r[2] for r in results), len(results), time.monotonic() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
