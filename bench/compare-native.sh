#!/usr/bin/env bash
# What the portable build costs: the default build (-march=x86-64-v2, hot kernels dispatched at
# run time) against a build for this machine's CPU only (-march=native, PDSERVE_NATIVE=ON).
#
#   bench/compare-native.sh [BENCH ARGS...]      e.g. --quick, --threads 2, --cpu-isa x86-64-v3
#
# Builds the portable benchmarks in build/ (scripts/build.sh release, which installs missing
# dependencies) and the native ones in build-native/, then runs pdserve-bench-attention and
# pdserve-bench-engine from both builds in turns (portable, native, portable, native, ...: load
# that drifts falls on both), passing BENCH ARGS to every run. Prints every run's own output,
# then one table per benchmark: each figure's best over the rounds per build, and
# portable/native (< 1: the portable build is slower). Figures come from the benchmarks' --json.
# Env: ROUNDS (default 2) runs per build and benchmark; BENCHES (default "attention engine"). Run one at a time on a machine: the
# figures are throughputs of all its cores.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-2}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: ROUNDS must be a positive integer, got '$rounds'" >&2
  exit 2
fi
read -r -a benches <<<"${BENCHES:-attention engine}"
targets=(pdserve-bench-attention pdserve-bench-engine)

echo "== building the portable benchmarks (build/, -march=x86-64-v2)"
PDSERVE_NATIVE=OFF scripts/build.sh release "${targets[@]}"
echo "== building the native benchmarks (build-native/, -march=native)"
cmake -S . -B build-native -G Ninja -DCMAKE_BUILD_TYPE=Release -DPDSERVE_NATIVE=ON \
  -DPDSERVE_BUILD_TESTS=OFF >/dev/null
build_args=()
for t in "${targets[@]}"; do build_args+=(--target "$t"); done
cmake --build build-native -j "$(nproc)" "${build_args[@]}"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for bench in "${benches[@]}"; do
  for ((round = 1; round <= rounds; round++)); do
    for build in portable native; do
      dir="build"
      if [[ "$build" == native ]]; then dir="build-native"; fi
      echo
      echo "== $bench, $build build ($dir/), round $round of $rounds"
      "$dir/bin/pdserve-bench-$bench" "$@" --json "$out/$bench.$build.$round.json"
    done
  done
done

echo
python3 - "$out" "$rounds" "${benches[@]}" <<'EOF'
import json, statistics, sys

out, rounds, benches = sys.argv[1], int(sys.argv[2]), sys.argv[3:]


def figures(path):
    """{figure label: value} of one run's --json, and its header fields."""
    with open(path) as f:
        j = json.load(f)
    runs = j["runs"]
    values = {}
    for fig in j.get("baselines", []):  # measured once per run, e.g. the memory read bandwidth
        values[f'baseline: {fig["name"]} ({fig["unit"]})'] = fig["value"]
    for run in runs:
        for fig in run["figures"]:
            label = f'{fig["name"]} ({fig["unit"]})'
            if len(runs) > 1:  # --cpu-isa all: one row per figure and level
                label = f'{run["isa"]}: {label}'
            values[label] = fig["value"]
    return j["build_cpu_target"], [r["cpu_kernels"] for r in runs], values


for bench in benches:
    best = {"portable": {}, "native": {}}
    order = []
    header = {}
    for build in ("portable", "native"):
        for r in range(1, rounds + 1):
            target, kernels, values = figures(f"{out}/{bench}.{build}.{r}.json")
            header[build] = (target, kernels)
            for label, v in values.items():
                if label not in order:
                    order.append(label)
                best[build].setdefault(label, []).append(v)
    print(f"{bench}: {rounds} round(s) per build, higher is better; best and median of the rounds")
    for build in ("portable", "native"):
        target, kernels = header[build]
        print(f"  {build:8s} build: -march={target}; {' | '.join(kernels)}")
    width = max([len("figure")] + [len(l) for l in order])
    print(f"{'figure':<{width}} {'portable':>10} {'native':>10} {'best p/n':>9}"
          f" {'median p':>10} {'median n':>10} {'median p/n':>11}")
    fmt = lambda v: f"{v:10.2f}" if v is not None else f"{'-':>10}"
    ratio = lambda p, n, w: f"{p / n:{w}.3f}" if p is not None and n else f"{'-':>{w}}"
    for label in order:
        runs_p, runs_n = best["portable"].get(label), best["native"].get(label)
        p, n = (max(runs_p) if runs_p else None), (max(runs_n) if runs_n else None)
        mp = statistics.median(runs_p) if runs_p else None
        mn = statistics.median(runs_n) if runs_n else None
        print(f"{label:<{width}} {fmt(p)} {fmt(n)} {ratio(p, n, 9)} {fmt(mp)} {fmt(mn)}"
              f" {ratio(mp, mn, 11)}")
    print()
EOF
