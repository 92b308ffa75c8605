"""Thousands of Generate streams open at once through the router, watched on the decode worker.

Starts a stories260K cluster (one prefill worker, one decode worker with --threads=1, room for
every stream's KV and --max-batch 64) and opens --streams concurrent Generate streams through
the router with grpc.aio (a prompt of 8 ids, --max-tokens new tokens each, greedy, ignore_eos).
Each stream reads its first message, then waits at a barrier until every stream has received
its first message, so all of them are provably open together at the router; then it reads the
rest. (A client that stops reading does not hold the decode worker's streams open: the router
takes what the decode worker sends up to the HTTP/2 window, and the decode scheduler does not
wait for readers. The decode worker holds them together because streams past --max-batch wait
in its queue; --no-barrier shows that figure without the barrier.)

Meanwhile the decode worker is sampled: its /proc/PID/status (Threads, VmRSS) and its GetLoad
(running_requests + queue_depth: the Decode streams its scheduler holds). The router runs with
--request-timeout raised to the client's deadline: the last streams wait in the decode queue
for most of the run, which on a slow or busy machine is longer than the default 120 s.

Checks:
  - every stream ends OK with finish_reason "length" and exactly --max-tokens tokens;
  - the decode worker held at least --min-held streams at once (default 95% of --streams);
  - its threads stay below --max-threads (64: the callback API holds no thread per stream);
  - its RSS grows by less than --max-rss-growth-mib (512) over what it was before the streams
    (the growth includes the KV blocks the streams touch: prompt + max_tokens tokens each);
  - once the streams end it reports 0 used KV blocks.

Usage: soak_test.py --bin-dir build/bin --model ../shared/models/stories260K.bin
Exit: 0 passed; 1 a check failed; 77 a prerequisite (binaries, model, grpcio) is missing.
"""

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, reflected_pool, wait_serving  # noqa: E402

try:
    import grpc
    from google.protobuf import message_factory
except ImportError as e:  # reported by main() as a missing prerequisite
    grpc = None
    IMPORT_ERROR = str(e)

GENERATE = "/pdserve.v1.Generation/Generate"
DECODE_LOAD = "/pdserve.v1.DecodeWorker/GetLoad"
MIB = 1 << 20
SAMPLE_PERIOD_S = 0.02
BARRIER_TIMEOUT_S = 300    # every stream's first message, or the run fails
STREAM_TIMEOUT_S = 600     # each stream's gRPC deadline


def message_classes(address, service):
    """Request/response classes of `service`'s methods, from the server's reflection:
    {method name: (request class, response class)}."""
    with grpc.insecure_channel(address) as channel:
        pool = reflected_pool(channel, service)
    methods = pool.FindServiceByName(service).methods
    return {m.name: (message_factory.GetMessageClass(m.input_type),
                     message_factory.GetMessageClass(m.output_type)) for m in methods}


def proc_status(pid):
    """(threads, VmRSS in bytes) of process `pid`."""
    threads = rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return threads, rss


class Watch:
    """Peaks of the decode worker's threads, RSS, held streams and used KV blocks."""

    def __init__(self, pid):
        self.pid = pid
        self.threads = self.rss = self.held = self.kv_used = self.samples = 0

    def note_proc(self):
        threads, rss = proc_status(self.pid)
        self.threads, self.rss = max(self.threads, threads), max(self.rss, rss)
        return threads, rss

    def note_load(self, load):
        self.held = max(self.held, load.running_requests + load.queue_depth)
        self.kv_used = max(self.kv_used, load.kv_blocks_used)
        self.samples += 1


async def sample(watch, get_load, load_request, stop):
    while not stop.is_set():
        watch.note_proc()
        try:
            watch.note_load(await get_load(load_request, timeout=5))
        except grpc.aio.AioRpcError as e:
            print(f"soak_test: GetLoad failed: {e.code().name} {e.details()}", file=sys.stderr)
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_PERIOD_S)
        except asyncio.TimeoutError:
            pass


class Barrier:
    """Released once `n` streams have arrived (received their first message, or failed)."""

    def __init__(self, n):
        self.n, self.arrived, self.event = n, 0, asyncio.Event()

    def arrive(self):
        self.arrived += 1
        if self.arrived == self.n:
            self.event.set()


async def one_stream(generate, request, max_tokens, barrier):
    """None when the stream ended as it should, else what went wrong."""
    call = generate(request, timeout=STREAM_TIMEOUT_S)
    arrived = False
    try:
        tokens, final = 0, None
        message = await call.read()
        if message is not grpc.aio.EOF:
            tokens += len(message.token_ids)
            if message.HasField("final"):
                final = message.final
        barrier.arrive()
        arrived = True
        # Not past the first message until every stream has one: then all are open together.
        if barrier.n > 0:
            await asyncio.wait_for(barrier.event.wait(), BARRIER_TIMEOUT_S)
        while message is not grpc.aio.EOF and final is None:
            message = await call.read()
            if message is not grpc.aio.EOF:
                tokens += len(message.token_ids)
                if message.HasField("final"):
                    final = message.final
        code = await call.code()
        if code != grpc.StatusCode.OK:
            return f"{code.name}: {await call.details()}"
        if final is None or final.finish_reason != "length" or tokens != max_tokens:
            reason = final.finish_reason if final is not None else "(no final message)"
            return f"{tokens} tokens ending with {reason!r}, wanted {max_tokens} ending 'length'"
        return None
    except asyncio.TimeoutError:
        return f"the barrier was not released within {BARRIER_TIMEOUT_S} s " \
               f"({barrier.arrived} of {barrier.n} streams had a first message)"
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name}: {e.details()}"
    finally:
        if not arrived:
            barrier.arrive()  # a failed stream must not hold the others at the barrier


async def soak(args, cluster):
    generation = message_classes(cluster.router, "pdserve.v1.Generation")
    decode = message_classes(cluster.decode, "pdserve.v1.DecodeWorker")
    request_cls, response_cls = generation["Generate"]
    load_request_cls, load_cls = decode["GetLoad"]
    model_request_cls, model_cls = generation["GetModelInfo"]
    options = [("grpc.max_receive_message_length", 64 * MIB)]
    async with grpc.aio.insecure_channel(cluster.router, options=options) as router, \
            grpc.aio.insecure_channel(cluster.decode) as decode_channel:
        generate = router.unary_stream(GENERATE, request_serializer=request_cls.SerializeToString,
                                       response_deserializer=response_cls.FromString)
        get_load = decode_channel.unary_unary(
            DECODE_LOAD, request_serializer=load_request_cls.SerializeToString,
            response_deserializer=load_cls.FromString)
        model = await router.unary_unary(
            "/pdserve.v1.Generation/GetModelInfo",
            request_serializer=model_request_cls.SerializeToString,
            response_deserializer=model_cls.FromString)(model_request_cls(), timeout=10)
        vocab = model.vocab_size

        def request(i):
            ids = [1] + [2 + (i * 7 + j * 13) % (vocab - 2) for j in range(args.prompt_ids - 1)]
            return request_cls(prompt_token_ids=ids, max_tokens=args.max_tokens, ignore_eos=True,
                               sampling={"temperature": 0})

        # One request first, so what the worker sets up on its first request is in "before".
        problem = await one_stream(generate, request(args.streams), args.max_tokens, Barrier(1))
        if problem:
            return [f"warm-up stream: {problem}"], None
        pid = cluster.pids["decode"]
        threads_before, rss_before = proc_status(pid)
        watch = Watch(pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(watch, get_load, load_request_cls(), stop))
        barrier = Barrier(0 if args.no_barrier else args.streams)
        start = time.monotonic()
        results = await asyncio.gather(*(one_stream(generate, request(i), args.max_tokens,
                                                    barrier) for i in range(args.streams)))
        wall = time.monotonic() - start
        stop.set()
        await sampler

        # The streams are over: a decode worker frees a request's blocks before it sends the
        # last message, so every block is back already.
        load = await get_load(load_request_cls(), timeout=5)
        threads_after, rss_after = proc_status(pid)

    failures = [f"stream {i}: {p}" for i, p in enumerate(results) if p]
    growth = watch.rss - rss_before
    figures = {
        "streams": args.streams, "max_tokens": args.max_tokens, "wall_s": wall,
        "held_peak": watch.held, "samples": watch.samples, "kv_used_peak": watch.kv_used,
        "kv_block_mib": load.tokens_per_block * model.kv_format.bytes_per_token / MIB,
        "threads_before": threads_before, "threads_peak": watch.threads,
        "threads_after": threads_after, "rss_before": rss_before, "rss_peak": watch.rss,
        "rss_after": rss_after, "kv_used_after": load.kv_blocks_used,
    }
    if failures:
        failures = [f"{len(failures)} of {args.streams} streams failed; the first: "
                    + "; ".join(failures[:5])]
    if watch.held < args.min_held:
        failures.append(f"the decode worker held at most {watch.held} streams at once "
                        f"(running + queued, {watch.samples} samples), wanted >= {args.min_held}")
    if watch.threads >= args.max_threads:
        failures.append(f"the decode worker ran {watch.threads} threads, wanted < "
                        f"{args.max_threads}")
    if growth >= args.max_rss_growth_mib * MIB:
        failures.append(f"the decode worker's RSS grew by {growth / MIB:.0f} MiB, wanted < "
                        f"{args.max_rss_growth_mib} MiB")
    if load.kv_blocks_used != 0:
        failures.append(f"the decode worker still uses {load.kv_blocks_used} KV blocks "
                        "after every stream ended")
    return failures, figures


def prerequisites(args):
    missing = []
    if grpc is None:
        missing.append(f"grpcio ({IMPORT_ERROR}): run scripts/python-env.sh and use its python")
    for binary in ("pdserve-router", "pdserve-prefill", "pdserve-decode"):
        if not os.access(os.path.join(args.bin_dir, binary), os.X_OK):
            missing.append(f"{args.bin_dir}/{binary}: build it")
    if not os.path.exists(args.model):
        missing.append(f"{args.model} (stories260K)")
    if not os.path.isdir("/proc/self"):
        missing.append("/proc (the decode worker's threads and RSS are read there)")
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model", required=True, help="stories260K.bin")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--prompt-ids", type=int, default=8)
    parser.add_argument("--min-held", type=int, help="default: 95%% of --streams")
    parser.add_argument("--max-threads", type=int, default=64)
    parser.add_argument("--max-rss-growth-mib", type=int, default=512)
    parser.add_argument("--kv-blocks", type=int, default=40000)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--no-barrier", action="store_true",
                        help="read every stream at once (no barrier after the first message)")
    args = parser.parse_args()
    if args.min_held is None:
        args.min_held = args.streams * 95 // 100

    missing = prerequisites(args)
    if missing:
        print("soak_test: missing " + "; ".join(missing), file=sys.stderr)
        return 77

    # The router's per-request deadline raised to the client's (see the docstring).
    with Cluster(args.bin_dir, args.model, threads=1, name="pdserve_soak",
                 router_args=[f"--request-timeout={STREAM_TIMEOUT_S}s"],
                 decode_args=[f"--kv-blocks={args.kv_blocks}", f"--max-batch={args.max_batch}"]) \
            as cluster:
        wait_serving(cluster.router, timeout_s=60)
        failures, f = asyncio.run(soak(args, cluster))
        if failures and os.path.exists(cluster.log("decode")):
            with open(cluster.log("decode"), errors="replace") as log:
                tail = log.read()[-2000:]
            print(f"soak_test: the decode worker's log ends:\n{tail}", file=sys.stderr)
    if f is not None:
        print(f"soak_test: {f['streams']} streams x {f['max_tokens']} tokens in "
              f"{f['wall_s']:.1f} s; decode worker: peak {f['held_peak']} streams held "
              f"(running + queued, {f['samples']} samples), threads {f['threads_before']} before, "
              f"{f['threads_peak']} peak, {f['threads_after']} after; RSS "
              f"{f['rss_before'] / MIB:.0f} MiB before, {f['rss_peak'] / MIB:.0f} MiB peak "
              f"(+{(f['rss_peak'] - f['rss_before']) / MIB:.0f}; KV blocks in use peaked at "
              f"{f['kv_used_peak']} = {f['kv_used_peak'] * f['kv_block_mib']:.0f} MiB), "
              f"{f['rss_after'] / MIB:.0f} MiB after; {f['kv_used_after']} KV blocks used after")
    for failure in failures:
        print(f"FAIL {failure}")
    if failures:
        print(f"soak_test: {len(failures)} checks failed")
        return 1
    print("soak_test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
