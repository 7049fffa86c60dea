#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real NATS
# JetStream and Postgres. Uses the services at NATS_URL / DATABASE_URL when they answer,
# otherwise starts throwaway ones (installing Debian's nats-server / postgresql if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo >/dev/null 2>&1; then
  sy_log "cargo is not installed: install Rust (rustup) first"
  exit 1
fi

sy_log "format check"
cargo fmt --all -- --check

sy_log "clippy"
cargo clippy --all-targets --locked -- -D warnings

sy_services_up
sy_log "NATS at ${NATS_URL}, Postgres at ${DATABASE_URL%%\?*}"
sy_ensure_ulimit 8192

# The providers' official Python SDKs (openai, anthropic, google-genai), as the package
# registry has them today, in a venv kept outside the clone: tests/stream.rs, batch.rs,
# semantic_cache.rs and sdk_simulator.rs (each SDK in ordinary use) drive the simulator
# with them. Without the registry (or with SWITCHYARD_SKIP_SDK=1) those tests say "skipped".
if [[ ${SWITCHYARD_SKIP_SDK:-0} != 0 ]]; then
	sy_log "official SDKs: skipped (SWITCHYARD_SKIP_SDK=${SWITCHYARD_SKIP_SDK})"
else
	sdk_venv="${SWITCHYARD_SDK_VENV:-$HOME/.cache/switchyard-sdk-venv}"
	if [[ ! -x $sdk_venv/bin/python ]] || ! "$sdk_venv/bin/python" -c 'import openai, anthropic, google.genai' 2>/dev/null; then
		sy_log "official SDKs: installing openai, anthropic, google-genai into $sdk_venv"
		python3 -m venv "$sdk_venv" 2>/dev/null || true
		timeout 300 "$sdk_venv/bin/pip" install --quiet --upgrade openai anthropic google-genai >/dev/null 2>&1 || true
	fi
	if [[ -x $sdk_venv/bin/python ]] && "$sdk_venv/bin/python" -c 'import openai, anthropic, google.genai' 2>/dev/null; then
		export SWITCHYARD_SDK_VENV="$sdk_venv" SWITCHYARD_SDK_PYTHON="$sdk_venv/bin/python"
		sy_log "official SDKs: $("$sdk_venv/bin/python" -c 'import openai, anthropic, google.genai as g; print("openai", openai.__version__, "anthropic", anthropic.__version__, "google-genai", g.__version__)')"
	else
		sy_log "official SDKs: not installable here; their tests are skipped"
	fi
fi

# The console's browser tests (tests/console_browser/) drive Debian's Chromium through
# chromedriver; installed here when missing. SWITCHYARD_BROWSER_TESTS=1 makes a missing
# chromedriver fail those tests rather than skip them. SWITCHYARD_SKIP_BROWSER=1 skips them.
if [[ ${SWITCHYARD_SKIP_BROWSER:-0} != 0 ]]; then
	sy_log "browser tests: skipped (SWITCHYARD_SKIP_BROWSER=${SWITCHYARD_SKIP_BROWSER})"
else
	if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
		sy__apt_install chromium chromium-driver || {
			sy_log "browser tests need Debian's chromium and chromium-driver (or SWITCHYARD_SKIP_BROWSER=1)"
			exit 1
		}
	fi
	export SWITCHYARD_BROWSER_TESTS=1
	sy_log "browser tests: $(chromium --version 2>/dev/null || echo chromium), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
fi

sy_log "tests"
# Each integration test makes its own stream prefix and database and removes them.
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-4}"

# deploy/ checked with real validators (compose and Kubernetes schemas, promtool,
# nats-server, the dashboard's queries): scripts/check_deploy.sh.
# SWITCHYARD_SKIP_DEPLOY_CHECK=1 skips it.
if [[ ${SWITCHYARD_SKIP_DEPLOY_CHECK:-0} != 0 ]]; then
	sy_log "deploy check: skipped (SWITCHYARD_SKIP_DEPLOY_CHECK=${SWITCHYARD_SKIP_DEPLOY_CHECK})"
else
	scripts/check_deploy.sh
fi

# Fault injection, fast mode (scripts/chaos.sh --fast: kill -9, duplicate submissions,
# poison jobs, provider outage; own throwaway services). SWITCHYARD_SKIP_CHAOS=1 skips it.
if [[ ${SWITCHYARD_SKIP_CHAOS:-0} != 0 ]]; then
	sy_log "chaos (fast): skipped (SWITCHYARD_SKIP_CHAOS=${SWITCHYARD_SKIP_CHAOS})"
else
	sy_log "chaos (fast)"
	cargo build --locked --quiet # the test build's binary, no release build
	SWITCHYARD_BIN="$CARGO_TARGET_DIR/debug/switchyard" scripts/chaos.sh --fast
fi
