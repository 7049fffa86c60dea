#!/usr/bin/env bash
# scripts/bench.sh -- benchmark switchyard on this machine (everything local), beside a
# bare loop written for the bench (the ceiling), with a separate load driver and a lean
# mock provider (all three are examples/bench_*.rs).
#
#   e2e       BENCH_N (100000) jobs as a backlog, BENCH_RUNS (3) times for switchyard
#             (one worker, every feature on: claims/leases, rate limits, a budget,
#             breakers, metrics, the JSON log line per job as deployed
#             (SWITCHYARD_LOG_FORMAT, default json); max_in_flight 4000) and as many for the bare loop
#             (examples/bench_bare.rs, 4000 in flight), interleaved, against
#             bench_responder at 0 ms. jobs/s = N / (first publish .. last result) by
#             the driver's clock (examples/bench_load.rs), publish -> result
#             percentiles, CPU microseconds per job per process; medians and the
#             ratio switchyard / bare.
#   latency   open loop: BENCH_RATE jobs/s (default: half of switchyard's e2e median)
#             for BENCH_LAT_S (20) s, sent at fixed times; publish -> result p50/p99
#             and CPU per job, switchyard then the bare loop.
#   inflight  BENCH_INFLIGHT_N (10000) jobs at once against bench_responder
#             --latency-ms 2000, max_in_flight 10000: peak and after-burst RSS
#             (sampled every 200 ms, BENCH_AFTER_S (5) s after the last result), peak
#             calls in flight (the responder's own counter) and connections;
#             switchyard then the bare loop.
#   parts     the ceilings alone: JetStream publish and pull + ack (bench_load
#             --mode jetstream), Postgres UNNEST batches of 256 (bench_bare
#             --insert-only), bench_responder with wrk (2 threads, 64 connections,
#             10 s; `apt-get install wrk` when missing); then each e2e figure as a
#             share of its ceiling.
#   route     (opt-in: --only route) classify + route per job, in process
#             (`cargo bench --bench route`, BENCH_ROUTE_N plans); ns per job.
#   profile   (BENCH_PROFILE=callgrind, or --only profile) the worker under
#             `valgrind --tool=callgrind`: BENCH_PROFILE_WARMUP (200) jobs, then the
#             counters are zeroed, BENCH_PROFILE_N (2000) jobs, a dump after the last
#             result: instructions per job (Ir / N) and the top 25 entries,
#             inclusive and self.
#
# Usage: scripts/bench.sh [--record] [--only e2e,latency,inflight,parts,route,profile]
#   --record   append a dated block with the figures to BENCHMARKS.md
#              (only when every section ran and passed); otherwise nothing in
#              the repository is written.
#   BENCH_N, BENCH_RUNS, BENCH_RATE, BENCH_LAT_S, BENCH_INFLIGHT_N, BENCH_AFTER_S,
#   BENCH_PROFILE, BENCH_PROFILE_N: see above. BENCH_RPM / BENCH_TPM (100000000 /
#   4000000000): the rate limits set on every provider, so the limiter runs but never
#   binds (BENCH_RPM=0: none, as in config/demo.toml). BENCH_BUDGET=0: no budget
#   (by default tenant acme has one, never reached). CARGO_TARGET_DIR, NATS_URL, DATABASE_URL: see scripts/lib/services.sh.
#   BENCH_WORKER_ENV="K=V ..."  extra environment for the worker, for experiments
#   (e.g. SWITCHYARD_PROVIDERS__OPENAI__HTTP2_PRIOR_KNOWLEDGE=true); --record
#   notes it in the block. BENCH_BARE_ARGS="..." extra arguments for the bare loop
#   (e.g. --h2).
# Logs and data go to a temp dir that is kept (printed at the end); the database and
# the streams it creates are deleted at exit.
# Exit status: non-zero when a section failed (a job without a result, a worker
# that did not stop cleanly ...).
# shellcheck disable=SC2317  # functions below run from exit hooks
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

RECORD=0
ONLY=e2e,latency,inflight,parts
[[ ${BENCH_PROFILE:-} != callgrind ]] || ONLY=$ONLY,profile
while (($#)); do
	case $1 in
	--record) RECORD=1 ;;
	--only)
		ONLY=${2:?--only needs a list}
		shift
		;;
	--only=*) ONLY=${1#--only=} ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "unknown argument: $1 (see --help)" >&2
		exit 2
		;;
	esac
	shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }
N=${BENCH_N:-100000}
RUNS=${BENCH_RUNS:-3}
LAT_S=${BENCH_LAT_S:-20}
INFLIGHT_N=${BENCH_INFLIGHT_N:-10000}
AFTER_S=${BENCH_AFTER_S:-5}
PROFILE_N=${BENCH_PROFILE_N:-2000}
RPM=${BENCH_RPM:-100000000}
TPM=${BENCH_TPM:-4000000000}
SETTLE_S=3 # a new worker calls rate-limited providers about two heartbeats after it starts

export NO_COLOR=1
CONFIG=$ROOT/config/demo.toml
say() { printf '\n== %s\n' "$*"; }
fig() { printf '   %-46s %s\n' "$1" "$2"; } # one figure
jget() { # jget JSON EXPR  (EXPR is Python on `j`)
	python3 -c 'import json,sys; j=json.loads(sys.argv[1]); v=eval(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}
jfile() { jget "$(cat "$1")" "$2"; } # jfile FILE EXPR

# --- tools -----------------------------------------------------------------------
bench_apt() {
	((EUID == 0)) && command -v apt-get >/dev/null 2>&1 || return 1
	local opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
	if [[ -z ${BENCH_APT_UPDATED:-} ]]; then
		DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q update >&2 || return 1
		BENCH_APT_UPDATED=1
	fi
	sy_log "installing $* with apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q install -y --no-install-recommends "$@" >&2
}
for t in python3 curl; do
	if ! command -v "$t" >/dev/null 2>&1; then
		bench_apt "$t" || {
			sy_log "please install $t"
			exit 1
		}
	fi
done
if want parts && ! command -v wrk >/dev/null 2>&1; then
	bench_apt wrk || sy_log "wrk is not available: the responder's part will be skipped"
fi
if want profile && ! command -v callgrind_annotate >/dev/null 2>&1; then
	bench_apt valgrind || {
		sy_log "valgrind is not available: no profile"
		exit 1
	}
fi

# Before anything starts, so that the responder and the worker inherit it.
sy_ensure_ulimit 65536

say "services"
sy_services_up

say "build (cargo build --release: switchyard and examples/bench_{responder,bare,load})"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
cargo build --release --bin switchyard --example bench_responder --example bench_bare --example bench_load
BIN=$CARGO_TARGET_DIR/release/switchyard
EX=$CARGO_TARGET_DIR/release/examples

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-bench.XXXXXX")
RUN="bench${RANDOM}$$"
RUN=${RUN:0:30}
ADMIN_URL=$DATABASE_URL
DB_URL=$(python3 - "$ADMIN_URL" "$RUN" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
PY
)
read -r NATS_HOST NATS_PORT < <(python3 - "$NATS_URL" <<'PY'
import sys, urllib.parse
u = sys.argv[1].split(",")[0].strip()
u = urllib.parse.urlsplit(u if "://" in u else "nats://" + u)
print(u.hostname or "127.0.0.1", u.port or 4222)
PY
)
drop_db() {
	psql -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$RUN\" WITH (FORCE)" 2>/dev/null ||
		psql -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$RUN\"" || true
}
# every measured run starts from an empty database
fresh_db() {
	drop_db
	psql -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" -c "CREATE DATABASE \"$RUN\""
}
fresh_db
sy_on_exit drop_db
PREFIXES=()
delete_streams() { # [PREFIX ...] (default: every prefix used)
	local p names=()
	(($#)) || set -- "${PREFIXES[@]}"
	for p in "$@"; do
		names+=("${p^^}_JOBS" "${p^^}_RESULTS" "${p^^}_DLQ")
	done
	((${#names[@]})) || return 0
	python3 "$ROOT/scripts/lib/nats_delete_streams.py" "$NATS_HOST" "$NATS_PORT" "${names[@]}" >/dev/null 2>&1 || true
}
sy_on_exit delete_streams

# --- the machine -----------------------------------------------------------------------
NPROC=$(nproc)
MEM_GIB=$(awk '/^MemTotal:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
NATS_VERSION=$(cd "$ROOT/scripts/lib" && python3 -c 'import sys; from nats_delete_streams import MiniNats; print(MiniNats(sys.argv[1], sys.argv[2]).info.get("version", "?"))' "$NATS_HOST" "$NATS_PORT")
PG_VERSION=$(psql -X -At -d "$ADMIN_URL" -c 'show server_version' | awk '{print $1}')
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then COMMIT="$COMMIT+changes"; fi
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "machine"
fig "cores (nproc)" "$NPROC ($CPU_MODEL)"
fig "memory" "$MEM_GIB GiB"
fig "NATS server" "$NATS_VERSION at $NATS_HOST:$NATS_PORT"
fig "PostgreSQL" "$PG_VERSION"
fig "commit" "$COMMIT"
fig "load average before the run" "$LOAD_START"
fig "open-file limit" "$(ulimit -n)"
fig "logs and data" "$TMP"

SUMMARY=$TMP/summary.md
FIGS=$TMP/figures.json
RUNS_FILE=$TMP/runs.jsonl
: >"$SUMMARY"
FAILED=()
sum() { printf '%s\n' "$*" >>"$SUMMARY"; }
report() { python3 "$ROOT/scripts/lib/bench_report.py" "$@"; }

# --- processes ---------------------------------------------------------------------------
stop_pid() { # PID [TIMEOUT_S=15]: TERM, wait, KILL; sets STOP_RC
	local pid=$1 t=$((${2:-15} * 10))
	STOP_RC=0
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid" 2>/dev/null || STOP_RC=$?
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	while kill -0 "$pid" 2>/dev/null && ((t-- > 0)); do sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		STOP_RC=137
		return 0
	fi
	wait "$pid" 2>/dev/null || STOP_RC=$?
}
RESP_PID=''
RESP_PORT=''
RESP_URL=''
start_responder() { # LATENCY_MS LOG
	RESP_PORT=$(sy_free_port)
	RESP_URL=http://127.0.0.1:$RESP_PORT
	"$EX/bench_responder" --addr "127.0.0.1:$RESP_PORT" --latency-ms "$1" >"$2" 2>&1 &
	RESP_PID=$!
	sy_on_exit "kill -KILL $RESP_PID 2>/dev/null || true"
	sy_wait_http "$RESP_URL/stats" 30
}
stop_responder() {
	[[ -n $RESP_PID ]] && stop_pid "$RESP_PID" 10
	RESP_PID=''
}
resp_stats() { curl -fsS "$RESP_URL/stats${1:-}"; } # [/reset]
# switchyard's side of a run: tables, and a budget for one tenant (never reached)
sy_prepare() {
	SWITCHYARD_CONFIG="$CONFIG" DATABASE_URL="$DB_URL" "$BIN" migrate >/dev/null
	[[ ${BENCH_BUDGET:-1} == 0 ]] ||
		SWITCHYARD_CONFIG="$CONFIG" DATABASE_URL="$DB_URL" "$BIN" budget set --tenant acme --period day --limit 1000000 >/dev/null
}
# every provider of the config -> the responder (base URL by kind), with rate limits
provider_env() {
	local limits="s/^(SWITCHYARD_PROVIDERS__[A-Z0-9_]+__)BASE_URL=.*/\\1RPM=$RPM\\n\\1TPM=$TPM/p"
	[[ $RPM != 0 ]] || limits='' # BENCH_RPM=0: no rate limits configured
	python3 "$ROOT/scripts/lib/bench_provider_env.py" "$CONFIG" "$RESP_URL" sk-bench | sed -nE "p; $limits"
}
PID=''       # the process under test (worker or bare loop)
PID_LABEL='' # worker | bare
wait_line() { # LOG TEXT TIMEOUT_S: until TEXT is in LOG (or PID died)
	local deadline=$((SECONDS + $3))
	until grep -q "$2" "$1" 2>/dev/null; do
		if ! kill -0 "$PID" 2>/dev/null || ((SECONDS >= deadline)); then
			sy_log "$PID_LABEL did not start; its log:"
			tail -n 30 "$1" | sed 's/^/    /' >&2
			return 1
		fi
		sleep 0.1
	done
}
start_worker() { # PREFIX MAX_IN_FLIGHT LOG [WRAPPER ...]
	local prefix=$1 inflight=$2 log=$3
	shift 3
	local -a penv extra
	PREFIXES+=("$prefix")
	mapfile -t penv < <(provider_env)
	((${#penv[@]})) || {
		sy_log "no providers found in $CONFIG"
		return 1
	}
	# BENCH_WORKER_ENV="K=V ...": extra settings for the worker (experiments)
	read -r -a extra <<<"${BENCH_WORKER_ENV:-}"
	env "${penv[@]}" \
		SWITCHYARD_CONFIG="$CONFIG" \
		SWITCHYARD_NATS__PREFIX="$prefix" \
		SWITCHYARD_WORKER__MAX_IN_FLIGHT="$inflight" \
		SWITCHYARD_METRICS__ADDR="127.0.0.1:$(sy_free_port)" \
		NATS_URL="$NATS_URL" DATABASE_URL="$DB_URL" SWITCHYARD_LOG="${SWITCHYARD_LOG:-info}" \
		SWITCHYARD_LOG_FORMAT="${SWITCHYARD_LOG_FORMAT:-json}" \
		"${extra[@]}" "$@" "$BIN" worker >"$log" 2>&1 &
	PID=$!
	PID_LABEL=worker
	sy_on_exit "kill -KILL $PID 2>/dev/null || true"
	wait_line "$log" 'worker started' "${START_TIMEOUT_S:-60}"
}
start_bare() { # PREFIX MAX_IN_FLIGHT LOG
	local -a extra
	PREFIXES+=("$1")
	read -r -a extra <<<"${BENCH_BARE_ARGS:-}"
	"$EX/bench_bare" --nats "$NATS_URL" --db "$DB_URL" --prefix "$1" --provider "$RESP_URL" \
		--max-in-flight "$2" "${extra[@]}" >"$3" 2>&1 &
	PID=$!
	PID_LABEL=bare
	sy_on_exit "kill -KILL $PID 2>/dev/null || true"
	wait_line "$3" 'bare loop started' 60
}
# start KIND PREFIX MAX_IN_FLIGHT LOG: a fresh database, then the worker or the bare loop
start() {
	fresh_db
	if [[ $1 == switchyard ]]; then
		sy_prepare
		start_worker "$2" "$3" "$4"
	else
		start_bare "$2" "$3" "$4"
	fi
	sleep "$SETTLE_S"
}
stop() { # sets STOP_RC; deletes the run's streams
	stop_pid "$PID" 60
	PID=''
	delete_streams "$1"
}
load() { # PREFIX JOBS OUT [bench_load args ...]
	local prefix=$1 jobs=$2 out=$3
	shift 3
	"$EX/bench_load" --nats "$NATS_URL" --prefix "$prefix" --jobs "$jobs" "$@" >"$out" 2>"$out.err"
}
cpu_snap() { python3 "$ROOT/scripts/lib/bench_cpu.py" snap "$1"; }
cpu_diff() { python3 "$ROOT/scripts/lib/bench_cpu.py" diff "$@" --pg-db "$RUN"; }
# on a failed load: what the stream and the database say
diagnose() { # PREFIX LOG
	local prefix=$1 log=$2
	sy_log "diagnostics for $prefix:"
	psql -X -d "$DB_URL" -c "select status, count(*) from jobs group by 1" >&2 2>/dev/null ||
		psql -X -d "$DB_URL" -c "select status, count(*) from bare_jobs group by 1" >&2 || true
	sy_log "last lines of $log:"
	tail -n 15 "$log" | cut -c1-300 | sed 's/^/    /' >&2
}
# measure SECTION KIND R PREFIX JOBS DIR [bench_load args ...]: one measured run of a
# started worker / bare loop; appends it to the runs file and prints it
measure() {
	local section=$1 kind=$2 r=$3 prefix=$4 jobs=$5 dir=$6 rc=0 cpu
	shift 6
	resp_stats /reset >/dev/null
	cpu_snap "$dir/cpu0.json"
	load "$prefix" "$jobs" "$dir/load.json" "$@" || rc=$?
	cpu_snap "$dir/cpu1.json"
	cpu=$(cpu_diff "$dir/cpu0.json" "$dir/cpu1.json" --name "$PID_LABEL=$PID" --name "responder=$RESP_PID")
	resp_stats >"$dir/responder.json"
	if ((rc != 0)) || [[ ! -s $dir/load.json ]]; then
		sed 's/^/    /' "$dir/load.json.err" >&2
		diagnose "$prefix" "$dir/process.log"
		FAILED+=("$section: $kind run $r: bench_load exit $rc")
		return 0
	fi
	report run "$RUNS_FILE" "$section" "$kind" "$r" "$dir/load.json" "$cpu" "${EXTRA[@]}"
}
EXTRA=()
# pg_per_job N: what the database of the run just stopped counted (pg_stat_database,
# flushed when the connections closed), per job
pg_per_job() {
	sleep 0.5
	fig "  Postgres per job (pg_stat_database)" "$(psql -X -At -d "$ADMIN_URL" -c "
		SELECT format('%s commits, %s rollbacks, %s rows inserted, %s updated, %s deleted, %s fetched',
		       round(xact_commit::numeric / $1, 2), round(xact_rollback::numeric / $1, 2),
		       round(tup_inserted::numeric / $1, 2), round(tup_updated::numeric / $1, 2),
		       round(tup_deleted::numeric / $1, 2), round(tup_fetched::numeric / $1, 2))
		  FROM pg_stat_database WHERE datname = '$RUN'")"
}
# section NAME JOBS TAG RESPONDER_LATENCY_MS: the section's dir ($d), its jobs file
# ($d/jobs.jsonl, JOBS jobs) and a responder
section() {
	d=$TMP/$1
	mkdir -p "$d"
	python3 "$ROOT/scripts/lib/bench_jobs.py" "$2" "$d/jobs.jsonl" --tag "$3$RUN"
	start_responder "$4" "$d/responder.log"
}

# =====================================================================================
# e2e: a backlog, switchyard and the bare loop interleaved
# =====================================================================================
if want e2e; then
	say "e2e: $N jobs as a backlog, $RUNS runs each, switchyard (every feature on) and the bare loop, responder at 0 ms"
	section e2e "$N" e2e 0
	for ((r = 1; r <= RUNS; r++)); do
		for kind in switchyard bare; do
			rd=$d/$kind-$r
			mkdir -p "$rd"
			prefix="${RUN}${kind:0:1}$r"
			start "$kind" "$prefix" 4000 "$rd/process.log"
			measure e2e "$kind" "$r" "$prefix" "$d/jobs.jsonl" "$rd" --timeout-s 900
			stop "$prefix"
			pg_per_job "$N"
			((STOP_RC == 0)) || FAILED+=("e2e: $kind run $r exited $STOP_RC after SIGTERM")
		done
	done
	stop_responder
	say "e2e: medians"
	report summary "$RUNS_FILE" e2e --md "$SUMMARY" --figs "$FIGS"
fi

# =====================================================================================
# latency: open loop at a fixed rate
# =====================================================================================
if want latency; then
	RATE=${BENCH_RATE:-}
	if [[ -z $RATE ]]; then
		RATE=$(report get "$FIGS" e2e.switchyard jobs_per_s)
		RATE=$(python3 -c 'import sys; print(int(float(sys.argv[1] or 2000) / 2))' "$RATE")
	fi
	say "latency: open loop, $RATE jobs/s for $LAT_S s, publish -> result (switchyard, then the bare loop)"
	section latency "$((RATE * LAT_S))" lat 0
	EXTRA=(--extra "rate=$RATE")
	for kind in switchyard bare; do
		rd=$d/$kind
		mkdir -p "$rd"
		prefix="${RUN}l${kind:0:1}"
		start "$kind" "$prefix" 4000 "$rd/process.log"
		measure latency "$kind" 1 "$prefix" "$d/jobs.jsonl" "$rd" --mode open --rate "$RATE" --duration-s "$LAT_S" --timeout-s 300
		stop "$prefix"
		((STOP_RC == 0)) || FAILED+=("latency: $kind exited $STOP_RC after SIGTERM")
	done
	EXTRA=()
	stop_responder
	say "latency: summary (target: switchyard p99 <= 10 ms)"
	report summary "$RUNS_FILE" latency --md "$SUMMARY" --figs "$FIGS"
fi

# =====================================================================================
# inflight: 10k calls at once against a 2 s provider
# =====================================================================================
if want inflight; then
	say "inflight: $INFLIGHT_N jobs at once, responder at 2000 ms, max_in_flight $INFLIGHT_N"
	section inflight "$INFLIGHT_N" inf 2000
	mib() { python3 -c "import sys; print('%.1f MiB' % (int(sys.argv[1] or 0) / 1024))" "$1"; }
	for kind in switchyard bare; do
		rd=$d/$kind
		mkdir -p "$rd"
		prefix="${RUN}i${kind:0:1}"
		start "$kind" "$prefix" "$INFLIGHT_N" "$rd/process.log"
		rss_idle=$(ps -o rss= -p "$PID" | tr -d ' ')
		# sampler: time, RSS (KiB), calls in flight at the responder
		(
			while :; do
				rss=$(ps -o rss= -p "$PID" 2>/dev/null | tr -d ' ') || break
				[[ -n $rss ]] || break
				inf=$(resp_stats 2>/dev/null | sed -nE 's/.*"in_flight":([0-9]+).*/\1/p')
				printf '%s %s %s\n' "$(date +%s.%N)" "$rss" "${inf:-0}"
				sleep 0.2
			done
		) >"$rd/samples.txt" &
		sampler=$!
		sy_on_exit "kill $sampler 2>/dev/null || true"
		measure inflight "$kind" 1 "$prefix" "$d/jobs.jsonl" "$rd" --timeout-s 300
		t_end=$(date +%s.%N)
		sleep "$AFTER_S"
		kill "$sampler" 2>/dev/null || true
		wait "$sampler" 2>/dev/null || true
		rss_after=$(ps -o rss= -p "$PID" | tr -d ' ')
		stop "$prefix"
		((STOP_RC == 0)) || FAILED+=("inflight: $kind exited $STOP_RC after SIGTERM")
		read -r peak_rss min_after n_samples < <(awk -v t="$t_end" 'BEGIN{r=0; m=""} {if ($2>r) r=$2; if ($1>t && (m=="" || $2<m)) m=$2} END {print r, (m==""?0:m), NR}' "$rd/samples.txt")
		peak_calls=$(jfile "$rd/responder.json" 'j["peak_in_flight"]')
		peak_conns=$(jfile "$rd/responder.json" 'j["peak_connections"]')
		label=$([[ $kind == switchyard ]] && echo "switchyard worker" || echo "bare loop")
		fig "$label: peak RSS ($n_samples samples)" "$(mib "$peak_rss") (idle $(mib "$rss_idle"); target <= 200 MiB for the worker)"
		fig "$label: RSS after the burst" "$(mib "$rss_after") ${AFTER_S} s after the last result (lowest $(mib "$min_after"))"
		fig "$label: peak calls in flight / connections" "$peak_calls / $peak_conns (responder's counters)"
		name=$([[ $kind == switchyard ]] && echo "switchyard" || echo "bare loop")
		sum "| inflight: $name peak RSS / RSS ${AFTER_S} s after the last result | **$(mib "$peak_rss")** / $(mib "$rss_after") (idle $(mib "$rss_idle")) |"
		sum "| inflight: $name peak calls in flight / connections | $peak_calls / $peak_conns |"
	done
	stop_responder
	say "inflight: summary"
	report summary "$RUNS_FILE" inflight --md "$SUMMARY" --figs "$FIGS"
fi

# =====================================================================================
# parts: the ceilings alone
# =====================================================================================
if want parts; then
	PN=${BENCH_PARTS_N:-$N}
	d=$TMP/parts
	mkdir -p "$d"
	if [[ -s $TMP/e2e/jobs.jsonl ]]; then
		ln -sf "$TMP/e2e/jobs.jsonl" "$d/jobs.jsonl"
		PN=$N
	else
		python3 "$ROOT/scripts/lib/bench_jobs.py" "$PN" "$d/jobs.jsonl" --tag "parts$RUN"
	fi
	say "parts a. JetStream alone: $PN messages, publish (window 1024) then pull 500 + ack (bench_load --mode jetstream)"
	PREFIXES+=("${RUN}p")
	if load "${RUN}p" "$d/jobs.jsonl" "$d/js.json" --mode jetstream; then
		fig "publish with acks" "$(jfile "$d/js.json" 'j["publish_per_s"]') msg/s ($(jfile "$d/js.json" 'j["publish_s"]') s)"
		fig "pull 500 + ack each" "$(jfile "$d/js.json" 'j["consume_per_s"]') msg/s ($(jfile "$d/js.json" 'j["consume_s"]') s)"
		report set "$FIGS" parts.js_publish "$(jfile "$d/js.json" 'j["publish_per_s"]')"
		report set "$FIGS" parts.js_consume "$(jfile "$d/js.json" 'j["consume_per_s"]')"
		sum "| parts: JetStream publish with acks (Rust client, window 1024) | $(jfile "$d/js.json" 'j["publish_per_s"]') msg/s |"
		sum "| parts: JetStream pull 500 + ack each (Rust client) | $(jfile "$d/js.json" 'j["consume_per_s"]') msg/s |"
	else
		FAILED+=("parts: bench_load --mode jetstream failed")
		sed 's/^/    /' "$d/js.json.err" >&2
	fi

	say "parts b. Postgres alone: $PN jobs, one job row + one cost row each, UNNEST, one transaction per 256 (bench_bare --insert-only)"
	fresh_db
	if "$EX/bench_bare" --db "$DB_URL" --insert-only "$PN" >"$d/pg.json" 2>"$d/pg.err"; then
		pg_rows=$(jfile "$d/pg.json" 'j["rows_per_s"]')
		pg_jobs=$((pg_rows / 2))
		fig "rows/s (jobs/s)" "$pg_rows ($pg_jobs) in $(jfile "$d/pg.json" 'j["seconds"]') s, batches one after another"
		report set "$FIGS" parts.pg_jobs "$pg_jobs"
		sum "| parts: Postgres UNNEST insert, 256 jobs (512 rows) per transaction | $pg_rows rows/s ($pg_jobs jobs/s) |"
	else
		FAILED+=("parts: bench_bare --insert-only failed")
		sed 's/^/    /' "$d/pg.err" >&2
	fi

	say "parts c. bench_responder alone (wrk -t2 -c64 -d10s, POST /v1/chat/completions, HTTP/1.1)"
	if command -v wrk >/dev/null 2>&1; then
		start_responder 0 "$d/responder.log"
		head -n 1 "$d/jobs.jsonl" >"$d/body.json"
		cat >"$d/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local f = assert(io.open("$d/body.json", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
		cpu_snap "$d/cpu0.json"
		wrk -t2 -c64 -d10s --latency -s "$d/post.lua" "$RESP_URL/v1/chat/completions" >"$d/wrk.txt" 2>&1 || true
		cpu_snap "$d/cpu1.json"
		cpu=$(cpu_diff "$d/cpu0.json" "$d/cpu1.json" --name "responder=$RESP_PID")
		stop_responder
		sed 's/^/   | /' "$d/wrk.txt"
		RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$d/wrk.txt")
		P99=$(awk '$1 == "99%" {print $2}' "$d/wrk.txt")
		NON2XX=$(awk '/Non-2xx/ {print $NF}' "$d/wrk.txt")
		resp_cpu=$(jget "$cpu" 'j["responder"]')
		us=$(python3 -c 'import sys; print("%.1f" % (float(sys.argv[1]) * 1e6 / max(1, float(sys.argv[2] or 1) * 10)))' "$resp_cpu" "${RPS:-1}")
		fig "responder requests/s" "${RPS:-?} (p99 ${P99:-?}, non-2xx ${NON2XX:-0}); responder CPU $resp_cpu s = $us µs/request"
		report set "$FIGS" parts.responder "${RPS:-0}"
		sum "| parts: bench_responder alone, wrk 2 threads / 64 connections / 10 s | ${RPS:-?} req/s (p99 ${P99:-?}), $us µs of responder CPU per request |"
		[[ -n $RPS && -z $NON2XX ]] || FAILED+=("parts: wrk run failed or got non-2xx answers (see $d/wrk.txt)")
	else
		fig "responder requests/s" "skipped (no wrk)"
	fi

	say "parts: switchyard's e2e median as a share of each ceiling"
	report ceilings "$FIGS" --md "$SUMMARY"
fi

# =====================================================================================
if want route; then
	say "route: classify + route (cargo bench --bench route)"
	rc=0
	line=$(cargo bench --quiet --locked --bench route 2>"$TMP/route.log" | tail -1) || rc=$?
	if ((rc == 0)) && [[ $line == *ns/job* ]]; then
		ns=$(sed -nE 's/.*: ([0-9]+) ns\/job.*/\1/p' <<<"$line")
		fig "classify + route, per job" "$ns ns"
		sum "| classify + route, per job (cargo bench --bench route) | $ns ns |"
	else
		FAILED+=("route bench (see $TMP/route.log)")
	fi
fi

# =====================================================================================
# profile: the worker under callgrind
# =====================================================================================
if want profile; then
	say "profile: the worker under valgrind --tool=callgrind, $PROFILE_N jobs, responder at 0 ms"
	WARM=${BENCH_PROFILE_WARMUP:-200}
	section profile "$((WARM + PROFILE_N))" prof 0
	head -n "$WARM" "$d/jobs.jsonl" >"$d/warmup.jsonl"
	tail -n +"$((WARM + 1))" "$d/jobs.jsonl" >"$d/measured.jsonl"
	fresh_db
	sy_prepare
	prefix="${RUN}c"
	START_TIMEOUT_S=600 start_worker "$prefix" 4000 "$d/process.log" \
		valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out.%p" --dump-instr=no
	sleep "$SETTLE_S"
	# warm-up jobs first: the tokenizer's tables are built on the first job, connections
	# opened, allocator arenas grown; then count from zero
	load "$prefix" "$d/warmup.jsonl" "$d/warmup.json" --timeout-s 1200 || FAILED+=("profile: warm-up jobs")
	callgrind_control -z "$PID" >/dev/null || sy_log "callgrind_control -z failed: the counts include start-up"
	rc=0
	load "$prefix" "$d/measured.jsonl" "$d/load.json" --timeout-s 1200 || rc=$?
	callgrind_control -d "$PID" >/dev/null || sy_log "callgrind_control -d failed"
	stop "$prefix"
	stop_responder
	dump=$(find "$d" -name 'callgrind.out.*.1' | head -n 1)
	if ((rc != 0)) || [[ -z $dump ]]; then
		FAILED+=("profile: bench_load exit $rc, dump '${dump:-none}'")
	else
		total=$(awk '/^summary:/ {print $2; exit}' "$dump")
		per_job=$((total / PROFILE_N))
		fig "instructions (Ir) for $PROFILE_N jobs, after $WARM warm-up jobs" "$total"
		fig "Ir per job" "$per_job"
		fig "jobs" "$(jfile "$d/load.json" 'j["results"]') results of $PROFILE_N"
		fig "callgrind data" "$dump (callgrind_annotate --tree=caller ... for callers)"
		callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$dump" >"$d/inclusive.txt" 2>&1 || true
		callgrind_annotate --threshold=100 --auto=no "$dump" >"$d/self.txt" 2>&1 || true
		# the entries of an annotation: the lines after the "file:function" header, with
		# shorter paths. Frames that were already on a stack when the counters were
		# zeroed (thread and runtime roots) show their inclusive cost as self cost, and
		# lead every inclusive list: both lists leave them out.
		roots='clone\.S:clone|start_thread|thread_start|vtable\.shim|__rust_begin_short_backtrace|blocking::pool::Inner::run|task::raw::poll|Harness<T,S>::poll|Core<T,S>::poll|worker::run|Context::run|__libc_start_main|\(below main\)|lang_start|block_on|switchyard::main|cli::main|\?\?\?:main|ld-linux'
		entries() {
			awk '/file:function/ {on = 1; next} on && /^ *[0-9,]+ \(/' "$1" | grep -Ev "$roots" |
				sed -E 's|/root/\.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/library/||; s| \[/[^]]*\]$||' | cut -c1-180
		}
		say "profile: top 25, inclusive (thread and runtime roots left out)"
		entries "$d/inclusive.txt" | awk 'NR <= 25'
		say "profile: top 25 of switchyard's own functions, inclusive"
		entries "$d/inclusive.txt" | grep 'switchyard::' | awk 'NR <= 25'
		say "profile: top 25, self"
		entries "$d/self.txt" | awk 'NR <= 25'
		sum "| profile: worker instructions per job (callgrind, $PROFILE_N jobs) | $per_job Ir |"
	fi
fi

# =====================================================================================
say "summary"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
cat "$SUMMARY"
echo "   logs, jobs and results: $TMP"
if ((${#FAILED[@]})); then
	for f in "${FAILED[@]}"; do sy_log "FAILED: $f"; done
fi
if ((RECORD)); then
	if ((${#FAILED[@]})); then
		sy_log "--record: not recording a run with failures"
	else
		{
			printf '\n### %s — commit %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$COMMIT"
			# shellcheck disable=SC2016  # literal backquotes (markdown)
			printf '`%sscripts/bench.sh --record%s` (BENCH_N=%s, BENCH_RUNS=%s, BENCH_INFLIGHT_N=%s); %s cores, %s GiB; NATS %s, PostgreSQL %s; load average %s before, %s after.\n\n' \
				"${BENCH_PROFILE:+BENCH_PROFILE=$BENCH_PROFILE }" \
				"$([[ $ONLY == e2e,latency,inflight,parts || $ONLY == e2e,latency,inflight,parts,profile ]] || echo " --only $ONLY")" "$N" "$RUNS" "$INFLIGHT_N" "$NPROC" "$MEM_GIB" "$NATS_VERSION" "$PG_VERSION" "$LOAD_START" "$LOAD_END"
			# shellcheck disable=SC2016  # literal backquotes (markdown)
			[[ -z ${BENCH_WORKER_ENV:-} ]] || printf 'Worker environment: `%s`.\n\n' "$BENCH_WORKER_ENV"
			printf '| what | figure |\n|---|---|\n'
			cat "$SUMMARY"
		} >>"$ROOT/BENCHMARKS.md"
		sy_log "appended the figures to BENCHMARKS.md"
	fi
fi
((${#FAILED[@]} == 0))
