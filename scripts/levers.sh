#!/usr/bin/env bash
# scripts/levers.sh -- the cost levers' figures (issue 14; BENCHMARKS.md "Cost levers
# (issue 14)"): one deterministic ingestion workload (30% exact repeats, 15% paraphrased
# questions, 40% low-priority bulk, 10% high priority; see tests/levers.rs) run through a
# real worker against the provider simulator, with the levers off, each alone, and all
# on; prints one table row per run: provider calls (live + batch lines), cache hits
# (calls avoided), spend and cache savings from Postgres, publish -> result p50/p99 for
# every job and for high priority, under a gpt-4o-mini that is slow on a fraction of
# calls.
#
# Usage: scripts/levers.sh      LEVERS_N (2000) jobs at LEVERS_RATE (200) jobs/s;
#        LEVERS_ONLY=<text>      only the runs whose name contains <text>.
# A benchmark, not part of scripts/test.sh (tests/levers.rs is #[ignore]d there).
# Needs NATS JetStream and Postgres (scripts/lib/services.sh starts them when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
sy_services_up
sy_log "levers: ${LEVERS_N:-2000} jobs at ${LEVERS_RATE:-200}/s, commit $(git rev-parse --short HEAD)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The table and each run's money check; the whole output when a run fails.
if ! cargo test --locked --test levers -- --ignored --nocapture levers_figures >"$log" 2>&1; then
	grep -vE '^\s*(Compiling|Finished|Running)' "$log" | tail -60
	exit 1
fi
grep -E '^(workload|\||check)' "$log"
