"""Plots a `pdserve bench` run from its report.json and requests.jsonl.

Writes into the same directory:
  latency_cdf.png   CDFs of TTFT, TPOT and ITL, and end-to-end latency (one line per run)
  stage_split.png   where the server says the time went (mean queue, prefill, KV transfer,
                    decode per request), stacked, per run and KV cache format
  sweep.png         for a sweep: throughput and latency against the load level

Usage: plot_bench.py OUT_DIR
Exit: 0 plotted; 1 the report cannot be read; 3 this Python has no matplotlib (pdserve bench
then says how to get the plots).
"""

import json
import os
import textwrap
import sys

NO_MATPLOTLIB = 3


def load(out_dir):
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    requests = []
    with open(os.path.join(out_dir, "requests.jsonl")) as f:
        for line in f:
            if line.strip():
                requests.append(json.loads(line))
    return report, requests


def run_label(run):
    load = run["load"]
    unit = "/s" if load["kind"] == "rate" and load["level"] != "inf" else ""
    return f"{load['kind']} {load['level']}{unit}"


def cdf(axis, values, label):
    if not values:
        return
    values = sorted(values)
    n = len(values)
    axis.step(values, [(i + 1) / n for i in range(n)], where="post", label=label)


def plot_latency_cdfs(plt, report, requests, out_dir):
    runs = report["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for index, run in enumerate(runs):
        ok = [r for r in requests if r["run"] == index and r["status"] == "OK"]
        label = run_label(run)
        cdf(axes[0], [r["ttft_ms"] for r in ok if r["ttft_ms"] is not None], label)
        cdf(axes[1], [r["tpot_ms"] for r in ok if r["tpot_ms"] is not None], f"TPOT, {label}")
        cdf(axes[1], [i for r in ok for i in r["itl_ms"]], f"ITL, {label}")
        cdf(axes[2], [r["e2e_ms"] for r in ok], label)
    for axis, title in zip(axes, ("Time to first token", "Time per output token / inter-token",
                                  "End-to-end latency")):
        axis.set_title(title)
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction of requests" if axis is not axes[1] else "fraction")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize="small")
    fig.suptitle(f"pdserve bench: {report['model']['architecture']}")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency_cdf.png"), dpi=100)
    plt.close(fig)


def plot_stage_split(plt, report, out_dir):
    stages = (("queue_ms", "queue"), ("prefill_ms", "prefill"), ("kv_transfer_ms", "KV transfer"),
              ("decode_ms", "decode"))
    bars = []  # (label, {stage: mean ms})
    multiple_formats = len({s["kv_format"] for run in report["runs"] for s in run["server"]}) > 1
    for run in report["runs"]:
        for split in run["server"]:
            label = run_label(run)
            if multiple_formats:
                label += "\n" + split["kv_format"][:40]
            bars.append((label, {key: split[key]["mean"] for key, _ in stages}))
    fig, axis = plt.subplots(figsize=(max(8, 1.4 * len(bars) + 3), 5))
    positions = range(len(bars))
    bottom = [0.0] * len(bars)
    for key, name in stages:
        heights = [means[key] for _, means in bars]
        axis.bar(positions, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axis.set_xticks(list(positions), [label for label, _ in bars], fontsize="small")
    axis.set_ylabel("mean ms per request")
    formats = sorted({s["kv_format"] for run in report["runs"] for s in run["server"]})
    # The stages as the server reports them: KV transfer overlaps prefill (each layer is pushed
    # as soon as it is computed), so a bar's height can exceed the request's time to first token.
    title = "Server time per request (FinalInfo.timings; KV transfer overlaps prefill)"
    if len(formats) == 1:
        title += "\n" + textwrap.fill(formats[0], 70)
    axis.set_title(title, fontsize="small")
    axis.grid(axis="y", alpha=0.3)
    if bars:
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "stage_split.png"), dpi=100)
    plt.close(fig)


def plot_sweep(plt, report, out_dir):
    runs = [r for r in report["runs"] if r["load"]["level"] != "inf"]
    if len(runs) < 2:
        return
    kind = runs[0]["load"]["kind"]
    levels = [r["load"]["level"] for r in runs]
    fig, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    throughput.plot(levels, [r["output_throughput"] for r in runs], "o-", label="output tok/s")
    requests_axis = throughput.twinx()
    requests_axis.plot(levels, [r["request_throughput"] for r in runs], "s--", color="C1",
                       label="requests/s")
    requests_axis.plot(levels, [r["goodput"] for r in runs], "^:", color="C2",
                       label="goodput (req/s)")
    throughput.set_ylabel("output tokens/s")
    requests_axis.set_ylabel("requests/s")
    lines = throughput.get_legend_handles_labels()
    more = requests_axis.get_legend_handles_labels()
    throughput.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small")
    throughput.set_title("Throughput")
    for metric, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E")):
        for percentile, style in (("p50", "o-"), ("p99", "x--")):
            latency.plot(levels, [r[metric][percentile] for r in runs], style,
                         label=f"{name} {percentile}")
    latency.set_yscale("log")
    latency.set_ylabel("ms")
    latency.set_title("Latency")
    latency.legend(fontsize="small", ncol=2)
    best = (report.get("sweep") or {}).get("best_level")
    for axis in (throughput, latency):
        axis.set_xlabel(kind + (" (requests/s)" if kind == "rate" else " (requests in flight)"))
        axis.grid(alpha=0.3)
        if best is not None and best != "inf":
            axis.axvline(best, color="grey", linestyle=":", linewidth=1)
    fig.suptitle(f"Sweep over {kind}" + (f": highest meeting the SLOs {best}"
                                           if best is not None else ""))
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "sweep.png"), dpi=100)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 1
    out_dir = sys.argv[1]
    try:
        import matplotlib
    except ImportError:
        print(f"plot_bench.py: {sys.executable} has no matplotlib", file=sys.stderr)
        return NO_MATPLOTLIB
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    try:
        report, requests = load(out_dir)
    except (OSError, ValueError) as e:
        print(f"plot_bench.py: cannot read the report in {out_dir}: {e}", file=sys.stderr)
        return 1
    plot_latency_cdfs(plt, report, requests, out_dir)
    plot_stage_split(plt, report, out_dir)
    plot_sweep(plt, report, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
