#!/usr/bin/env bash
# scripts/demo.sh -- the whole pipeline on one machine, in about a minute:
#
#   NATS JetStream + PostgreSQL (reused when they answer, else throwaway ones),
#   the provider simulator (20-50 ms answers, 2% injected 503s so that failover
#   and retries show), ONE worker, and the three example files submitted at
#   once (high, normal and low priority) with --wait; then a summary from
#   Postgres (status, provider/model, cost per tenant and feature) and one
#   succeeded and one failed job as `switchyard status` shows them.
#
# Usage: scripts/demo.sh            (as root on a fresh Debian/Ubuntu machine is fine)
#   KEEP=1 scripts/demo.sh          keep the demo database and streams afterwards
#   CARGO_TARGET_DIR=...            where to build (default ~/.cache/switchyard-target)
#   NATS_URL / DATABASE_URL         use these servers (see scripts/lib/services.sh)
#
# Exit status: 0 when every submitted job got a terminal result and the worker
# stopped cleanly on SIGTERM; non-zero otherwise.  Nothing is written into the
# repository; logs go to a temp dir that is kept and printed at the end.
# shellcheck disable=SC2317  # functions below run from exit hooks
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

if [[ -t 1 ]]; then
	say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	say() { printf '\n== %s\n' "$*"; }
fi
export NO_COLOR=1 # plain log files
redact() { sed -E 's#^([^:/]+://[^:@/]+):[^@/]*@#\1:***@#' <<<"$1"; }
# nats_hostport URL -> "HOST PORT" of the first server of a NATS URL
nats_hostport() {
	local hp=${1%%,*}
	hp=${hp#*://}
	hp=${hp%%/*}
	hp=${hp##*@}
	if [[ $hp == \[* ]]; then
		local h=${hp%%]*}
		h=${h#[}
		hp=${hp#*]}
		echo "$h ${hp#:}"
	elif [[ $hp == *:* ]]; then
		echo "${hp%%:*} ${hp#*:}"
	else
		echo "${hp:-127.0.0.1} 4222"
	fi
}

# --- tools a fresh machine may lack ----------------------------------------
demo_apt() {
	local opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
	if [[ -z ${DEMO_APT_UPDATED:-} ]]; then
		sy_log "running apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q update >&2
		DEMO_APT_UPDATED=1
	fi
	sy_log "installing $* with apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q install -y --no-install-recommends "$@" >&2
}
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if ((${#need[@]})); then
	if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
		demo_apt "${need[@]}"
	else
		sy_log "please install: ${need[*]}"
		exit 1
	fi
fi
if ! command -v cargo >/dev/null 2>&1; then
	sy_log "cargo not found: install a Rust toolchain >= 1.85 (e.g. with rustup) and run again"
	exit 1
fi

say "services"
sy_services_up

say "build (cargo build --release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
cargo build --release
BIN=$CARGO_TARGET_DIR/release/switchyard
[[ -x $BIN ]] || {
	sy_log "no binary at $BIN after the build"
	exit 1
}

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-demo.XXXXXX")
PREFIX="demo${RANDOM}$$"
PREFIX=${PREFIX:0:32}
[[ $PREFIX =~ ^[a-z][a-z0-9_-]{0,31}$ ]] || {
	sy_log "bad prefix $PREFIX"
	exit 1
}
STREAM_PREFIX=${PREFIX^^}

# --- a fresh database named after the prefix --------------------------------
ADMIN_URL=$DATABASE_URL
DEMO_DB_URL=$(python3 - "$ADMIN_URL" "$PREFIX" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
PY
)
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" "$@"; }
psql_demo() { psql -X -v ON_ERROR_STOP=1 -d "$DEMO_DB_URL" "$@"; }

drop_db() {
	if [[ ${KEEP:-0} == 1 ]]; then
		sy_log "KEEP=1: keeping database $PREFIX ($(redact "$DEMO_DB_URL"))"
		return 0
	fi
	psql_admin -c "DROP DATABASE IF EXISTS \"$PREFIX\" WITH (FORCE)" 2>/dev/null ||
		psql_admin -c "DROP DATABASE IF EXISTS \"$PREFIX\"" || true
}
delete_streams() {
	if [[ ${KEEP:-0} == 1 ]]; then
		sy_log "KEEP=1: keeping streams ${STREAM_PREFIX}_JOBS, ${STREAM_PREFIX}_RESULTS, ${STREAM_PREFIX}_DLQ"
		return 0
	fi
	local hp
	read -r -a hp <<<"$(nats_hostport "$NATS_URL")"
	python3 "$ROOT/scripts/lib/nats_delete_streams.py" "${hp[0]}" "${hp[1]:-4222}" \
		"${STREAM_PREFIX}_JOBS" "${STREAM_PREFIX}_RESULTS" "${STREAM_PREFIX}_DLQ" 2>/dev/null || true
}
psql_admin -c "CREATE DATABASE \"$PREFIX\""
sy_on_exit drop_db
sy_on_exit delete_streams
sy_log "prefix $PREFIX, database $(redact "$DEMO_DB_URL"), logs in $LOGDIR"

# --- simulator ----------------------------------------------------------------
say "provider simulator"
SIM_PORT=$(sy_free_port)
SIM_URL="http://127.0.0.1:$SIM_PORT"
"$BIN" simulate --addr "127.0.0.1:$SIM_PORT" --latency-ms 20 --jitter-ms 30 \
	--error-rate 0.02 --error-status 503 >"$LOGDIR/simulator.log" 2>&1 &
SIM_PID=$!
stop_pid() { # PID: TERM, wait up to 10 s, KILL
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}
sy_on_exit stop_pid "$SIM_PID"
sy_wait_http "$SIM_URL/_sim/stats" 30
sy_log "simulator at $SIM_URL (latency 20+0..30 ms, 2% 503s), pid $SIM_PID"

# --- worker ------------------------------------------------------------------
export SWITCHYARD_CONFIG="$ROOT/config/demo.toml"
export SWITCHYARD_NATS__PREFIX=$PREFIX
export SWITCHYARD_METRICS__ADDR=
# every provider of the config -> the simulator (base URL by kind), keys sk-sim-demo
provider_env=$(python3 "$ROOT/scripts/lib/bench_provider_env.py" "$SWITCHYARD_CONFIG" "$SIM_URL" sk-sim-demo)
while IFS= read -r kv; do
	[[ -n $kv ]] && export "${kv?}"
done <<<"$provider_env"
export DATABASE_URL=$DEMO_DB_URL

say "worker"
SWITCHYARD_LOG=${SWITCHYARD_LOG:-info} "$BIN" worker >"$LOGDIR/worker.log" 2>&1 &
WORKER_PID=$!
sy_on_exit stop_pid "$WORKER_PID"
deadline=$((SECONDS + 60))
until grep -q 'worker started' "$LOGDIR/worker.log" 2>/dev/null; do
	if ! kill -0 "$WORKER_PID" 2>/dev/null; then
		sy_log "the worker exited during start-up; its log:"
		sed 's/^/    /' "$LOGDIR/worker.log" >&2
		exit 1
	fi
	if ((SECONDS >= deadline)); then
		sy_log "the worker did not start within 60 s; its log:"
		tail -n 40 "$LOGDIR/worker.log" | sed 's/^/    /' >&2
		exit 1
	fi
	sleep 0.2
done
sy_log "worker running (pid $WORKER_PID, log $LOGDIR/worker.log)"

# --- submit the three files at once ------------------------------------------
say "submit examples/ingest-{high,,low}.jsonl together, --wait"
declare -A SUBMIT_PID SUBMIT_RC
for p in high normal low; do
	f=examples/ingest-$p.jsonl
	[[ $p == normal ]] && f=examples/ingest.jsonl
	"$BIN" submit "$f" --priority "$p" --wait --quiet --timeout-s 90 \
		--results "$LOGDIR/results-$p.jsonl" >"$LOGDIR/submit-$p.log" 2>&1 &
	SUBMIT_PID[$p]=$!
done
submit_failed=0
for p in high normal low; do
	rc=0
	wait "${SUBMIT_PID[$p]}" || rc=$?
	SUBMIT_RC[$p]=$rc
	printf '\n-- %s priority (exit %s)\n' "$p" "$rc"
	sed 's/^/   /' "$LOGDIR/submit-$p.log"
	((rc == 0)) || submit_failed=1
done
if ((submit_failed)); then
	say "jobs without a terminal result"
	psql_demo -c "select tenant, id, priority, status, deliveries, started_at from jobs
  where status not in ('succeeded', 'failed') order by tenant, id" || true
	while read -r t id; do
		[[ -n $id ]] || continue
		echo "   worker log lines for $t/$id:"
		grep -F "id=$id " "$LOGDIR/worker.log" | grep -F "tenant=$t " | cut -c1-300 | sed 's/^/     /' || true
	done < <(psql_demo -At -F ' ' -c "select tenant, id from jobs where status not in ('succeeded', 'failed') order by 1, 2 limit 10" || true)
fi

# --- what Postgres says -------------------------------------------------------
say "jobs by status and error kind"
psql_demo -c "select status, coalesce(error_kind, '') as error_kind, count(*) as jobs
  from jobs group by 1, 2 order by 1 desc, 3 desc, 2"
echo "   (examples/README.md lists 12 bad lines; bad-reply-to is refused only when the worker's"
echo "    prefix is 'llm', and this demo runs under its own prefix $PREFIX, so it succeeds here)"

say "by provider / model (cost_rows: one row per provider call, failed calls included)"
psql_demo -c "select coalesce(provider, 'total') as provider, coalesce(model, '') as model,
       count(*) as calls,
       count(*) filter (where outcome = 'succeeded') as ok,
       count(*) filter (where outcome <> 'succeeded') as failed,
       sum(input_tokens) as input_tokens,
       sum(output_tokens) as output_tokens,
       sum(cost_usd) as cost_usd
  from cost_rows group by rollup ((provider, model)) order by provider nulls last, model"

say "cost per tenant and feature"
psql_demo -c "select case when grouping(tenant) = 1 then 'total' else tenant end as tenant,
       case when grouping(feature) = 1 then '(all)' else coalesce(feature, '(none)') end as feature,
       count(*) as jobs,
       count(*) filter (where status = 'failed') as failed,
       sum(cost_usd) as cost_usd
  from jobs group by rollup (tenant, feature)
  order by grouping(tenant), tenant, grouping(feature), feature nulls first"

say "cost rows vs jobs"
psql_demo -c "select (select count(*) from jobs) as jobs,
       (select count(*) from cost_rows) as cost_rows,
       (select sum(cost_usd) from jobs) as jobs_cost_usd,
       (select sum(cost_usd) from cost_rows) as cost_rows_cost_usd,
       (select count(*) from jobs j where status = 'succeeded' and j.cost_usd <>
          (select coalesce(sum(c.cost_usd), 0) from cost_rows c
            where c.tenant = j.tenant and c.job_id = j.id)) as succeeded_cost_mismatches"

if command -v curl >/dev/null 2>&1; then
	say "simulator counters (GET /_sim/stats)"
	curl -fsS "$SIM_URL/_sim/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("   requests: %d" % s.get("total", 0))
for k, v in sorted(s.get("by_key", {}).items()):
    print("   %-60s %d" % (k, v))' || true
fi

pick() { psql_demo -At -F ' ' -c "$1"; }
ok_job=$(pick "select tenant, id from jobs where status = 'succeeded'
  order by (select count(*) from cost_rows c where c.tenant = jobs.tenant and c.job_id = jobs.id) desc, id limit 1")
bad_job=$(pick "select tenant, id from jobs where status = 'failed' order by id limit 1")
if [[ -n $ok_job ]]; then
	say "a succeeded job (the one with the most provider calls): switchyard status --tenant ${ok_job%% *} ${ok_job#* }"
	"$BIN" status --tenant "${ok_job%% *}" "${ok_job#* }" || true
fi
if [[ -n $bad_job ]]; then
	say "a failed job: switchyard status --tenant ${bad_job%% *} ${bad_job#* }"
	"$BIN" status --tenant "${bad_job%% *}" "${bad_job#* }" || true
fi

# --- stop the worker ------------------------------------------------------------
say "stop the worker (SIGTERM)"
kill -TERM "$WORKER_PID"
worker_rc=0
for ((i = 0; i < 450; i++)); do
	kill -0 "$WORKER_PID" 2>/dev/null || break
	sleep 0.1
done
if kill -0 "$WORKER_PID" 2>/dev/null; then
	sy_log "the worker did not stop within 45 s of SIGTERM (shutdown_grace_s is 30); killing it"
	kill -KILL "$WORKER_PID" 2>/dev/null || true
	worker_rc=137
	wait "$WORKER_PID" 2>/dev/null || true
else
	wait "$WORKER_PID" || worker_rc=$?
fi
echo "   worker exit status: $worker_rc"
warns=$(grep -cE '^[^ ]+ +(WARN|ERROR) |"level":"(WARN|ERROR)"' "$LOGDIR/worker.log" || true)
echo "   warnings/errors in the worker log: ${warns:-0}"

say "logs"
echo "   worker:    $LOGDIR/worker.log"
echo "   simulator: $LOGDIR/simulator.log"
echo "   submits:   $LOGDIR/submit-{high,normal,low}.log"
echo "   results:   $LOGDIR/results-{high,normal,low}.jsonl"

status=0
if ((submit_failed)); then
	sy_log "FAILED: some submit did not get every result (exit codes: high ${SUBMIT_RC[high]}, normal ${SUBMIT_RC[normal]}, low ${SUBMIT_RC[low]})"
	status=1
fi
if ((worker_rc != 0)); then
	sy_log "FAILED: the worker exited with status $worker_rc (see $LOGDIR/worker.log)"
	status=1
fi
((status == 0)) && sy_log "demo OK: every job has a terminal result and the worker stopped cleanly"
exit "$status"
