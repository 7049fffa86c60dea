"""The invariant checker of scripts/chaos.sh (Python stdlib + MiniNats + psql).

After a scenario it reads the results and DLQ streams (every message, by sequence),
the jobs stream's message count, the `jobs`, `cost_rows` and `budgets` tables and the
simulator's request log, and checks, per submitted job:

  lost            no result at <prefix>.results.<tenant>.<id>, no jobs row, or a row
                  still `running`
  disagree        the result's status / error kind differs from the jobs row
  missing rows    simulator requests (attributed to the job by the `job <tenant>/<id>:`
                  prompt prefix) without a cost row, per provider+model
  extra rows      cost rows without a simulator request (but a `worker_lost` row, a
                  call whose worker died after recording it and maybe before sending
                  it, counted apart as `worker_lost_unsent`)
  duplicate calls a job with more than one successful (200) provider call, beyond the
                  calls whose answer died with a killed worker (cost row
                  `worker_lost`: such a call has to be made again; counted apart as
                  `repeated_after_kill`)
  cost sum        a succeeded job whose jobs.cost_usd != sum of its cost rows
  limits          a `fail` budget whose spent_usd, or the tenant's cost rows, exceed
                  limit_usd; reserved_usd left over after the run
  leftover        messages still in the jobs stream
plus what the scenario expects of outcomes (all valid jobs succeed, poison jobs fail
with the right kind and a dead letter and no provider call).
"""

import base64
import collections
import csv
import decimal
import io
import json
import subprocess
import time
import urllib.request

from chaos_jobs import TAG_RE
from nats_delete_streams import MiniNats, NatsError

D = decimal.Decimal


# --- NATS --------------------------------------------------------------------------
def connect(ports, timeout=5.0):
    last = None
    for p in ports:
        try:
            return MiniNats("127.0.0.1", p, timeout=timeout, name="switchyard-chaos")
        except (OSError, NatsError, ValueError) as e:
            last = e
    raise NatsError("no NATS server answers on %s: %s" % (ports, last))


def stream_info(nc, stream, timeout=5.0):
    r = nc.js_api("STREAM.INFO." + stream, timeout=timeout)
    if "error" in r:
        raise NatsError("STREAM.INFO %s: %s" % (stream, r["error"]))
    return r


def read_stream(nc, stream):
    """Every message of a stream as {subject: payload bytes} (by sequence, pipelined)."""
    st = stream_info(nc, stream)["state"]
    first, last = st.get("first_seq", 0), st.get("last_seq", 0)
    out = {}
    if not st.get("messages"):
        return out
    inbox = nc.inbox_prefix + ".get"
    sid = nc.subscribe(inbox + ".*")
    nc.flush()
    seq = first
    batch = 512
    nc.sock.settimeout(15)
    while seq <= last:
        hi = min(last, seq + batch - 1)
        for s in range(seq, hi + 1):
            nc.publish("$JS.API.STREAM.MSG.GET." + stream, json.dumps({"seq": s}).encode(), reply="%s.%d" % (inbox, s))
        nc.flush()
        want = hi - seq + 1
        got = 0
        while got < want:
            kind, msg = nc.read_op()
            if kind != "MSG" or msg[1] != str(sid).encode():
                continue
            got += 1
            r = json.loads(msg[4])
            m = r.get("message")
            if m:
                out[m["subject"]] = base64.b64decode(m.get("data") or "")
        seq = hi + 1
    nc.write(b"UNSUB %d\r\n" % sid)
    nc.flush()
    return out


# --- Postgres ------------------------------------------------------------------------
def psql_rows(db_url, sql, timeout=60):
    out = subprocess.run(
        ["psql", "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-d", db_url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PGCONNECT_TIMEOUT": "5", "PATH": "/usr/bin:/bin"},
    )
    if out.returncode != 0:
        raise RuntimeError("psql: %s" % out.stderr.strip())
    return list(csv.DictReader(io.StringIO(out.stdout)))


# --- simulator ---------------------------------------------------------------------------
def sim_log(sim_url):
    with urllib.request.urlopen(sim_url + "/_sim/log?limit=100000000", timeout=60) as r:
        return json.loads(r.read())


def model_map(cfg):
    """config model name -> (simulator api, upstream id)."""
    api = {}
    for p in cfg.get("providers", []):
        api[p["name"]] = "openai" if p["kind"] in ("openai", "openai_compatible") else p["kind"]
    return {m["name"]: (api[m["provider"]], m.get("upstream", m["name"])) for m in cfg.get("models", [])}


# --- the check -------------------------------------------------------------------------
def check(ctx):
    """ctx: dict with prefix, nats_ports, db_url, sim_url, cfg (parsed TOML), expected
    ({(tenant, id): spec}), budgets_tenants, expect_success (bool), tolerate (set of error
    kinds acceptable for valid jobs). Returns a summary dict."""
    prefix = ctx["prefix"]
    P = prefix.upper()
    nc = connect(ctx["nats_ports"])
    results_raw = read_stream(nc, P + "_RESULTS")
    dlq_raw = read_stream(nc, P + "_DLQ")
    jobs_left = stream_info(nc, P + "_JOBS")["state"]["messages"]
    nc.close()

    def key_of(subject, kind):
        # <prefix>.<kind>.<tenant>.<id>
        parts = subject.split(".", 3)
        return (parts[2], parts[3]) if len(parts) == 4 and parts[1] == kind else None

    results = {}
    for subj, data in results_raw.items():
        k = key_of(subj, "results")
        try:
            results[k] = json.loads(data)
        except ValueError:
            results[k] = {"status": "<unparseable>"}
    dlq = {}
    for subj, data in dlq_raw.items():
        try:
            dlq[key_of(subj, "dlq")] = json.loads(data)
        except ValueError:
            dlq[key_of(subj, "dlq")] = {}

    db = ctx["db_url"]
    jobs = {(r["tenant"], r["id"]): r for r in psql_rows(db, "select tenant, id, status, error_kind, cost_usd, deliveries from jobs")}
    crow = collections.defaultdict(list)
    for r in psql_rows(db, "select tenant, job_id, attempt, provider, model, outcome, cost_usd from cost_rows"):
        crow[(r["tenant"], r["job_id"])].append(r)
    budgets = psql_rows(db, "select tenant, coalesce(feature, '') as feature, period, limit_usd, spent_usd, reserved_usd, policy from budgets")

    mm = model_map(ctx["cfg"])
    calls = collections.defaultdict(list)
    unattributed = 0
    log = sim_log(ctx["sim_url"])
    for e in log:
        m = TAG_RE.match(e.get("prompt") or "")
        if not m:
            unattributed += 1
            continue
        calls[(m.group(1), m.group(2))].append(e)

    expected = ctx["expected"]
    problems = collections.defaultdict(list)  # invariant -> [example keys/messages]
    counts = collections.Counter()
    outcome = collections.Counter()
    for key, spec in expected.items():
        res, row = results.get(key), jobs.get(key)
        if res is None or row is None or row["status"] == "running":
            why = "no result" if res is None else ("no jobs row" if row is None else "row still running")
            problems["lost"].append("%s/%s (%s)" % (key + (why,)))
        if res is not None and row is not None:
            rk = (res.get("error") or {}).get("kind") or ""
            if res.get("status") != row["status"] or rk != (row["error_kind"] or ""):
                problems["results vs jobs table"].append(
                    "%s/%s (result %s %s, row %s %s)" % (key + (res.get("status"), rk, row["status"], row["error_kind"]))
                )
        status = (res or {}).get("status") or (row or {}).get("status") or "missing"
        kind = ((res or {}).get("error") or {}).get("kind") or (row or {}).get("error_kind") or ""
        outcome[status + (":" + kind if kind else "")] += 1
        # calls vs cost rows, per provider+model
        sim_c = collections.Counter((e["api"], e["model"]) for e in calls.get(key, []))
        row_c = collections.Counter(mm.get(r["model"], (r["provider"], r["model"])) for r in crow.get(key, []))
        miss = sum((sim_c - row_c).values())
        extra = sum((row_c - sim_c).values())
        # A `worker_lost` row whose request never reached the provider (the worker died
        # between writing the row and sending): recorded as a possible call at cost 0.
        unsent = min(extra, sum(1 for r in crow.get(key, []) if r["outcome"] == "worker_lost"))
        counts["worker_lost rows without a request"] += unsent
        extra -= unsent
        if miss:
            counts["cost rows missing"] += miss
            problems["cost rows missing"].append("%s/%s (%d)" % (key + (miss,)))
        if extra:
            counts["cost rows without a call"] += extra
            problems["cost rows without a call"].append("%s/%s (%d)" % (key + (extra,)))
        ok_calls = sum(1 for e in calls.get(key, []) if e["status"] == 200 and e.get("fault") is None)
        # A call whose answer died with a kill -9'd worker (its row says worker_lost) has to
        # be made again: counted apart, it is not a call repeated by our own failure.
        lost_answers = sum(1 for r in crow.get(key, []) if r["outcome"] == "worker_lost")
        repeated = min(max(ok_calls - 1, 0), lost_answers)
        counts["repeated after kill"] += repeated
        if ok_calls - repeated > 1:
            counts["duplicate calls"] += ok_calls - repeated - 1
            problems["duplicate calls"].append("%s/%s (%d successful calls)" % (key + (ok_calls,)))
        if row is not None and row["status"] == "succeeded":
            s = sum((D(r["cost_usd"]) for r in crow.get(key, [])), D(0))
            if D(row["cost_usd"]) != s:
                problems["jobs.cost_usd != sum(cost_rows)"].append("%s/%s (%s vs %s)" % (key + (row["cost_usd"], s)))
        # what the scenario expects of this job
        if spec.get("poison"):
            if status != "failed" or kind not in spec["expect"]:
                problems["poison: wrong outcome"].append(
                    "%s [%s/%s]: %s %s, want %s" % (spec["poison"], key[0], key[1], status, kind, "|".join(sorted(spec["expect"])))
                )
            d = dlq.get(key)
            if d is None or ((d.get("error") or {}).get("kind") not in spec["expect"]):
                problems["poison: no dead letter"].append("%s [%s/%s]" % (spec["poison"], key[0], key[1]))
            if calls.get(key):
                problems["poison: provider called"].append("%s [%s/%s]" % (spec["poison"], key[0], key[1]))
        elif status == "failed":
            if spec.get("capped") and kind == "budget_exceeded":
                pass
            elif kind in ctx.get("tolerate", ()):
                pass
            elif ctx.get("expect_success", True):
                problems["valid job failed"].append("%s/%s (%s)" % (key + (kind,)))
            if key not in dlq:
                problems["failed without dead letter"].append("%s/%s" % key)

    unexpected = sorted(set(results) - set(expected)) + sorted(set(jobs) - set(expected) - set(results))
    for k in unexpected[:1000]:
        problems["unexpected result or row"].append("%s/%s" % k)
    if unattributed:
        problems["simulator requests without a job tag"].append(str(unattributed))

    # budgets
    limits_held = True
    tenant_cost = collections.Counter()
    for rows in crow.values():
        for r in rows:
            tenant_cost[r["tenant"]] += D(r["cost_usd"])
    for b in budgets:
        lim, spent, res_ = D(b["limit_usd"]), D(b["spent_usd"]), D(b["reserved_usd"])
        if b["policy"] == "fail" and spent > lim:
            limits_held = False
            problems["budget exceeded"].append("%s: spent %s > limit %s" % (b["tenant"], spent, lim))
        if b["policy"] == "fail" and not b["feature"] and tenant_cost[b["tenant"]] > lim:
            limits_held = False
            problems["budget exceeded"].append("%s: cost rows sum %s > limit %s" % (b["tenant"], tenant_cost[b["tenant"]], lim))
        if res_ != 0:
            problems["budget reservation left over"].append("%s: reserved_usd %s" % (b["tenant"], res_))
    if jobs_left:
        problems["jobs stream not empty"].append("%d messages" % jobs_left)

    lost = len(problems.get("lost", []))
    return {
        "jobs": len(expected),
        "lost": lost,
        "duplicate_calls": counts["duplicate calls"],
        "duplicate_call_jobs": len(problems.get("duplicate calls", [])),
        "repeated_after_kill": counts["repeated after kill"],
        "worker_lost_unsent": counts["worker_lost rows without a request"],
        "cost_rows_missing": counts["cost rows missing"],
        "cost_rows_extra": counts["cost rows without a call"],
        "limits_held": limits_held,
        "jobs_stream_left": jobs_left,
        "sim_requests": len(log),
        "cost_rows": sum(len(v) for v in crow.values()),
        "outcomes": dict(outcome),
        "budgets": [
            {k: b[k] for k in ("tenant", "limit_usd", "spent_usd", "reserved_usd", "policy")} for b in budgets
        ],
        "capped_cost_rows_usd": str(tenant_cost.get("capped", D(0))),
        "problems": {k: {"count": len(v), "examples": v[:5]} for k, v in problems.items()},
        "ok": not problems,
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
