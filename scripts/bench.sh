#!/usr/bin/env bash
# scripts/bench.sh -- benchmark switchyard on this machine (everything local).
#
#   1. e2e       end-to-end throughput: BENCH_N (20000) small jobs, simulator at
#                0 ms, one worker with max_in_flight 4000, `submit --wait`;
#                jobs/s = N / (first publish .. last result), plus p50/p99 of the
#                worker's queued_ms + latency_ms.
#   2. inflight  BENCH_INFLIGHT_N (10000) jobs at once against a simulator that
#                answers after 2 s, worker max_in_flight 10000: wall time, peak
#                worker RSS (sampled every 200 ms), peak open connections to the
#                simulator.
#   3. parts     (a) JetStream alone: `switchyard submit` without a worker (the
#                Rust client's publish rate) and scripts/lib/bench_nats.py (a
#                pure-Python publish + pull/ack loop, a lower bound);
#                (b) the simulator's HTTP rate alone with wrk (2 threads, 64
#                connections, 10 s; `apt-get install wrk` when missing).
#   4. route     (opt-in: --only route, or add it to the list) classify + route per
#                job, in process: `cargo bench --bench route` plans the labeled
#                routing set BENCH_ROUTE_N (100000) times; prints ns per job.
#
# Usage: scripts/bench.sh [--record] [--only e2e,inflight,parts,route]
#   --record   append a dated block with the figures to BENCHMARKS.md
#              (only when every section ran and passed); otherwise nothing in
#              the repository is written.
#   BENCH_N, BENCH_INFLIGHT_N, CARGO_TARGET_DIR, NATS_URL, DATABASE_URL: see above
#   and scripts/lib/services.sh.
#   BENCH_WORKER_ENV="K=V ..."  extra environment for the worker, for experiments
#   (e.g. SWITCHYARD_PROVIDERS__OPENAI__HTTP2_PRIOR_KNOWLEDGE=true); --record
#   notes it in the block.
# Logs, job files and results go to a temp dir that is kept (printed at the end).
# Exit status: non-zero when a section failed (a job without a result, a worker
# that did not stop cleanly ...).
# shellcheck disable=SC2317  # functions below run from exit hooks
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

RECORD=0
ONLY=e2e,inflight,parts
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
N=${BENCH_N:-20000}
INFLIGHT_N=${BENCH_INFLIGHT_N:-10000}

export NO_COLOR=1
CONFIG=$ROOT/config/demo.toml
say() { printf '\n== %s\n' "$*"; }
fig() { printf '   %-44s %s\n' "$1" "$2"; } # one figure
jget() { # jget JSON EXPR  (EXPR is Python on `j`)
	python3 -c 'import json,sys; j=json.loads(sys.argv[1]); v=eval(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

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
for t in python3 curl ss; do
	if ! command -v "$t" >/dev/null 2>&1; then
		case $t in ss) pkg=iproute2 ;; *) pkg=$t ;; esac
		bench_apt "$pkg" || {
			sy_log "please install $pkg"
			exit 1
		}
	fi
done
if want parts && ! command -v wrk >/dev/null 2>&1; then
	bench_apt wrk || sy_log "wrk is not available: the HTTP part will be skipped"
fi

# Before anything starts, so that the simulator and the worker inherit it.
sy_ensure_ulimit 65536

say "services"
sy_services_up

say "build (cargo build --release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
cargo build --release
BIN=$CARGO_TARGET_DIR/release/switchyard

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
psql -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" -c "CREATE DATABASE \"$RUN\""
drop_db() {
	psql -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$RUN\" WITH (FORCE)" 2>/dev/null ||
		psql -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$RUN\"" || true
}
sy_on_exit drop_db
PREFIXES=()
delete_streams() {
	local p names=()
	for p in "${PREFIXES[@]}"; do
		names+=("${p^^}_JOBS" "${p^^}_RESULTS" "${p^^}_DLQ")
	done
	((${#names[@]})) || return 0
	python3 "$ROOT/scripts/lib/nats_delete_streams.py" "$NATS_HOST" "$NATS_PORT" "${names[@]}" 2>/dev/null || true
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
: >"$SUMMARY"
FAILED=()
sum() { printf '%s\n' "$*" >>"$SUMMARY"; }

# --- processes ---------------------------------------------------------------------------
SIM_PID=''
SIM_PORT=''
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
start_sim() { # LATENCY_MS LOG
	SIM_PORT=$(sy_free_port)
	"$BIN" simulate --addr "127.0.0.1:$SIM_PORT" --latency-ms "$1" >"$2" 2>&1 &
	SIM_PID=$!
	sy_on_exit "kill -KILL $SIM_PID 2>/dev/null || true"
	sy_wait_http "http://127.0.0.1:$SIM_PORT/_sim/stats" 30
}
stop_sim() {
	[[ -n $SIM_PID ]] && stop_pid "$SIM_PID" 10
	SIM_PID=''
}
WORKER_PID=''
start_worker() { # PREFIX MAX_IN_FLIGHT LOG
	local prefix=$1 log=$3 deadline
	local -a penv extra
	PREFIXES+=("$prefix")
	# every provider of the config -> the simulator (base URL by kind)
	mapfile -t penv < <(python3 "$ROOT/scripts/lib/bench_provider_env.py" "$CONFIG" "http://127.0.0.1:$SIM_PORT" sk-sim-bench)
	((${#penv[@]})) || {
		sy_log "no providers found in $CONFIG"
		return 1
	}
	# BENCH_WORKER_ENV="K=V ...": extra settings for the worker (experiments)
	read -r -a extra <<<"${BENCH_WORKER_ENV:-}"
	env "${penv[@]}" \
		SWITCHYARD_CONFIG="$CONFIG" \
		SWITCHYARD_NATS__PREFIX="$prefix" \
		SWITCHYARD_WORKER__MAX_IN_FLIGHT="$2" \
		SWITCHYARD_METRICS__ADDR='' \
		DATABASE_URL="$DB_URL" SWITCHYARD_LOG="${SWITCHYARD_LOG:-info}" \
		"${extra[@]}" "$BIN" worker >"$log" 2>&1 &
	WORKER_PID=$!
	sy_on_exit "kill -KILL $WORKER_PID 2>/dev/null || true"
	deadline=$((SECONDS + 60))
	until grep -q 'worker started' "$log" 2>/dev/null; do
		if ! kill -0 "$WORKER_PID" 2>/dev/null || ((SECONDS >= deadline)); then
			sy_log "the worker did not start; its log:"
			tail -n 30 "$log" | sed 's/^/    /' >&2
			return 1
		fi
		sleep 0.1
	done
}
stop_worker() { # sets WORKER_RC
	stop_pid "$WORKER_PID" 60
	WORKER_RC=$STOP_RC
	WORKER_PID=''
}
# times_delta BEFORE AFTER: CPU seconds (user+sys) that this shell's waited-for
# children used between two `times >FILE` (run in this shell, not in $(...)):
# around a foreground `submit`, the submit client's own CPU time
times_delta() {
	python3 -c '
import re, sys
def cpu(path):
    with open(path) as f:
        line = f.read().strip().splitlines()[-1]  # children: user sys
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))
print("%.1f" % (cpu(sys.argv[2]) - cpu(sys.argv[1])))' "$1" "$2"
}
submit() { # PREFIX FILE LOG [submit args...]
	local prefix=$1 file=$2 log=$3
	shift 3
	SWITCHYARD_CONFIG="$CONFIG" SWITCHYARD_NATS__PREFIX="$prefix" \
		DATABASE_URL="$DB_URL" SWITCHYARD_METRICS__ADDR='' \
		"$BIN" submit "$file" --quiet "$@" 2>"$log"
}
# "published N jobs (normal priority) in 1.23s (4567/s)" -> seconds and rate
published_s() { sed -nE 's/^published [0-9]+ jobs .* in ([0-9.]+)s \(([0-9]+)\/s\)$/\1/p' "$1" | tail -1; }
published_rate() { sed -nE 's/^published [0-9]+ jobs .* in ([0-9.]+)s \(([0-9]+)\/s\)$/\2/p' "$1" | tail -1; }
results_s() { sed -nE 's/^results: ([0-9]+) in ([0-9.]+)s$/\2/p' "$1" | tail -1; }
results_n() { sed -nE 's/^results: ([0-9]+) in ([0-9.]+)s$/\1/p' "$1" | tail -1; }
cpu_snap() { python3 "$ROOT/scripts/lib/bench_cpu.py" snap "$1"; }
cpu_diff() { python3 "$ROOT/scripts/lib/bench_cpu.py" diff "$@"; }
cpu_line() { # JSON -> "worker 12.3 s, nats-server ..."
	python3 -c '
import json, sys
j = json.loads(sys.argv[1])
keys = [k for k in j if k not in ("busy_cpu_s", "busy_pct", "wall_s", "cores", "top_other")]
line = ", ".join("%s %.1f s" % (k, j[k]) for k in keys)
if len(sys.argv) > 2 and sys.argv[2]:
    line += " (of which submit %s s)" % sys.argv[2]
if j.get("top_other"):
    line += " [other: " + ", ".join("%s %.1f s" % (c, v) for c, v in j["top_other"]) + "]"
print(line + "; machine busy %.0f%% of %d cores over %.1f s" % (j["busy_pct"] or 0, j["cores"], j["wall_s"]))' "$1" "${2:-}"
}
# on a failed submit: what the worker and the stream say
diagnose() { # PREFIX WORKER_LOG
	local prefix=$1 log=$2
	sy_log "diagnostics for $prefix:"
	psql -X -d "$DB_URL" -c "select status, count(*) from jobs group by 1" >&2 || true
	(cd "$ROOT/scripts/lib" && python3 - "$NATS_HOST" "$NATS_PORT" "${prefix^^}" <<'PY' >&2) || true
import json, sys
from nats_delete_streams import MiniNats
nc = MiniNats(sys.argv[1], sys.argv[2])
for c in ("jobs-high", "jobs-normal", "jobs-low"):
    r = nc.js_api("CONSUMER.INFO.%s_JOBS.%s" % (sys.argv[3], c))
    print("   consumer %s: %s" % (c, json.dumps({k: r.get(k) for k in ("num_pending", "num_ack_pending", "num_redelivered", "num_waiting")})))
PY
	sy_log "last lines of $log:"
	tail -n 15 "$log" | cut -c1-300 | sed 's/^/    /' >&2
}

# =====================================================================================
# 1. end-to-end throughput
# =====================================================================================
if want e2e; then
	say "1. end-to-end: $N jobs, simulator at 0 ms, worker max_in_flight 4000"
	d=$TMP/e2e
	mkdir -p "$d"
	python3 "$ROOT/scripts/lib/bench_jobs.py" "$N" "$d/jobs.jsonl" --tag "e2e$RUN"
	start_sim 0 "$d/simulator.log"
	start_worker "${RUN}e" 4000 "$d/worker.log"
	cpu_snap "$d/cpu0.json"
	times >"$d/times0"
	rc=0
	submit "${RUN}e" "$d/jobs.jsonl" "$d/submit.log" --wait --results "$d/results.jsonl" --timeout-s 300 || rc=$?
	times >"$d/times1"
	cpu_snap "$d/cpu1.json"
	submit_cpu=$(times_delta "$d/times0" "$d/times1")
	cpu=$(cpu_diff "$d/cpu0.json" "$d/cpu1.json" --name "worker=$WORKER_PID" --name "simulator=$SIM_PID")
	if ((rc != 0)); then
		diagnose "${RUN}e" "$d/worker.log"
	fi
	stop_worker
	stop_sim
	res=$(python3 "$ROOT/scripts/lib/bench_results.py" "$d/results.jsonl")
	secs=$(results_s "$d/submit.log")
	got=$(results_n "$d/submit.log")
	rate=$(python3 -c "import sys; print('%.0f' % (int(sys.argv[1]) / float(sys.argv[2])))" "${got:-0}" "${secs:-1}")
	fig "jobs" "$N (results: ${got:-?}, $(jget "$res" 'j["by_status"]'))"
	fig "publish phase (submit, window 1024)" "$(published_s "$d/submit.log") s ($(published_rate "$d/submit.log")/s)"
	fig "first publish -> last result" "${secs:-?} s"
	fig "throughput" "$rate jobs/s (target >= 5000)"
	fig "queued_ms + latency_ms p50 / p90 / p99 / max" "$(jget "$res" '"%s / %s / %s / %s ms" % tuple(j["total_ms"][k] for k in ("p50","p90","p99","max"))')"
	fig "  queued_ms p50 / p99" "$(jget "$res" '"%s / %s ms" % (j["queued_ms"]["p50"], j["queued_ms"]["p99"])')"
	fig "  latency_ms p50 / p99" "$(jget "$res" '"%s / %s ms" % (j["latency_ms"]["p50"], j["latency_ms"]["p99"])')"
	fig "CPU during the run" "$(cpu_line "$cpu" "$submit_cpu")"
	fig "worker exit status after SIGTERM" "$WORKER_RC"
	sum "| e2e: jobs | $N, ${got:-?} results ($(jget "$res" '", ".join("%s %s" % kv for kv in sorted(j["by_status"].items()))')) |"
	sum "| e2e: first publish → last result | ${secs:-?} s |"
	sum "| e2e: **throughput** | **$rate jobs/s** |"
	sum "| e2e: publish phase (submit, while the worker consumes) | $(published_rate "$d/submit.log") jobs/s |"
	sum "| e2e: queued_ms+latency_ms p50 / p99 | $(jget "$res" '"%s / %s ms" % (j["total_ms"]["p50"], j["total_ms"]["p99"])') |"
	sum "| e2e: CPU seconds during the run | $(cpu_line "$cpu" "$submit_cpu") |"
	if ((rc != 0)) || [[ $got != "$N" ]]; then
		FAILED+=("e2e: submit exit $rc, ${got:-0}/$N results")
	fi
	((WORKER_RC == 0)) || FAILED+=("e2e: worker exit status $WORKER_RC after SIGTERM")
fi

# =====================================================================================
# 2. 10k in flight at 2 s
# =====================================================================================
if want inflight; then
	say "2. in flight: $INFLIGHT_N jobs, simulator at 2000 ms, worker max_in_flight $INFLIGHT_N"
	d=$TMP/inflight
	mkdir -p "$d"
	python3 "$ROOT/scripts/lib/bench_jobs.py" "$INFLIGHT_N" "$d/jobs.jsonl" --tag "inf$RUN"
	start_sim 2000 "$d/simulator.log"
	start_worker "${RUN}f" "$INFLIGHT_N" "$d/worker.log"
	sleep 1
	RSS_IDLE=$(ps -o rss= -p "$WORKER_PID" | tr -d ' ')
	# sampler: time, worker RSS (KiB), established connections to the simulator
	(
		while :; do
			r=$(ps -o rss= -p "$WORKER_PID" 2>/dev/null | tr -d ' ') || break
			[[ -n $r ]] || break
			c=$(ss -Htn state established "( sport = :$SIM_PORT )" 2>/dev/null | wc -l)
			printf '%s %s %s\n' "$(date +%s.%N)" "$r" "$c"
			sleep 0.2
		done
	) >"$d/samples.txt" &
	SAMPLER=$!
	sy_on_exit "kill $SAMPLER 2>/dev/null || true"
	cpu_snap "$d/cpu0.json"
	times >"$d/times0"
	t0=$(date +%s.%N)
	rc=0
	submit "${RUN}f" "$d/jobs.jsonl" "$d/submit.log" --wait --results "$d/results.jsonl" --timeout-s 180 || rc=$?
	t1=$(date +%s.%N)
	times >"$d/times1"
	cpu_snap "$d/cpu1.json"
	submit_cpu=$(times_delta "$d/times0" "$d/times1")
	cpu=$(cpu_diff "$d/cpu0.json" "$d/cpu1.json" --name "worker=$WORKER_PID" --name "simulator=$SIM_PID")
	sleep 0.5
	kill "$SAMPLER" 2>/dev/null || true
	wait "$SAMPLER" 2>/dev/null || true
	RSS_AFTER=$(ps -o rss= -p "$WORKER_PID" | tr -d ' ')
	SIM_TOTAL=$(curl -fsS "http://127.0.0.1:$SIM_PORT/_sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' || echo '?')
	if ((rc != 0)); then
		diagnose "${RUN}f" "$d/worker.log"
	fi
	stop_worker
	stop_sim
	res=$(python3 "$ROOT/scripts/lib/bench_results.py" "$d/results.jsonl")
	read -r PEAK_RSS PEAK_CONN NSAMPLES < <(awk 'BEGIN{r=0;c=0} {if ($2>r) r=$2; if ($3>c) c=$3} END {print r, c, NR}' "$d/samples.txt")
	wall=$(python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$t1")
	secs=$(results_s "$d/submit.log")
	got=$(results_n "$d/submit.log")
	mib() { python3 -c "import sys; print('%.1f MiB' % (int(sys.argv[1] or 0) / 1024))" "$1"; }
	fig "jobs" "$INFLIGHT_N (results: ${got:-?}, $(jget "$res" 'j["by_status"]'))"
	fig "submit wall time (process start -> exit)" "$wall s"
	fig "first publish -> last result" "${secs:-?} s"
	fig "publish" "$(published_s "$d/submit.log") s ($(published_rate "$d/submit.log")/s)"
	fig "peak worker RSS (every 200 ms, $NSAMPLES samples)" "$(mib "$PEAK_RSS") (idle $(mib "$RSS_IDLE"), after $(mib "$RSS_AFTER"); target <= 200 MiB)"
	fig "peak connections open to the simulator" "$PEAK_CONN"
	fig "simulator requests" "$SIM_TOTAL"
	fig "queued_ms + latency_ms p50 / p99 / max" "$(jget "$res" '"%s / %s / %s ms" % (j["total_ms"]["p50"], j["total_ms"]["p99"], j["total_ms"]["max"])')"
	fig "CPU during the run" "$(cpu_line "$cpu" "$submit_cpu")"
	fig "worker exit status after SIGTERM" "$WORKER_RC"
	sum "| in flight: jobs at 2 s simulator latency | $INFLIGHT_N, ${got:-?} results |"
	sum "| in flight: first publish → last result | ${secs:-?} s (submit process: $wall s) |"
	sum "| in flight: **peak worker RSS** | **$(mib "$PEAK_RSS")** (idle $(mib "$RSS_IDLE")) |"
	sum "| in flight: peak open connections to the simulator | $PEAK_CONN |"
	sum "| in flight: queued_ms+latency_ms p50 / p99 | $(jget "$res" '"%s / %s ms" % (j["total_ms"]["p50"], j["total_ms"]["p99"])') |"
	if ((rc != 0)) || [[ $got != "$INFLIGHT_N" ]]; then
		FAILED+=("inflight: submit exit $rc, ${got:-0}/$INFLIGHT_N results")
	fi
	((WORKER_RC == 0)) || FAILED+=("inflight: worker exit status $WORKER_RC after SIGTERM")
fi

# =====================================================================================
# 3. bare parts
# =====================================================================================
if want parts; then
	say "3a. JetStream alone ($N messages)"
	d=$TMP/parts
	mkdir -p "$d"
	if [[ -s $TMP/e2e/jobs.jsonl ]]; then
		cp "$TMP/e2e/jobs.jsonl" "$d/jobs.jsonl"
	else
		python3 "$ROOT/scripts/lib/bench_jobs.py" "$N" "$d/jobs.jsonl" --tag "nats$RUN"
	fi
	# the Rust client: switchyard submit into a jobs stream with no worker
	PREFIXES+=("${RUN}p")
	python3 "$ROOT/scripts/lib/bench_nats.py" mkstream "$NATS_HOST" "$NATS_PORT" "${RUN}p"
	rc=0
	submit "${RUN}p" "$d/jobs.jsonl" "$d/submit.log" || rc=$?
	python3 "$ROOT/scripts/lib/nats_delete_streams.py" "$NATS_HOST" "$NATS_PORT" "${RUN^^}P_JOBS" 2>/dev/null || true
	if ((rc == 0)); then
		fig "switchyard submit, no worker (publish + ack)" "$(published_s "$d/submit.log") s ($(published_rate "$d/submit.log")/s)"
		sum "| JetStream: publish with acks (switchyard submit, window 1024) | $(published_rate "$d/submit.log") msg/s |"
	else
		FAILED+=("parts: switchyard submit without a worker exited $rc")
		sed 's/^/    /' "$d/submit.log" >&2
	fi
	if js=$(python3 "$ROOT/scripts/lib/bench_nats.py" pubsub "$NATS_HOST" "$NATS_PORT" "$d/jobs.jsonl" --stream "${RUN^^}N_JOBS"); then
		fig "bench_nats.py publish (Python, window 1024)" "$(jget "$js" 'j["publish_s"]') s ($(jget "$js" 'j["publish_per_s"]')/s)"
		fig "bench_nats.py pull 500 + ack each (Python)" "$(jget "$js" 'j["consume_s"]') s ($(jget "$js" 'j["consume_per_s"]')/s)"
		sum "| JetStream: publish (pure-Python client) | $(jget "$js" 'j["publish_per_s"]') msg/s |"
		sum "| JetStream: pull batches of 500 + explicit ack (pure-Python client) | $(jget "$js" 'j["consume_per_s"]') msg/s |"
	else
		FAILED+=("parts: bench_nats.py failed")
	fi

	say "3b. simulator HTTP alone (wrk -t2 -c64 -d10s, POST /v1/chat/completions)"
	if command -v wrk >/dev/null 2>&1; then
		start_sim 0 "$d/simulator.log"
		cat >"$d/body.json" <<'JSON'
{"model":"gpt-4o-mini-2024-07-18","messages":[{"role":"system","content":"Classify the ticket into one of: billing, auth, bug. Answer with the label only."},{"role":"user","content":"Subject: Invoice INV-4711 was charged twice\n\nHello, since yesterday our nightly sync stopped. Account 527167."}],"max_tokens":16,"temperature":0.2}
JSON
		cat >"$d/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local f = assert(io.open("$d/body.json", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
		curl -fsS -o /dev/null -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-bench' \
			--data-binary "@$d/body.json" "http://127.0.0.1:$SIM_PORT/v1/chat/completions" ||
			FAILED+=("parts: the wrk request body is refused by the simulator")
		cpu_snap "$d/cpu0.json"
		wrk -t2 -c64 -d10s --latency -s "$d/post.lua" "http://127.0.0.1:$SIM_PORT/v1/chat/completions" >"$d/wrk.txt" 2>&1 || true
		cpu_snap "$d/cpu1.json"
		cpu=$(cpu_diff "$d/cpu0.json" "$d/cpu1.json" --name "simulator=$SIM_PID")
		stop_sim
		sed 's/^/   | /' "$d/wrk.txt"
		RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$d/wrk.txt")
		P50=$(awk '$1 == "50%" {print $2}' "$d/wrk.txt")
		P99=$(awk '$1 == "99%" {print $2}' "$d/wrk.txt")
		NON2XX=$(awk '/Non-2xx/ {print $NF}' "$d/wrk.txt")
		fig "simulator requests/s" "${RPS:-?} (p50 ${P50:-?}, p99 ${P99:-?}, non-2xx ${NON2XX:-0})"
		fig "CPU during the run" "$(cpu_line "$cpu")"
		sum "| simulator alone: wrk 2 threads, 64 connections, 10 s | ${RPS:-?} req/s (p50 ${P50:-?}, p99 ${P99:-?}, non-2xx ${NON2XX:-0}) |"
		[[ -n $RPS && -z $NON2XX ]] || FAILED+=("parts: wrk run failed or got non-2xx answers (see $d/wrk.txt)")
	else
		fig "simulator requests/s" "skipped (no wrk)"
	fi
fi

# =====================================================================================
if want route; then
	say "4. classify + route (cargo bench --bench route)"
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
			printf '`scripts/bench.sh --record%s` (BENCH_N=%s, BENCH_INFLIGHT_N=%s); %s cores, %s GiB; NATS %s, PostgreSQL %s; load average %s before, %s after.\n\n' \
				"$([[ $ONLY == e2e,inflight,parts ]] || echo " --only $ONLY")" "$N" "$INFLIGHT_N" "$NPROC" "$MEM_GIB" "$NATS_VERSION" "$PG_VERSION" "$LOAD_START" "$LOAD_END"
			# shellcheck disable=SC2016  # literal backquotes (markdown)
			[[ -z ${BENCH_WORKER_ENV:-} ]] || printf 'Worker environment: `%s`.\n\n' "$BENCH_WORKER_ENV"
			printf '| what | figure |\n|---|---|\n'
			cat "$SUMMARY"
		} >>"$ROOT/BENCHMARKS.md"
		sy_log "appended the figures to BENCHMARKS.md"
	fi
fi
((${#FAILED[@]} == 0))
