"""What grpcurl and ghz rely on, checked with PyPI's grpcio as a real client.

Starts a decode worker, a prefill worker and a router (the real binaries), then:
  - lists the router's services over server reflection;
  - resolves the service symbol (grpcurl's lookup) and the method symbol
    pdserve.v1.Generation.Generate (ghz's lookup) to file descriptors;
  - builds the request/response classes from those descriptors alone (no .proto files, as the
    tools do) and calls Complete and Generate with them;
  - asks grpc.health.v1 for every server's status, for "" and for every service name each
    server lists (what a Kubernetes gRPC probe names), and gets NOT_FOUND for unknown names;
  - resolves grpc.health.v1.Health through reflection and calls it from those descriptors;
  - asks the same over reflection v1 (what newer grpcurl and ghz try first);
  - runs ghz (from the PATH or ../shared/tools) against health and Complete over reflection.

Usage: reflection_test.py --bin-dir build/bin --model ../shared/models/stories260K.bin
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import unittest

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, wait_serving  # noqa: E402

ARGS = None


class ReflectionAndHealth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(ARGS.bin_dir, ARGS.model, name="pdserve_reflection").start()
        cls.decode, cls.prefill, cls.router = (cls.cluster.decode, cls.cluster.prefill,
                                               cls.cluster.router)
        # The router reports SERVING only once it has a healthy prefill and decode worker.
        for address in (cls.decode, cls.prefill, cls.router):
            wait_serving(address)
        cls.channel = grpc.insecure_channel(cls.router)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.cluster.stop()

    def reflect(self, request):
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        self.assertEqual(len(responses), 1)
        self.assertFalse(responses[0].HasField("error_response"),
                         responses[0].error_response.error_message)
        return responses[0]

    def pool_for(self, symbol):
        """The descriptor pool a tool builds from file_containing_symbol(symbol)."""
        resp = self.reflect(reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=symbol))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in resp.file_descriptor_response.file_descriptor_proto]
        pool = descriptor_pool.DescriptorPool()
        added = set()
        # Dependencies may come in any order: add each file once its imports are in.
        while len(added) < len(files):
            progress = False
            for f in files:
                if f.name not in added and all(d in added for d in f.dependency):
                    pool.Add(f)
                    added.add(f.name)
                    progress = True
            self.assertTrue(progress, "reflection returned files with missing imports")
        return pool

    def test_lists_public_health_and_reflection_services(self):
        resp = self.reflect(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in resp.list_services_response.service}
        self.assertIn("pdserve.v1.Generation", names)
        self.assertIn("grpc.health.v1.Health", names)

    def test_service_symbol_resolves_like_grpcurl(self):
        pool = self.pool_for("pdserve.v1.Generation")
        service = pool.FindServiceByName("pdserve.v1.Generation")
        self.assertEqual({m.name for m in service.methods},
                         {"Generate", "Complete", "GetModelInfo"})

    def test_method_symbol_resolves_and_calls_like_ghz(self):
        pool = self.pool_for("pdserve.v1.Generation.Generate")
        method = pool.FindMethodByName("pdserve.v1.Generation.Generate")
        self.assertTrue(method.server_streaming)
        request_cls = message_factory.GetMessageClass(method.input_type)
        stream_cls = message_factory.GetMessageClass(method.output_type)
        complete = pool.FindMethodByName("pdserve.v1.Generation.Complete")
        complete_cls = message_factory.GetMessageClass(complete.output_type)

        request = request_cls(prompt_token_ids=[1, 400, 300], max_tokens=8)
        request.sampling.temperature = 0.0
        call = self.channel.unary_unary(
            "/pdserve.v1.Generation/Complete",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=complete_cls.FromString)
        # The router may need a moment to see its workers healthy.
        whole = call(request, timeout=30)
        self.assertEqual(len(whole.token_ids), 8)
        self.assertEqual(whole.final.finish_reason, "length")

        stream = self.channel.unary_stream(
            "/pdserve.v1.Generation/Generate",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=stream_cls.FromString)
        ids, finals = [], 0
        for msg in stream(request, timeout=30):
            ids.extend(msg.token_ids)
            finals += msg.HasField("final")
        self.assertEqual(ids, list(whole.token_ids))  # greedy: same answer both ways
        self.assertEqual(finals, 1)

        bad = request_cls(prompt_token_ids=[], max_tokens=8)
        with self.assertRaises(grpc.RpcError) as caught:
            call(bad, timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def services_of(self, channel):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [resp] = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        return sorted(s.name for s in resp.list_services_response.service)

    def test_health_answers_for_every_service_name_and_refuses_unknown_ones(self):
        own = {self.router: "pdserve.v1.Generation", self.prefill: "pdserve.v1.PrefillWorker",
               self.decode: "pdserve.v1.DecodeWorker"}
        for address, service in own.items():
            with grpc.insecure_channel(address) as ch:
                names = self.services_of(ch)
                self.assertIn(service, names, address)
                for name in ["", *names]:
                    status = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=name), timeout=5)
                    self.assertEqual(status.status, health_pb2.HealthCheckResponse.SERVING,
                                     f"{address} {name!r}")
                with self.assertRaises(grpc.RpcError) as caught:
                    health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service="pdserve.v1.Nope"), timeout=5)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
                self.assertIn(service, caught.exception.details())

    def test_health_is_described_by_reflection_and_callable_from_it(self):
        pool = self.pool_for("grpc.health.v1.Health")
        service = pool.FindServiceByName("grpc.health.v1.Health")
        self.assertEqual({m.name for m in service.methods}, {"Check", "Watch"})
        check = pool.FindMethodByName("grpc.health.v1.Health.Check")
        request_cls = message_factory.GetMessageClass(check.input_type)
        response_cls = message_factory.GetMessageClass(check.output_type)
        call = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString)
        answer = call(request_cls(service="pdserve.v1.Generation"), timeout=5)
        self.assertEqual(check.output_type.fields_by_name["status"].enum_type
                         .values_by_number[answer.status].name, "SERVING")

    def test_reflection_v1_answers_like_v1alpha(self):
        # v1's messages are v1alpha's under another package: the same bytes on the wire.
        call = self.channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="pdserve.v1.Generation.Generate"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such"),
                reflection_pb2.ServerReflectionRequest(
                    file_by_filename="grpc/health/v1/health.proto")]
        listed, generate, unknown, health = list(call(iter(asks), timeout=10))
        self.assertEqual(sorted(s.name for s in listed.list_services_response.service),
                         self.services_of(self.channel))
        self.assertIn("grpc.reflection.v1.ServerReflection",
                      {s.name for s in listed.list_services_response.service})
        files = {descriptor_pb2.FileDescriptorProto.FromString(raw).name
                 for raw in generate.file_descriptor_response.file_descriptor_proto}
        self.assertIn("pdserve/v1/generation.proto", files)
        self.assertEqual(unknown.error_response.error_code, grpc.StatusCode.NOT_FOUND.value[0])
        self.assertEqual(len(health.file_descriptor_response.file_descriptor_proto), 1)

    def ghz(self, *args):
        tool = shutil.which("ghz") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "tools", "ghz")
        if not os.access(tool, os.X_OK):
            self.skipTest("no ghz on the PATH or in ../shared/tools")
        out = subprocess.run([tool, "--insecure", "--format", "json", *args], check=True,
                             capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout)

    def test_ghz_calls_health_and_complete_through_reflection(self):
        report = self.ghz("--call", "grpc.health.v1.Health.Check", "-d",
                          '{"service":"pdserve.v1.Generation"}', "-n", "200", "-c", "4",
                          self.router)
        self.assertEqual(report["statusCodeDistribution"], {"OK": 200}, report)
        report = self.ghz("--call", "pdserve.v1.Generation.Complete", "-d",
                          '{"prompt_token_ids":[1,400,300],"max_tokens":4}', "-n", "20", "-c", "2",
                          self.router)
        self.assertEqual(report["statusCodeDistribution"], {"OK": 20}, report)
        report = self.ghz("--call", "grpc.health.v1.Health.Check", "-d", '{"service":"nope"}',
                          "-n", "3", self.router)
        self.assertEqual(report["statusCodeDistribution"], {"NotFound": 3}, report)

    def test_every_server_reports_serving(self):
        # setUpClass watched each become SERVING; Check (what ghz and probes call) agrees.
        for address in (self.router, self.prefill, self.decode):
            with grpc.insecure_channel(address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                self.assertEqual(status.status, health_pb2.HealthCheckResponse.SERVING, address)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
