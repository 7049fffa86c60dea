#!/usr/bin/env bash
# scripts/lib/services_selftest.sh -- self-test for scripts/lib/services.sh
#
#   bash scripts/lib/services_selftest.sh
#
# Uses (and, if they don't answer, starts) the default services, then starts
# throwaway NATS + PostgreSQL in subshells / child shells and checks that
# they work and are cleaned up.  Exits 0 when every check passes.
# shellcheck disable=SC2016  # single-quoted scripts for bash -c / hooks are intended
# shellcheck disable=SC2030,SC2031  # the subshell's changes are meant to stay local
# shellcheck disable=SC2317  # helpers are called indirectly through check
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB="$HERE/services.sh"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sy-selftest.XXXXXX")
# an EXIT trap that exists before the library is used: it must be chained
trap 'rm -rf "$WORK"' EXIT

unset NATS_URL DATABASE_URL SY_SERVICES_STARTED
# shellcheck source=scripts/lib/services.sh
source "$LIB"

FAILURES=0
ok() { sy_log "selftest ok:   $*"; }
bad() {
	sy_log "selftest FAIL: $*"
	FAILURES=$((FAILURES + 1))
}
check() { # check DESCRIPTION CMD...
	local desc=$1
	shift
	if "$@"; then ok "$desc"; else bad "$desc"; fi
}

# ---- independent helpers (deliberately not using the library) -------------

url_port() { # URL -> port
	local hp=${1#*://}
	hp=${hp##*@}
	hp=${hp%%/*}
	printf '%s\n' "${hp##*:}"
}
url_host() {
	local hp=${1#*://}
	hp=${hp##*@}
	hp=${hp%%/*}
	printf '%s\n' "${hp%:*}"
}
nats_js_at() { # URL: INFO line says jetstream
	local line
	line=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r -t 2 l <&3 && printf "%s" "$l"' \
		_ "$(url_host "$1")" "$(url_port "$1")" 2>/dev/null) || return 1
	[[ $line == INFO* && $line == *'"jetstream":true'* ]]
}
pg_answers() {
	local out
	out=$(PGCONNECT_TIMEOUT=3 psql -X -w -Atq -d "$1" -c 'select 1' 2>/dev/null) && [[ $out == 1 ]]
}
pg_create_drop() {
	PGCONNECT_TIMEOUT=3 psql -X -w -q -v ON_ERROR_STOP=1 -d "$1" \
		-c 'create database x' -c 'drop database x' >/dev/null
}
listening() {
	local out
	out=$(ss -Htln "sport = :$1" 2>/dev/null) && [[ -n $out ]]
}
not_listening() { ! listening "$1"; }
alive() { # running and not a zombie
	local st
	kill -0 "$1" 2>/dev/null || return 1
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[[ ${st%% *} != Z ]]
}
gone() { ! alive "$1"; }
eventually_gone() { # PID [TIMEOUT_S=10]
	local i
	for ((i = 0; i < ${2:-10} * 10; i++)); do
		gone "$1" && return 0
		sleep 0.1
	done
	return 1
}
count_procs() { # count processes whose command line contains both strings
	local n=0 pid args
	for pid in /proc/[0-9]*; do
		args=$( (tr '\0' ' ' <"$pid/cmdline") 2>/dev/null) || continue
		[[ $args == *"$1"* && $args == *"$2"* ]] || continue
		alive "${pid#/proc/}" && n=$((n + 1))
	done
	printf '%s\n' "$n"
}
wait_file() { # FILE TIMEOUT_S: wait until FILE is non-empty
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		[[ -s $1 ]] && return 0
		sleep 0.1
	done
	return 1
}
equals() { [[ $1 == "$2" ]]; }
not_equals() { [[ $1 != "$2" ]]; }
is_empty_file() { [[ ! -s $1 ]]; }
no_such_path() { [[ ! -e $1 ]]; }

# ---- 0. static checks ------------------------------------------------------

check "bash -n services.sh" bash -n "$LIB"
check "bash -n services_selftest.sh" bash -n "${BASH_SOURCE[0]}"
if command -v shellcheck >/dev/null 2>&1; then
	check "shellcheck" shellcheck -x -P "$HERE/../.." "$LIB" "${BASH_SOURCE[0]}"
else
	sy_log "shellcheck not installed; skipping"
fi

# ---- 1. utilities ------------------------------------------------------------

check "sy_log writes nothing to stdout" equals "$(sy_log hello 2>/dev/null)" ""
check "sy_log format on stderr" equals "$(sy_log hello world 2>&1 >/dev/null)" "[switchyard] hello world"

p1=$(sy_free_port)
p2=$(sy_free_port)
check "sy_free_port prints a port in 20000-59999 ($p1)" bash -c '[[ $1 =~ ^[0-9]+$ ]] && (($1 >= 20000 && $1 < 60000))' _ "$p1"
check "sy_free_port: port is not listening" not_listening "$p1"
check "sy_free_port: second call gives a port too ($p2)" bash -c '[[ $1 =~ ^[0-9]+$ ]]' _ "$p2"

sy__parse_hostport 'user:pa:ss@example.com:1234' 4222
check "parse host:port with user:pass@" equals "$SY__HOST $SY__PORT" "example.com 1234"
sy__parse_hostport 'localhost' 4222
check "parse host without port" equals "$SY__HOST $SY__PORT" "localhost 4222"
sy__parse_hostport '[::1]:5555' 4222
check "parse [ipv6]:port" equals "$SY__HOST $SY__PORT" "::1 5555"
check "redact password" equals "$(sy__redact 'postgres://u:secret@h:1/db')" 'postgres://u:***@h:1/db'

# ulimit (in subshells, so the test shell keeps its limits)
check "sy_ensure_ulimit 4096" bash -c 'source "$1"; sy_ensure_ulimit 4096; (( $(ulimit -n) >= 4096 ))' _ "$LIB"
err=$(bash -c 'source "$1"; sy_ensure_ulimit 2000000000; echo "rc=$?"' _ "$LIB" 2>&1)
check "sy_ensure_ulimit with an impossible value warns and returns 0" \
	bash -c '[[ $1 == *warning* && $1 == *rc=0* ]]' _ "$err"

# sy_wait_http
if command -v python3 >/dev/null 2>&1; then
	hp=$(sy_free_port)
	mkdir -p "$WORK/www"
	echo hi >"$WORK/www/index.html"
	python3 -m http.server "$hp" --bind 127.0.0.1 --directory "$WORK/www" >"$WORK/http.log" 2>&1 &
	http_pid=$!
	check "sy_wait_http succeeds once the server is up" sy_wait_http "http://127.0.0.1:$hp/" 20
	check "sy_wait_http fails on a 404 (curl -f)" bash -c 'source "$1"; ! sy_wait_http "$2" 1 2>/dev/null' _ "$LIB" "http://127.0.0.1:$hp/nope"
	check "/dev/tcp fallback: 200" sy__http_get_devtcp "http://127.0.0.1:$hp/index.html"
	check "/dev/tcp fallback: 404 is an error" bash -c 'source "$1"; ! sy__http_get_devtcp "$2" >/dev/null' _ "$LIB" "http://127.0.0.1:$hp/nope"
	check "sy_wait_http without curl (PATH without curl)" bash -c '
		source "$1"; command() { if [[ $1 == -v && $2 == curl ]]; then return 1; fi; builtin command "$@"; }
		sy_wait_http "$2" 5' _ "$LIB" "http://127.0.0.1:$hp/"
	kill "$http_pid" 2>/dev/null || true
	wait "$http_pid" 2>/dev/null || true
else
	sy_log "python3 not installed; skipping the positive sy_wait_http checks"
fi
dead=$(sy_free_port)
start=$SECONDS
if sy_wait_http "http://127.0.0.1:$dead/" 2 2>"$WORK/wait.err"; then
	bad "sy_wait_http on a dead port should fail"
else
	check "sy_wait_http times out (~2s) with a message" \
		bash -c '(($1 <= 5)) && grep -q "timed out after 2s" "$2"' _ "$((SECONDS - start))" "$WORK/wait.err"
fi

# ---- 2. exit hooks / trap chaining (child shells) ----------------------------

out=$(bash -c 'set -euo pipefail; trap "echo orig" EXIT; source "$1"
	sy_on_exit "echo first"; sy_on_exit printf "%s\n" "second arg"; exit 3' _ "$LIB" 2>&1) && rc=0 || rc=$?
check "hooks run in reverse order, then the pre-existing EXIT trap" equals "$out" $'second arg\nfirst\norig'
check "exit status is preserved through the EXIT trap (3)" equals "$rc" 3

out=$(bash -c 'set -euo pipefail; source "$1"; sy_on_exit "echo a"; trap "echo user" EXIT
	sy_on_exit "echo b"' _ "$LIB" 2>&1) || true
check "a trap set by the caller after us is chained back in" equals "$out" $'b\na\nuser'

out=$(bash -c 'set -euo pipefail; trap "echo parent" EXIT; source "$1"
	( sy_on_exit "echo sub" ); echo after' _ "$LIB" 2>&1) || true
check "subshell hooks run at subshell exit, parent trap runs once" equals "$out" $'sub\nafter\nparent'

out=$(bash -c 'set -euo pipefail; source "$1"; sy_on_exit "echo x"; sy_on_exit "echo \$undefined_var; false"
	sy_on_exit "echo y"' _ "$LIB" 2>/dev/null) || true
check "a failing hook does not stop the others" equals "$out" $'y\n\nx'

# ---- 3. default URLs -----------------------------------------------------------

sy_services_up >"$WORK/stdout1"
check "sy_services_up writes nothing to stdout" is_empty_file "$WORK/stdout1"
check "default NATS_URL ($NATS_URL) answers with JetStream" nats_js_at "$NATS_URL"
check "default DATABASE_URL ($DATABASE_URL) answers" pg_answers "$DATABASE_URL"
check "default DATABASE_URL can create a database" pg_create_drop "$DATABASE_URL"
sy_log "selftest info: defaults -> NATS_URL=$NATS_URL DATABASE_URL=$DATABASE_URL SY_SERVICES_STARTED='$SY_SERVICES_STARTED'"
MAIN_NATS_URL=$NATS_URL
MAIN_DATABASE_URL=$DATABASE_URL
MAIN_STARTED=$SY_SERVICES_STARTED
sy_services_up 2>/dev/null
check "second sy_services_up keeps the same URLs" \
	equals "$NATS_URL $DATABASE_URL [$SY_SERVICES_STARTED]" "$MAIN_NATS_URL $MAIN_DATABASE_URL [$MAIN_STARTED]"

# ---- 4. throwaway services in a subshell --------------------------------------

rc=0
(
	FAILURES=0
	export NATS_URL=nats://127.0.0.1:1 DATABASE_URL=postgres://nobody@127.0.0.1:1/x
	# registered before the services: must run after they were stopped
	sy_on_exit 'if sy__pid_alive "$SY_NATS_PID" || sy__pid_alive "$SY_POSTGRES_PID"; then echo still-alive >>"$WORK/order"; fi; echo hook-A >>"$WORK/order"'
	sy_services_up >"$WORK/stdout2"
	sy_services_up >>"$WORK/stdout2" # idempotent
	sy_on_exit 'echo hook-B >>"$WORK/order"'
	sy_on_exit touch "$WORK/argv with space"
	printf '%s\n' "$NATS_URL" "$DATABASE_URL" "$SY_NATS_PID" "$SY_POSTGRES_PID" "$SY_SERVICES_TMPDIR" >"$WORK/state"

	check "no stdout from sy_services_up" is_empty_file "$WORK/stdout2"
	check "SY_SERVICES_STARTED='nats postgres'" equals "$SY_SERVICES_STARTED" "nats postgres"
	check "throwaway NATS_URL ($NATS_URL) on a new port" \
		bash -c 'p=$1; [[ $p != 1 && $p != 4222 ]]' _ "$(url_port "$NATS_URL")"
	check "throwaway NATS answers with JetStream" nats_js_at "$NATS_URL"
	check "throwaway DATABASE_URL ($DATABASE_URL) on a new port" \
		bash -c 'p=$1; [[ $p != 1 && $p != 5432 ]]' _ "$(url_port "$DATABASE_URL")"
	check "throwaway PostgreSQL: create database x; drop database x" pg_create_drop "$DATABASE_URL"
	check "nats-server pid $SY_NATS_PID alive" alive "$SY_NATS_PID"
	check "postgres pid $SY_POSTGRES_PID alive" alive "$SY_POSTGRES_PID"
	check "temp dir $SY_SERVICES_TMPDIR exists" test -d "$SY_SERVICES_TMPDIR"
	check "exactly one throwaway nats-server after two calls" \
		equals "$(count_procs nats-server "$SY_SERVICES_TMPDIR")" 1
	check "exactly one throwaway postmaster after two calls" \
		equals "$(count_procs "postgres -D" "$SY_SERVICES_TMPDIR")" 1
	# the services are disowned: a bare `wait` must not block on them
	# (watchdog, itself disowned, turns a hang into a failure)
	sub=$BASHPID
	(
		sleep 15 &
		echo $! >"$WORK/watchdog.pid"
		wait $! && kill -TERM "$sub"
	) >/dev/null 2>&1 &
	disown $!
	wait_file "$WORK/watchdog.pid" 5 || true
	start=$SECONDS
	wait
	kill "$(cat "$WORK/watchdog.pid")" 2>/dev/null || true
	check "bare 'wait' in the calling shell returns at once" bash -c '(($1 <= 2))' _ "$((SECONDS - start))"
	((FAILURES == 0)) && exit 7
	exit 1
) || rc=$?
check "subshell checks passed and its exit status (7) was preserved" equals "$rc" 7
mapfile -t st <"$WORK/state"
sub_nats_url=${st[0]} sub_db_url=${st[1]} sub_nats_pid=${st[2]} sub_pg_pid=${st[3]} sub_tmp=${st[4]}
check "throwaway nats-server ($sub_nats_pid) is gone" gone "$sub_nats_pid"
check "throwaway postgres ($sub_pg_pid) is gone" gone "$sub_pg_pid"
check "no process refers to $sub_tmp any more" equals "$(count_procs "" "$sub_tmp")" 0
check "temp dir $sub_tmp removed" no_such_path "$sub_tmp"
check "NATS port $(url_port "$sub_nats_url") closed" not_listening "$(url_port "$sub_nats_url")"
check "PostgreSQL port $(url_port "$sub_db_url") closed" not_listening "$(url_port "$sub_db_url")"
check "hooks ran in reverse order, services stopped before hook-A" equals "$(cat "$WORK/order")" $'hook-B\nhook-A'
check "argv-style sy_on_exit ran" test -e "$WORK/argv with space"
check "the subshell did not change the parent's NATS_URL/DATABASE_URL" \
	equals "$NATS_URL $DATABASE_URL" "$MAIN_NATS_URL $MAIN_DATABASE_URL"
check "parent's services still answer" nats_js_at "$NATS_URL"

# ---- 5. only NATS missing; stopped by SIGTERM ----------------------------------

rm -f "$WORK/state5"
bash -c 'set -euo pipefail; source "$1"; export NATS_URL=nats://127.0.0.1:1
	sy_services_up 2>/dev/null
	printf "%s\n" "$SY_SERVICES_STARTED" "$SY_NATS_PID" "$SY_SERVICES_TMPDIR" "$DATABASE_URL" >"$2.tmp"
	mv "$2.tmp" "$2"
	while :; do sleep 0.1; done' _ "$LIB" "$WORK/state5" &
child=$!
if wait_file "$WORK/state5" 30; then
	mapfile -t st <"$WORK/state5"
	check "only nats started when DATABASE_URL answers" equals "${st[0]}" nats
	check "DATABASE_URL left as given" equals "${st[3]}" "$MAIN_DATABASE_URL"
	kill -TERM "$child"
	rc=0
	wait "$child" || rc=$?
	check "SIGTERM -> exit status 143" equals "$rc" 143
	check "SIGTERM: nats-server gone" gone "${st[1]}"
	check "SIGTERM: temp dir removed" no_such_path "${st[2]}"
else
	bad "child shell did not start NATS within 30s"
	kill "$child" 2>/dev/null || true
fi

# ---- 6. SIGKILLed caller: services die with it (parent-death signal) -----------

if [[ $(setpriv --help 2>&1 || true) == *--pdeathsig* ]]; then
	rm -f "$WORK/state6"
	bash -c 'set -euo pipefail; source "$1"
		export NATS_URL=nats://127.0.0.1:1 DATABASE_URL=postgres://nobody@127.0.0.1:1/x
		sy_services_up 2>/dev/null
		printf "%s\n" "$SY_NATS_PID" "$SY_POSTGRES_PID" "$SY_SERVICES_TMPDIR" >"$2.tmp"
		mv "$2.tmp" "$2"
		while :; do sleep 0.1; done' _ "$LIB" "$WORK/state6" &
	child=$!
	if wait_file "$WORK/state6" 60; then
		mapfile -t st <"$WORK/state6"
		kill -KILL "$child"
		wait "$child" 2>/dev/null || true
		check "SIGKILL: nats-server stops via pdeathsig" eventually_gone "${st[0]}" 10
		check "SIGKILL: postgres stops via pdeathsig" eventually_gone "${st[1]}" 20
		# the temp dir is left behind in this case (no trap can run)
		rm -rf "${st[2]}"
	else
		bad "child shell did not start the services within 60s"
		kill "$child" 2>/dev/null || true
	fi
else
	sy_log "setpriv --pdeathsig not available; skipping the SIGKILL check"
fi

# ---------------------------------------------------------------------------------

if ((FAILURES > 0)); then
	sy_log "selftest: $FAILURES check(s) FAILED"
	exit 1
fi
sy_log "selftest: all checks passed"
