"""A pdserve deployment on loopback for the Python tests: the real binaries as processes.

One decode worker, one prefill worker and a router in front of them; more routers (with other
flags) can be put in front of the same workers. Each process writes its bound port to a file
(--port-file) and its output to a log in the cluster's work directory; a process that exits or
writes no port within a minute is reported with the tail of its log.

    with Cluster(bin_dir, model) as c:       # or c = Cluster(...).start() ... c.stop()
        channel = grpc.insecure_channel(c.router)

decode_args / prefill_args go to one kind of worker only (e.g. the decode worker's --max-batch);
c.pids maps each process's name ("decode", "prefill", "router", ...) to its pid, c.log(name)
to its log.

Only the standard library here: importing this module needs no grpcio (wait_serving imports
it when called).
"""

import os
import shutil
import subprocess
import tempfile
import time

START_TIMEOUT_S = 60


class Cluster:
    def __init__(self, bin_dir, model, router_args=(), worker_args=(), threads=1,
                 name="pdserve", decode_args=(), prefill_args=()):
        self.bin_dir = bin_dir
        self.model = model
        self.router_args = list(router_args)
        self.worker_args = [f"--threads={threads}", *worker_args]
        # Flags only one kind of worker takes (e.g. the decode worker's --max-batch).
        self.decode_args = list(decode_args)
        self.prefill_args = list(prefill_args)
        self.workdir = tempfile.mkdtemp(prefix=name + "_")
        self.procs = []
        self.pids = {}  # process name ("decode", "prefill", "router", ...) -> pid
        self.decode = self.prefill = self.router = None  # "127.0.0.1:PORT" once started

    def start(self):
        try:
            model = "--model=" + self.model
            self.decode = self._spawn("pdserve-decode", [model, "--listen=127.0.0.1:0",
                                                         "--kv-listen=127.0.0.1:0",
                                                         *self.worker_args, *self.decode_args],
                                      "decode")
            self.prefill = self._spawn("pdserve-prefill", [model, "--listen=127.0.0.1:0",
                                                           *self.worker_args, *self.prefill_args],
                                       "prefill")
            self.router = self.add_router(self.router_args, "router")
        except Exception:
            self.stop()
            raise
        return self

    def add_router(self, args=(), name=None):
        """Starts another router in front of this cluster's workers; returns its address."""
        name = name or f"router{len(self.procs)}"
        return self._spawn("pdserve-router", ["--listen=127.0.0.1:0", "--prefill=" + self.prefill,
                                              "--decode=" + self.decode, *args], name)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, name):
        """The path of a process's log (its stdout and stderr)."""
        return os.path.join(self.workdir, name + ".log")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, binary, args, name):
        port_file = os.path.join(self.workdir, name + ".port")
        log_path = os.path.join(self.workdir, name + ".log")
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([os.path.join(self.bin_dir, binary), *args,
                                     "--port-file=" + port_file], stdout=log, stderr=log)
        self.procs.append(proc)
        self.pids[name] = proc.pid
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if os.path.exists(port_file):
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    return "127.0.0.1:" + text
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(log_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{binary} did not start ({' '.join(args)}); {log_path}:\n{tail}")


def wait_serving(address, timeout_s=30):
    """Waits until `address` answers grpc.health.v1 SERVING for the whole server."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{address} never became SERVING")
            time.sleep(0.1)
