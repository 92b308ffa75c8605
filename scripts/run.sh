#!/usr/bin/env bash
# The one-command demo: installs dependencies, builds, and answers a prompt on the default model.
# Extra arguments go to `pdserve demo` (see `build/bin/pdserve demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh release pdserve
exec build/bin/pdserve demo "$@"
