#!/usr/bin/env python3
"""CPU accounting for scripts/bench.sh: where did the machine's CPU time go?

    bench_cpu.py snap OUT.json
        Saves the machine's busy/total jiffies (/proc/stat) and every process's
        utime+stime (/proc/PID/stat) with its command name.
    bench_cpu.py diff BEFORE.json AFTER.json [--name LABEL=PID ...] [--pg-db NAME]
        Prints one JSON object: wall-clock CPU-seconds per group over the interval.
        Groups: each --name LABEL=PID (that process; "kernel" has the part of its
        time spent in the kernel, stime), "nats-server" and "postgres"
        (every process with that command name; with --pg-db, only the backends
        connected to database NAME and the server's shared processes (WAL writer,
        checkpointer, background writer, autovacuum ...): the backends of other
        databases, other users' tests on a shared server, count as "other" under
        the name "postgres (other databases)"), "other" (the rest of the machine's
        busy time: the submit client, the kernel, other users' builds ...),
        "top_other" (the five command names that used most of it, among the
        processes alive at both snapshots or started in between and still alive),
        and "busy_pct" (share of all cores busy), "cores".

Processes that exited between the snapshots are only counted in "other" (their
ticks are part of the machine's busy time but not of any process we saw twice).
"""

import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def machine():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def procs():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                s = f.read()
        except OSError:
            continue
        lp, rp = s.find("("), s.rfind(")")
        comm = s[lp + 1 : rp]
        rest = s[rp + 2 :].split()
        # fields after comm: state(0) ppid(1) ... utime(11) stime(12)
        try:
            ticks = int(rest[11]) + int(rest[12])
            stime = int(rest[12])
            start = rest[19]
        except (IndexError, ValueError):
            continue
        db = None
        if comm == "postgres":
            db = pg_database(pid)
        out[pid] = [comm, ticks, start, db, stime]
    return out


def pg_database(pid):
    """The database of a backend, from its process title ("postgres: [15/main: ]user
    db host(port) state"); "" for the server's own processes."""
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            title = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""
    words = title.split()
    if len(words) >= 4 and words[0] == "postgres:" and words[1].endswith(":"):
        words = words[:1] + words[2:]  # cluster name
    if len(words) >= 4 and ("(" in words[3] or words[3] in ("[local]", "local")):
        return words[2]
    return ""


def snap(path):
    busy, total = machine()
    with open(path, "w") as f:
        json.dump({"busy": busy, "total": total, "procs": procs()}, f)


def diff(a_path, b_path, names, pg_db=None):
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    cores = os.cpu_count() or 1
    busy = (b["busy"] - a["busy"]) / HZ
    total = (b["total"] - a["total"]) / HZ
    groups = {label: 0.0 for label in names}
    groups["nats-server"] = 0.0
    groups["postgres"] = 0.0
    by_pid = {pid: label for label, pid in names.items()}
    kernel = {label: 0.0 for label in names}
    others = {}
    for pid, entry in b["procs"].items():
        comm, ticks, start = entry[:3]
        db = entry[3] if len(entry) > 3 else None
        before = a["procs"].get(pid)
        if before and before[2] == start:
            d = (ticks - before[1]) / HZ
        else:
            d = ticks / HZ  # started during the interval
        if d <= 0:
            continue
        if pid in by_pid:
            groups[by_pid[pid]] += d
            if len(entry) > 4:
                was = before[4] if before and before[2] == start and len(before) > 4 else 0
                kernel[by_pid[pid]] += (entry[4] - was) / HZ
        elif comm == "nats-server":
            groups["nats-server"] += d
        elif comm == "postgres" or comm.startswith("postgres"):
            if pg_db and db and db != pg_db:
                others["postgres (other databases)"] = others.get("postgres (other databases)", 0.0) + d
            else:
                groups["postgres"] += d
        else:
            others[comm] = others.get(comm, 0.0) + d
    known = sum(groups.values())
    groups["other"] = max(0.0, busy - known)
    out = {k: round(v, 2) for k, v in groups.items()}
    top = sorted(others.items(), key=lambda kv: -kv[1])[:5]
    out["top_other"] = [[c, round(v, 2)] for c, v in top if v >= 0.05]
    out["kernel"] = {k: round(v, 2) for k, v in kernel.items()}
    out["busy_cpu_s"] = round(busy, 2)
    out["busy_pct"] = round(100.0 * busy / total, 1) if total > 0 else None
    out["wall_s"] = round(total / cores, 2)
    out["cores"] = cores
    print(json.dumps(out))


def main(argv):
    if len(argv) >= 2 and argv[0] == "snap":
        snap(argv[1])
        return 0
    if len(argv) >= 3 and argv[0] == "diff":
        names = {}
        pg_db = None
        rest = argv[3:]
        i = 0
        while i < len(rest):
            if rest[i] == "--name" and i + 1 < len(rest):
                label, _, pid = rest[i + 1].partition("=")
                names[label] = pid
                i += 2
            elif rest[i] == "--pg-db" and i + 1 < len(rest):
                pg_db = rest[i + 1]
                i += 2
            else:
                i += 1
        diff(argv[1], argv[2], names, pg_db)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
