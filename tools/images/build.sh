#!/usr/bin/env bash
# Build Polya's images: tools/images/build.sh [operator] [stage-cpu] [stage-gpu]   (default: operator stage-cpu)
# With podman (root, this sandbox's settings in containers.conf; storage under ~/.cache/polya/images) or
# docker (POLYA_CONTAINER_ENGINE=docker). Each image is tagged polya-<target>:<content key> and with the
# name the chart and operator default to (ghcr.io/polya-dev/polya-operator:<version>, .../polya:<version>
# for stage-gpu, .../polya:<version>-cpu for stage-cpu); an image whose key exists is not rebuilt.
# The key hashes the base image (POLYA_BASE_IMAGE, default debian:bookworm-slim; a digest-pinned name
# works) and its ID, the Dockerfile, pyproject.toml, the target's lock and the sources under platform/ and
# operators/.
# Where this machine has local package mirrors (/opt/wheels, /opt/pypi*), the build mounts them read-only
# and adds them to pip's search path, with the host's CA bundle for PyPI; none of it is baked into an image.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(operator stage-cpu)
engine=${POLYA_CONTAINER_ENGINE:-podman}
version=$(awk -F'"' '/^version *=/ {print $2; exit}' "$repo/pyproject.toml")
if [ "$engine" = podman ]; then
  source "$here/podman-env.sh"
  bash "$here/ensure-base.sh" >/dev/null
  run() { podman "$@"; }
  extra=(--pull=never --network host --ulimit nofile=20000:20000)
else
  run() { docker "$@"; }
  extra=()
fi
mounts=()
if [ "$engine" = podman ]; then
  links=(); index=()
  [ -d /opt/wheels ] && { mounts+=(-v /opt/wheels:/opt/wheels:ro); links+=(/opt/wheels); }
  for d in /opt/pypi /opt/pypi-more; do
    [ -d "$d/simple" ] && { mounts+=(-v "$d:$d:ro"); index+=("file://$d/simple"); }
  done
  cert=$(python3 -c "import ssl; print(ssl.get_default_verify_paths().cafile or '')" 2>/dev/null || true)
  [ -n "${PIP_CERT:-}" ] && cert=$PIP_CERT
  if [ -n "$cert" ] && [ -f "$cert" ]; then mounts+=(-v "$cert:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt); fi
  [ ${#links[@]} -gt 0 ] && mounts+=(--build-arg "PIP_FIND_LINKS=${links[*]}")
  [ ${#index[@]} -gt 0 ] && mounts+=(--build-arg "PIP_EXTRA_INDEX_URL=${index[*]}")
fi
base=${POLYA_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}  # may carry @sha256:...
base_id=$(run image inspect "$base" --format '{{.Id}}' 2>/dev/null || echo "$base")
key_of() {  # content key of a target: what its image is built from (the base, its lock, its sources)
  local lock=requirements/cpu.lock; [ "$1" = stage-gpu ] && lock=requirements/gpu.lock
  (cd "$repo" && { echo "$base $base_id"; cat "images/$1.Dockerfile" pyproject.toml "$lock"
                   git ls-files -co --exclude-standard platform operators | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-12)
}
for t in "${targets[@]}"; do
  case $t in
    operator) name=ghcr.io/polya-dev/polya-operator:$version ;;
    stage-cpu) name=ghcr.io/polya-dev/polya:$version-cpu ;;
    stage-gpu) name=ghcr.io/polya-dev/polya:$version ;;
    *) echo "unknown image target $t (operator, stage-cpu, stage-gpu)" >&2; exit 2 ;;
  esac
  tag=localhost/polya-$t:$(key_of "$t")
  if run image exists "$tag" 2>/dev/null || run image inspect "$tag" >/dev/null 2>&1; then
    echo ">> $tag is built (cached)" >&2
  else
    echo ">> building $tag" >&2
    t0=$(date +%s)
    run build "${extra[@]}" "${mounts[@]}" --build-arg "BASE=$base" -f "$repo/images/$t.Dockerfile" -t "$tag" "$repo" >&2
    echo ">> built $tag in $(( $(date +%s) - t0 )) s" >&2
  fi
  run tag "$tag" "$name"
  size=$(run image inspect "$tag" --format '{{.Size}}')
  echo "$t $tag $name $(( size / 1000000 )) MB"
done
