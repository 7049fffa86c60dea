#!/usr/bin/env python3
"""Figures of scripts/bench.sh: one record per measured run, medians, ratios.

    bench_report.py run RUNS.jsonl SECTION KIND RUN LOAD.json CPU_JSON [--extra K=V ...]
        Append one run (bench_load's JSON, bench_cpu.py diff's JSON, extra figures) to
        RUNS.jsonl and print it as one line. KIND is "switchyard" or "bare".
    bench_report.py summary RUNS.jsonl SECTION [--md FILE] [--figs FIGS.json]
        Print the runs of SECTION, the medians per KIND and, when both kinds ran, the
        ratio switchyard / bare of jobs/s; CPU microseconds per job per process (median
        over the runs). --md appends markdown table rows to FILE; --figs stores the
        medians in FIGS.json (for the ceilings and the latency section's rate).
    bench_report.py set FIGS.json KEY VALUE
    bench_report.py get FIGS.json KEY [FIELD]
    bench_report.py ceilings FIGS.json [--md FILE]
        Each end-to-end figure as a share of its ceiling (the bare parts and the bare
        loop), for the figures that were measured.

CPU per process: the worker (or the bare loop) and the responder by PID; "postgres"
and "nats-server" every process of that name; "driver" is bench_load's own CPU (it
reports it: it has exited before the second snapshot, so bench_cpu.py counts it in
"other", and it is taken out of "other" here); "other" is the rest of the machine's
busy time (other users' builds, the kernel, the script); "machine" all of it.
"""

import json
import statistics
import sys

PROCS = ["proc", "postgres", "nats-server", "responder", "driver", "other", "machine"]


def load_runs(path, section):
    out = []
    try:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r["section"] == section:
                    out.append(r)
    except FileNotFoundError:
        pass
    return out


def cpu_per_job(load, cpu, label):
    n = max(1, load.get("results") or load.get("n") or 1)
    driver = float(load.get("cpu_s") or 0.0)
    s = {
        "proc": cpu.get(label, 0.0),
        "postgres": cpu.get("postgres", 0.0),
        "nats-server": cpu.get("nats-server", 0.0),
        "responder": cpu.get("responder", 0.0),
        "driver": driver,
        "other": max(0.0, cpu.get("other", 0.0) - driver),
        "machine": cpu.get("busy_cpu_s", 0.0),
    }
    return {k: round(v * 1e6 / n, 1) for k, v in s.items()}, {k: round(v, 2) for k, v in s.items()}


def cmd_run(argv):
    runs, section, kind, run, load_path, cpu_json = argv[:6]
    extra = {}
    rest = argv[6:]
    for i, a in enumerate(rest):
        if a == "--extra" and i + 1 < len(rest):
            k, _, v = rest[i + 1].partition("=")
            extra[k] = v
    with open(load_path) as f:
        load = json.load(f)
    cpu = json.loads(cpu_json)
    label = "worker" if kind == "switchyard" else "bare"
    us, secs = cpu_per_job(load, cpu, label)
    rec = {
        "section": section,
        "kind": kind,
        "run": int(run),
        "load": load,
        "cpu_s": secs,
        "cpu_us_per_job": us,
        "busy_pct": cpu.get("busy_pct"),
        "wall_s": cpu.get("wall_s"),
        "top_other": cpu.get("top_other"),
        "kernel_s": (cpu.get("kernel") or {}).get(label),
        "extra": extra,
    }
    with open(runs, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("   %s" % line(rec))
    return 0


def lat(load):
    l = load["latency_ms"]
    return "p50 %.1f / p90 %.1f / p99 %.1f / max %.1f ms" % (l["p50"], l["p90"], l["p99"], l["max"])


def cpu_text(us, label):
    names = {"proc": label}
    return ", ".join("%s %s" % (names.get(k, k), fmt_us(us[k])) for k in PROCS)


def fmt_us(v):
    return "%.0f" % v if v >= 10 else "%.1f" % v


def line(rec):
    load = rec["load"]
    label = "worker" if rec["kind"] == "switchyard" else "bare loop"
    ok = "%d/%d results (%d succeeded)" % (load["results"], load["n"], load["succeeded"])
    head = "%-10s run %d: %s jobs/s over %.2f s, %s; %s" % (
        rec["kind"], rec["run"], "%.0f" % load["jobs_per_s"], load["first_publish_to_last_result_s"],
        ok, lat(load))
    if load.get("mode") == "open":
        head += "; schedule lag max %.1f ms" % load.get("schedule_lag_ms", 0)
    other = ""
    if rec.get("top_other"):
        other = " [other: %s]" % ", ".join("%s %.1f s" % (c, v) for c, v in rec["top_other"])
    kernel = ""
    if rec.get("kernel_s") is not None and rec["cpu_s"].get("proc"):
        kernel = "; %s in the kernel %.0f%%" % (label, 100.0 * rec["kernel_s"] / rec["cpu_s"]["proc"])
    return head + "\n              CPU µs/job: %s (machine busy %.0f%%%s)%s" % (
        cpu_text(rec["cpu_us_per_job"], label), rec.get("busy_pct") or 0, kernel, other)


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def medians(rs):
    return {
        "jobs_per_s": med([r["load"]["jobs_per_s"] for r in rs]),
        "min": min(r["load"]["jobs_per_s"] for r in rs),
        "max": max(r["load"]["jobs_per_s"] for r in rs),
        "p50": med([r["load"]["latency_ms"]["p50"] for r in rs]),
        "p99": med([r["load"]["latency_ms"]["p99"] for r in rs]),
        "us": {k: med([r["cpu_us_per_job"][k] for r in rs]) for k in PROCS},
        "runs": len(rs),
    }


def read_figs(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def write_figs(path, figs):
    with open(path, "w") as f:
        json.dump(figs, f, indent=1)


def opt(argv, name):
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def cmd_summary(argv):
    runs, section = argv[:2]
    md, figs_path = opt(argv, "--md"), opt(argv, "--figs")
    rs = load_runs(runs, section)
    by = {}
    for r in rs:
        by.setdefault(r["kind"], []).append(r)
    rows = []
    figs = read_figs(figs_path) if figs_path else {}
    for kind in ("switchyard", "bare"):
        if kind not in by:
            continue
        m = medians(by[kind])
        label = "worker" if kind == "switchyard" else "bare loop"
        figs["%s.%s" % (section, kind)] = m
        spread = "%.0f–%.0f over %d runs" % (m["min"], m["max"], m["runs"])
        print("   %-10s median %.0f jobs/s (%s); latency p50 %.1f ms, p99 %.1f ms (medians)" % (
            kind, m["jobs_per_s"], spread, m["p50"], m["p99"]))
        print("              CPU µs/job (medians): %s" % cpu_text(m["us"], label))
        name = "switchyard (every feature on)" if kind == "switchyard" else "bare loop"
        if section == "latency":
            rows.append("| latency: %s at %s jobs/s open loop, publish → result p50 / p99 | **%.1f / %.1f ms** (max %.1f) |" % (
                name, by[kind][0]["extra"].get("rate", "?"), m["p50"], m["p99"],
                med([r["load"]["latency_ms"]["max"] for r in by[kind]])))
        else:
            rows.append("| %s: %s jobs/s, median | **%.0f** (%s) |" % (section, name, m["jobs_per_s"], spread))
            rows.append("| %s: %s publish → result p50 / p99 (medians) | %.0f / %.0f ms |" % (section, name, m["p50"], m["p99"]))
        rows.append("| %s: %s CPU µs/job (medians) | %s |" % (section, name, cpu_text(m["us"], label)))
    if "switchyard" in by and "bare" in by and section == "e2e":
        s, b = figs["e2e.switchyard"]["jobs_per_s"], figs["e2e.bare"]["jobs_per_s"]
        ratio = s / b if b else 0.0
        figs["e2e.ratio"] = ratio
        print("   ratio switchyard / bare loop (medians of jobs/s): %.2f (target >= 0.8)" % ratio)
        rows.append("| e2e: **ratio switchyard / bare loop** | **%.2f** (target ≥ 0.8) |" % ratio)
        w = figs["e2e.switchyard"]["us"]["proc"]
        print("   worker CPU per job: %.0f µs (target <= 80 µs)" % w)
    if figs_path:
        write_figs(figs_path, figs)
    if md:
        with open(md, "a") as f:
            f.write("\n".join(rows) + ("\n" if rows else ""))
    return 0


def cmd_ceilings(argv):
    figs = read_figs(argv[0])
    md = opt(argv, "--md")
    sy = figs.get("e2e.switchyard", {}).get("jobs_per_s")
    if not sy:
        print("   (no end-to-end figure: run the e2e section too)")
        return 0
    ceilings = [
        ("bare loop (median)", figs.get("e2e.bare", {}).get("jobs_per_s"), "jobs/s"),
        ("JetStream publish (Rust client, window 1024)", figs.get("parts.js_publish"), "msg/s"),
        ("JetStream pull 500 + ack (Rust client)", figs.get("parts.js_consume"), "msg/s"),
        ("Postgres UNNEST insert, 2 rows per job", figs.get("parts.pg_jobs"), "jobs/s"),
        ("responder alone (wrk)", figs.get("parts.responder"), "req/s"),
    ]
    rows = []
    for name, v, unit in ceilings:
        if not v:
            continue
        v = float(v)
        print("   %-48s %8.0f %-7s switchyard %.0f jobs/s = %.2f of it" % (name, v, unit, sy, sy / v))
        rows.append("| ceiling: %s | %.0f %s; switchyard's median e2e = %.2f of it |" % (name, v, unit, sy / v))
    if md:
        with open(md, "a") as f:
            f.write("\n".join(rows) + ("\n" if rows else ""))
    return 0


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run" and len(rest) >= 6:
        return cmd_run(rest)
    if cmd == "summary" and len(rest) >= 2:
        return cmd_summary(rest)
    if cmd == "ceilings" and rest:
        return cmd_ceilings(rest)
    if cmd == "set" and len(rest) == 3:
        figs = read_figs(rest[0])
        figs[rest[1]] = float(rest[2])
        write_figs(rest[0], figs)
        return 0
    if cmd == "get" and len(rest) in (2, 3):
        v = read_figs(rest[0]).get(rest[1])
        if len(rest) == 3 and isinstance(v, dict):
            v = v.get(rest[2])
        print("" if v is None else v)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
