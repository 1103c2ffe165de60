#!/usr/bin/env bash
# The base image the Dockerfiles name (docker.io/library/debian:bookworm-slim), made locally: no container
# registry is reachable from these machines. debootstrap (minbase) builds a bookworm root filesystem from
# the Debian mirror apt already uses; `podman import` tags it. The tarball is cached under
# ~/.cache/polya/images/, so this runs once per machine (~30 s, ~200 MB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/podman-env.sh"
BASE=${POLYA_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
SUITE=bookworm
TAR=$POLYA_IMAGE_CACHE/base-debian-$SUITE-minbase.tar
if podman image exists "$BASE"; then echo "$BASE"; exit 0; fi
if [ ! -s "$TAR" ]; then
  command -v debootstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  root=$(mktemp -d "${TMPDIR:-/tmp}/polya-rootfs.XXXX")
  trap 'rm -rf "$root"' EXIT
  echo ">> debootstrap $SUITE (minbase) from $mirror" >&2
  debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >&2
  # the image's apt uses the same mirror; drop apt caches and lists from the base
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  mkdir -p "$POLYA_IMAGE_CACHE"
  tar -C "$root" -cf "$TAR.tmp" . && mv "$TAR.tmp" "$TAR"
fi
podman import "$TAR" "$BASE" >/dev/null
echo "$BASE"
