#!/usr/bin/env bash
# System tools the test suite needs beyond Python, from Debian's packages: Chromium + ChromeDriver (the customer
# portal's browser tests) and Go (the Go SDK's tests). Node.js and npm come with the machine. Safe to re-run.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v go >/dev/null 2>&1 || need+=(golang-go)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "toolchains: installing ${need[*]}" >&2
if ! $SUDO apt-get install -y -q "${need[@]}" </dev/null >&2; then
  $SUDO apt-get update -q </dev/null >&2
  $SUDO apt-get install -y -q "${need[@]}" </dev/null >&2
fi
