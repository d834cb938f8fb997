#!/usr/bin/python3
"""Fault-injection suite for embedd's data directory (issue 16: never lose an
acknowledged write, never trust a corrupt byte).

Each case damages a real data directory of the built binary, on loopback,
in a temporary directory, and checks what the server does next:

  wal-flips        one flipped byte per run in a WAL of 5 acknowledged items:
                   the server starts with every item, or refuses naming
                   DATA/wal (then `embedd repair` keeps every record that
                   verifies and the server starts with all the others), or,
                   for a flip in the last record (indistinguishable from a torn
                   write), starts after logging the cut, with items 1-4
  wal-header       the same for every byte of the WAL's 32-byte header
  torn-tail        the WAL cut at every offset of its last record: the server
                   starts and items 1-4 are there
  snapshot-flips   one flipped byte per run in a snapshot of 5 items: refused
                   naming DATA/snapshot, then `embedd repair` keeps every item
                   that verifies (all but at most the damaged one) and the
                   server starts with them
  weights          a published version (DATA/models/v2, current) with
                   corrupt weights: startup refuses (expected: "checksum
                   mismatch"), or /embed never returns zeros or non-finite values
  current-file     EMBEDD_FAULT_FILE_REPLACE=current makes writing
                   DATA/models/current fail: a rollback is refused with a JSON
                   error and the served version stays what the file says
                   (SKIP when the binary lacks that test seam)
  log-immutable    `chattr +i DATA/wal`: writes get 503 JSON, /health is
                   degraded; after `chattr -i` writes succeed again without a
                   restart, and every acknowledged item survives one
                   (SKIP when chattr is refused here)
  disk-full        DATA on a 2 MiB tmpfs filled up: writes get 503/507 JSON,
                   no crash, acknowledged items survive a restart, writes
                   succeed once space is freed (SKIP when mount is refused)

Each case prints PASS, FAIL or SKIP (reason); a summary follows; the exit
status is 1 when a case failed. Flips run on every offset of the headers and
frames and, by default, on every --stride'th byte of the rest (--stride 1:
every byte); the whole suite stays under 5 minutes on 2 cores.

Usage: scripts/fault_test.py [--binary build/embedd] [--stride 4] [--jobs 3]
       [--only wal-flips,snapshot-flips]
Standard library only.
"""
import argparse
import concurrent.futures
import glob
import http.client
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-dense")   # 16 dims: small records
DIM = 16
N_ITEMS = 5
WAL_HEADER = 32
READY_TIMEOUT = 30.0
HTTP_TIMEOUT = 10.0

BINARY = os.path.join(ROOT, "build", "embedd")
_live = set()
_live_lock = threading.Lock()


class CaseFailed(Exception):
    pass


class CaseSkipped(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CaseFailed(msg)


def soft(problems, cond, msg):
    """A failed expectation that does not stop the case: the rest is still checked."""
    if not cond:
        problems.append(msg)


# ---- the server -----------------------------------------------------------------

class Server:
    """`embedd serve` on a free loopback port; stderr is collected."""

    def __init__(self, data, extra_args=(), env=None, model=MODEL):
        args = [BINARY, "serve", "--model", model, "--port", "0", "--host", "127.0.0.1",
                "--train", "off", "--threads", "1", "--http-threads", "2"]
        if data is not None:
            args += ["--data", data]
        args += list(extra_args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=full_env)
        with _live_lock:
            _live.add(self.proc)
        self.lines = []
        self.port = None
        ready = threading.Event()

        def reader():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                m = re.search(r"listening on http://[^:]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        ready.wait(READY_TIMEOUT)
        if self.port is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
                raise CaseFailed("the server neither started nor exited within %ds"
                                 % READY_TIMEOUT)

    @property
    def started(self):
        return self.port is not None

    def stderr(self):
        return "".join(self.lines)

    def request(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.request(method, path, body=data,
                      headers={"Content-Type": "application/json"} if data else {})
            r = c.getresponse()
            raw = r.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return r.status, parsed
        finally:
            c.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with _live_lock:
            _live.discard(self.proc)

    def stop(self):
        """SIGTERM: the graceful stop, which snapshots the store."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CaseFailed("the server did not stop within 30 s of SIGTERM")
        with _live_lock:
            _live.discard(self.proc)
        return rc


def item_vector(k):
    v = [math.sin(k * 0.7 + i * 1.3) + 0.05 for i in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def put_items(srv, ks):
    for k in ks:
        st, body = srv.request("POST", "/items",
                               {"items": [{"id": k, "vector": item_vector(k),
                                           "payload": {"k": k}}]})
        check(st == 200, "upsert %d: %s %s" % (k, st, body))


def items_present(srv, ks):
    """The ids among ks that the server has, each checked exactly."""
    found = []
    for k in ks:
        st, body = srv.request("GET", "/items/%d?with_vector=true" % k)
        if st == 404:
            continue
        check(st == 200, "GET /items/%d: %s %s" % (k, st, body))
        got = body.get("vector")
        want = item_vector(k)
        check(got is not None and len(got) == DIM and
              all(abs(a - b) < 1e-5 for a, b in zip(got, want)),
              "item %d came back with another vector" % k)
        check(body.get("payload") == {"k": k}, "item %d: payload %r" % (k, body.get("payload")))
        found.append(k)
    return found


def run_repair(data):
    p = subprocess.run([BINARY, "repair", "--data", data], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout + p.stderr


# ---- data directories -------------------------------------------------------------

class Workdir:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="embedd-fault-")

    def __enter__(self):
        return self.root

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)


def make_wal_dir(path):
    """5 items, each its own acknowledged write, the server killed (no snapshot)."""
    os.makedirs(path)
    srv = Server(path)
    check(srv.started, "the server did not start:\n" + srv.stderr())
    try:
        put_items(srv, range(1, N_ITEMS + 1))
    finally:
        srv.kill()


def wal_records(wal):
    """Offsets of the WAL's records (reclog framing: u32 len, u32 crc, body)."""
    offs = []
    pos = WAL_HEADER
    while pos + 8 <= len(wal):
        n = struct.unpack_from("<I", wal, pos)[0]
        offs.append(pos)
        pos += 8 + n
    check(pos == len(wal) and len(offs) == N_ITEMS,
          "unexpected WAL layout: %d records, end %d of %d" % (len(offs), pos, len(wal)))
    return offs


def flip_offsets(size, frames, stride):
    """Every offset in frames (ranges), and every stride'th of the others."""
    offs = set(range(0, size, stride))
    for a, b in frames:
        offs.update(range(a, min(b, size)))
    return sorted(offs)


def parallel(fn, args, jobs):
    """fn over args on jobs threads; the first failure wins."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        for _ in ex.map(fn, args):
            pass


# ---- cases ----------------------------------------------------------------------

def one_wal_flip(base, work, off, recs):
    """One flipped byte of DATA/wal; see the module's docstring."""
    d = os.path.join(work, "flip-%d" % off)
    shutil.copytree(base, d)
    path = os.path.join(d, "wal")
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ (1 << (off % 8))]))
    all_ids = list(range(1, N_ITEMS + 1))
    last_record_at = recs[-1]
    # record i holds item i + 1 (one write each); a header flip spoils none
    spoiled = [i + 1 for i, r in enumerate(recs) if r <= off][-1:] if off >= WAL_HEADER else []
    try:
        srv = Server(d)
        if srv.started:
            try:
                found = items_present(srv, all_ids)
            finally:
                srv.kill()
            if found == all_ids:
                return "intact"
            # a flip in the last record reads as a torn write: cut, but said so
            check(off >= last_record_at and found == all_ids[:-1] and
                  re.search(r"wal", srv.stderr()) and re.search(r"cut|torn|truncat", srv.stderr()),
                  "byte %d: started with items %s and no word of a loss:\n%s"
                  % (off, found, srv.stderr()))
            return "cut"
        err = srv.stderr()
        check(os.path.join(d, "wal") in err, "byte %d: the refusal does not name %s/wal:\n%s"
              % (off, d, err))
        check("embedd repair" in err, "byte %d: the refusal does not point at embedd repair:\n%s"
              % (off, err))
        rc, out = run_repair(d)
        check(rc == 0, "byte %d: embedd repair failed (%d):\n%s" % (off, rc, out))
        check(glob.glob(os.path.join(d, "wal.damaged-*")), "byte %d: no wal.damaged-* kept" % off)
        srv = Server(d)
        check(srv.started, "byte %d: the server refuses after repair:\n%s" % (off, srv.stderr()))
        try:
            found = items_present(srv, all_ids)
        finally:
            srv.kill()
        # every item whose record verifies is back
        want = [k for k in all_ids if k not in spoiled]
        check(found == want or found == all_ids,
              "byte %d: after repair items %s, want %s" % (off, found, want))
        return "repaired"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_wal_flips(args, header_only=False):
    with Workdir() as work:
        base = os.path.join(work, "base")
        make_wal_dir(base)
        with open(os.path.join(base, "wal"), "rb") as f:
            wal = f.read()
        recs = wal_records(wal)
        if header_only:
            offs = list(range(WAL_HEADER))
        else:
            frames = [(r, r + 16) for r in recs]     # len, crc, seq of every record
            offs = [o for o in flip_offsets(len(wal), frames, args.stride) if o >= WAL_HEADER]
        outcomes = {}
        lock = threading.Lock()

        def run(off):
            what = one_wal_flip(base, work, off, recs)
            with lock:
                outcomes[what] = outcomes.get(what, 0) + 1

        parallel(run, offs, args.jobs)
        return "%d of %d offsets flipped: %s" % (
            len(offs), len(wal), ", ".join("%s %d" % kv for kv in sorted(outcomes.items())))


def case_torn_tail(args):
    with Workdir() as work:
        base = os.path.join(work, "base")
        make_wal_dir(base)
        with open(os.path.join(base, "wal"), "rb") as f:
            wal = f.read()
        last = wal_records(wal)[-1]
        cuts = list(range(last, len(wal)))

        def run(cut):
            d = os.path.join(work, "cut-%d" % cut)
            shutil.copytree(base, d)
            try:
                os.truncate(os.path.join(d, "wal"), cut)
                srv = Server(d)
                check(srv.started, "cut at %d: the server refuses:\n%s" % (cut, srv.stderr()))
                try:
                    found = items_present(srv, range(1, N_ITEMS + 1))
                finally:
                    srv.kill()
                check(found[:N_ITEMS - 1] == list(range(1, N_ITEMS)),
                      "cut at %d: items %s" % (cut, found))
            finally:
                shutil.rmtree(d, ignore_errors=True)

        parallel(run, cuts, args.jobs)
        return "cut at each of %d offsets of the last record" % len(cuts)


def case_snapshot_flips(args):
    with Workdir() as work:
        base = os.path.join(work, "base")
        os.makedirs(base)
        srv = Server(base)
        check(srv.started, srv.stderr())
        put_items(srv, range(1, N_ITEMS + 1))
        check(srv.stop() == 0, "graceful stop failed:\n" + srv.stderr())
        with open(os.path.join(base, "snapshot"), "rb") as f:
            snap = f.read()
        check(struct.unpack_from("<I", snap, 8)[0] == 2, "the snapshot is not format 2")
        # records: u32 len, u32 crc, body; header and trailer 40 bytes each
        frames = [(0, 40), (len(snap) - 40, len(snap))]
        pos = 40
        for _ in range(N_ITEMS):
            frames.append((pos, pos + 8))
            pos += 8 + struct.unpack_from("<I", snap, pos)[0]
        check(pos + 40 == len(snap), "unexpected snapshot layout")
        offs = flip_offsets(len(snap), frames, args.stride)

        def run(off):
            d = os.path.join(work, "flip-%d" % off)
            shutil.copytree(base, d)
            try:
                path = os.path.join(d, "snapshot")
                with open(path, "r+b") as f:
                    f.seek(off)
                    b = f.read(1)[0]
                    f.seek(off)
                    f.write(bytes([b ^ (1 << (off % 8))]))
                s = Server(d)
                if s.started:
                    s.kill()
                    raise CaseFailed("byte %d: the server started on a damaged snapshot" % off)
                err = s.stderr()
                check(path in err and "embedd repair" in err,
                      "byte %d: the refusal does not name %s and embedd repair:\n%s"
                      % (off, path, err))
                rc, out = run_repair(d)
                check(rc == 0, "byte %d: embedd repair failed (%d):\n%s" % (off, rc, out))
                check(glob.glob(os.path.join(d, "snapshot.damaged-*")),
                      "byte %d: no snapshot.damaged-* kept" % off)
                s = Server(d)
                check(s.started, "byte %d: refused after repair:\n%s" % (off, s.stderr()))
                try:
                    found = items_present(s, range(1, N_ITEMS + 1))
                finally:
                    s.kill()
                check(len(found) >= N_ITEMS - 1, "byte %d: after repair only %s" % (off, found))
                m = re.search(r"kept (\d+) items", out)
                check(m and int(m.group(1)) == len(found),
                      "byte %d: repair says %r, the server has %d items"
                      % (off, m and m.group(0), len(found)))
            finally:
                shutil.rmtree(d, ignore_errors=True)

        parallel(run, offs, args.jobs)
        return "%d of %d offsets flipped, each refused then repaired" % (len(offs), len(snap))


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def write_manifest(vdir, version):
    """vN/version.json as a publish writes it: the size and CRC-32C of every file."""
    files = []
    for root, _, names in os.walk(vdir):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, vdir)
            if rel == "version.json":
                continue
            with open(full, "rb") as f:
                raw = f.read()
            files.append({"name": rel, "bytes": len(raw), "crc32c": "%08x" % crc32c(raw)})
    with open(os.path.join(vdir, "version.json"), "w") as f:
        json.dump({"format": 1, "id": version, "created": int(time.time()), "files": files}, f)


def publish_copy(data, version=2, manifest=True):
    """DATA/models/vN as a copy of the model, named current (what a publish
    leaves); without manifest, as a version saved before checksums were."""
    models = os.path.join(data, "models")
    os.makedirs(models, exist_ok=True)
    vdir = os.path.join(models, "v%d" % version)
    shutil.copytree(MODEL, vdir)
    if manifest:
        write_manifest(vdir, version)
    for name in ("current", "latest"):
        with open(os.path.join(models, name), "w") as f:
            f.write("%d\n" % version)
    return vdir


def poison_weights(vdir):
    """NaN (0xff bytes) over the first 16 values of every tensor, so any use shows."""
    path = os.path.join(vdir, "model.safetensors")
    with open(path, "r+b") as f:
        raw = f.read()
        hlen = struct.unpack_from("<Q", raw, 0)[0]
        tensors = json.loads(raw[8:8 + hlen])
        for name, t in tensors.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            f.seek(8 + hlen + a)
            f.write(b"\xff" * min(64, b - a))


def case_weights(args):
    """A published version with a checksum is refused at startup naming the
    file; one saved before checksums were (no version.json) may start, but
    its NaN outputs are a 5xx, never zeros."""
    with Workdir() as work:
        data = os.path.join(work, "data")
        os.makedirs(data)
        vdir = publish_copy(data)
        srv = Server(data)
        check(srv.started, "an intact published version is refused:\n" + srv.stderr())
        try:
            st, body = srv.request("GET", "/info")
            check(st == 200, "/info: %s" % st)
        finally:
            srv.kill()
        poison_weights(vdir)
        srv = Server(data)
        if srv.started:
            srv.kill()
        err = srv.stderr()
        check(not srv.started, "started on weights that fail their checksum")
        check("checksum mismatch" in err and "v2/model.safetensors" in err,
              "refused without naming the file and the checksum:\n" + err)
    with Workdir() as work:
        data = os.path.join(work, "data")
        os.makedirs(data)
        poison_weights(publish_copy(data, manifest=False))
        srv = Server(data)
        check(srv.started, "a version without checksums is refused:\n" + srv.stderr())
        try:
            st, body = srv.request("POST", "/embed", {"inputs": ["a cat sits on the mat",
                                                                 "the stock market fell"]})
            check(st >= 500, "NaN weights without a checksum: /embed answered %s %s"
                  % (st, str(body)[:200]))
            st2, body2 = srv.request("POST", "/similar", {"text": "a cat", "limit": 1})
            check(st2 >= 500, "NaN weights: /similar by text answered %s %s (not the client's fault)"
                  % (st2, str(body2)[:200]))
        finally:
            srv.kill()
    return "checksummed: startup refused (checksum mismatch, file named); " \
           "pre-checksum: /embed %d, /similar %d" % (st, st2)


def case_current_file(args):
    with open(BINARY, "rb") as f:
        if b"EMBEDD_FAULT_FILE_REPLACE" not in f.read():
            raise CaseSkipped("this binary has no EMBEDD_FAULT_FILE_REPLACE test seam")
    with Workdir() as work:
        data = os.path.join(work, "data")
        os.makedirs(data)
        publish_copy(data)
        # rollback needs learning on (with it off, the route answers 503
        # "training is off" and nothing here would be tested)
        srv = Server(data, extra_args=("--train", "on"),
                     env={"EMBEDD_FAULT_FILE_REPLACE": "current"})
        check(srv.started, srv.stderr())
        try:
            st, body = srv.request("POST", "/train/rollback", {"version": 1})
            refused = st
            check(st >= 500 and isinstance(body, dict) and "not made current" in str(body),
                  "a rollback whose `current` cannot be written: %s %s" % (st, body))
            st, info = srv.request("GET", "/train/versions")
            check(st == 200 and info.get("current") == 2,
                  "serves version %s while DATA/models/current says 2" % info.get("current"))
        finally:
            srv.kill()
        srv = Server(data)
        check(srv.started, srv.stderr())
        try:
            st, info = srv.request("GET", "/train/versions")
            check(info.get("current") == 2, "after a restart: version %s" % info.get("current"))
        finally:
            srv.kill()
        return "rollback refused (%d), still version 2, also after a restart" % refused


def health_degraded(srv):
    st, body = srv.request("GET", "/health")
    return st != 200 or (isinstance(body, dict) and body.get("status") != "ok")


def case_log_immutable(args):
    with Workdir() as work:
        data = os.path.join(work, "data")
        os.makedirs(data)
        srv = Server(data)
        check(srv.started, srv.stderr())
        wal = os.path.join(data, "wal")
        immutable = False
        problems = []
        try:
            put_items(srv, [1, 2])
            if subprocess.run(["chattr", "+i", wal], capture_output=True).returncode != 0:
                raise CaseSkipped("chattr +i is refused on this file system")
            immutable = True
            st, body = srv.request("POST", "/items",
                                   {"items": [{"id": 3, "vector": item_vector(3)}]})
            soft(problems, st == 503 and isinstance(body, dict),
                 "a write to an immutable log: %s %s (want 503 JSON)" % (st, body))
            soft(problems, health_degraded(srv), "/health says ok while the log cannot be written")
            subprocess.run(["chattr", "-i", wal], check=True)
            immutable = False
            deadline = time.time() + 10
            while True:
                st, body = srv.request("POST", "/items",
                                       {"items": [{"id": 4, "vector": item_vector(4),
                                                   "payload": {"k": 4}}]})
                if st == 200 or time.time() > deadline:
                    break
                time.sleep(0.5)
            soft(problems, st == 200, "writes still refused 10 s after the log is writable "
                 "again: %s %s" % (st, body))
            acked = [1, 2, 4] if st == 200 else [1, 2]
            soft(problems, not health_degraded(srv), "/health still degraded after recovery")
            check(srv.proc.poll() is None, "the server died")
        finally:
            if immutable:
                subprocess.run(["chattr", "-i", wal])
            srv.kill()
        srv = Server(data)
        check(srv.started, "restart refused:\n" + srv.stderr())
        try:
            found = items_present(srv, acked)
        finally:
            srv.kill()
        check(found == acked, "after a restart: items %s of the acknowledged %s" % (found, acked))
        check(not problems, "; ".join(problems) +
              " (no crash; the acknowledged items %s survive a restart)" % acked)
        return "503 while immutable, recovered without a restart, all acknowledged items kept"


def case_disk_full(args):
    with Workdir() as work:
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise CaseSkipped("cannot mount a tmpfs here: " + p.stderr.strip())
        try:
            return disk_full_on(mnt)
        finally:
            subprocess.run(["umount", "-l", mnt])


def disk_full_on(mnt):
    problems = []
    data = os.path.join(mnt, "data")
    os.makedirs(data)
    srv = Server(data)
    check(srv.started, srv.stderr())
    filler = os.path.join(mnt, "filler")
    try:
        put_items(srv, [1, 2])
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        acked = [1, 2]
        refused = None
        for k in range(3, 200):
            st, body = srv.request("POST", "/items", {"items": [{
                "id": k, "vector": item_vector(k), "payload": {"k": k, "pad": "x" * 2000}}]})
            if st == 200:
                acked.append(k)
                continue
            refused = (st, body)
            break
        check(refused is not None, "the disk never filled up")
        st, body = refused
        check(srv.proc.poll() is None, "the server died on a full disk")
        soft(problems, st in (503, 507) and isinstance(body, dict),
             "a write on a full disk: %s %s (want 503 or 507 JSON)" % (st, body))
        os.unlink(filler)
        deadline = time.time() + 10
        while True:
            st, body = srv.request("POST", "/items", {"items": [{
                "id": 500, "vector": item_vector(500)}]})
            if st == 200 or time.time() > deadline:
                break
            time.sleep(0.5)
        soft(problems, st == 200,
             "writes still refused 10 s after space was freed: %s %s" % (st, body))
        if st == 200:
            acked.append(500)
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
        srv.kill()
    srv = Server(data)
    check(srv.started, "restart after a full disk refused:\n" + srv.stderr())
    try:
        found = [k for k in acked if k in items_present_quick(srv, acked)]
    finally:
        srv.kill()
    check(found == acked, "lost acknowledged items: %s" % sorted(set(acked) - set(found)))
    check(not problems, "; ".join(problems) +
          " (no crash; the %d acknowledged items survive a restart)" % len(acked))
    return "refused cleanly, %d acknowledged items kept, writes resumed" % len(acked)


def items_present_quick(srv, ks):
    out = set()
    for k in ks:
        st, _ = srv.request("GET", "/items/%d" % k)
        if st == 200:
            out.add(k)
    return out


CASES = [
    ("wal-flips", case_wal_flips),
    ("wal-header", lambda a: case_wal_flips(a, header_only=True)),
    ("torn-tail", case_torn_tail),
    ("snapshot-flips", case_snapshot_flips),
    ("weights", case_weights),
    ("current-file", case_current_file),
    ("log-immutable", case_log_immutable),
    ("disk-full", case_disk_full),
]


def main():
    global BINARY
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=BINARY)
    ap.add_argument("--stride", type=int, default=4,
                    help="flip every offset of headers and frames, and every Nth of the rest")
    ap.add_argument("--jobs", type=int, default=3, help="servers at once in the flip cases")
    ap.add_argument("--only", default="", help="comma-separated case names")
    args = ap.parse_args()
    BINARY = os.path.abspath(args.binary)
    if not os.access(BINARY, os.X_OK):
        print("no binary at %s (make first)" % BINARY)
        return 2
    only = set(filter(None, args.only.split(",")))
    results = []
    t_all = time.time()
    for name, fn in CASES:
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            detail = fn(args)
            verdict = "PASS"
        except CaseSkipped as e:
            verdict, detail = "SKIP", str(e)
        except CaseFailed as e:
            verdict, detail = "FAIL", str(e)
        except Exception as e:   # a bug in the case itself is a failure too
            verdict, detail = "FAIL", "%s: %s" % (type(e).__name__, e)
        took = time.time() - t0
        print("%s %-15s %5.1fs  %s" % (verdict, name, took, detail), flush=True)
        results.append(verdict)
    print("summary: %d passed, %d failed, %d skipped in %.0fs" % (
        results.count("PASS"), results.count("FAIL"), results.count("SKIP"),
        time.time() - t_all))
    return 1 if "FAIL" in results else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        with _live_lock:
            for p in list(_live):
                if p.poll() is None:
                    p.kill()
