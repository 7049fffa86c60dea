#!/usr/bin/env python3
"""Summarise a `switchyard submit --results` file for scripts/bench.sh.

    bench_results.py RESULTS.jsonl

Prints one JSON object: how many results, by status, and percentiles (nearest
rank) of queued_ms, latency_ms and queued_ms + latency_ms.  Both figures are the
worker's own: queued_ms runs from the JetStream publish timestamp to the moment
the worker took the message, latency_ms from then until the result was built
(provider calls included, before the Postgres commit and the result publish).
"""

import json
import math
import sys


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def main(path):
    queued, latency, total = [], [], []
    by_status = {}
    n = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            n += 1
            st = r.get("status", "?")
            if st == "failed":
                st = "failed/" + str((r.get("error") or {}).get("kind"))
            by_status[st] = by_status.get(st, 0) + 1
            q = int(r.get("queued_ms") or 0)
            l = int(r.get("latency_ms") or 0)
            queued.append(q)
            latency.append(l)
            total.append(q + l)
    out = {"n": n, "by_status": by_status}
    for name, vals in (("queued_ms", queued), ("latency_ms", latency), ("total_ms", total)):
        vals.sort()
        out[name] = {
            "p50": pct(vals, 50),
            "p90": pct(vals, 90),
            "p99": pct(vals, 99),
            "max": vals[-1] if vals else None,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
