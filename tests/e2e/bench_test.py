"""`pdserve bench` against a real cluster: its report, per-request lines and plots.

Starts a stories260K cluster (one prefill worker, one decode worker, a router) and runs
build/bin/pdserve bench against the router:
  - closed loop, --concurrency 4, 20 requests of 16 prompt ids and 8 new tokens: exit 0, 20
    completed and no errors, 160 output tokens, ordered percentiles, the server's split with its
    KV format, 20 lines in requests.jsonl, and PNG plots;
  - open loop, --rate, and a two-level --sweep with an SLO every request meets (so the higher
    level is the one picked);
  - a Python without matplotlib: still exit 0 with the report, and a warning saying how to plot;
  - a bad flag (--slo ttft=abc): a non-zero exit and a message naming the flag.
Nothing here asserts speed.

Usage: bench_test.py --bin-dir build/bin --model ../shared/models/stories260K.bin
Exit: 0 passed; 1 a check failed; 77 a prerequisite (binaries, model, matplotlib) is missing.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BENCH_TIMEOUT_S = 300


class Checks:
    def __init__(self):
        self.failures = []

    def expect(self, condition, what):
        if not condition:
            self.failures.append(what)
        return condition


def bench(args, router, *flags):
    """Runs pdserve bench; returns the CompletedProcess (stdout and stderr as text)."""
    command = [os.path.join(args.bin_dir, "pdserve"), "bench", "--router", router, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)


def read_outputs(out_dir):
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(out_dir, "requests.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return report, lines


def is_png(path):
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def check_ran(checks, name, result):
    """The run exited 0; prints its output's tail when not."""
    if not checks.expect(result.returncode == 0, f"{name}: exit {result.returncode}"):
        print(f"{name}: stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}",
              file=sys.stderr)
        return False
    return True


def check_run(checks, name, run, requests, output_tokens):
    checks.expect(run["completed"] == requests,
                  f"{name}: {run['completed']} completed, wanted {requests}")
    checks.expect(run["failed"] == 0 and not run["errors"],
                  f"{name}: errors {run['errors']} ({run['first_error']})")
    checks.expect(run["output_tokens"] == output_tokens,
                  f"{name}: {run['output_tokens']} output tokens, wanted {output_tokens}")
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        d = run[metric]
        checks.expect(d["count"] > 0 and 0 <= d["p50"] <= d["p90"] <= d["p95"] <= d["p99"]
                      <= d["max"], f"{name}: {metric} percentiles out of order: {d}")
    checks.expect(run["request_throughput"] > 0 and run["output_throughput"] > 0,
                  f"{name}: no throughput")
    server = run["server"]
    if checks.expect(len(server) == 1, f"{name}: server split {server}, wanted one KV format"):
        split = server[0]
        checks.expect(split["kv_format"].startswith("GQA"),
                      f"{name}: KV format {split['kv_format']!r}, wanted stories260K's GQA")
        checks.expect(split["requests"] == requests,
                      f"{name}: server split of {split['requests']} requests")
        checks.expect(split["kv_transfer_bytes"]["mean"] > 0, f"{name}: no KV bytes transferred")
        for stage in ("queue_ms", "prefill_ms", "kv_transfer_ms", "decode_ms"):
            checks.expect(split[stage]["count"] == requests and split[stage]["mean"] >= 0,
                          f"{name}: server {stage} {split[stage]}")


def closed_loop(args, checks, router, tmp):
    out = os.path.join(tmp, "closed")
    result = bench(args, router, "--concurrency", "4", "--num-requests", "20", "--input-len", "16",
                   "--output-len", "8", "--slo", "ttft=30s,tpot=10s", "--out", out,
                   "--python", sys.executable)
    if not check_ran(checks, "closed loop", result):
        return
    checks.expect("Serving Benchmark Result (concurrency 4)" in result.stdout
                  and "KV format:" in result.stdout, "closed loop: no printed report")
    report, lines = read_outputs(out)
    checks.expect(len(report["runs"]) == 1, f"closed loop: {len(report['runs'])} runs")
    run = report["runs"][0]
    check_run(checks, "closed loop", run, requests=20, output_tokens=160)
    checks.expect(run["load"] == {"kind": "concurrency", "level": 4},
                  f"closed loop: load {run['load']}")
    checks.expect(run["good_requests"] == 20, f"closed loop: {run['good_requests']} good")
    checks.expect(report["model"]["vocab_size"] == 512, f"model {report['model']}")
    checks.expect(report["parameters"]["num_requests"] == 20, "parameters not recorded")
    checks.expect(len(lines) == 20, f"closed loop: requests.jsonl has {len(lines)} lines")
    for line in lines:
        ok = line["status"] == "OK" and line["output_tokens"] == 8 and line["prompt_tokens"] == 16
        ok = ok and line["ttft_ms"] <= line["e2e_ms"] and line["server"] is not None
        ok = ok and sum(tokens for _, tokens in line["messages"]) == 8
        if not checks.expect(ok, f"closed loop: request line {line}"):
            break
    for png in ("latency_cdf.png", "stage_split.png"):
        checks.expect(is_png(os.path.join(out, png)), f"closed loop: {png} is not a PNG")


def open_loop(args, checks, router, tmp):
    out = os.path.join(tmp, "rate")
    result = bench(args, router, "--rate", "50", "--burstiness", "0.5", "--num-requests", "10",
                   "--input-len", "8", "--output-len", "4", "--seed", "3", "--out", out,
                   "--no-plots")
    if not check_ran(checks, "open loop", result):
        return
    report, lines = read_outputs(out)
    run = report["runs"][0]
    check_run(checks, "open loop", run, requests=10, output_tokens=40)
    checks.expect(run["load"] == {"kind": "rate", "level": 50, "burstiness": 0.5},
                  f"open loop: load {run['load']}")
    checks.expect(len(lines) == 10, f"open loop: requests.jsonl has {len(lines)} lines")
    starts = sorted(line["start_s"] for line in lines)
    checks.expect(starts[-1] > starts[0], "open loop: every request started at once")
    checks.expect(not any(name.endswith(".png") for name in os.listdir(out)),
                  "open loop: plots drawn despite --no-plots")


def sweep(args, checks, router, tmp):
    out = os.path.join(tmp, "sweep")
    result = bench(args, router, "--sweep", "concurrency=1,2", "--num-requests", "6",
                   "--input-len", "8", "--output-len", "4", "--slo", "ttft=30s,e2e=60s",
                   "--out", out, "--python", sys.executable)
    if not check_ran(checks, "sweep", result):
        return
    report, lines = read_outputs(out)
    levels = [run["load"]["level"] for run in report["runs"]]
    checks.expect(levels == [1, 2], f"sweep: levels {levels}")
    for run in report["runs"]:
        check_run(checks, f"sweep level {run['load']['level']}", run, requests=6, output_tokens=24)
    checks.expect(report["sweep"] is not None and report["sweep"]["best_level"] == 2,
                  f"sweep: {report['sweep']}, wanted best level 2 (every request meets the SLO)")
    checks.expect("Highest concurrency" in result.stdout, "sweep: no printed verdict")
    checks.expect(len(lines) == 12 and {line["run"] for line in lines} == {0, 1},
                  f"sweep: {len(lines)} request lines")
    checks.expect(is_png(os.path.join(out, "sweep.png")), "sweep: sweep.png is not a PNG")


def without_matplotlib(args, checks, router, tmp):
    # A "Python" that answers as plot_bench.py does when matplotlib is missing.
    python = os.path.join(tmp, "python-without-matplotlib")
    with open(python, "w") as f:
        f.write("#!/bin/sh\nexit 3\n")
    os.chmod(python, 0o755)
    out = os.path.join(tmp, "no-matplotlib")
    result = bench(args, router, "--num-requests", "2", "--input-len", "4", "--output-len", "2",
                   "--out", out, "--python", python)
    if not check_ran(checks, "without matplotlib", result):
        return
    checks.expect(os.path.exists(os.path.join(out, "report.json")),
                  "without matplotlib: no report.json")
    checks.expect("no matplotlib" in result.stderr and "plot_bench.py" in result.stderr,
                  f"without matplotlib: warning {result.stderr!r}")


def bad_flag(args, checks, router, tmp):
    result = bench(args, router, "--slo", "ttft=abc", "--out", os.path.join(tmp, "bad"))
    checks.expect(result.returncode != 0, "--slo ttft=abc: exit 0")
    checks.expect("--slo" in result.stderr and "abc" in result.stderr,
                  f"--slo ttft=abc: message {result.stderr!r}")
    checks.expect(not os.path.exists(os.path.join(tmp, "bad")), "--slo ttft=abc: wrote output")


def prerequisites(args):
    missing = []
    for binary in ("pdserve", "pdserve-router", "pdserve-prefill", "pdserve-decode"):
        if not os.access(os.path.join(args.bin_dir, binary), os.X_OK):
            missing.append(f"{args.bin_dir}/{binary}: build it")
    if not os.path.exists(args.model):
        missing.append(f"{args.model} (stories260K)")
    try:
        import matplotlib  # noqa: F401  (pdserve bench plots with this interpreter)
    except ImportError as e:
        missing.append(f"matplotlib ({e}): run scripts/python-env.sh and use its python")
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model", required=True, help="stories260K.bin")
    args = parser.parse_args()
    missing = prerequisites(args)
    if missing:
        print("bench_test: missing " + "; ".join(missing), file=sys.stderr)
        return 77

    checks = Checks()
    with Cluster(args.bin_dir, args.model, threads=1, name="pdserve_bench") as cluster, \
            tempfile.TemporaryDirectory(prefix="pdserve_bench_out_") as tmp:
        for test in (closed_loop, open_loop, sweep, without_matplotlib, bad_flag):
            before = len(checks.failures)
            test(args, checks, cluster.router, tmp)
            print(f"bench_test: {test.__name__}: "
                  f"{'ok' if len(checks.failures) == before else 'FAILED'}")
    for failure in checks.failures:
        print(f"FAIL {failure}")
    if checks.failures:
        print(f"bench_test: {len(checks.failures)} checks failed")
        return 1
    print("bench_test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
