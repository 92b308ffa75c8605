#!/usr/bin/env python3
"""`pdserve bench` (gRPC) beside NVIDIA's aiperf (the OpenAI HTTP API) on the same load, against
the same local deployment, so that the two tools' figures can be compared: the demo cluster
(`pdserve demo --serve`: decode worker, prefill worker, router with --openai-listen) on the
default model, then, in interleaved rounds, a closed loop of CONCURRENCY streams of
NUM_REQUESTS requests with INPUT_LEN-token prompts and exactly OUTPUT_LEN new tokens
(ignore_eos) from each tool. Prints each round's figures side by side with the ratio
aiperf / pdserve bench, and the median over rounds, with the CPU time each tool itself used: the
client shares the machine's cores with the servers, so a client that burns CPU slows them.

aiperf comes from PyPI into .venv-aiperf (created on the first run). It needs a Hugging Face
tokenizer and there is no hub here: scripts/gguf_tokenizer.py rebuilds one from the GGUF. Its
token counts are the server's (--use-server-token-count).

Usage: bench/load_test_compare.py [--bin-dir build/bin] [--concurrency 4] [--num-requests 50]
                                  [--input-len 128] [--output-len 64] [--rounds 2] [--out DIR]
"""
import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AIPERF_VENV = os.path.join(ROOT, ".venv-aiperf")
AIPERF_PACKAGES = ["aiperf==0.13.0", "gguf>=0.10"]
# Both clients run at the lowest CPU priority: on a small machine the servers come first, so the
# client's own CPU use (aiperf's is a core's worth here) slows what it measures less.
CLIENT_NICE = ["nice", "-n", "19"]


def aiperf_python():
    python = os.path.join(AIPERF_VENV, "bin", "python")
    if not os.path.exists(python) or subprocess.run(
            [python, "-c", "import aiperf, gguf, tokenizers"], capture_output=True).returncode:
        print("installing aiperf into .venv-aiperf (PyPI) ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", AIPERF_VENV])
        subprocess.check_call([python, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", *AIPERF_PACKAGES])
    return python


def start_demo(bin_dir, model, log_path):
    """`pdserve demo --serve` on free ports: (process, gRPC address, OpenAI base URL)."""
    proc = subprocess.Popen([os.path.join(bin_dir, "pdserve"), "demo", "--serve", "--model",
                             model, "--router-port", "0", "--openai-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log_path, "w") as log:
        for line in proc.stdout:  # blocks until the demo prints its next line
            log.write(line)
            m = re.search(r"gRPC on (\S+), the OpenAI API on (http://\S+)/v1", line)
            if m:
                return proc, m.group(1), m.group(2)
    raise SystemExit(f"pdserve demo --serve exited before serving; see {log_path}")


def child_cpu_s():
    """CPU seconds (user + system) of the waited-for children so far, their children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bench(args, router, out_dir):
    cpu = child_cpu_s()
    subprocess.check_call([*CLIENT_NICE, os.path.join(args.bin_dir, "pdserve"), "bench",
                           "--router", router,
                           "--concurrency", str(args.concurrency),
                           "--num-requests", str(args.num_requests),
                           "--input-len", str(args.input_len),
                           "--output-len", str(args.output_len), "--warmup", "1",
                           "--out", out_dir], stdout=subprocess.DEVNULL)
    cpu = child_cpu_s() - cpu
    run = json.load(open(os.path.join(out_dir, "report.json")))["runs"][0]
    if run["failed"]:
        raise SystemExit(f"pdserve bench: {run['failed']} requests failed: {run['first_error']}")
    return {
        "TTFT mean (ms)": run["ttft_ms"]["mean"],
        "TTFT p50 (ms)": run["ttft_ms"]["p50"],
        "TTFT p99 (ms)": run["ttft_ms"]["p99"],
        "TPOT mean (ms)": run["tpot_ms"]["mean"],
        "E2E mean (ms)": run["e2e_ms"]["mean"],
        "output tok/s": run["output_throughput"],
        "requests/s": run["request_throughput"],
        "output tokens": run["output_tokens"],
        "client CPU (s)": cpu,
    }


def run_aiperf(args, python, model_name, tokenizer_dir, url, out_dir):
    aiperf = os.path.join(os.path.dirname(python), "aiperf")
    cpu = child_cpu_s()
    subprocess.check_call([*CLIENT_NICE, aiperf, "profile", "-m", model_name, "--url", url,
                           "--endpoint-type", "completions", "--streaming",
                           "--tokenizer", tokenizer_dir, "--use-server-token-count",
                           "--concurrency", str(args.concurrency),
                           "--request-count", str(args.num_requests),
                           "--warmup-request-count", "1",
                           "--synthetic-input-tokens-mean", str(args.input_len),
                           "--synthetic-input-tokens-stddev", "0",
                           "--output-tokens-mean", str(args.output_len),
                           "--output-tokens-stddev", "0",
                           "--extra-inputs", "ignore_eos:true", "--ui-type", "none",
                           # Its fewest processes: they share the machine with the servers.
                           "--workers-max", "1", "--record-processors", "1",
                           "--artifact-dir", out_dir],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu = child_cpu_s() - cpu
    r = json.load(open(os.path.join(out_dir, "profile_export_aiperf.json")))
    errors = (r.get("error_summary") or [])
    if errors:
        raise SystemExit(f"aiperf: errors {errors}")
    return {
        "TTFT mean (ms)": r["time_to_first_token"]["avg"],
        "TTFT p50 (ms)": r["time_to_first_token"]["p50"],
        "TTFT p99 (ms)": r["time_to_first_token"]["p99"],
        # aiperf's inter-token latency is per request: (latency - TTFT) / (tokens - 1), TPOT.
        "TPOT mean (ms)": r["inter_token_latency"]["avg"],
        "E2E mean (ms)": r["request_latency"]["avg"],
        "output tok/s": r["output_token_throughput"]["avg"],
        "requests/s": r["request_throughput"]["avg"],
        "output tokens": r["total_osl"]["avg"],
        "client CPU (s)": cpu,
    }


def print_table(title, bench, aiperf):
    print(f"\n{title}")
    print(f"{'':22}{'pdserve bench':>15}{'aiperf':>12}{'aiperf / bench':>17}")
    for key in bench:
        ratio = aiperf[key] / bench[key] if bench[key] else float("nan")
        print(f"{key:22}{bench[key]:15.1f}{aiperf[key]:12.1f}{ratio:17.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "build", "bin"))
    parser.add_argument("--model", help="default: the model scripts/fetch-model.sh fetches")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--num-requests", type=int, default=50)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="pdserve-load-compare-"))
    args = parser.parse_args()
    model = args.model or subprocess.check_output(
        [os.path.join(ROOT, "scripts", "fetch-model.sh")], text=True).strip()
    model_name = os.path.basename(model).removesuffix(".gguf")
    python = aiperf_python()
    tokenizer_dir = os.path.join(args.out, "tokenizer")
    subprocess.check_call([python, os.path.join(ROOT, "scripts", "gguf_tokenizer.py"), model,
                           tokenizer_dir], stdout=subprocess.DEVNULL)

    demo, router, url = start_demo(args.bin_dir, model, os.path.join(args.out, "demo.log"))
    print(f"demo cluster: gRPC {router}, OpenAI API {url}; {args.concurrency} streams, "
          f"{args.num_requests} requests of {args.input_len} prompt + {args.output_len} new "
          f"tokens per run; results in {args.out}", flush=True)
    rounds = []
    try:
        for r in range(args.rounds):
            bench = run_bench(args, router, os.path.join(args.out, f"bench-{r}"))
            aiperf = run_aiperf(args, python, model_name, tokenizer_dir, url,
                                os.path.join(args.out, f"aiperf-{r}"))
            print_table(f"round {r + 1}", bench, aiperf)
            rounds.append((bench, aiperf))
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
    if len(rounds) > 1:
        median = [{k: statistics.median(run[i][k] for run in rounds) for k in rounds[0][i]}
                  for i in (0, 1)]
        print_table(f"median of {len(rounds)} rounds", *median)
    return 0


if __name__ == "__main__":
    sys.exit(main())
