#!/usr/bin/env bash
# podman with the project's settings and image storage (tools/images/podman-env.sh): tests and people use
# it to run the images `make images` built, e.g. tools/images/podman.sh run --rm --network host IMAGE ...
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/podman-env.sh"
podman "$@"
