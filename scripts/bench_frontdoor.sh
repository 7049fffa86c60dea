#!/usr/bin/env bash
# Front door figures (issue 15): the simulator, one worker and `switchyard serve` as
# separate processes on this machine; N chat completions at a fixed concurrency straight
# to the simulator and then through serve (→ NATS → worker → simulator → Postgres → serve),
# with serve's and the worker's CPU per request; then one batch file of BATCH_LINES
# requests end to end. Needs NATS and Postgres (scripts/lib/services.sh starts them) and
# a Python with httpx (SWITCHYARD_SDK_PYTHON, the openai SDK's venv).
#   scripts/bench_frontdoor.sh [N=2000] [CONCURRENCY=32] [BATCH_LINES=10000]   (N=0: the batch only)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000} CONC=${2:-32} LINES=${3:-10000}
BIN=${SWITCHYARD_BIN:-${CARGO_TARGET_DIR:-target}/debug/switchyard}
PY=${SWITCHYARD_SDK_PYTHON:-$HOME/.cache/switchyard-sdk-venv/bin/python}
tag="fdb$$"
db="sy_$tag"
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	up=${tag^^}; python3 scripts/lib/nats_delete_streams.py 127.0.0.1 4222 "${up}_JOBS" "${up}_RESULTS" "${up}_DLQ" >/dev/null 2>&1 || true
	psql -q "${ADMIN_DATABASE_URL:-postgres://root@127.0.0.1:5432/test}" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
psql -q "${ADMIN_DATABASE_URL:-postgres://root@127.0.0.1:5432/test}" -c "CREATE DATABASE $db"
key="sk-bench-$RANDOM$RANDOM"
hash=$(printf %s "$key" | "$BIN" serve --hash-key)
sim_port=$((20000 + RANDOM % 10000)) serve_port=$((30000 + RANDOM % 10000))
cp config/demo.toml "$work/c.toml"
cat >>"$work/c.toml" <<TOML

[serve]
listen = "127.0.0.1:$serve_port"
[[serve.keys]]
sha256 = "$hash"
tenant = "bench"
TOML
export SWITCHYARD_CONFIG="$work/c.toml" NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
export DATABASE_URL="postgres://root@127.0.0.1:5432/$db" SWITCHYARD_NATS__PREFIX=$tag
export SWITCHYARD_BATCH__ENABLED=false
for p in OPENAI LOCAL; do export "SWITCHYARD_PROVIDERS__${p}__BASE_URL=http://127.0.0.1:$sim_port/v1"; done
export SWITCHYARD_PROVIDERS__ANTHROPIC__BASE_URL=http://127.0.0.1:$sim_port SWITCHYARD_PROVIDERS__GEMINI__BASE_URL=http://127.0.0.1:$sim_port/v1beta
export OPENAI_API_KEY=sk-sim LOCAL_API_KEY=sk-sim ANTHROPIC_API_KEY=sk-sim GEMINI_API_KEY=sk-sim
"$BIN" simulate --addr "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 & pids+=($!)
"$BIN" migrate >/dev/null
"$BIN" worker >"$work/worker.log" 2>&1 & wpid=$!; pids+=($wpid)
sleep 2
"$BIN" serve >"$work/serve.log" 2>&1 & spid=$!; pids+=($spid)
for _ in $(seq 50); do curl -s "http://127.0.0.1:$serve_port/v1/models" >/dev/null && break; sleep 0.2; done
echo "binary: $BIN"
if ((N > 0)); then
echo "direct to the simulator:"
"$PY" scripts/lib/bench_frontdoor.py chat "http://127.0.0.1:$sim_port/v1" sk-sim "$N" "$CONC"
echo "through serve (serve pid $spid, worker pid $wpid):"
"$PY" scripts/lib/bench_frontdoor.py chat "http://127.0.0.1:$serve_port/v1" "$key" "$N" "$CONC" "$spid" "$wpid"
fi
echo "one batch file end to end:"
"$PY" scripts/lib/bench_frontdoor.py batch "http://127.0.0.1:$serve_port/v1" "$key" "$LINES"
