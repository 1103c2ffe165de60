#!/usr/bin/env bash
# Build (once) a REAL kube-apiserver + kube-controller-manager v1.20.2 from Debian's Kubernetes source,
# cached under ~/.cache/polya/kube/<version>/bin, and make sure etcd (Debian's etcd-server) is installed.
# Recipe: ../shared/tools/kube-from-debian/build.sh (Go 1.19 from Debian; vendored reflect2/json-iterator
# replaced by Debian's newer ones, since reflect2 1.0.1 segfaults under Go >= 1.18). ~5 min on 2 cores.
# Prints the bin folder last. Never commit the binaries.
set -euo pipefail
VERSION=v1.20.2-debian1
CACHE=${POLYA_KUBE_CACHE:-$HOME/.cache/polya/kube/$VERSION}
BIN=$CACHE/bin
need_apt=()
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  if [ ${#need_apt[@]} -gt 0 ]; then apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; fi
  echo "$BIN"; exit 0
fi
here=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/polya-kube-build.XXXX")
trap 'rm -rf "$W"' EXIT
echo ">> building kube-apiserver and kube-controller-manager $VERSION from Debian source (~5 min, cached in $CACHE)" >&2
apt-get update -q >/dev/null
apt-get install -y -q golang-go rsync jq etcd-server openssl curl >/dev/null
mkdir -p "$BIN"
bash "$here/build-from-debian.sh" "$W" "$BIN" >&2
echo "$BIN"
