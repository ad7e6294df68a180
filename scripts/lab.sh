#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (as root) and builds the
# tiny test guest. Idempotent: safe to run before every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/tiny-guest.sh "${HORCRUX_TINY_GUEST:-$PWD/.lab/tiny-guest}"
scripts/tiny-guest-arm64.sh "${HORCRUX_TINY_GUEST_ARM64:-$PWD/.lab/tiny-guest-arm64}"
# proxmoxer (PyPI) for the Proxmox API compatibility test, schemathesis for the
# OpenAPI fuzzing test and prometheus-client (its text-format parser) for the /metrics
# test, in a venv under .lab.
if [ ! -x .lab/venv/bin/st ] || ! .lab/venv/bin/python -c "import proxmoxer, requests, prometheus_client" 2>/dev/null; then
  python3 -m venv .lab/venv 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .lab/venv
  }
  .lab/venv/bin/pip install -q proxmoxer requests schemathesis prometheus-client
fi
