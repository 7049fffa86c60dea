#!/usr/bin/env python3
"""The chaos harness behind scripts/chaos.sh (Python 3.11 stdlib + MiniNats + psql).

    chaos.py --bin target/release/switchyard [--fast] [--out DIR] [SCENARIO...]

Starts its own throwaway services (nats-server, or a 3-node cluster; a PostgreSQL
cluster in a temp dir; the provider simulator) on free loopback ports, runs N workers,
publishes a workload while injecting one kind of fault, waits for the run to drain and
checks the invariants (chaos_check.py). Everything it started is stopped and its temp
dir removed at exit (also on Ctrl-C / SIGTERM); children get a parent-death signal.
"""

import argparse
import atexit
import collections
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request

LIB = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(LIB))
sys.path.insert(0, LIB)

import chaos_check  # noqa: E402
import chaos_jobs  # noqa: E402
from nats_delete_streams import MiniNats, NatsError  # noqa: E402

T0 = time.monotonic()
PROCS = []
TMP = None
PREFIX = "chaos"
CONFIG = os.path.join(ROOT, "config", "demo.toml")
USED_PORTS = set()


def log(msg):
    print("[chaos %6.1fs] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------
def free_port():
    import socket

    for _ in range(200):
        p = random.randint(20000, 59999)
        if p in USED_PORTS:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        USED_PORTS.add(p)
        return p
    raise RuntimeError("no free port")


AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


class Proc:
    """A child process with its output in a log file; SIGKILLed if we die."""

    def __init__(self, name, argv, logfile, env=None, as_postgres=False, pdeathsig="KILL"):
        self.name = name
        prefix = ["setpriv", "--pdeathsig", pdeathsig]
        if as_postgres and os.geteuid() == 0:
            prefix = AS_POSTGRES + ["--pdeathsig", pdeathsig]
        self.log = logfile
        f = open(logfile, "ab")
        self.p = subprocess.Popen(
            prefix + argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        f.close()
        self.killed_by_us = False
        PROCS.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def kill9(self):
        self.killed_by_us = True
        if self.alive():
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signal, wait, SIGKILL after timeout; returns the exit status."""
        self.killed_by_us = True
        if self.alive():
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s (pid %d) did not stop within %ds; SIGKILL" % (self.name, self.p.pid, timeout))
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        if self in PROCS:
            PROCS.remove(self)
        return self.p.returncode


def cleanup():
    for p in list(reversed(PROCS)):
        try:
            p.stop(signal.SIGTERM, 10)
        except Exception as e:  # noqa: BLE001 - cleanup goes on
            log("cleanup of %s: %s" % (p.name, e))
    if TMP and os.path.isdir(TMP):
        shutil.rmtree(TMP, ignore_errors=True)


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def http_status(url, timeout=2.0, method="GET", body=None):
    try:
        req = urllib.request.Request(url, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (OSError, ValueError):
        return None, b""


def wait_until(what, pred, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    raise RuntimeError("timed out after %ss waiting for %s" % (timeout, what))


# --- PostgreSQL ---------------------------------------------------------------------------
class Postgres:
    def __init__(self, root):
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(x) for x in d.split("/")[-2].split(".") if x.isdigit()])
        if not dirs:
            raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
        self.bin = dirs[-1]
        self.dir = os.path.join(root, "pg")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o700)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.proc = None
        pre = AS_POSTGRES if os.geteuid() == 0 else []
        r = subprocess.run(
            pre + [self.bin + "/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "-N"],
            capture_output=True, text=True, timeout=120, cwd=self.dir,
        )
        if r.returncode:
            raise RuntimeError("initdb failed: %s" % r.stderr[-2000:])

    def url(self, db="postgres"):
        return "postgres://postgres@127.0.0.1:%d/%s" % (self.port, db)

    def start(self):
        self.proc = Proc(
            "postgres",
            [self.bin + "/postgres", "-D", self.data, "-h", "127.0.0.1", "-p", str(self.port), "-k", self.dir,
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=400"],
            os.path.join(TMP, "postgres.log"), as_postgres=True, pdeathsig="INT",
        )
        wait_until("PostgreSQL", self.ready, 60)

    def ready(self):
        try:
            chaos_check.psql_rows(self.url(), "select 1", timeout=5)
            return True
        except Exception:  # noqa: BLE001
            return False

    def stop(self):
        if self.proc:
            self.proc.stop(signal.SIGINT, 30)
            self.proc = None

    def sql(self, sql):
        return chaos_check.psql_rows(self.url(), sql)


# --- NATS -----------------------------------------------------------------------------------
class Nats:
    def __init__(self, root, nodes=1, tag="n"):
        self.bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.n = nodes
        self.ports = [free_port() for _ in range(nodes)]
        self.cports = [free_port() for _ in range(nodes)] if nodes > 1 else []
        self.procs = [None] * nodes
        self.confs = []
        for i in range(nodes):
            d = os.path.join(root, "%s%d" % (tag, i))
            os.makedirs(os.path.join(d, "js"))
            conf = ["server_name: %s%d" % (tag, i), "listen: 127.0.0.1:%d" % self.ports[i],
                    'jetstream { store_dir: "%s" }' % os.path.join(d, "js")]
            if nodes > 1:
                routes = ", ".join("nats-route://127.0.0.1:%d" % p for j, p in enumerate(self.cports) if j != i)
                conf.append("cluster { name: chaos, listen: 127.0.0.1:%d, routes: [%s] }" % (self.cports[i], routes))
            path = os.path.join(d, "nats.conf")
            with open(path, "w") as f:
                f.write("\n".join(conf) + "\n")
            self.confs.append((path, os.path.join(d, "nats.log")))

    def url_for(self, i):
        """One server's URL: worker i talks to node i % n (the worker takes a single URL;
        async-nats learns the other cluster members from the server's INFO)."""
        return "nats://127.0.0.1:%d" % self.ports[i % self.n]

    def start_node(self, i):
        conf, logf = self.confs[i]
        self.procs[i] = Proc("nats-%d" % i, [self.bin, "-c", conf], logf, pdeathsig="TERM")

    def start(self):
        for i in range(self.n):
            self.start_node(i)
        self.wait_ready()

    def live_ports(self):
        return [p for i, p in enumerate(self.ports) if self.procs[i] and self.procs[i].alive()]

    def wait_ready(self, timeout=60):
        def ok():
            try:
                nc = chaos_check.connect(self.live_ports(), timeout=2)
                try:
                    r = nc.js_api("INFO", timeout=2)
                    return "error" not in r
                finally:
                    nc.close()
            except (OSError, NatsError, ValueError):
                return False

        wait_until("NATS JetStream", ok, timeout)

    def stop_node(self, i, sig=signal.SIGTERM):
        if self.procs[i]:
            self.procs[i].stop(sig, 20)

    def stop(self):
        for i in range(self.n):
            self.stop_node(i)


# --- simulator -------------------------------------------------------------------------------
BASE_PROFILE = {"latency_ms": 20, "jitter_ms": 30, "log_capacity": 5_000_000}


class Sim:
    def __init__(self, binary, profile):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        path = os.path.join(TMP, "sim-profile-%d.json" % self.port)
        with open(path, "w") as f:
            json.dump(profile, f)
        self.proc = Proc("simulator", [binary, "simulate", "--addr", "127.0.0.1:%d" % self.port, "--profile", path],
                         os.path.join(TMP, "simulator-%d.log" % self.port))
        wait_until("simulator", lambda: http_status(self.url + "/_sim/stats")[0] == 200, 30)

    def profile(self, profile):
        p = dict(profile)
        p.setdefault("log_capacity", BASE_PROFILE["log_capacity"])
        st, body = http_status(self.url + "/_sim/profile", 5, "POST", json.dumps(p).encode())
        if st != 200:
            raise RuntimeError("setting the simulator profile: %s %r" % (st, body[:200]))

    def stop(self):
        self.proc.stop(signal.SIGTERM, 15)


# --- workers ------------------------------------------------------------------------------------
def provider_env(cfg, sim_url):
    env = {}
    suffix = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "gemini": "/v1beta"}
    for p in cfg["providers"]:
        var = "".join(c if c.isalnum() else "_" for c in p["name"]).upper()
        env["SWITCHYARD_PROVIDERS__%s__BASE_URL" % var] = sim_url + suffix[p["kind"]]
        if p.get("api_key_env"):
            env[p["api_key_env"]] = "sk-sim-chaos"
    return env


class Worker:
    def __init__(self, run, idx):
        self.run = run
        self.idx = idx
        self.mport = free_port()
        self.proc = None
        self.starts = 0
        self.exits = []  # unexpected exit statuses

    def env(self):
        r = self.run
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
        env.update(provider_env(r.cfg, r.sim.url))
        env.update({
            "SWITCHYARD_CONFIG": CONFIG,
            "NATS_URL": r.nats.url_for(max(self.idx, 0)),
            "DATABASE_URL": r.db_url,
            "SWITCHYARD_NATS__PREFIX": PREFIX,
            "SWITCHYARD_METRICS__ADDR": "127.0.0.1:%d" % self.mport,
            "SWITCHYARD_LOG": os.environ.get("CHAOS_WORKER_LOG", "warn,switchyard::app=info"),
            "NO_COLOR": "1",
        })
        env.update(r.worker_env)
        return env

    def start(self):
        self.starts += 1
        self.proc = Proc("worker-%d" % self.idx, [self.run.bin, "worker"],
                         os.path.join(self.run.dir, "worker-%d.log" % self.idx), env=self.env())

    def ready(self):
        return http_status("http://127.0.0.1:%d/readyz" % self.mport, 1.0)[0] == 200

    def alive(self):
        return self.proc is not None and self.proc.alive()


# --- publishing -------------------------------------------------------------------------------
class Publisher(threading.Thread):
    """Publishes items ({subject, payload, headers, at}) at their times (seconds after
    start), each until JetStream acks it (reconnecting, trying every server), and
    records the ack's sequence in item["seq"]."""

    def __init__(self, ports_fn, items, deadline_s):
        super().__init__(daemon=True)
        self.ports_fn = ports_fn
        self.items = sorted(items, key=lambda it: it["at"])
        self.deadline_s = deadline_s
        self.error = None
        self.published = 0
        self.retries = 0
        self.t0 = None
        self.stop = threading.Event()

    def _connect(self):
        while not self.stop.is_set():
            ports = list(self.ports_fn())
            random.shuffle(ports)
            try:
                nc = chaos_check.connect(ports, timeout=3)
                sid = nc.subscribe(nc.inbox_prefix + ".ack.*")
                nc.flush()
                return nc, sid
            except (OSError, NatsError, ValueError):
                time.sleep(0.25)
        raise SystemExit

    def run(self):
        try:
            self._run()
        except SystemExit:
            pass
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            self.error = repr(e)

    def _run(self):
        self.t0 = time.monotonic()
        end = self.t0 + self.deadline_s
        nc, sid = self._connect()
        for n, it in enumerate(self.items):
            wait = self.t0 + it["at"] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            while True:
                if self.stop.is_set() or time.monotonic() > end:
                    raise RuntimeError("publishing gave up after %ss (%d of %d acked)" % (self.deadline_s, n, len(self.items)))
                try:
                    reply = "%s.ack.%d" % (nc.inbox_prefix, n)
                    nc.publish(it["subject"], it["payload"], reply=reply, headers=it.get("headers"))
                    nc.flush()
                    nc.sock.settimeout(3)
                    while True:
                        kind, msg = nc.read_op()
                        if kind == "MSG" and msg[1] == str(sid).encode() and msg[0] == reply.encode():
                            break
                    if msg[3].startswith(b"NATS/1.0 503"):
                        raise NatsError("no responders")
                    ack = json.loads(msg[4])
                    if "error" in ack:
                        raise NatsError(str(ack["error"]))
                    it["seq"] = ack["seq"]
                    it["duplicate"] = bool(ack.get("duplicate"))
                    self.published += 1
                    break
                except (OSError, NatsError, ValueError):
                    self.retries += 1
                    nc.close()
                    time.sleep(0.2)
                    nc, sid = self._connect()
        nc.close()


# --- one scenario run --------------------------------------------------------------------------
class Run:
    def __init__(self, h, name, nodes=1):
        self.h = h
        self.name = name
        self.bin = h.bin
        self.cfg = h.cfg
        self.dir = os.path.join(TMP, name)
        os.makedirs(self.dir)
        self.nats = Nats(self.dir, nodes)
        self.db = "chaos_" + name.replace("-", "_")
        self.db_url = h.pg.url(self.db)
        self.sim = None
        self.workers = []
        self.worker_env = {}
        self.recoveries = []
        self.notes = []
        self._mon = None

    # services
    def up(self, n_workers, worker_env, profile, budget_usd):
        self.worker_env = {
            "SWITCHYARD_WORKER__MAX_IN_FLIGHT": "64",
            "SWITCHYARD_WORKER__MAX_DELIVERIES": "5",
            "SWITCHYARD_WORKER__ACK_WAIT_S": "10",
            "SWITCHYARD_WORKER__RETRY_BASE_MS": "200",
            "SWITCHYARD_WORKER__RETRY_MAX_MS": "2000",
            "SWITCHYARD_WORKER__SHUTDOWN_GRACE_S": "10",
        }
        self.worker_env.update(worker_env)
        self.nats.start()
        self.h.pg.sql('create database "%s"' % self.db)
        self.sim = Sim(self.bin, dict(BASE_PROFILE, **profile))
        env = Worker(self, -1).env()
        for argv in (["migrate"], ["budget", "set", "--tenant", chaos_jobs.CAPPED, "--period", "day",
                                   "--limit", str(budget_usd), "--policy", "fail"]):
            r = subprocess.run([self.bin] + argv, env=env, capture_output=True, text=True, timeout=60)
            if r.returncode:
                raise RuntimeError("switchyard %s: %s" % (argv[0], r.stderr[-1500:]))
        self.workers = [Worker(self, i) for i in range(n_workers)]
        for w in self.workers:
            w.start()
        wait_until("workers ready", lambda: all(w.ready() for w in self.workers), 60)

    def stop_workers(self):
        """SIGTERM every worker (SIGKILL after 40 s); their exit statuses."""
        return [w.proc.stop(signal.SIGTERM, 40) for w in self.workers if w.proc]

    # monitoring
    def results_count(self):
        try:
            if self._mon is None:
                self._mon = chaos_check.connect(self.nats.live_ports(), timeout=2)
            return chaos_check.stream_info(self._mon, PREFIX.upper() + "_RESULTS", timeout=2)["state"]["messages"]
        except (OSError, NatsError, ValueError):
            if self._mon:
                self._mon.close()
            self._mon = None
            return None

    def jobs_left(self):
        try:
            if self._mon is None:
                self._mon = chaos_check.connect(self.nats.live_ports(), timeout=2)
            return chaos_check.stream_info(self._mon, PREFIX.upper() + "_JOBS", timeout=2)["state"]["messages"]
        except (OSError, NatsError, ValueError):
            if self._mon:
                self._mon.close()
            self._mon = None
            return None

    def succeeded_count(self):
        try:
            return int(chaos_check.psql_rows(self.db_url, "select count(*) as n from jobs where status = 'succeeded'", timeout=5)[0]["n"])
        except Exception:  # noqa: BLE001
            return None

    def watchdog(self):
        """Restart a worker that exited without being told to (and note it)."""
        for w in self.workers:
            if w.proc and not w.proc.alive() and not w.proc.killed_by_us:
                rc = w.proc.p.returncode
                w.exits.append(rc)
                self.notes.append("worker-%d exited by itself (status %s); restarted" % (w.idx, rc))
                log("worker-%d exited by itself (status %s); restarting it" % (w.idx, rc))
                PROCS.remove(w.proc) if w.proc in PROCS else None
                w.start()

    def sleep(self, s):
        end = time.monotonic() + s
        while time.monotonic() < end:
            self.watchdog()
            time.sleep(min(0.2, max(0, end - time.monotonic())))

    def recovery(self, label, metric=None, timeout=120):
        """Seconds from now (the fault's end) until every worker is ready again and
        results flow (the metric grows, or everything is done)."""
        metric = metric or self.results_count
        t = time.monotonic()
        base = None
        deadline = t + timeout
        while time.monotonic() < deadline:
            self.watchdog()
            if base is None:
                base = metric()
            ready = all(w.ready() for w in self.workers if w.alive())
            cur = metric()
            done = self.pub is not None and not self.pub.is_alive() and self.jobs_left() == 0
            if ready and base is not None and cur is not None and (cur > base or done):
                secs = time.monotonic() - t
                self.recoveries.append((label, round(secs, 1)))
                log("recovered from %s in %.1fs" % (label, secs))
                return secs
            time.sleep(0.1)
        self.recoveries.append((label, None))
        log("no recovery from %s within %ss" % (label, timeout))
        return None


# --- scenarios -----------------------------------------------------------------------------------
def valid_items(name, n, rate, seed):
    items, expected = [], {}
    for i, (tenant, jid, job) in enumerate(chaos_jobs.workload(name, n, seed)):
        items.append({
            "subject": "%s.jobs.%s.%s" % (PREFIX, random.Random(seed + i).choice(["high", "normal", "normal", "low"]), tenant),
            "payload": json.dumps(job).encode(),
            "headers": {"Nats-Msg-Id": "%s:%s" % (tenant, jid)},
            "at": i / rate,
        })
        expected[(tenant, jid)] = {"capped": tenant == chaos_jobs.CAPPED}
    return items, expected


class Scenario:
    name = ""
    what = ""
    nodes = 1
    workers = 3
    rate = 150
    tolerate = ()
    expect_success = True
    profile = {}

    def __init__(self, fast):
        self.fast = fast
        self.n = self.n_fast if fast else self.n_full

    n_full, n_fast = 3000, 300

    def env(self):
        return {}

    def items(self):
        return valid_items(self.name, self.n, self.rate, seed=sum(map(ord, self.name)))

    def fault(self, run, duration):
        pass


class Kill(Scenario):
    name = "kill"
    what = "kill -9 of a random worker at random moments, restarted at once; 3 workers"
    n_fast = 400

    def fault(self, run, duration):
        rounds = 3 if self.fast else 10
        rnd = random.Random(11)
        step = duration / (rounds + 1)
        for r in range(rounds):
            run.sleep(step * rnd.uniform(0.6, 1.2))
            w = rnd.choice(run.workers)
            log("round %d: kill -9 worker-%d (pid %d)" % (r + 1, w.idx, w.proc.pid))
            w.proc.kill9()
            PROCS.remove(w.proc) if w.proc in PROCS else None
            time.sleep(rnd.uniform(0.0, 0.5))
            w.start()
            run.recovery("kill %d" % (r + 1), timeout=60)


class Dup(Scenario):
    name = "dup"
    what = "every job published twice, the second copy (no Nats-Msg-Id) 1.3 s later, after a 1 s duplicate window, while the first still runs (simulator 1.5-2.5 s)"
    n_fast = 200
    profile = {"latency_ms": 1500, "jitter_ms": 1000}

    def env(self):
        return {"SWITCHYARD_NATS__DUPLICATE_WINDOW_S": "1", "SWITCHYARD_WORKER__MAX_IN_FLIGHT": "2000"}

    def items(self):
        items, expected = super().items()
        again = []
        for it in items:
            c = dict(it, at=it["at"] + 1.3, headers=None)
            again.append(c)
        return items + again, expected


class NatsRestart(Scenario):
    name = "nats"
    what = "nats-server restarted (SIGTERM, start) at 25% of the run, then stopped for 20 s at 55%"
    n_fast = 300

    def fault(self, run, duration):
        run.sleep(duration * 0.25)
        log("restarting nats-server")
        run.nats.stop_node(0)
        run.nats.start_node(0)
        run.nats.wait_ready()
        run.recovery("NATS restart")
        run.sleep(max(0.0, duration * 0.55 - (time.monotonic() - run.pub.t0)))
        down = 5 if self.fast else 20
        log("stopping nats-server for %ds" % down)
        run.nats.stop_node(0)
        run.sleep(down)
        run.nats.start_node(0)
        run.nats.wait_ready()
        run.recovery("NATS down %ds" % down)


class PgStop(Scenario):
    name = "postgres"
    what = "PostgreSQL stopped (fast shutdown) for 30 s at 30% of the run, then started again"
    n_fast = 300

    def fault(self, run, duration):
        run.sleep(duration * 0.3)
        down = 5 if self.fast else 30
        log("stopping PostgreSQL for %ds" % down)
        run.h.pg.stop()
        run.sleep(down)
        run.h.pg.start()
        run.recovery("Postgres down %ds" % down)


class ProviderOutage(Scenario):
    name = "provider"
    what = "every provider answers 503 for 8 s, then hangs for 8 s (provider timeout 3 s), then recovers"
    tolerate = ("providers_exhausted",)
    n_fast = 300

    def env(self):
        t = "2" if self.fast else "3"
        return {"SWITCHYARD_PROVIDERS__%s__TIMEOUT_S" % p.upper(): t for p in ("openai", "local", "anthropic", "gemini")}

    def fault(self, run, duration):
        run.sleep(duration * 0.2)
        phase = 3 if self.fast else 8
        log("simulator: every request fails with 503 for %ds" % phase)
        run.sim.profile(dict(BASE_PROFILE, error_rate=1.0, error_status=503))
        run.sleep(phase)
        log("simulator: every request hangs for %ds" % phase)
        run.sim.profile(dict(BASE_PROFILE, hang=True))
        run.sleep(phase)
        log("simulator: healthy again")
        run.sim.profile(BASE_PROFILE)
        run.recovery("provider outage", metric=run.succeeded_count)


class RateLimitStorm(Scenario):
    name = "429"
    what = "90% of requests answered 429 with retry-after 2 s for 10 s, then healthy"
    tolerate = ("providers_exhausted",)
    n_fast = 300

    def fault(self, run, duration):
        run.sleep(duration * 0.2)
        phase = 4 if self.fast else 10
        log("simulator: 429 storm for %ds" % phase)
        run.sim.profile(dict(BASE_PROFILE, error_rate=0.9, error_status=429, retry_after_s=2))
        run.sleep(phase)
        run.sim.profile(BASE_PROFILE)
        run.recovery("429 storm", metric=run.succeeded_count)


class Cluster(Scenario):
    name = "cluster"
    what = "3-node NATS cluster, R3 streams; the JOBS stream leader is killed (-9) at 40% of the run and stays down"
    nodes = 3
    n_fast = 300

    def env(self):
        return {"SWITCHYARD_NATS__REPLICAS": "3"}

    def fault(self, run, duration):
        run.sleep(duration * 0.4)
        leader = None
        try:
            nc = chaos_check.connect(run.nats.live_ports())
            leader = chaos_check.stream_info(nc, PREFIX.upper() + "_JOBS").get("cluster", {}).get("leader")
            nc.close()
        except (OSError, NatsError, ValueError) as e:
            log("stream info: %s" % e)
        idx = int(leader[1:]) if leader and leader[1:].isdigit() else 0
        log("kill -9 NATS node n%d (JOBS stream leader %s)" % (idx, leader))
        run.nats.stop_node(idx, signal.SIGKILL)
        run.recovery("NATS node killed")


class Poison(Scenario):
    name = "poison"
    what = "hostile jobs of 60 kinds mixed into a valid run; each must fail once with the right kind and a dead letter, no provider call"
    n_full, n_fast = 1000, 200
    MAX_PAYLOAD = 65536

    def env(self):
        return {"SWITCHYARD_LIMITS__MAX_PAYLOAD_BYTES": str(self.MAX_PAYLOAD)}

    def items(self):
        items, expected = super().items()
        dur = self.n / self.rate
        self.poison = chaos_jobs.poison(PREFIX, self.name, self.MAX_PAYLOAD)
        for i, p in enumerate(self.poison):
            items.append({"subject": p["subject"], "payload": p["payload"], "headers": None,
                          "at": dur * (i + 0.5) / len(self.poison), "poison": p})
        return items, expected


SCENARIOS = [Kill, Dup, NatsRestart, PgStop, ProviderOutage, RateLimitStorm, Cluster, Poison]
FAST = ["kill", "dup", "poison", "provider"]


class Harness:
    def __init__(self, binary, fast):
        self.bin = binary
        self.fast = fast
        with open(CONFIG, "rb") as f:
            self.cfg = tomllib.load(f)
        self.pg = Postgres(TMP)
        self.pg.start()

    def run(self, sc):
        log("=== %s: %s (%d jobs)" % (sc.name, sc.what, sc.n))
        started = time.monotonic()
        run = Run(self, sc.name, sc.nodes)
        run.pub = None
        summary = {"scenario": sc.name, "what": sc.what}
        try:
            run.up(sc.workers, sc.env(), sc.profile, budget_usd="0.002")
            items, expected = sc.items()
            duration = max(it["at"] for it in items)
            run.pub = Publisher(run.nats.live_ports, items, deadline_s=duration + 180)
            run.pub.start()
            time.sleep(0.05)
            sc.fault(run, duration)
            drain_timeout = 60 if self.fast else 240
            end = time.monotonic() + drain_timeout + duration
            while run.pub.is_alive() and time.monotonic() < end:
                run.sleep(0.5)
            if run.pub.error:
                run.notes.append("publisher: " + run.pub.error)
            for it in items:
                p = it.get("poison")
                if p:
                    if "seq" not in it:
                        run.notes.append("poison %r was never acked by JetStream" % p["kind"])
                        continue
                    key = (p["file_tenant"], p["file_id"] or "_seq%d" % it["seq"])
                    expected[key] = {"poison": p["kind"], "expect": p["expect"]}
            t_drain = time.monotonic()
            drained = False
            # done when every job has a result and the jobs stream is empty; given up when
            # nothing changed for `stall` seconds (longer than ack_wait + the retry delays)
            stall = 25 if self.fast else 45
            last, last_change = None, time.monotonic()
            while time.monotonic() < end:
                run.watchdog()
                rc, left = run.results_count(), run.jobs_left()
                if rc is not None and left == 0 and rc >= len(expected):
                    drained = True
                    break
                if (rc, left) != last:
                    last, last_change = (rc, left), time.monotonic()
                elif time.monotonic() - last_change > stall:
                    break
                time.sleep(0.5)
            if not drained:
                run.notes.append("did not drain: no progress for %ss (results %s of %d, jobs stream %s)" % (
                    stall, run.results_count(), len(expected), run.jobs_left()))
            else:
                time.sleep(1.0)  # let stragglers (second copies, late hand-backs) land
            summary["drain_s"] = round(time.monotonic() - t_drain, 1)
            summary["worker_exit_status"] = run.stop_workers()
            log("checking")
            summary.update(chaos_check.check({
                "prefix": PREFIX, "nats_ports": run.nats.live_ports(), "db_url": run.db_url,
                "sim_url": run.sim.url, "cfg": self.cfg, "expected": expected,
                "expect_success": sc.expect_success, "tolerate": set(sc.tolerate),
            }))
        except Exception as e:  # noqa: BLE001 - a broken scenario is reported, the rest go on
            import traceback

            traceback.print_exc()
            summary.update({"ok": False, "error": repr(e)})
        finally:
            try:
                for p in list(PROCS):
                    if p.name.startswith(("worker", "nats", "simulator")):
                        p.stop(signal.SIGKILL, 5)
            except Exception:  # noqa: BLE001
                pass
            if run._mon:
                run._mon.close()
        summary["recovery"] = run.recoveries
        summary["notes"] = run.notes
        summary["unexpected_worker_exits"] = sum(len(w.exits) for w in run.workers)
        summary["publish_retries"] = run.pub.retries if run.pub else None
        summary["seconds"] = round(time.monotonic() - started, 1)
        if summary.get("unexpected_worker_exits"):
            summary["ok"] = False
        log("=== %s: %s in %.0fs" % (sc.name, "PASS" if summary.get("ok") else "FAIL", summary["seconds"]))
        return summary


def table(summaries, commit):
    lines = [
        "| scenario | jobs | lost | duplicate calls (jobs) | calls repeated after kill -9 | cost rows missing | limits held | time to recover | other failed invariants | pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        rec = s.get("recovery") or []
        rec_txt = ", ".join("%s: %s" % (l, ("%ss" % v) if v is not None else "never") for l, v in rec) or "n/a"
        if len(rec) > 3:
            vals = [v for _, v in rec if v is not None]
            rec_txt = "max %ss over %d faults%s" % (max(vals) if vals else "?", len(rec), "" if len(vals) == len(rec) else " (%d never)" % (len(rec) - len(vals)))
        other = [k for k in (s.get("problems") or {}) if k not in ("lost", "duplicate calls", "cost rows missing")]
        if s.get("error"):
            other.append("harness error: " + s["error"])
        if s.get("unexpected_worker_exits"):
            other.append("%d unexpected worker exits" % s["unexpected_worker_exits"])
        lines.append("| %s | %s | %s | %s (%s) | %s | %s | %s | %s | %s | %s |" % (
            s["scenario"], s.get("jobs", "?"), s.get("lost", "?"), s.get("duplicate_calls", "?"),
            s.get("duplicate_call_jobs", "?"), s.get("repeated_after_kill", 0),
            s.get("cost_rows_missing", "?"),
            {True: "yes", False: "**no**"}.get(s.get("limits_held"), "?"), rec_txt,
            "; ".join(other) or "-", "yes" if s.get("ok") else "**no**"))
    return "\n".join(lines)


def main():
    global TMP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--fast", "--quick", action="store_true")
    ap.add_argument("--out", default=None, help="directory for summary.json, table.md and logs of failed runs")
    ap.add_argument("--keep-logs", action="store_true", help="copy every scenario's logs to --out")
    ap.add_argument("scenarios", nargs="*")
    a = ap.parse_args()
    names = [s.name for s in SCENARIOS]
    want = a.scenarios or (FAST if a.fast else names)
    for w in want:
        if w not in names:
            ap.error("unknown scenario %r (known: %s)" % (w, ", ".join(names)))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    TMP = tempfile.mkdtemp(prefix="switchyard-chaos.")
    os.chmod(TMP, 0o755)
    atexit.register(cleanup)
    out = a.out or tempfile.mkdtemp(prefix="switchyard-chaos-out.")
    os.makedirs(out, exist_ok=True)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    commit += "+changes" if dirty else ""
    log("commit %s, %s mode, scenarios: %s; temp dir %s" % (commit, "fast" if a.fast else "full", " ".join(want), TMP))
    h = Harness(os.path.abspath(a.bin), a.fast)
    by = {s.name: s for s in SCENARIOS}
    summaries = []
    t = time.monotonic()
    for w in want:
        s = h.run(by[w](a.fast))
        summaries.append(s)
        if a.keep_logs or not s.get("ok"):
            dst = os.path.join(out, "logs-" + w)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(TMP, w), dst, ignore=shutil.ignore_patterns("js", "jetstream"), dirs_exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump({"commit": commit, "fast": a.fast, "scenarios": summaries}, f, indent=1, default=list)
    total = time.monotonic() - t
    tab = table(summaries, commit)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(tab + "\n")
    print("\nchaos results against commit %s (%s mode, %.0f s):\n" % (commit, "fast" if a.fast else "full", total))
    print(tab)
    for s in summaries:
        for k, v in (s.get("problems") or {}).items():
            print("  %s: %s: %d, e.g. %s" % (s["scenario"], k, v["count"], "; ".join(v["examples"][:3])))
        for n in s.get("notes") or []:
            print("  %s: note: %s" % (s["scenario"], n))
    print("\nsummary: %s" % os.path.join(out, "summary.json"))
    passed = sum(1 for s in summaries if s.get("ok"))
    print("chaos: %d passed, %d failed" % (passed, len(summaries) - passed))
    return 0 if passed == len(summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
