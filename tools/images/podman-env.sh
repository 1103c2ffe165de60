# Sourced by the image scripts: podman with this sandbox's settings, its storage under ~/.cache/polya/images
# (so built images survive as a cache, keyed by content, between sessions and CI runs on one machine).
export POLYA_IMAGE_CACHE=${POLYA_IMAGE_CACHE:-$HOME/.cache/polya/images}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf}
if ! command -v podman >/dev/null || ! { command -v runc >/dev/null || [ -x /usr/sbin/runc ]; }; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc >/dev/null
fi
podman() {
  command podman --root "$POLYA_IMAGE_CACHE/storage" --runroot "${TMPDIR:-/tmp}/polya-podman-run" \
    --storage-driver overlay "$@"
}
