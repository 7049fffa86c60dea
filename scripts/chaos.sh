#!/usr/bin/env bash
# scripts/chaos.sh -- prove (or disprove) switchyard's delivery guarantees under faults.
#
# Usage: scripts/chaos.sh [--fast|--quick] [--out DIR] [--keep-logs] [SCENARIO...]
#
# Each scenario starts its OWN throwaway services on free loopback ports (nats-server,
# or a 3-node cluster; a PostgreSQL cluster initdb'ed in a temp dir; the provider
# simulator `switchyard simulate`) and 3 workers, publishes a workload (3000 jobs at
# 150/s; --fast: a few hundred), injects its fault, waits for the run to drain and checks
# (scripts/lib/chaos_check.py):
#   every job has exactly one terminal result; the results stream and the jobs table
#   agree; cost rows match the simulator's request log call for call (per job and
#   provider+model); no job made more than one successful provider call; no `fail`
#   budget is exceeded; nothing is left in the jobs stream.
#
# Scenarios (default: all; --fast: kill dup poison provider with fewer jobs/rounds):
#   kill      kill -9 of a random worker, ten rounds, restarted each time
#   dup       every job published twice, the copy after a 1 s duplicate window while
#             the first still runs
#   nats      nats-server restarted mid-run, later stopped for 20 s
#   postgres  PostgreSQL stopped for 30 s mid-run
#   provider  every provider errors (503) then hangs, then recovers
#   429       a 429 storm with retry-after
#   cluster   3-node NATS cluster, R3 streams, the jobs stream leader killed mid-run
#   poison    60 kinds of hostile jobs mixed into a valid run
#
# Environment: SWITCHYARD_BIN (use this binary instead of building), CARGO_TARGET_DIR
# (default $HOME/.cache/switchyard-target), CHAOS_WORKER_LOG (worker log filter).
# Output: a table on stdout, summary.json and table.md in --out (default: a new temp
# dir, printed), and the logs of every failed scenario. Exit status 1 when an
# invariant failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

for a in "$@"; do
	case $a in
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	esac
done

# tools: nats-server, PostgreSQL server binaries, psql, python3 (3.11+), setpriv
if ! sy__find_nats_server >/dev/null; then
	sy__apt_install nats-server
fi
if ! sy__find_pg_bindir >/dev/null; then
	sy__apt_install postgresql postgresql-client
fi
sy__ensure_psql
if ((EUID == 0)); then
	sy__ensure_pg_user
fi
for t in python3 setpriv; do
	command -v "$t" >/dev/null 2>&1 || {
		sy_log "$t is required"
		exit 1
	}
done
python3 -c 'import sys, tomllib; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
	sy_log "python 3.11+ is required (tomllib)"
	exit 1
}
sy_ensure_ulimit 65536

if [[ -n ${SWITCHYARD_BIN:-} ]]; then
	BIN=$SWITCHYARD_BIN
else
	export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
	sy_log "building the release binary"
	cargo build --release --locked --quiet
	BIN=$CARGO_TARGET_DIR/release/switchyard
fi
PATH=$(dirname "$(sy__find_nats_server)"):$PATH python3 "$ROOT/scripts/lib/chaos.py" --bin "$BIN" "$@"
