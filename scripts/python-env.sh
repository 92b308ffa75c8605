#!/usr/bin/env bash
# The Python environment the tests use as a real gRPC client (what grpcurl and ghz rely on):
# grpcio, grpcio-reflection and grpcio-health-checking from PyPI in .venv/. Idempotent: does
# nothing when .venv already has them. Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if ! "$VENV/bin/python" -c "import grpc, grpc_reflection, grpc_health" >/dev/null 2>&1; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio>=1.60,<2" "grpcio-reflection>=1.60,<2" "grpcio-health-checking>=1.60,<2" >&2
fi
echo "$PWD/$VENV/bin/python"
