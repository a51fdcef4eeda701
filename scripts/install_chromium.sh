#!/usr/bin/env bash
# Debian's Chromium (and its chromedriver) for the browser test of the Prefect UI, tests/flows/test_prefect_ui.py:
# Playwright drives /usr/bin/chromium through executable_path and never downloads a browser of its own.
# Run by `make setup`. Does nothing when Chromium is there; otherwise `apt-get update` once and
# `apt-get install -y chromium chromium-driver`, as root or with passwordless sudo. Where that is impossible
# (no apt-get, no root) or fails, it says why and exits 0, so the rest of the set-up goes on: the test then skips
# with that reason, and fails under CI=true. Under CI=true a failed install fails here already.
set -euo pipefail
CHROMIUM=${RECFORGE_CHROMIUM:-/usr/bin/chromium}
[[ -x "$CHROMIUM" ]] && exit 0

give_up() {
  echo "install_chromium.sh: $1; tests/flows/test_prefect_ui.py will skip (and fail under CI=true)" >&2
  [[ "${CI:-}" == "true" ]] && exit 1
  exit 0
}
command -v apt-get >/dev/null || give_up "no apt-get: install Debian's chromium package yourself"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  sudo -n true 2>/dev/null || give_up "not root and no passwordless sudo: run 'apt-get install -y chromium chromium-driver' as root"
  SUDO=(sudo -n)
fi
echo "installing Debian's chromium and chromium-driver (apt-get) for the Prefect UI test"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >/dev/null || give_up "apt-get update failed"
"${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null || give_up "apt-get install chromium chromium-driver failed"
[[ -x "$CHROMIUM" ]] || give_up "chromium installed, but $CHROMIUM is missing"
echo "installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
