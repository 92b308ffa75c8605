#!/usr/bin/env python3
"""The default build is portable: it runs, correctly, on CPUs older than the build machine's.

Runs the freshly built `pdserve generate` under Debian's qemu-user as an x86-64-v2 CPU (Nehalem)
and as an x86-64-v3 CPU (Haswell), on stories260K, and checks for each:
  - every greedy continuation equals llama2.c's ids in stories260K.reference.json;
  - the dispatcher picked that CPU's level (the `-v` line names the CPU kernels);
  - asking for a level the CPU lacks is refused with a clear message, not a SIGILL.
It also checks that no `-march=native` reached the compile lines (compile_commands.json).

qemu's TCG has no AVX-512, so a binary or kernel that used it unconditionally dies here with
SIGILL, as it would on a real AVX2 node of a pool.

Exit codes: 0 pass, 1 fail, 77 skipped (no qemu-x86_64 and PDSERVE_REQUIRE_QEMU unset).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

# qemu CPU model -> the level the dispatcher must pick on it.
CPUS = [("Nehalem", "x86-64-v2"), ("Haswell", "x86-64-v3")]


def run(cmd, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdserve", required=True, help="the pdserve binary")
    ap.add_argument("--models", default=os.environ.get("PDSERVE_MODELS_DIR"),
                    help="directory with stories260K.bin (default: $PDSERVE_MODELS_DIR)")
    ap.add_argument("--build-dir", required=True, help="its build directory")
    args = ap.parse_args()

    failures = []

    commands = json.load(open(os.path.join(args.build_dir, "compile_commands.json")))
    native = [c["file"] for c in commands if "-march=native" in c["command"]]
    cache = open(os.path.join(args.build_dir, "CMakeCache.txt")).read()
    if "PDSERVE_NATIVE:BOOL=ON" in cache:
        print("SKIP: this build was configured with PDSERVE_NATIVE=ON (for this machine only)")
        return 77
    if native:
        failures.append(f"-march=native reached {len(native)} compile lines, e.g. {native[0]}")
    baseline = [c for c in commands if "-march=x86-64-v2" in c["command"]]
    if not baseline:
        failures.append("no compile line targets -march=x86-64-v2")

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        msg = "qemu-x86_64 not found (Debian package qemu-user; scripts/install-deps.sh installs it)"
        if os.environ.get("PDSERVE_REQUIRE_QEMU") == "1":
            failures.append(msg)
        else:
            print("SKIP:", msg)
            return 77 if not failures else 1

    model = os.path.join(args.models, "stories260K.bin")
    reference = json.load(open(os.path.join(args.models, "stories260K.reference.json")))
    cases = reference["cases"]
    for cpu, level in CPUS if qemu else []:
        for i, case in enumerate(cases):
            # run.c with steps = len(prompt) + 64 emits 65 tokens and ends a story at BOS (1).
            # run.c keeps its KV cache in f32, so does this run.
            cmd = [qemu, "-cpu", cpu, args.pdserve, "generate", "--model", model,
                   "--prompt-ids", ",".join(map(str, case["prompt_ids"])), "--max-tokens", "65",
                   "--stop-ids", "1", "--ignore-eos", "--threads", "2", "--kv-cache-dtype", "f32",
                   "-v"]
            r = run(cmd)
            if r.returncode != 0:
                failures.append(f"{cpu} case {i}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
                continue
            got = [int(t) for t in r.stdout.split()]
            if got != case["greedy_ids"]:
                failures.append(f"{cpu} case {i}: ids differ from llama2.c's\n  got  {got}\n"
                                f"  want {case['greedy_ids']}")
            if f"CPU kernels {level} " not in r.stderr:
                failures.append(f"{cpu}: expected the dispatcher to pick {level}; it said: "
                                f"{r.stderr.splitlines()[:1]}")
        print(f"{cpu}: {len(cases)} reference cases run, dispatcher expected at {level}")

        # The 16-bit and 8-bit KV caches' conversion kernels run at this level too.
        for kv_dtype in ("bf16", "f16", "int8", "fp8"):
            r = run([qemu, "-cpu", cpu, args.pdserve, "generate", "--model", model,
                     "--prompt-ids", ",".join(map(str, cases[0]["prompt_ids"])), "--max-tokens",
                     "40", "--ignore-eos", "--kv-cache-dtype", kv_dtype])
            ids = r.stdout.split()
            if r.returncode != 0 or len(ids) != 40:
                failures.append(f"{cpu} --kv-cache-dtype {kv_dtype}: exit {r.returncode}, "
                                f"{len(ids)} ids; stderr {r.stderr.strip()[-300:]!r}")

        # A level above the CPU's is refused with a message, never run into SIGILL.
        r = run([qemu, "-cpu", cpu, args.pdserve, "generate", "--model", model, "--prompt-ids",
                 "1", "--max-tokens", "2", "--cpu-isa", "x86-64-v4"])
        if r.returncode in (0, 132, -4) or "does not support x86-64-v4" not in r.stderr:
            failures.append(f"{cpu}: --cpu-isa x86-64-v4 gave exit {r.returncode}, stderr "
                            f"{r.stderr.strip()[-300:]!r}; expected a clear refusal")

    for f in failures:
        print("FAIL:", f)
    if not failures:
        print("portable build: correct on x86-64-v2 and x86-64-v3 CPUs, no -march=native")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
