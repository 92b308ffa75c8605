#!/usr/bin/env python3
"""The router's OpenAI-compatible HTTP front, checked with the OpenAI Python SDK (PyPI `openai`,
a client no one here wrote) against a real deployment: decode worker, prefill worker and a
router with --openai-listen, serving the default model with its tokenizer.

Checks:
  - GET /v1/models lists the served model (id, max_model_len) and /v1/models/{id} finds it;
  - a completion and a chat completion, whole and streamed, greedy: the text equals what the
    gRPC API's Complete answers for the same request (one request path behind both fronts),
    the streamed deltas add up to the whole answer, a chat stream's first delta carries the
    assistant role, the last choice chunk the finish reason, and with
    stream_options.include_usage a last chunk with no choices carries the usage, equal to the
    whole answer's;
  - usage: prompt tokens equal gRPC's, completion tokens <= max_tokens, total = the sum;
    max_tokens and finish_reason "length"; a stop string ends the answer before it ("stop");
    the same seed at temperature 0.8 gives the same text;
  - bad requests get OpenAI-shaped errors with the right HTTP status through the SDK's own
    exception classes: 400 (max_tokens 0, n 2, a wrong type, a prompt longer than the context,
    a body that is not JSON), 404 (another model, an unknown path);
  - eight streams at once all complete;
  - a client that goes away mid-stream: the router cancels the request and the decode worker
    ends with no KV block in use (watched on its WatchLoad stream, not polled).

Usage: openai_sdk_test.py --bin-dir build/bin --model SmolLM2-135M-Instruct.Q4_1.gguf
Exit codes: 0 pass, 1 fail.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, reflected_pool, wait_port_file  # noqa: E402

try:
    import grpc
    import openai
    from google.protobuf import message_factory
except ImportError as e:  # reported by main()
    openai = None
    IMPORT_ERROR = str(e)

PROMPT = "The capital of France is"
QUESTION = "What is the capital of France?"
TIMEOUT_S = 120


class Checks:
    def __init__(self):
        self.failures = []

    def expect(self, cond, what):
        print(f"  {'ok ' if cond else 'FAIL'} {what}", flush=True)
        if not cond:
            self.failures.append(what)
        return cond


class GrpcApi:
    """The router's gRPC Complete, with message classes from its reflection."""

    def __init__(self, address):
        self.channel = grpc.insecure_channel(address)
        pool = reflected_pool(self.channel, "pdserve.v1.Generation")
        method = pool.FindMethodByName("pdserve.v1.Generation.Complete")
        self.request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        self.complete = self.channel.unary_unary(
            "/pdserve.v1.Generation/Complete",
            request_serializer=self.request_cls.SerializeToString,
            response_deserializer=response_cls.FromString)

    def answer(self, **fields):
        """(text, usage) of a greedy Complete."""
        request = self.request_cls(**fields)
        request.sampling.temperature = 0
        response = self.complete(request, timeout=TIMEOUT_S)
        return response.text, response.final.usage


def decode_load_watch(address):
    """An iterator over the decode worker's WatchLoad stream (a load now, then each change)."""
    channel = grpc.insecure_channel(address)
    pool = reflected_pool(channel, "pdserve.v1.DecodeWorker")
    method = pool.FindMethodByName("pdserve.v1.DecodeWorker.WatchLoad")
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    watch = channel.unary_stream("/pdserve.v1.DecodeWorker/WatchLoad",
                                 request_serializer=request_cls.SerializeToString,
                                 response_deserializer=response_cls.FromString)
    return channel, watch(request_cls(), timeout=TIMEOUT_S)


def stream_text(chunks, chat):
    """(text, roles, finish reasons, usage chunks, chunk count) of a streamed answer."""
    text, roles, finishes, usages, n = "", [], [], [], 0
    for chunk in chunks:
        n += 1
        if chunk.usage is not None and not chunk.choices:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if chat:
                if choice.delta.role:
                    roles.append((n, choice.delta.role))
                text += choice.delta.content or ""
            else:
                text += choice.text or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return text, roles, finishes, usages, n


def check_models(c, client, args, http_port, model_name):
    models = client.models.list().data
    c.expect(len(models) == 1 and models[0].id == model_name,
             f"/v1/models lists one model, {model_name!r}: {[m.id for m in models]}")
    c.expect(getattr(models[0], "max_model_len", 0) > 0,
             f"its max_model_len: {getattr(models[0], 'max_model_len', None)}")
    c.expect(client.models.retrieve(model_name).id == model_name, "/v1/models/{id} finds it")
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=TIMEOUT_S)
    conn.request("GET", "/health")
    c.expect(conn.getresponse().status == 200, "GET /health: 200")
    conn.close()


def check_completions(c, client, api, model_name):
    want, want_usage = api.answer(prompt=PROMPT, max_tokens=12)
    whole = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12,
                                      temperature=0)
    got = whole.choices[0].text
    c.expect(got == want and want, f"completion equals gRPC Complete's text: {got!r} / {want!r}")
    u = whole.usage
    c.expect(u.prompt_tokens == want_usage.prompt_tokens and
             u.completion_tokens == want_usage.completion_tokens and
             u.total_tokens == u.prompt_tokens + u.completion_tokens,
             f"completion usage {u.prompt_tokens}+{u.completion_tokens}={u.total_tokens} equals "
             f"gRPC's {want_usage.prompt_tokens}+{want_usage.completion_tokens}")
    c.expect(whole.object == "text_completion" and whole.id.startswith("cmpl-"),
             f"object {whole.object}, id {whole.id}")
    c.expect(whole.choices[0].finish_reason in ("stop", "length"),
             f"finish_reason {whole.choices[0].finish_reason}")

    stream = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    text, _, finishes, usages, n = stream_text(stream, chat=False)
    c.expect(text == got, f"streamed completion ({n} chunks) adds up to the whole: {text!r}")
    c.expect(finishes == [whole.choices[0].finish_reason],
             f"one finish reason, on the last choice chunk: {finishes}")
    c.expect(len(usages) == 1 and usages[0].completion_tokens == u.completion_tokens and
             usages[0].prompt_tokens == u.prompt_tokens,
             "include_usage: one last chunk with no choices carries the usage")

    short = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=2,
                                      temperature=0, extra_body={"ignore_eos": True})
    c.expect(short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length",
             f"max_tokens 2: {short.usage.completion_tokens} tokens, finish "
             f"{short.choices[0].finish_reason}")

    seeded = [client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12,
                                        temperature=0.8, seed=1234).choices[0].text
              for _ in range(2)]
    c.expect(seeded[0] == seeded[1], f"same seed, same text at temperature 0.8: {seeded[0]!r}")


def check_chat(c, client, api, model_name):
    messages = [{"role": "user", "content": QUESTION}]
    want, want_usage = api.answer(messages=messages, max_tokens=24)
    whole = client.chat.completions.create(model=model_name, messages=messages, max_tokens=24,
                                           temperature=0)
    got = whole.choices[0].message.content
    c.expect(got == want and want, f"chat answer equals gRPC Complete's: {got!r}")
    c.expect(whole.choices[0].message.role == "assistant" and
             whole.object == "chat.completion" and whole.id.startswith("chatcmpl-"),
             f"role {whole.choices[0].message.role}, object {whole.object}")
    c.expect(whole.usage.prompt_tokens == want_usage.prompt_tokens,
             f"chat prompt tokens {whole.usage.prompt_tokens} (gRPC: {want_usage.prompt_tokens})")

    stream = client.chat.completions.create(model=model_name, messages=messages, max_tokens=24,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, roles, finishes, usages, n = stream_text(stream, chat=True)
    c.expect(text == got, f"streamed chat ({n} chunks) adds up to the whole: {text!r}")
    c.expect(roles == [(1, "assistant")], f"the first delta, only, has the role: {roles}")
    c.expect(finishes == [whole.choices[0].finish_reason], f"finish reasons: {finishes}")
    c.expect(len(usages) == 1 and usages[0].completion_tokens == whole.usage.completion_tokens,
             "include_usage: the usage chunk equals the whole answer's usage")

    # Content as text parts, and a system message as "developer".
    parts = client.chat.completions.create(
        model=model_name, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}])
    c.expect(parts.choices[0].message.content == got, "content as text parts: the same answer")

    stop_at = got.split()[1] if len(got.split()) > 1 else None
    if c.expect(stop_at is not None, f"the answer has a second word to stop at: {got!r}"):
        stopped = client.chat.completions.create(model=model_name, messages=messages,
                                                 max_tokens=24, temperature=0, stop=[stop_at])
        s = stopped.choices[0]
        c.expect(stop_at not in s.message.content and s.finish_reason == "stop" and
                 got.startswith(s.message.content),
                 f"stop={stop_at!r}: {s.message.content!r}, finish {s.finish_reason}")


def check_errors(c, client, http_port, model_name):
    def status_of(call):
        try:
            call()
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            return e.status_code, body.get("message") or str(e)
        return 200, ""

    cases = [
        ("max_tokens 0", 400, lambda: client.completions.create(
            model=model_name, prompt=PROMPT, max_tokens=0)),
        ("n 2", 400, lambda: client.completions.create(
            model=model_name, prompt=PROMPT, max_tokens=4, n=2)),
        ("temperature as a string", 400, lambda: client.completions.create(
            model=model_name, prompt=PROMPT, max_tokens=4, extra_body={"temperature": "hot"})),
        ("max_tokens past the context", 400, lambda: client.completions.create(
            model=model_name, prompt=PROMPT, max_tokens=10_000_000)),
        ("a bad role", 400, lambda: client.chat.completions.create(
            model=model_name, messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)),
        ("another model", 404, lambda: client.completions.create(
            model="gpt-4o", prompt=PROMPT, max_tokens=4)),
    ]
    for name, want, call in cases:
        code, message = status_of(call)
        c.expect(code == want and message, f"{name}: HTTP {code} ({message[:90]!r})")

    for method, path, body, want in [("POST", "/v1/completions", b"{not json", 400),
                                     ("GET", "/v1/nothing", None, 404)]:
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=TIMEOUT_S)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        payload = json.loads(r.read() or b"{}")
        conn.close()
        err = payload.get("error", {})
        c.expect(r.status == want and err.get("message") and err.get("type"),
                 f"{method} {path}: HTTP {r.status}, error {err.get('message', '')[:60]!r}")


def check_concurrent(c, client, model_name):
    def one(i):
        stream = client.chat.completions.create(
            model=model_name, max_tokens=16, temperature=0, stream=True,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}])
        return stream_text(stream, chat=True)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    c.expect(all(r[2] for r in results), f"8 concurrent streams all finished: "
             f"{[r[2] for r in results]}")


def check_disconnect(c, client, http_port, model_name, decode_address):
    """A client that leaves mid-stream frees its KV blocks on the decode worker, and the router
    serves the next request."""
    channel, watch = decode_load_watch(decode_address)
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=TIMEOUT_S)
    body = json.dumps({"model": model_name, "prompt": PROMPT, "max_tokens": 400,
                       "ignore_eos": True, "stream": True})
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    first = r.readline()
    c.expect(r.status == 200 and first.startswith(b"data: "),
             f"a long stream started: {first[:50]!r}")
    held = 0
    for load in watch:  # the load now, then every change
        held = max(held, load.kv_blocks_used)
        if held > 0:
            break
    conn.sock.shutdown(2)
    conn.close()  # the client is gone mid-stream
    freed = False
    for load in watch:
        if load.kv_blocks_used == 0 and load.running_requests == 0:
            freed = True
            break
    channel.close()
    c.expect(held > 0 and freed, f"the decode worker held {held} blocks for the stream and "
             "freed them all once the client left")
    after = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=4,
                                      temperature=0)
    c.expect(after.choices[0].finish_reason == "length" and after.usage.completion_tokens == 4,
             "the router answers the next request after the client left")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model", required=True, help="a GGUF with a tokenizer")
    args = parser.parse_args()
    if openai is None:
        print(f"FAIL: {IMPORT_ERROR} (run scripts/python-env.sh)")
        return 1
    model_name = os.path.basename(args.model).removesuffix(".gguf")
    c = Checks()
    start = time.monotonic()
    with Cluster(args.bin_dir, args.model, name="openai") as cluster:
        port_file = os.path.join(cluster.workdir, "openai.port")
        router = cluster.add_router(["--tokenizer=" + args.model, "--openai-listen=127.0.0.1:0",
                                     "--openai-port-file=" + port_file], name="router-openai")
        proc = next(p for p in cluster.procs if p.pid == cluster.pids["router-openai"])
        port = wait_port_file(port_file, proc, 60)
        if not c.expect(port is not None, "the router wrote its OpenAI API port"):
            return 1
        http_port = int(port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused",
                               timeout=TIMEOUT_S, max_retries=0)
        api = GrpcApi(router)
        print("models:")
        check_models(c, client, args, http_port, model_name)
        print("completions:")
        check_completions(c, client, api, model_name)
        print("chat completions:")
        check_chat(c, client, api, model_name)
        print("errors:")
        check_errors(c, client, http_port, model_name)
        print("concurrency and disconnects:")
        check_concurrent(c, client, model_name)
        check_disconnect(c, client, http_port, model_name, cluster.decode)
    elapsed = time.monotonic() - start
    if c.failures:
        print(f"openai_sdk_test FAILED ({len(c.failures)}): " + "; ".join(c.failures))
        return 1
    print(f"openai_sdk_test passed in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
