#!/usr/bin/env bash
# Install KEDA's schemas for tests/test_manifests.py: the npm package @kubernetes-models/keda
# (KEDA's custom resource types with a validate function generated from their JSON schema)
# into var/schemas/, which git and Docker already ignore. The Kubernetes schemas come with the
# Python package kubernetes-validate (pyproject.toml, dev extra).
#
# Idempotent, and offline once done: does nothing when the pinned version is installed.
# Needs node and npm (on these machines; Debian: apt-get install nodejs npm).
set -euo pipefail

# @kubernetes-models/keda 2.0.0 carries KEDA 2.19's types.
KEDA_MODELS_VERSION=2.0.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/var/schemas"
PACKAGE_JSON="$DIR/node_modules/@kubernetes-models/keda/package.json"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "install-schemas: $tool is missing: install Node.js and npm (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

installed_version() {
    node -p 'require(process.argv[1]).version' "$PACKAGE_JSON" 2>/dev/null || true
}

if [[ -f "$PACKAGE_JSON" && "$(installed_version)" == "$KEDA_MODELS_VERSION" ]]; then
    echo "install-schemas: @kubernetes-models/keda $KEDA_MODELS_VERSION is present in $DIR; nothing to do"
    exit 0
fi

mkdir -p "$DIR"
# A package.json of its own, so that npm installs here and never into a parent folder's project.
[[ -f "$DIR/package.json" ]] || printf '{\n  "private": true\n}\n' >"$DIR/package.json"
echo "install-schemas: npm install @kubernetes-models/keda@$KEDA_MODELS_VERSION into $DIR"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error --save-exact \
    "@kubernetes-models/keda@$KEDA_MODELS_VERSION"

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 22)); then
    # The package asks for Node.js 22; its validators are plain generated JavaScript that runs
    # on older versions, and tests/test_manifests.py proves they still reject bad manifests.
    echo "install-schemas: note: @kubernetes-models/keda declares node >= 22; this is node $(node --version)"
fi
echo "install-schemas: installed @kubernetes-models/keda $(installed_version)"
