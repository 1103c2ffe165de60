#!/usr/bin/env bash
# The real Prometheus server the end-to-end test scrapes the operator and the stage pods with: Debian's
# `prometheus` package (2.42 on bookworm), installed once from the apt mirror. Prints the binary's path.
set -euo pipefail
if ! command -v prometheus >/dev/null; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; } >&2
fi
# the package's service is never started here (no init system); the test runs its own server
command -v prometheus
