"""cluster_lib.py: a throwaway embedd cluster on one machine, for
scripts/cluster_test.py and scripts/bench_cluster.py (Python 3, standard
library only).

    with Cluster(binary="build/embedd") as c:
        c.start_postgres()                  # initdb in a temp dir, free port
        c.start_replicas(3, ["--threads", "1"])
        c.start_haproxy()
        status, headers, body = c.haproxy_client().request("GET", "/info")

What it starts, and who stops it:
- PostgreSQL 15: `initdb --auth=trust` as the postgres user (it refuses to
  run as root) into TMP/pgdata, listening on a free loopback port with its
  unix socket in TMP/pgsock and fsync on. The postmaster runs in the
  foreground as our own child (not daemonised by pg_ctl), so that it can be
  given a parent-death signal: if this script is killed with SIGKILL, the
  kernel sends the postmaster SIGQUIT (immediate shutdown) and nothing is
  left running. `pg_ctl stop -m fast` works on it all the same.
- N `embedd serve --store postgres://... --replica-name rN` on free
  loopback ports, each with its own --data scratch directory under TMP.
  A replica keeps its port across a restart, because haproxy's
  configuration names it.
- haproxy in the foreground (-db) with TMP/haproxy.cfg: roundrobin, health
  check GET /health?for=read every 200 ms (two failures, or one failed
  connect of real traffic, take a replica out, so a dead one leaves the
  rotation within about 0.5 s; a replica that refuses writes because
  PostgreSQL is down stays in for reads), and `option redispatch` with
  `retry-on conn-failure`, so a request whose connect to a killed replica
  fails is sent to another one.

Every child gets PR_SET_PDEATHSIG, which fires when the *thread* that
started it exits: start processes from the main thread only.

Cluster.close() (also run by `with`, atexit, SIGTERM, SIGINT and SIGHUP)
stops haproxy and the replicas (SIGTERM, then SIGKILL after a bound), stops
PostgreSQL (fast, then immediate, then SIGKILL) and removes TMP unless
keep=True. Every wait is bounded; a bound that runs out raises
ClusterError with the tail of the log concerned.
"""

import ctypes
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

def _newest_pg_bin():
    """Debian's newest /usr/lib/postgresql/N/bin (15 on bookworm)."""
    import glob
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else "/usr/lib/postgresql/15/bin"


# Where the programs are; the environment may say otherwise.
PG_BIN = os.environ.get("EMBEDD_PG_BIN") or _newest_pg_bin()
HAPROXY = os.environ.get("EMBEDD_HAPROXY") or "/usr/sbin/haproxy"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PG_START_TIMEOUT = 30      # seconds for the postmaster to accept connections
PG_STOP_TIMEOUT = 30
REPLICA_START_TIMEOUT = 60  # model load plus PostgreSQL catch-up
STOP_TIMEOUT = 10          # SIGTERM to exit, before SIGKILL
HAPROXY_TIMEOUT = 15

PR_SET_PDEATHSIG = 1


class ClusterError(Exception):
    pass


def which_missing():
    """Names of the programs a cluster needs that this machine lacks."""
    missing = []
    for path in (os.path.join(PG_BIN, "initdb"), os.path.join(PG_BIN, "postgres"),
                 os.path.join(PG_BIN, "pg_ctl"), HAPROXY):
        if not os.access(path, os.X_OK):
            missing.append(path)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing.append("user postgres")
    return missing


def free_port():
    """A loopback port nobody listens on now (the caller binds it soon)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


TMP_PREFIX = "embedd-cluster-proc-"
STALE_AGE = 3600  # seconds


def remove_stale_dirs():
    """Removes the temp directories left by earlier runs (killed with
    SIGKILL: their children died with them, by the parent-death signal, but
    their files stay; or kept after a failure): those whose owner.pid names
    no live process, once they are an hour old."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(TMP_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            if time.time() - os.stat(path).st_mtime < STALE_AGE:
                continue  # a failed run's logs stay a while for a look
            with open(os.path.join(path, "owner.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours to judge: no pid file yet, or another user's


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _preexec(sig, uid=None, gid=None):
    """Runs in the child between fork and exec: drop to uid/gid when asked,
    then ask for `sig` when the parent thread dies (set after the uid change,
    which would clear it)."""
    libc = _libc()

    def fn():
        os.setpgid(0, 0)  # own process group: a ^C to us is not a ^C to it
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return fn


def tail(path, n=30):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return "(no log at %s)" % path
    return "".join(lines[-n:])


class Client:
    """One keep-alive HTTP/1.1 connection. request() returns (status,
    headers as a dict with lower-case names, body parsed as JSON when it is
    JSON, else text). A connection error gives status 0 and the error text
    as body; the next request reconnects."""

    def __init__(self, port, timeout=30):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        if headers:
            hdrs.update(headers)
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        reused = self.conn is not None
        result = self._once(method, path, data, hdrs)
        if result[0] == 0 and reused and result[3]:
            # the server closed a keep-alive connection we had kept (idle
            # timeout) before it read this request: send it once more
            result = self._once(method, path, data, hdrs)
        return result[:3]

    STALE = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)

    def _once(self, method, path, data, hdrs):
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.request(method, path, body=data, headers=hdrs)
            r = self.conn.getresponse()
            raw = r.read()
            h = {k.lower(): v for k, v in r.getheaders()}
            if h.get("connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return 0, {}, "%s: %s" % (type(e).__name__, e), isinstance(e, self.STALE)
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return r.status, h, parsed, False

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_until(what, fn, timeout, interval=0.1):
    """Calls fn until it returns something true; returns that, or raises
    ClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise ClusterError("%s: not within %.0f s" % (what, timeout))
        time.sleep(interval)


class Replica:
    def __init__(self, cluster, name, port, args, store="postgres", env=None):
        self.cluster = cluster
        self.env = dict(env or {})  # added to the environment (which loses its EMBEDD_*)
        self.store = store  # "postgres": the cluster's; "local": --data only, no --store
        self.name = name
        self.port = port
        self.args = list(args)
        self.data = os.path.join(cluster.tmp, "data-" + name)
        self.log = os.path.join(cluster.tmp, "replica-%s.log" % name)
        self.proc = None
        os.makedirs(self.data, exist_ok=True)

    def argv(self):
        a = [self.cluster.binary, "serve", "--model", self.cluster.model,
             "--host", "127.0.0.1", "--port", str(self.port)]
        if self.store == "postgres":
            a += ["--store", self.cluster.pg_url(), "--replica-name", self.name]
        if self.cluster.replica_data or self.store != "postgres":
            a += ["--data", self.data]
        return a + self.args

    def start(self, wait=True):
        with open(self.log, "a") as log:
            log.write("---- start %s ----\n" % time.strftime("%H:%M:%S"))
        logf = open(self.log, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDD_")}
        env.update(self.env)
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                         preexec_fn=_preexec(signal.SIGKILL))
        finally:
            logf.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=REPLICA_START_TIMEOUT):
        c = Client(self.port, timeout=5)

        def ready():
            if self.proc.poll() is not None:
                raise ClusterError("replica %s exited with %s while starting:\n%s"
                                   % (self.name, self.proc.returncode, tail(self.log)))
            st, _, _ = c.request("GET", "/health")
            return st == 200
        try:
            wait_until("replica %s /health" % self.name, ready, timeout, 0.1)
        except ClusterError as e:
            raise ClusterError("%s\n%s" % (e, tail(self.log)))
        finally:
            c.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self):
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        return self.proc.returncode

    def client(self, timeout=30):
        return Client(self.port, timeout)


class Cluster:
    def __init__(self, binary="build/embedd", model="models/embedd-small", keep=False,
                 replica_data=True, verbose=False):
        self.binary = os.path.abspath(os.path.join(ROOT, binary)) if not os.path.isabs(binary) else binary
        self.model = os.path.join(ROOT, model) if not os.path.isabs(model) else model
        self.keep = keep
        self.replica_data = replica_data
        self.verbose = verbose
        remove_stale_dirs()
        self.tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
        os.chmod(self.tmp, 0o755)  # the postgres user walks through it
        with open(os.path.join(self.tmp, "owner.pid"), "w") as f:
            f.write("%d\n" % os.getpid())
        self.pg_port = None
        self.pg_proc = None
        self.pg_data = os.path.join(self.tmp, "pg", "data")
        self.pg_sock = os.path.join(self.tmp, "pgsock")
        self.pg_log = os.path.join(self.tmp, "postgres.log")
        self.replicas = []
        self.haproxy_proc = None
        self.haproxy_port = None
        self.haproxy_cfg = os.path.join(self.tmp, "haproxy.cfg")
        self.haproxy_log = os.path.join(self.tmp, "haproxy.log")
        self.haproxy_sock = os.path.join(self.tmp, "haproxy.sock")
        self._closed = False
        self._install_cleanup()

    # ---- cleanup on every way out -------------------------------------

    def _install_cleanup(self):
        import atexit
        atexit.register(self.close)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.log("signal %d: stopping the cluster" % signum)
        # SystemExit unwinds the caller's with/finally blocks, which close us
        raise SystemExit(128 + signum)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def log(self, msg):
        if self.verbose:
            sys.stderr.write("cluster: %s\n" % msg)
            sys.stderr.flush()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.stop_haproxy()
        for r in self.replicas:
            try:
                r.stop()
            except Exception as e:  # keep going: PostgreSQL must still stop
                sys.stderr.write("cluster: stopping replica %s: %s\n" % (r.name, e))
        self.stop_postgres()
        if self.keep:
            sys.stderr.write("cluster: kept %s\n" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- PostgreSQL ----------------------------------------------------

    def _pg_user(self):
        pw = pwd.getpwnam("postgres")
        return pw.pw_uid, pw.pw_gid

    def _run_as_postgres(self, argv, timeout):
        uid, gid = self._pg_user()
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd=self.tmp, timeout=timeout,
                              preexec_fn=_preexec(signal.SIGKILL, uid, gid))

    def pg_url(self):
        return "postgres://postgres@127.0.0.1:%d/postgres" % self.pg_port

    def start_postgres(self):
        """initdb (first time only) and start the postmaster; returns the URL."""
        missing = which_missing()
        if missing:
            raise ClusterError("missing: %s (scripts/install-deps.sh installs postgresql and haproxy)"
                               % ", ".join(missing))
        uid, gid = self._pg_user()
        if not os.path.isdir(self.pg_data):
            for d in (self.pg_sock,):
                os.makedirs(d, exist_ok=True)
                os.chown(d, uid, gid)
            # initdb makes the data directory itself (0700, its user's): give it the parent
            holder = os.path.dirname(self.pg_data)
            os.makedirs(holder, exist_ok=True)
            os.chown(holder, uid, gid)
            r = self._run_as_postgres([os.path.join(PG_BIN, "initdb"), "-D", self.pg_data,
                                       "--auth=trust", "-U", "postgres", "--no-sync",
                                       "--no-instructions", "-E", "UTF8", "--locale=C"], 120)
            if r.returncode != 0:
                raise ClusterError("initdb failed (%d):\n%s" % (r.returncode, r.stdout.decode(errors="replace")))
            self.pg_port = free_port()
        self._spawn_postmaster()
        self.log("postgres on %d (%s)" % (self.pg_port, self.pg_data))
        return self.pg_url()

    def _spawn_postmaster(self):
        uid, gid = self._pg_user()
        logf = open(self.pg_log, "ab")
        try:
            self.pg_proc = subprocess.Popen(
                [os.path.join(PG_BIN, "postgres"), "-D", self.pg_data,
                 "-c", "port=%d" % self.pg_port, "-c", "listen_addresses=127.0.0.1",
                 "-c", "unix_socket_directories=%s" % self.pg_sock, "-c", "fsync=on",
                 "-c", "max_connections=100", "-c", "shared_buffers=32MB",
                 "-c", "logging_collector=off", "-c", "log_min_messages=warning"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp,
                preexec_fn=_preexec(signal.SIGQUIT, uid, gid))
        finally:
            logf.close()
        ready_cmd = [os.path.join(PG_BIN, "pg_isready"), "-q", "-h", "127.0.0.1",
                     "-p", str(self.pg_port), "-U", "postgres", "-t", "1"]

        def ready():
            if self.pg_proc.poll() is not None:
                raise ClusterError("postgres exited with %s:\n%s" % (self.pg_proc.returncode, tail(self.pg_log)))
            return subprocess.run(ready_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=5).returncode == 0
        try:
            wait_until("postgres accepting connections", ready, PG_START_TIMEOUT, 0.1)
        except ClusterError as e:
            raise ClusterError("%s\n%s" % (e, tail(self.pg_log)))

    def pg_running(self):
        return self.pg_proc is not None and self.pg_proc.poll() is None

    def pg_ctl_stop(self, mode="fast"):
        """`pg_ctl stop -m MODE`, as an operator would; returns its output."""
        if not self.pg_running():
            return ""
        r = self._run_as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.pg_data, "-m", mode,
                                   "-w", "-t", str(PG_STOP_TIMEOUT), "stop"], PG_STOP_TIMEOUT + 10)
        try:
            self.pg_proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ClusterError("postgres still running after pg_ctl stop -m %s:\n%s"
                               % (mode, r.stdout.decode(errors="replace")))
        return r.stdout.decode(errors="replace")

    def pg_start_again(self):
        """Start the postmaster again on the same port and data."""
        self._spawn_postmaster()

    def psql(self, sql, timeout=20):
        """Runs sql through psql; returns its stdout (unaligned, tuples only)."""
        r = self._run_as_postgres([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
                                   "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres",
                                   "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql], timeout)
        out = r.stdout.decode(errors="replace")
        if r.returncode != 0:
            raise ClusterError("psql %r: %s" % (sql, out))
        return out

    def stop_postgres(self):
        if not self.pg_running():
            return
        for mode in ("fast", "immediate"):
            try:
                self.pg_ctl_stop(mode)
            except (ClusterError, subprocess.TimeoutExpired) as e:
                sys.stderr.write("cluster: pg_ctl stop -m %s: %s\n" % (mode, e))
            if not self.pg_running():
                return
        self.pg_proc.kill()
        self.pg_proc.wait(timeout=STOP_TIMEOUT)

    # ---- replicas ------------------------------------------------------

    def add_replica(self, name, args=(), start=True, store="postgres", env=None):
        r = Replica(self, name, free_port(), args, store, env)
        self.replicas.append(r)
        if start:
            r.start(wait=False)
        return r

    def start_replicas(self, n, args=(), names=None, env=None):
        """Starts n replicas (named r1..rn unless told) at once, then waits
        for each to answer /health."""
        names = names or ["r%d" % (i + 1) for i in range(n)]
        started = [self.add_replica(nm, args, env=env) for nm in names]
        for r in started:
            r.wait_ready()
        self.log("replicas %s" % ", ".join("%s:%d" % (r.name, r.port) for r in started))
        return started

    def remove_replica(self, r):
        """Stops r and forgets it; returns its exit status."""
        st = r.stop()
        self.replicas.remove(r)
        return st

    def replica(self, name):
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(name)

    # ---- haproxy -------------------------------------------------------

    def write_haproxy_cfg(self, replicas):
        servers = "\n".join("    server %s 127.0.0.1:%d check" % (r.name, r.port) for r in replicas)
        cfg = """global
    maxconn 4096
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout queue 10s
    # a connect that fails (a killed replica) is retried on another server
    retries 3
    option redispatch 1
    retry-on conn-failure

frontend fe
    bind 127.0.0.1:{port}
    default_backend embedd

backend embedd
    balance roundrobin
    # /health?for=read: 200 while the replica answers reads. Plain /health
    # is 503 on every replica at once while PostgreSQL is down (writes
    # refused): that would take them all out, reads from their caches too.
    option httpchk
    http-check send meth GET uri /health?for=read
    http-check expect status 200
    # a refused connect (a dead replica) fails a check at once; a busy
    # replica's /health gets a second before the check counts as failed
    timeout check 1s
    # a dead replica is out after 2 failed checks 200 ms apart, or at the
    # first failed connect of real traffic (observe layer4)
    default-server inter 200ms fastinter 200ms downinter 500ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
{servers}
""".format(sock=self.haproxy_sock, port=self.haproxy_port, servers=servers)
        with open(self.haproxy_cfg, "w") as f:
            f.write(cfg)

    def start_haproxy(self, replicas=None):
        """haproxy in front of replicas (default: all); a running one is
        stopped first. Returns its port once it routes to every replica."""
        if not os.access(HAPROXY, os.X_OK):
            raise ClusterError("missing: %s (scripts/install-deps.sh installs it)" % HAPROXY)
        self.stop_haproxy()
        replicas = self.replicas if replicas is None else replicas
        self.haproxy_port = free_port()
        self.write_haproxy_cfg(replicas)
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", self.haproxy_cfg], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=HAPROXY_TIMEOUT)
        if check.returncode != 0:
            raise ClusterError("haproxy -c: %s" % check.stdout.decode(errors="replace"))
        logf = open(self.haproxy_log, "ab")
        try:
            self.haproxy_proc = subprocess.Popen([HAPROXY, "-db", "-f", self.haproxy_cfg],
                                                 stdin=subprocess.DEVNULL, stdout=logf,
                                                 stderr=subprocess.STDOUT, cwd=self.tmp,
                                                 preexec_fn=_preexec(signal.SIGKILL))
        finally:
            logf.close()
        self.wait_haproxy_up(len(replicas))
        self.log("haproxy on %d" % self.haproxy_port)
        return self.haproxy_port

    def haproxy_cmd(self, cmd):
        """One command on haproxy's stats socket; returns its answer."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.haproxy_sock)
            s.sendall((cmd + "\n").encode())
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
            return out.decode(errors="replace")
        finally:
            s.close()

    def haproxy_up(self):
        """{server name: True when haproxy routes to it}."""
        try:
            out = self.haproxy_cmd("show servers state embedd")
        except OSError:
            return {}
        up = {}
        for line in out.splitlines():
            f = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state ...; op_state 2 = running
            if len(f) > 5 and f[1] == "embedd":
                up[f[3]] = f[5] == "2"
        return up

    def wait_haproxy_up(self, n, timeout=HAPROXY_TIMEOUT):
        def ready():
            if self.haproxy_proc.poll() is not None:
                raise ClusterError("haproxy exited with %s:\n%s"
                                   % (self.haproxy_proc.returncode, tail(self.haproxy_log)))
            return sum(self.haproxy_up().values()) >= n
        try:
            wait_until("haproxy with %d servers up" % n, ready, timeout, 0.1)
        except ClusterError as e:
            health = []
            for r in self.replicas:
                c = r.client(3)
                st, _, body = c.request("GET", "/health")
                c.close()
                health.append("%s /health: %s %s" % (r.name, st, str(body)[:150]))
            raise ClusterError("%s; haproxy sees %s; %s; haproxy log:\n%s"
                               % (e, self.haproxy_up(), "; ".join(health), tail(self.haproxy_log, 8)))

    def stop_haproxy(self):
        p = self.haproxy_proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGUSR1)  # soft stop
        try:
            p.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_TIMEOUT)

    def haproxy_client(self, timeout=30):
        return Client(self.haproxy_port, timeout)
