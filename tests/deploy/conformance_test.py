#!/usr/bin/env python3
"""Manifest conformance: the cpu-demo overlay's pods, run as local processes, scale out and in
under load without losing a request, and their /metrics agree with what the clients saw.

What is taken from the rendered manifests (kubectl kustomize), not from this file:
  - each Deployment's container command, args, env and ports, exactly: `$(VAR)` expanded from
    the container's env as the kubelet does, POD_IP (the downward API) set to the "pod's"
    loopback address (127.0.0.N), /usr/local/bin/ mapped to the build's bin directory and the
    `models` volume's mount path to the directory holding the default model;
  - the probes: each pod is ready when the manifest's readinessProbe service reports SERVING on
    its port (watched on grpc.health.v1 Watch, within the startupProbe's budget), then every
    probe (startup, readiness, liveness) is run once as the kubelet would;
  - service discovery: the router's --prefill-dns/--decode-dns name the headless Services; a
    dnsmasq here serves those names, listing the ready "pods" as a headless Service's DNS does,
    and the router's dns:/// targets are pointed at it (dns://127.0.0.1:PORT/...);
  - drain: a pod leaves DNS and gets SIGTERM at once (what the endpoints controller and the
    kubelet do; the preStop sleep, which only gives endpoints time to update, is not waited);
    it must exit 0 within terminationGracePeriodSeconds with nothing in flight.

The run: 1 decode + 2 prefill pods + the router; clients stream requests through the router;
under that load a second decode pod is added (it must take requests) and a prefill pod is
drained (it must exit 0, idle); no request may fail. Then every process's /metrics is scraped
and parsed with prometheus-client's parser, and the counters are checked against the requests
the clients sent, and every metric docs/metrics.md lists must be exported by some process.

Usage: conformance_test.py --bin-dir build/bin --model-dir DIR_WITH_THE_DEFAULT_GGUF
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from cluster import reflected_pool  # noqa: E402

import grpc  # noqa: E402
from google.protobuf import message_factory  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

OVERLAY = os.path.join(ROOT, "deploy", "kustomize", "overlays", "cpu-demo")
CLIENTS = 3
MAX_TOKENS = 8
REQUEST_TIMEOUT_S = 120
WATCH_ATTEMPT_S = 30  # one readiness watch; models here load in seconds
# How long the new decode pod may take to receive its first request once it is in DNS (the
# router re-resolves every --dns-refresh and polls the new worker before routing to it).
TAKE_WORK_TIMEOUT_S = 60
PROMPTS = ["What is the capital of France?", "Name three colors.", "Count to five.",
           "Say hello in Spanish.", "What is two plus two?"]


def fail(message):
    raise AssertionError(message)


def render(kubectl):
    out = subprocess.run([kubectl, "kustomize", OVERLAY], check=True, capture_output=True,
                         text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def deployment(docs, component):
    for d in docs:
        if d.get("kind") == "Deployment" and \
                d["spec"]["template"]["metadata"]["labels"].get(
                    "app.kubernetes.io/component") == component:
            return d
    fail(f"the cpu-demo overlay renders no Deployment with component {component}")


def expand(text, env):
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$(VAR) escapes, unknown kept."""
    def sub(m):
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


class Pod:
    """One replica of a Deployment, as a process on its own loopback address."""

    def __init__(self, dep, ip, bin_dir, model_dir, dns_port, workdir, name):
        spec = dep["spec"]["template"]["spec"]
        [self.container] = [c for c in spec["containers"]]
        self.ip, self.name = ip, name
        self.grace_s = spec.get("terminationGracePeriodSeconds", 30)
        env = {}
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env[e["name"]] = ip
            else:
                fail(f"{name}: env {e['name']} comes from {e.get('valueFrom')}, which this "
                     "test cannot provide")
        mounts = {m["mountPath"].rstrip("/"): m["name"]
                  for m in self.container.get("volumeMounts", [])}
        models_mount = next((p for p, v in mounts.items() if v == "models"), None)

        def localize(arg):
            arg = expand(arg, env)
            arg = arg.replace("/usr/local/bin/", bin_dir.rstrip("/") + "/")
            if models_mount:
                arg = arg.replace(models_mount + "/", model_dir.rstrip("/") + "/")
            return arg.replace("dns:///", f"dns://127.0.0.1:{dns_port}/")

        self.argv = [localize(a) for a in self.container["command"] + self.container.get("args", [])]
        self.ports = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        self.log_path = os.path.join(workdir, name + ".log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log,
                                         env={**os.environ, **env})

    def address(self, port_name="grpc"):
        return f"{self.ip}:{self.ports[port_name]}"

    def log_tail(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def probe_port(self, probe):
        port = probe["grpc"]["port"]
        return self.ports[port] if isinstance(port, str) else port

    def await_ready(self):
        """Waits (health Watch, pushed not polled) for the readinessProbe's service to be
        SERVING, within the startupProbe's budget; then runs every probe once."""
        c = self.container
        startup = c["startupProbe"]
        budget = startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10) + \
            startup.get("initialDelaySeconds", 0)
        readiness = c["readinessProbe"]
        target = f"{self.ip}:{self.probe_port(readiness)}"
        deadline = time.monotonic() + budget
        request = health_pb2.HealthCheckRequest(service=readiness["grpc"].get("service", ""))
        # A worker's health-only server (while the model loads) ends its watches when it hands
        # the port over to the serving server: each end starts a new watch, on the new server.
        # Each watch is bounded, as the kubelet bounds each probe and tries again: a call caught
        # in the handover's GOAWAY once hung for the whole budget.
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                fail(f"{self.name} was not ready on {target} within the startupProbe's {budget} s"
                     f":\n{self.log_tail()}")
            attempt = min(left, WATCH_ATTEMPT_S)
            with grpc.insecure_channel(target) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=attempt)
                    stub = health_pb2_grpc.HealthStub(channel)
                    if any(update.status == health_pb2.HealthCheckResponse.SERVING
                           for update in stub.Watch(request, timeout=attempt)):
                        break
                except grpc.FutureTimeoutError:
                    continue
                except grpc.RpcError as e:
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                        fail(f"{self.name}: readiness watch on {target} failed ({e.code().name}):"
                             f"\n{self.log_tail()}")
        passed = []
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[kind]
            timeout = probe.get("timeoutSeconds", 1) + 5
            if "tcpSocket" in probe:  # the kubelet's TCP probe: the port accepts a connection
                port = probe["tcpSocket"]["port"]
                port = self.ports[port] if isinstance(port, str) else port
                socket.create_connection((self.ip, port), timeout=timeout).close()
                passed.append(f"{kind} (TCP)")
                continue
            with grpc.insecure_channel(f"{self.ip}:{self.probe_port(probe)}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                    timeout=timeout)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    fail(f"{self.name}: {kind} answered {reply.status}")
            passed.append(f"{kind} (gRPC {probe['grpc'].get('service', '')!r} SERVING)")
        print(f"  {self.name} on {self.ip}: ready; {', '.join(passed)}")

    def await_idle(self, service, timeout_s=30):
        """Waits on the worker's WatchLoad stream until nothing is queued, running or holding KV
        blocks: the last request's blocks are freed just after its client got the last token."""
        with grpc.insecure_channel(self.address()) as channel:
            pool = reflected_pool(channel, service)
            method = pool.FindServiceByName(service).methods_by_name["WatchLoad"]
            watch = channel.unary_stream(
                f"/{service}/WatchLoad",
                request_serializer=message_factory.GetMessageClass(
                    method.input_type).SerializeToString,
                response_deserializer=message_factory.GetMessageClass(
                    method.output_type).FromString)
            last = None
            try:
                for load in watch(message_factory.GetMessageClass(method.input_type)(),
                                  timeout=timeout_s):
                    last = load
                    if load.queue_depth == 0 and load.running_requests == 0 and \
                            load.kv_blocks_used == 0:
                        return
            except grpc.RpcError as e:
                fail(f"{self.name} never went idle ({e.code().name}); last load: {last}")
            fail(f"{self.name}'s load stream ended before it went idle; last load: {last}")

    def scrape(self):
        with urllib.request.urlopen(f"http://{self.address('metrics')}/metrics", timeout=10) as r:
            return r.read().decode()


class Dns:
    """dnsmasq serving the headless Services' names from a hosts file, reloaded on SIGHUP."""

    def __init__(self, workdir, names):
        self.names = names  # {service name: [pod ips]}
        self.hosts = os.path.join(workdir, "hosts")
        self.write()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(
            [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground",
             "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}", "--bind-interfaces",
             "--listen-address=127.0.0.1", f"--port={self.port}", "--log-facility=-",
             "--local-ttl=0", "--pid-file=",
             # As root it would switch to nobody, who cannot read the hosts file here.
             *(["--user=root"] if os.geteuid() == 0 else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.await_read()

    def write(self):
        with open(self.hosts + ".tmp", "w") as f:
            for name, ips in self.names.items():
                for ip in ips:
                    f.write(f"{ip} {name}\n")
        os.rename(self.hosts + ".tmp", self.hosts)

    def await_read(self):
        """Reads dnsmasq's log until it says it (re)read the hosts file."""
        for line in self.proc.stderr:
            if "read " + self.hosts in line:
                return
        fail(f"dnsmasq exited ({self.proc.wait()})")

    def set(self, name, ips):
        self.names[name] = list(ips)
        self.write()
        self.proc.send_signal(signal.SIGHUP)
        self.await_read()
        print(f"  DNS {name} -> {', '.join(ips) or '(none)'}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Load:
    """CLIENTS threads streaming Generate requests through the router until stopped."""

    def __init__(self, router, request_class, response_class):
        self.channel = grpc.insecure_channel(router)
        self.generate = self.channel.unary_stream(
            "/pdserve.v1.Generation/Generate",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString)
        self.request_class = request_class
        self.lock = threading.Condition()
        self.done = []      # FinalInfo of every successful request
        self.failed = []    # (code, details)
        self.stopping = False
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def run(self, client):
        i = 0
        while not self.stopping:
            request = self.request_class(
                request_id=f"conformance-{client}-{i}", prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=MAX_TOKENS)
            i += 1
            final, tokens = None, 0
            try:
                for response in self.generate(request, timeout=REQUEST_TIMEOUT_S):
                    tokens += len(response.token_ids)
                    if response.HasField("final"):
                        final = response.final
            except grpc.RpcError as e:
                with self.lock:
                    self.failed.append((e.code().name, e.details()))
                    self.lock.notify_all()
                continue
            with self.lock:
                if final is None or final.usage.completion_tokens != tokens:
                    self.failed.append(("BAD_STREAM", f"{request.request_id}: {tokens} tokens, "
                                        f"final {final}"))
                else:
                    self.done.append(final)
                self.lock.notify_all()

    def await_(self, predicate, timeout_s, what):
        with self.lock:
            if not self.lock.wait_for(lambda: predicate(self.done) or self.failed, timeout_s):
                fail(f"timed out after {timeout_s} s waiting for {what}")
            if self.failed:
                fail(f"requests failed: {self.failed[:5]}")

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join()
        self.channel.close()


def samples(text):
    """{(sample name, frozenset(labels)): value} from Prometheus text, with a real parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(parsed, name, **labels):
    return sum(v for (n, ls), v in parsed.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def documented_metrics():
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        return re.findall(r"^\| `(pdserve_[a-z0-9_]+)`", f.read(), re.M)


def run(args):
    kubectl = os.path.join(os.path.dirname(sys.executable), "kubectl")
    docs = render(kubectl)
    deps = {c: deployment(docs, c) for c in ("router", "prefill", "decode")}
    services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
    router_args = deps["router"]["spec"]["template"]["spec"]["containers"][0]["args"]
    dns_names = {}
    for flag, stage in (("--prefill-dns=", "prefill"), ("--decode-dns=", "decode")):
        [target] = [a[len(flag):] for a in router_args if a.startswith(flag)]
        name = target.removeprefix("dns:///").rsplit(":", 1)[0]
        if services.get(name, {}).get("spec", {}).get("clusterIP") != "None":
            fail(f"the router's {flag}{target} does not name a headless Service")
        dns_names[stage] = name
    workdir = tempfile.mkdtemp(prefix="pdserve_conformance_")
    dns = Dns(workdir, {dns_names["prefill"]: [], dns_names["decode"]: []})
    pods, load = [], None
    ip = iter(f"127.0.0.{n}" for n in range(2, 250))

    def start(stage, name):
        pod = Pod(deps[stage], next(ip), args.bin_dir, args.model_dir, dns.port, workdir, name)
        pods.append(pod)
        return pod

    try:
        print("starting 1 decode pod, 2 prefill pods and the router")
        decode = [start("decode", "decode-0")]
        prefill = [start("prefill", "prefill-0"), start("prefill", "prefill-1")]
        for pod in decode + prefill:
            pod.await_ready()
        dns.set(dns_names["decode"], [p.ip for p in decode])
        dns.set(dns_names["prefill"], [p.ip for p in prefill])
        router = start("router", "router-0")
        router.await_ready()
        router_address = f"127.0.0.1:{router.ports['grpc']}"
        with grpc.insecure_channel(router_address) as channel:
            pool = reflected_pool(channel, "pdserve.v1.Generation")
        method = pool.FindServiceByName("pdserve.v1.Generation").methods_by_name["Generate"]
        load = Load(router_address, message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type))
        load.await_(lambda done: len(done) >= 6, REQUEST_TIMEOUT_S, "the first requests")
        print(f"  load running: {len(load.done)} requests done")

        print("scaling decode out: a second decode pod")
        decode.append(start("decode", "decode-1"))
        decode[1].await_ready()
        dns.set(dns_names["decode"], [p.ip for p in decode])
        in_dns = time.monotonic()
        new_decode = decode[1].address()
        load.await_(lambda done: any(f.decode_worker == new_decode for f in done),
                    TAKE_WORK_TIMEOUT_S, f"a request decoded on the new pod {new_decode}")
        print(f"  the new decode pod finished its first request {time.monotonic() - in_dns:.1f} s "
              f"after it entered DNS ({len(load.done)} requests done)")

        print("scaling prefill in: prefill-0 leaves DNS and gets SIGTERM")
        gone = prefill.pop(0)
        dns.set(dns_names["prefill"], [p.ip for p in prefill])
        gone.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            code = gone.proc.wait(timeout=gone.grace_s)
        except subprocess.TimeoutExpired:
            fail(f"{gone.name} did not exit within terminationGracePeriodSeconds "
                 f"({gone.grace_s} s):\n{gone.log_tail()}")
        if code != 0:
            fail(f"{gone.name} exited {code}:\n{gone.log_tail()}")
        # DrainWorker logs this only once no request was queued, running or holding KV blocks.
        if "nothing in flight" not in gone.log_tail():
            fail(f"{gone.name} exited without draining to idle:\n{gone.log_tail()}")
        print(f"  {gone.name} drained and exited 0 in {time.monotonic() - started:.1f} s, "
              "holding no KV blocks")
        pods.remove(gone)
        after = len(load.done)
        load.await_(lambda done: len(done) >= after + 6, REQUEST_TIMEOUT_S,
                    "requests after the drain")
        load.stop()
        if load.failed:
            fail(f"requests failed: {load.failed[:5]}")
        finals = load.done
        print(f"  {len(finals)} requests, none failed; by decode pod: " + ", ".join(
            f"{p.name} {sum(f.decode_worker == p.address() for f in finals)}" for p in decode))

        for pod in decode:
            pod.await_idle("pdserve.v1.DecodeWorker")
        for pod in prefill:
            pod.await_idle("pdserve.v1.PrefillWorker")
        print("scraping /metrics")
        scraped = {p.name: samples(p.scrape()) for p in pods}
        r = scraped["router-0"]
        n_ok = len(finals)
        prompt_tokens = sum(f.usage.prompt_tokens for f in finals)
        completion_tokens = sum(f.usage.completion_tokens for f in finals)
        checks = [
            ("router success", total(r, "pdserve_request_success_total"), n_ok),
            ("router failures", total(r, "pdserve_request_failure_total"), 0),
            ("router TTFT count", total(r, "pdserve_time_to_first_token_seconds_count"), n_ok),
            ("router e2e count", total(r, "pdserve_e2e_request_latency_seconds_count"), n_ok),
            ("router prompt tokens", total(r, "pdserve_prompt_tokens_total"), prompt_tokens),
            ("router generation tokens", total(r, "pdserve_generation_tokens_total"),
             completion_tokens),
            ("router workers serving (prefill)",
             total(r, "pdserve_workers", pool="prefill", state="serving"), len(prefill)),
            ("router workers serving (decode)",
             total(r, "pdserve_workers", pool="decode", state="serving"), len(decode)),
        ]
        for reason in {f.finish_reason for f in finals}:
            checks.append((f"router success {reason}",
                           total(r, "pdserve_request_success_total", finish_reason=reason),
                           sum(f.finish_reason == reason for f in finals)))
        for pod in decode:
            d = scraped[pod.name]
            mine = [f for f in finals if f.decode_worker == pod.address()]
            checks += [
                (f"{pod.name} generation tokens", total(d, "pdserve_generation_tokens_total"),
                 sum(f.usage.completion_tokens for f in mine)),
                (f"{pod.name} reservations consumed",
                 total(d, "pdserve_kv_reservations_total", outcome="consumed"), len(mine)),
                (f"{pod.name} reservations granted = consumed + released + expired",
                 total(d, "pdserve_kv_reservations_total", outcome="granted"),
                 sum(total(d, "pdserve_kv_reservations_total", outcome=o)
                     for o in ("consumed", "released", "expired"))),
                (f"{pod.name} KV usage", total(d, "pdserve_kv_cache_usage_perc"), 0),
                (f"{pod.name} running", total(d, "pdserve_num_requests_running"), 0),
            ]
        for pod in prefill:
            p = scraped[pod.name]
            mine = [f for f in finals if f.prefill_worker == pod.address()]
            checks += [
                (f"{pod.name} KV bytes sent", total(p, "pdserve_kv_transfer_bytes_total"),
                 sum(f.timings.kv_transfer_bytes for f in mine)),
                (f"{pod.name} KV transfers",
                 total(p, "pdserve_kv_transfer_seconds_count"), len(mine)),
                (f"{pod.name} prompt tokens computed", total(p, "pdserve_prompt_tokens_total"),
                 sum(f.usage.prompt_tokens - f.usage.cached_prompt_tokens for f in mine)),
            ]
        bad = [(what, got, want) for what, got, want in checks if got != want]
        for what, got, want in checks:
            print(f"  {'ok ' if got == want else 'BAD'} {what}: {got:g} (expected {want:g})")
        if bad:
            fail(f"/metrics disagrees with the requests sent: {bad}")
        exported = {name for parsed in scraped.values() for (name, _) in parsed}
        missing = [m for m in documented_metrics()
                   if not any(e == m or e.startswith(m + "_") for e in exported)]
        if missing:
            fail(f"docs/metrics.md lists metrics no process exports: {missing}")
        print(f"  every metric in docs/metrics.md is exported ({len(documented_metrics())})")
    except AssertionError:
        for pod in pods:
            print(f"--- {pod.name} ({pod.ip}) log tail:\n{pod.log_tail()}", file=sys.stderr)
        raise
    finally:
        if load is not None and not load.stopping:
            load.stop()
        for pod in pods:
            if pod.proc.poll() is None:
                pod.proc.terminate()
        for pod in pods:
            try:
                pod.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model-dir", required=True,
                        help="the directory the models volume holds (the default GGUF)")
    args = parser.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    args.model_dir = os.path.abspath(args.model_dir)
    started = time.monotonic()
    try:
        run(args)
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    print(f"conformance test passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
