#!/usr/bin/env bash
# Screenshots of each console page (overview, jobs, a job, dead letters, a dead letter,
# spend) into docs/console/*.png, taken by Debian's headless Chromium over real jobs run
# by an in-process worker and the provider simulator (tests/console_browser/,
# `console_screenshots`). Uses the services at NATS_URL / DATABASE_URL when they answer,
# otherwise starts throwaway ones; installs chromium, chromium-driver and fonts when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
	|| [[ ! -d /usr/share/fonts/truetype/liberation ]]; then
	sy__apt_install chromium chromium-driver fonts-liberation
fi
sy_services_up
export SWITCHYARD_BROWSER_TESTS=1
export SWITCHYARD_SCREENSHOTS="${SWITCHYARD_SCREENSHOTS:-$PWD/docs/console}"
cargo test --locked --test console_browser -- --ignored --exact console_screenshots --nocapture
ls -l "$SWITCHYARD_SCREENSHOTS"/*.png
