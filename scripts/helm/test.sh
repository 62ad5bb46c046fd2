#!/usr/bin/env bash
# Renders, lints and validates the Helm charts in helm/ with the real Helm engine (helm-python-sdk).
# UPDATE_GOLDEN=1 rewrites helm/golden/*.yaml.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${CARGO_TARGET_DIR:-$root/target}/helm-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet helm-python-sdk kubernetes-validate
fi
exec "$venv/bin/python" "$root/scripts/helm/test_charts.py"
