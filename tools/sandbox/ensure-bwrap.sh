#!/usr/bin/env bash
# The sandbox for generated programs (platform/polya/sandbox.py): Debian's bubblewrap, installed once from
# the apt mirror (sudo only when not root). Quiet when already present; prints bwrap's path.
# prlimit and setpriv, which the sandbox also runs, come with util-linux (essential on Debian).
set -euo pipefail
if ! command -v bwrap >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  get_bwrap() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bubblewrap; }
  { get_bwrap || { $sudo apt-get update -q && get_bwrap; }; } >&2
fi
command -v bwrap
