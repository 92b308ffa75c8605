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

import ctypes
import os
import select
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
        port = wait_port_file(port_file, proc, START_TIMEOUT_S)
        if port:
            return "127.0.0.1:" + port
        with open(log_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{binary} did not start ({' '.join(args)}); {log_path}:\n{tail}")


_IN_CLOSE_WRITE, _IN_MOVED_TO = 0x8, 0x80
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


def wait_port_file(port_file, proc, timeout_s):
    """The port `proc` wrote to `port_file` (servers write it whole, by rename), or None when the
    process exits or `timeout_s` passes first. Waits on inotify for the file and on a pidfd for
    the exit, as rpc::WaitForPortFile does: nothing is polled."""
    libc = ctypes.CDLL(None, use_errno=True)
    watch = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if watch < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    exited = os.pidfd_open(proc.pid)
    try:
        directory = os.fsencode(os.path.dirname(port_file) or ".")
        if libc.inotify_add_watch(watch, directory, _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        deadline = time.monotonic() + timeout_s
        while True:
            # Looked at after the watch exists, so a file written in between is not missed.
            if os.path.exists(port_file):
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    return text
            left = deadline - time.monotonic()
            if proc.poll() is not None or left <= 0:
                return None
            ready, _, _ = select.select([watch, exited], [], [], left)
            if watch in ready:
                os.read(watch, 65536)  # the events only say "look again"
    finally:
        os.close(exited)
        os.close(watch)


def wait_serving(address, timeout_s=30):
    """Waits until `address` reports grpc.health.v1 SERVING for the whole server, watching the
    health stream (each change is pushed; nothing is polled)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for update in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s):
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as e:
            raise RuntimeError(f"{address} never became SERVING: {e.code().name}") from e
        raise RuntimeError(f"{address} ended its health stream before SERVING")


def reflected_pool(channel, service, timeout_s=10):
    """A descriptor pool holding `service` ("package.Service") and everything it imports, from
    the server's reflection, as grpcurl builds it (so the tests need no .proto files)."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=timeout_s))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in response.file_descriptor_response.file_descriptor_proto]
    pool, added = descriptor_pool.DescriptorPool(), set()
    while len(added) < len(files):  # each file once its imports are in
        ready = [f for f in files if f.name not in added and all(d in added for d in f.dependency)]
        if not ready:
            raise RuntimeError(f"reflection on {service} gave files with missing imports")
        for f in ready:
            pool.Add(f)
            added.add(f.name)
    return pool
