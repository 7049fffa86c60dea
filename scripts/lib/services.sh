# shellcheck shell=bash
# shellcheck disable=SC2016  # single-quoted scripts for inner bash -c are intended
# shellcheck disable=SC2034  # SY_* informational variables are for the callers
#
# scripts/lib/services.sh -- shared helpers for scripts/{test,demo,bench}.sh
#
# Source it (bash only; safe under `set -euo pipefail`):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"
#   sy_services_up            # NATS (JetStream) + PostgreSQL, reused or throwaway
#
# Public API (nothing here writes to stdout except sy_free_port, which prints
# the port; all messages go to stderr through sy_log):
#
#   sy_services_up
#       NATS: uses $NATS_URL (default nats://127.0.0.1:4222) if it answers
#       with JetStream enabled; otherwise starts a throwaway nats-server
#       (installing Debian's `nats-server` with apt-get if missing) on a free
#       port under a temp dir and exports NATS_URL=nats://127.0.0.1:PORT.
#       PostgreSQL: uses $DATABASE_URL if it answers `select 1` (warns when
#       its role cannot CREATE DATABASE).  When DATABASE_URL is unset, tries
#       postgres://postgres@127.0.0.1:5432/postgres and then
#       postgres://root@127.0.0.1:5432/test, taking the first that answers
#       AND whose role has CREATEDB or SUPERUSER.  Otherwise starts a
#       throwaway cluster (installing `postgresql`/`postgresql-client` if
#       needed) and exports DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres
#       (superuser, trust auth; fsync off; max_connections=$SY_PG_MAX_CONNECTIONS,
#       default 300).
#       Registers an EXIT trap (see sy_on_exit) that stops whatever it started
#       and deletes the temp dir.  Calling it again is harmless (the running
#       services answer, nothing new is started).
#       Exports SY_SERVICES_STARTED: "", "nats", "postgres" or "nats postgres"
#       (what sy_services_up started in this shell).
#       Also sets (not exported) SY_SERVICES_TMPDIR, SY_NATS_PID,
#       SY_POSTGRES_PID, SY_NATS_LOG, SY_POSTGRES_LOG for started services.
#       Returns non-zero (after logging why) if a service cannot be provided.
#
#   sy_on_exit CMD...
#       Run CMD when this shell exits; commands run in reverse order of
#       registration (last registered runs first), and before any EXIT trap
#       that existed before the first sy_on_exit/sy_services_up call.
#       One argument is a command string eval'ed at exit time (like `trap`);
#       several arguments are an argv, quoted now:  sy_on_exit kill "$pid"
#       Do not replace the EXIT trap afterwards with `trap ... EXIT` (if you do,
#       the next sy_on_exit/sy_services_up call chains your trap back in).
#       INT/TERM/HUP get `exit 130/143/129` traps (unless already trapped) so
#       that Ctrl-C also runs the cleanup.
#
#   sy_free_port            prints a free TCP port on 127.0.0.1 (20000-59999)
#   sy_wait_http URL [TIMEOUT_S=30]
#                           waits until `curl -fsS URL` succeeds (bash
#                           /dev/tcp GET for http:// when curl is missing);
#                           returns 1 with a message after the timeout
#   sy_ensure_ulimit N      raises `ulimit -n` (soft, and hard if needed) to at
#                           least N in the current shell; warns (returns 0)
#                           if it can't
#   sy_log MSG...           "[switchyard] MSG" on stderr
#
# Notes for callers:
#   * Services are started as background processes of the calling shell but
#     `disown`ed, so a bare `wait` in your script does not wait for them.
#     They also get a parent-death signal (setpriv --pdeathsig) so they stop
#     even if the script is SIGKILLed.
#   * Don't `exec` another program from the script after sy_services_up:
#     the EXIT trap would never run.
#   * When called in a subshell `( ... )`, the services started there are
#     stopped when that subshell exits.

if [ -z "${BASH_VERSION:-}" ]; then
	echo "[switchyard] scripts/lib/services.sh requires bash" >&2
	# shellcheck disable=SC2317
	return 1 2>/dev/null || exit 1
fi

# ---------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------

sy_log() {
	printf '[switchyard] %s\n' "$*" >&2
}

# sy__dump_log FILE: show the tail of a log file on stderr.
sy__dump_log() {
	local file=$1 line
	if [[ ! -s $file ]]; then
		sy_log "  (log $file is empty or missing)"
		return 0
	fi
	sy_log "  --- last lines of $file ---"
	while IFS= read -r line || [[ -n $line ]]; do
		printf '[switchyard]   | %s\n' "$line" >&2
	done < <(tail -n 40 -- "$file" 2>/dev/null || true)
}

# sy__redact URL: hide the password part of a URL for log messages.
sy__redact() {
	local url=$1
	if [[ $url =~ ^([^:/]+://[^:@/]+):[^@/]*@(.*)$ ]]; then
		url="${BASH_REMATCH[1]}:***@${BASH_REMATCH[2]}"
	fi
	printf '%s' "$url"
}

# ---------------------------------------------------------------------------
# per-shell state, exit hooks and traps
# ---------------------------------------------------------------------------

# State is per shell process ($BASHPID): a subshell inherits the variables of
# its parent but not its traps, so it starts over with an empty hook list
# (otherwise it would stop the parent's services when it exits).
sy__init_shell() {
	if [[ "${SY__SHELL_PID:-}" != "$BASHPID" ]]; then
		SY__SHELL_PID=$BASHPID
		SY__EXIT_HOOKS=()
		SY__STARTED=()
		SY__TRAP_PID=''
		SY__TMPROOT=''
		SY_SERVICES_TMPDIR=''
		SY_NATS_PID=''
		SY_POSTGRES_PID=''
		SY_NATS_LOG=''
		SY_POSTGRES_LOG=''
	fi
}

sy__exit_handler() {
	local rc=$? i hook idx=()
	set +eu
	if [[ "${SY__TRAP_PID:-}" == "$BASHPID" ]]; then
		idx=("${!SY__EXIT_HOOKS[@]}")
		for ((i = ${#idx[@]} - 1; i >= 0; i--)); do
			hook=${SY__EXIT_HOOKS[${idx[i]}]}
			unset "SY__EXIT_HOOKS[${idx[i]}]"
			eval "$hook" || sy_log "cleanup command failed: $hook"
		done
		SY__EXIT_HOOKS=()
	fi
	return "$rc"
}

# Install our EXIT trap in this shell, chaining an EXIT trap that is already
# there (it becomes the first hook, so it runs last).
sy__install_trap() {
	sy__init_shell
	local cur existing='' sig code
	local -a parts=()
	if [[ "$BASHPID" != "$$" && "${SY__TRAP_PID:-}" != "$BASHPID" ]]; then
		# In a subshell, `trap -p` shows the *parent's* traps until some trap is
		# set in the subshell.  Touching an unused signal clears that stale view
		# so that we only chain an EXIT trap this subshell really has.
		trap - RTMAX 2>/dev/null || true
	fi
	cur=$(trap -p EXIT)
	if [[ -n $cur ]]; then
		eval "parts=($cur)" # trap -- 'CMD' EXIT
		existing=${parts[2]:-}
	fi
	if [[ -n $existing && $existing != sy__exit_handler ]]; then
		SY__EXIT_HOOKS=("$existing" "${SY__EXIT_HOOKS[@]}")
	fi
	if [[ $existing != sy__exit_handler ]]; then
		trap sy__exit_handler EXIT
	fi
	if [[ "${SY__TRAP_PID:-}" != "$BASHPID" ]]; then
		for sig in INT:130 TERM:143 HUP:129; do
			code=${sig#*:}
			sig=${sig%%:*}
			if [[ -z "$(trap -p "$sig")" ]]; then
				# shellcheck disable=SC2064  # expand the code now
				trap "exit $code" "$sig"
			fi
		done
		SY__TRAP_PID=$BASHPID
	fi
}

# sy__add_hook CMD: append CMD (a string) to the hook list; the stored string
# is left in SY__LAST_HOOK (for sy__remove_hook).
sy__add_hook() {
	sy__install_trap
	SY__EXIT_HOOKS+=("$1")
	SY__LAST_HOOK=$1
}

# sy__remove_hook CMD: forget a hook (all entries equal to CMD).
sy__remove_hook() {
	local i
	for i in "${!SY__EXIT_HOOKS[@]}"; do
		[[ ${SY__EXIT_HOOKS[i]} == "$1" ]] && unset "SY__EXIT_HOOKS[$i]"
	done
	SY__EXIT_HOOKS=("${SY__EXIT_HOOKS[@]}")
}

sy_on_exit() {
	if (($# == 0)); then
		sy_log "sy_on_exit: missing command"
		return 1
	fi
	local cmd
	if (($# == 1)); then
		cmd=$1
	else
		cmd=$(printf '%q ' "$@")
		cmd=${cmd% }
	fi
	sy__add_hook "$cmd"
}

# ---------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------

# sy__pid_alive PID: running (not a zombie).
sy__pid_alive() {
	local pid=$1 stat
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	if [[ -r /proc/$pid/stat ]] && IFS= read -r stat <"/proc/$pid/stat" 2>/dev/null; then
		stat=${stat##*) }
		[[ ${stat%% *} != Z ]] || return 1
	fi
	return 0
}

# sy__wait_gone PID TIMEOUT_S: wait until PID is gone; 1 if still alive.
sy__wait_gone() {
	local pid=$1 tenths=$(($2 * 10))
	while sy__pid_alive "$pid"; do
		((tenths-- > 0)) || return 1
		sleep 0.1
	done
	return 0
}

# sy__stop_pid PID SIGNAL NAME: send SIGNAL, wait up to 15s, then SIGKILL.
sy__stop_pid() {
	local pid=$1 sig=$2 name=$3
	sy__pid_alive "$pid" || return 0
	kill "-$sig" "$pid" 2>/dev/null || true
	if ! sy__wait_gone "$pid" 15; then
		sy_log "$name (pid $pid) did not stop after SIG$sig; killing it"
		kill -KILL "$pid" 2>/dev/null || true
		sy__wait_gone "$pid" 5 || true
	fi
}

# sy__parse_hostport HOSTPORT DEFAULT_PORT -> SY__HOST, SY__PORT
sy__parse_hostport() {
	local hp=$1
	SY__PORT=$2
	hp=${hp##*@} # drop user:pass@
	if [[ $hp == \[* ]]; then
		SY__HOST=${hp%%]*}
		SY__HOST=${SY__HOST#[}
		hp=${hp#*]}
		[[ $hp == :?* ]] && SY__PORT=${hp#:}
	elif [[ $hp == *:* ]]; then
		SY__HOST=${hp%%:*}
		[[ -n ${hp#*:} ]] && SY__PORT=${hp#*:}
	else
		SY__HOST=$hp
	fi
	[[ -n $SY__HOST ]] || SY__HOST=127.0.0.1
	[[ $SY__PORT =~ ^[0-9]+$ ]]
}

sy__port_in_use() {
	local port=$1 out
	if command -v ss >/dev/null 2>&1 && out=$(ss -Htan "sport = :$port" 2>/dev/null); then
		[[ -n $out ]] && return 0
	fi
	timeout 1 "$BASH" -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$port" 2>/dev/null
}

sy_free_port() {
	local port i
	if command -v python3 >/dev/null 2>&1 && port=$(
		python3 - 2>/dev/null <<'PY'
import random, socket, sys
for _ in range(200):
    p = random.randint(20000, 59999)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    sys.exit(0)
sys.exit(1)
PY
	) && [[ $port =~ ^[0-9]+$ ]] && ! sy__port_in_use "$port"; then
		printf '%s\n' "$port"
		return 0
	fi
	for ((i = 0; i < 200; i++)); do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		if ! sy__port_in_use "$port"; then
			printf '%s\n' "$port"
			return 0
		fi
	done
	sy_log "could not find a free TCP port on 127.0.0.1"
	return 1
}

sy_ensure_ulimit() {
	local want=${1:-} cur hard
	if [[ ! $want =~ ^[0-9]+$ ]]; then
		sy_log "sy_ensure_ulimit: expected a number, got '$want'"
		return 1
	fi
	cur=$(ulimit -n)
	if [[ $cur == unlimited ]] || ((cur >= want)); then
		return 0
	fi
	hard=$(ulimit -Hn)
	if [[ $hard != unlimited ]] && ((hard < want)); then
		# only root (CAP_SYS_RESOURCE) can raise the hard limit
		ulimit -Hn "$want" 2>/dev/null && hard=$want
	fi
	if [[ $hard == unlimited ]] || ((hard >= want)); then
		if ulimit -n "$want" 2>/dev/null; then
			return 0
		fi
	fi
	ulimit -n "$hard" 2>/dev/null || true
	sy_log "warning: could not raise the open-file limit to $want (soft limit now $(ulimit -n), hard limit $(ulimit -Hn))"
	return 0
}

# sy__http_get_devtcp URL: GET an http:// URL with bash /dev/tcp; success on
# a 1xx-3xx status (like curl -f).  Prints the problem on failure.
sy__http_get_devtcp() {
	local url=$1 rest hostport path status
	if [[ $url != http://* ]]; then
		echo "cannot fetch $url without curl (only http:// is supported)"
		return 1
	fi
	rest=${url#http://}
	hostport=${rest%%/*}
	if [[ $rest == */* ]]; then path="/${rest#*/}"; else path=/; fi
	if ! sy__parse_hostport "$hostport" 80; then
		echo "bad URL: $url"
		return 1
	fi
	status=$(timeout 5 "$BASH" -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" "$1" >&3
		IFS= read -r line <&3 || exit 1
		printf "%s\n" "$line"' _ "$SY__HOST" "$SY__PORT" "$path" 2>&1) || {
		echo "connection to $SY__HOST:$SY__PORT failed"
		return 1
	}
	status=${status%$'\r'}
	if [[ $status =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] && ((BASH_REMATCH[1] < 400)); then
		return 0
	fi
	echo "unexpected response: $status"
	return 1
}

sy_wait_http() {
	local url=${1:-} timeout=${2:-30} deadline err=''
	if [[ -z $url || ! $timeout =~ ^[0-9]+$ ]]; then
		sy_log "usage: sy_wait_http URL [TIMEOUT_S]"
		return 1
	fi
	deadline=$((SECONDS + timeout))
	while :; do
		if command -v curl >/dev/null 2>&1; then
			err=$(curl -fsS -o /dev/null --max-time 2 --noproxy '127.0.0.1,localhost,::1' "$url" 2>&1) && return 0
		else
			err=$(sy__http_get_devtcp "$url" 2>&1) && return 0
		fi
		if ((SECONDS >= deadline)); then
			sy_log "timed out after ${timeout}s waiting for $url${err:+ ($err)}"
			return 1
		fi
		sleep 0.2
	done
}

# ---------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------

sy__maybe_sudo() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		sy_log "need root to run: $* (run as root, or install the package yourself)"
		return 1
	fi
}

# sy__apt_install PKG...: apt-get update (once per shell) + install.
sy__apt_install() {
	if ! command -v apt-get >/dev/null 2>&1; then
		sy_log "apt-get not found; please install: $*"
		return 1
	fi
	local opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
	if [[ -z "${SY__APT_UPDATED:-}" ]]; then
		sy_log "running apt-get update"
		if ! sy__maybe_sudo env DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q update >&2; then
			sy_log "apt-get update failed"
			return 1
		fi
		SY__APT_UPDATED=1
	fi
	sy_log "installing $* with apt-get"
	if ! sy__maybe_sudo env DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q install -y \
		--no-install-recommends "$@" >&2; then
		sy_log "apt-get install $* failed"
		return 1
	fi
}

# Optional wrapper that gives a child a parent-death signal.
# sy__pdeathsig_prefix SIG -> SY__PREFIX array
sy__pdeathsig_prefix() {
	SY__PREFIX=()
	if [[ -z "${SY__SETPRIV_HELP+x}" ]]; then
		SY__SETPRIV_HELP=''
		if command -v setpriv >/dev/null 2>&1; then
			SY__SETPRIV_HELP=$(setpriv --help 2>&1 || true)
		fi
	fi
	if [[ $SY__SETPRIV_HELP == *--pdeathsig* ]]; then
		SY__PREFIX=(setpriv --pdeathsig "$1")
	fi
}

# sy__spawn LOG CWD CMD...: start CMD in the background (stdin /dev/null,
# stdout+stderr appended to LOG), disown it, and leave its pid in SY__SPAWNED.
sy__spawn() {
	local log=$1 cwd=$2
	shift 2
	(cd "$cwd" && exec "$@") </dev/null >>"$log" 2>&1 &
	SY__SPAWNED=$!
	disown "$SY__SPAWNED" 2>/dev/null || true
}

# sy__tmproot: create (once per shell) the temp dir for throwaway services.
sy__tmproot() {
	sy__init_shell
	[[ -n $SY__TMPROOT && -d $SY__TMPROOT ]] && return 0
	local dir
	dir=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-services.XXXXXX") || {
		sy_log "mktemp failed"
		return 1
	}
	# the postgres user must be able to traverse it
	chmod 755 "$dir"
	SY__TMPROOT=$dir
	SY_SERVICES_TMPDIR=$dir
	sy_on_exit rm -rf -- "$dir"
}

sy__mark_started() {
	local s
	for s in "${SY__STARTED[@]}"; do
		[[ $s == "$1" ]] && return 0
	done
	SY__STARTED+=("$1")
}

# ---------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------

# sy__nats_info HOST PORT: print the server's INFO line.
sy__nats_info() {
	timeout 3 "$BASH" -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		IFS= read -r -t 2 line <&3 || exit 1
		printf "%s\n" "$line"' _ "$1" "$2" 2>/dev/null
}

# sy__nats_js_ok HOST PORT: answers INFO with JetStream enabled.
# Sets SY__NATS_ANSWERED=1 when something answered at all.
sy__nats_js_ok() {
	local info
	info=$(sy__nats_info "$1" "$2") || return 1
	[[ $info == INFO* ]] || return 1
	SY__NATS_ANSWERED=1
	SY__NATS_VERSION=''
	if [[ $info =~ \"version\":\"([^\"]*)\" ]]; then
		SY__NATS_VERSION=${BASH_REMATCH[1]}
	fi
	[[ $info == *'"jetstream":true'* ]]
}

# sy__nats_url_ok URL: any server of a (comma-separated) NATS URL answers
# with JetStream.
sy__nats_url_ok() {
	local list=$1 u rest
	local -a urls
	IFS=',' read -r -a urls <<<"$list"
	for u in "${urls[@]}"; do
		u=${u//[[:space:]]/}
		[[ -n $u ]] || continue
		rest=${u#*://}
		rest=${rest%%/*}
		sy__parse_hostport "$rest" 4222 || continue
		if sy__nats_js_ok "$SY__HOST" "$SY__PORT"; then
			return 0
		fi
	done
	return 1
}

sy__version_ge() { # sy__version_ge VERSION MAJOR MINOR
	[[ $1 =~ ([0-9]+)\.([0-9]+) ]] || return 1
	local ma=${BASH_REMATCH[1]} mi=${BASH_REMATCH[2]}
	((ma > $2 || (ma == $2 && mi >= $3)))
}

sy__find_nats_server() {
	local c
	if c=$(command -v nats-server 2>/dev/null); then
		printf '%s\n' "$c"
		return 0
	fi
	for c in /usr/sbin/nats-server /usr/bin/nats-server /usr/local/bin/nats-server /usr/local/sbin/nats-server; do
		if [[ -x $c ]]; then
			printf '%s\n' "$c"
			return 0
		fi
	done
	return 1
}

sy__start_nats() {
	local bin ver dir log port attempt pid hook deadline
	if ! bin=$(sy__find_nats_server); then
		sy__apt_install nats-server || return 1
		hash -r
		bin=$(sy__find_nats_server) || {
			sy_log "nats-server is still not available after installing the package"
			return 1
		}
	fi
	ver=$("$bin" --version 2>&1 || true)
	if ! sy__version_ge "$ver" 2 9; then
		sy_log "$bin reports '$ver'; NATS Server 2.9+ with JetStream is required"
		sy_log "install a newer nats-server, or point NATS_URL at a JetStream-enabled server"
		return 1
	fi
	sy__tmproot || return 1
	sy__pdeathsig_prefix TERM
	for attempt in 1 2 3; do
		port=$(sy_free_port) || return 1
		dir="$SY__TMPROOT/nats-$port"
		log="$dir/nats-server.log"
		mkdir -p "$dir/jetstream" || return 1
		sy__spawn "$log" "$dir" "${SY__PREFIX[@]}" "$bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/jetstream"
		pid=$SY__SPAWNED
		sy_on_exit sy__stop_pid "$pid" TERM nats-server
		hook=$SY__LAST_HOOK
		deadline=$((SECONDS + 20))
		while :; do
			if sy__nats_js_ok 127.0.0.1 "$port"; then
				export NATS_URL="nats://127.0.0.1:$port"
				SY_NATS_PID=$pid
				SY_NATS_LOG=$log
				sy__mark_started nats
				sy_log "started throwaway nats-server ($ver, JetStream) at $NATS_URL (pid $pid, log $log)"
				return 0
			fi
			if ! sy__pid_alive "$pid" || ((SECONDS >= deadline)); then
				break
			fi
			sleep 0.1
		done
		if sy__pid_alive "$pid"; then
			sy_log "nats-server on port $port did not answer with JetStream within 20s"
		else
			sy_log "nats-server on port $port exited during startup"
		fi
		sy__dump_log "$log"
		sy__stop_pid "$pid" TERM nats-server
		sy__remove_hook "$hook"
		if ((attempt < 3)) && grep -qiE 'address already in use|bind' "$log" 2>/dev/null; then
			sy_log "retrying on another port"
			continue
		fi
		return 1
	done
	return 1
}

sy__nats_up() {
	local url=${NATS_URL:-nats://127.0.0.1:4222}
	SY__NATS_ANSWERED=''
	if sy__nats_url_ok "$url"; then
		export NATS_URL=$url
		if [[ -n $SY__NATS_VERSION ]] && ! sy__version_ge "$SY__NATS_VERSION" 2 9; then
			sy_log "warning: NATS at $(sy__redact "$url") is version $SY__NATS_VERSION; 2.9+ is required"
		fi
		sy_log "using NATS at $(sy__redact "$url")${SY__NATS_VERSION:+ (v$SY__NATS_VERSION, JetStream)}"
		return 0
	fi
	if [[ -n $SY__NATS_ANSWERED ]]; then
		sy_log "NATS at $(sy__redact "$url") answers but JetStream is not enabled; starting a throwaway nats-server"
	else
		sy_log "no NATS answering at $(sy__redact "$url"); starting a throwaway nats-server"
	fi
	sy__start_nats
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

sy__ensure_psql() {
	command -v psql >/dev/null 2>&1 && return 0
	sy__apt_install postgresql-client || return 1
	hash -r
	command -v psql >/dev/null 2>&1 || {
		sy_log "psql is still not available after installing postgresql-client"
		return 1
	}
}

# sy__pg_probe URL: succeeds if the server answers; prints "t" when the role
# may create databases, "f" otherwise.  On failure prints psql's error.
sy__pg_probe() {
	local out
	if out=$(PGCONNECT_TIMEOUT=3 timeout 15 psql -X -w -q -A -t -v ON_ERROR_STOP=1 -d "$1" \
		-c 'select rolcreatedb or rolsuper from pg_roles where rolname = current_user' 2>&1); then
		out=${out##*$'\n'}
		printf '%s\n' "${out:-f}"
		return 0
	fi
	printf '%s\n' "${out%%$'\n'*}"
	return 1
}

# sy__find_pg_bindir: directory holding initdb and postgres.
sy__find_pg_bindir() {
	local c d
	if c=$(command -v initdb 2>/dev/null); then
		d=$(dirname -- "$(readlink -f -- "$c")")
		if [[ -x $d/postgres ]]; then
			printf '%s\n' "$d"
			return 0
		fi
	fi
	while IFS= read -r d; do
		if [[ -x $d/initdb && -x $d/postgres ]]; then
			printf '%s\n' "$d"
			return 0
		fi
	done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
	if command -v pg_config >/dev/null 2>&1 && d=$(pg_config --bindir 2>/dev/null) &&
		[[ -x $d/initdb && -x $d/postgres ]]; then
		printf '%s\n' "$d"
		return 0
	fi
	return 1
}

sy__ensure_pg_user() {
	id -u postgres >/dev/null 2>&1 && return 0
	sy_log "creating system user 'postgres'"
	if command -v useradd >/dev/null 2>&1; then
		if getent group postgres >/dev/null 2>&1; then
			useradd --system -g postgres --no-create-home --home-dir /var/lib/postgresql \
				--shell /usr/sbin/nologin postgres || return 1
		else
			useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
				--shell /usr/sbin/nologin postgres || return 1
		fi
	elif command -v adduser >/dev/null 2>&1; then
		adduser --system --group --no-create-home --home /var/lib/postgresql postgres >&2 || return 1
	else
		sy_log "cannot create the postgres user (no useradd/adduser)"
		return 1
	fi
}

# sy__pg_prefix SIG -> SY__PREFIX: run as the postgres user when we are root
# (PostgreSQL refuses to run as root), with a parent-death signal if possible.
sy__pg_prefix() {
	sy__pdeathsig_prefix "$1"
	((EUID == 0)) || return 0
	if [[ $SY__SETPRIV_HELP == *--init-groups* ]]; then
		SY__PREFIX=(setpriv --reuid=postgres --regid=postgres --init-groups "${SY__PREFIX[@]:1}")
		# (the slice drops "setpriv" from the pdeathsig prefix, keeping its options)
	elif command -v runuser >/dev/null 2>&1; then
		SY__PREFIX=(runuser -u postgres --)
	else
		# shellcheck disable=SC2016  # $0/$@ are for the inner sh
		SY__PREFIX=(su -s /bin/sh -c 'exec "$0" "$@"' postgres --)
	fi
}

# sy__stop_postgres PID DATADIR: fast shutdown of the postmaster.
sy__stop_postgres() {
	local pid=$1 data=$2 pm=''
	if [[ -r $data/postmaster.pid ]]; then
		IFS= read -r pm <"$data/postmaster.pid" || true
	fi
	if [[ $pm =~ ^[0-9]+$ && $pm != "$pid" ]]; then
		sy__stop_pid "$pm" INT postgres
	fi
	sy__stop_pid "$pid" INT postgres
}

sy__start_postgres() {
	local bindir pgroot data log port attempt pid hook deadline url sockdir probe ver
	if ! bindir=$(sy__find_pg_bindir); then
		sy__apt_install postgresql postgresql-client || return 1
		hash -r
		bindir=$(sy__find_pg_bindir) || {
			sy_log "initdb/postgres still not found after installing postgresql"
			return 1
		}
	fi
	if ((EUID == 0)); then
		sy__ensure_pg_user || return 1
	fi
	sy__tmproot || return 1
	pgroot="$SY__TMPROOT/postgres"
	data="$pgroot/data"
	log="$pgroot/postgres.log"
	mkdir -p "$pgroot" || return 1
	chmod 700 "$pgroot"
	sy__pg_prefix INT
	if ((EUID == 0)); then
		chown postgres: "$pgroot" || return 1
		if ! "${SY__PREFIX[@]}" test -w "$pgroot" 2>/dev/null; then
			# TMPDIR is not reachable for the postgres user: use /tmp instead
			rmdir "$pgroot" 2>/dev/null || true
			pgroot=$(mktemp -d /tmp/switchyard-postgres.XXXXXX) || return 1
			sy_on_exit rm -rf -- "$pgroot"
			chmod 700 "$pgroot"
			chown postgres: "$pgroot" || return 1
			data="$pgroot/data"
			log="$pgroot/postgres.log"
		fi
	fi
	ver=$("$bindir/postgres" --version 2>/dev/null || true)
	if ! (cd "$pgroot" && exec "${SY__PREFIX[@]}" "$bindir/initdb" -D "$data" -A trust -U postgres \
		-E UTF8 --no-locale -N) </dev/null >"$pgroot/initdb.log" 2>&1; then
		sy_log "initdb failed"
		sy__dump_log "$pgroot/initdb.log"
		return 1
	fi
	# unix socket next to the data (path length limit ~107 bytes), else none
	sockdir=$pgroot
	((${#pgroot} < 80)) || sockdir=''
	for attempt in 1 2 3; do
		port=$(sy_free_port) || return 1
		sy__spawn "$log" "$pgroot" "${SY__PREFIX[@]}" "$bindir/postgres" -D "$data" \
			-h 127.0.0.1 -p "$port" -k "$sockdir" \
			-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
			-c max_connections="${SY_PG_MAX_CONNECTIONS:-300}"
		pid=$SY__SPAWNED
		sy_on_exit sy__stop_postgres "$pid" "$data"
		hook=$SY__LAST_HOOK
		url="postgres://postgres@127.0.0.1:$port/postgres"
		deadline=$((SECONDS + 30))
		while :; do
			if probe=$(sy__pg_probe "$url"); then
				export DATABASE_URL=$url
				SY_POSTGRES_PID=$pid
				if [[ -r $data/postmaster.pid ]]; then
					IFS= read -r SY_POSTGRES_PID <"$data/postmaster.pid" || SY_POSTGRES_PID=$pid
				fi
				SY_POSTGRES_LOG=$log
				sy__mark_started postgres
				sy_log "started throwaway PostgreSQL (${ver:-postgres}) at $url (pid $SY_POSTGRES_PID, log $log)"
				return 0
			fi
			if ! sy__pid_alive "$pid" || ((SECONDS >= deadline)); then
				break
			fi
			sleep 0.2
		done
		if sy__pid_alive "$pid"; then
			sy_log "PostgreSQL on port $port did not become ready within 30s (last error: $probe)"
		else
			sy_log "PostgreSQL on port $port exited during startup"
		fi
		sy__dump_log "$log"
		sy__stop_postgres "$pid" "$data"
		sy__remove_hook "$hook"
		if ((attempt < 3)) && grep -qiE 'could not bind|address already in use' "$log" 2>/dev/null; then
			sy_log "retrying on another port"
			: >"$log"
			continue
		fi
		return 1
	done
	return 1
}

sy__pg_up() {
	local url out
	sy__ensure_psql || return 1
	if [[ -n "${DATABASE_URL:-}" ]]; then
		if out=$(sy__pg_probe "$DATABASE_URL"); then
			if [[ $out != t ]]; then
				sy_log "warning: the role in DATABASE_URL=$(sy__redact "$DATABASE_URL") cannot CREATE DATABASE; tests that create databases will fail"
			fi
			sy_log "using PostgreSQL at $(sy__redact "$DATABASE_URL")"
			return 0
		fi
		sy_log "PostgreSQL at DATABASE_URL=$(sy__redact "$DATABASE_URL") does not answer (${out:-no error text}); starting a throwaway PostgreSQL"
	else
		for url in postgres://postgres@127.0.0.1:5432/postgres postgres://root@127.0.0.1:5432/test; do
			if out=$(sy__pg_probe "$url"); then
				if [[ $out == t ]]; then
					export DATABASE_URL=$url
					sy_log "using PostgreSQL at $url"
					return 0
				fi
				sy_log "PostgreSQL at $url answers but its role cannot CREATE DATABASE; skipping it"
			fi
		done
		sy_log "no usable PostgreSQL at the default URLs; starting a throwaway PostgreSQL"
	fi
	sy__start_postgres
}

# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

sy_services_up() {
	sy__install_trap
	sy__nats_up || return 1
	sy__pg_up || return 1
	SY_SERVICES_STARTED="${SY__STARTED[*]}"
	export SY_SERVICES_STARTED
	return 0
}
