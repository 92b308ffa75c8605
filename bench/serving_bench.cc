// The services' costs, each beside its baseline measured in the same run. Prints figures;
// asserts none.
//
//   pdserve-bench-serving [--model PATH] [--requests N]
//
// 1. Exposed transfer time: TTFT through router + prefill + decode minus TTFT of the same
//    prompt in one process, divided by the KV transfer time, for prompts of 512+ tokens.
//    Near 0 means the per-layer push hides the transfer behind prefill compute (goal <= 0.1).
// 2. Router overhead: Complete p50 through the router vs the same requests orchestrated by a
//    client that calls the workers itself (Reserve -> Prefill -> Decode) (goal <= 1.05).
// Default model: a synthetic GQA model (8 layers, hidden 512), so the KV of a 1k-token prompt
// is a few MB. Workers and this process get one compute thread each.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/cpu_report.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/device_spec.h"
#include "launch/local_cluster.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "router/request_validator.h"

namespace pdserve {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<int32_t> Prompt(int n, int64_t vocab, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(static_cast<int32_t>((i * 131 + salt * 17 + 7) % vocab));
  return p;
}

v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
  r.mutable_sampling()->set_temperature(0);
  r.set_max_tokens(max_tokens);
  r.set_ignore_eos(true);
  return r;
}

// Time to the first streamed token through the router, and the transfer time it reports.
bool RouterTtft(v1::Generation::Stub& router, const v1::GenerateRequest& req, double* ttft_ms,
                double* transfer_ms) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  const auto start = Clock::now();
  auto reader = router.Generate(&ctx, req);
  v1::GenerateResponse msg;
  bool first = true;
  while (reader->Read(&msg)) {
    if (first && msg.token_ids_size() > 0) {
      *ttft_ms = MsSince(start);
      first = false;
    }
    if (msg.has_final()) *transfer_ms = msg.final().timings().kv_transfer_ms();
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::fprintf(stderr, "Generate failed: %s\n", status.error_message().c_str());
  }
  return status.ok() && !first;
}

// What the router does, done by the client: Reserve, Prefill, Decode (read to the end).
bool Orchestrate(v1::DecodeWorker::Stub& decode, v1::PrefillWorker::Stub& prefill,
                 const v1::ModelInfo& info, const std::string& decode_address,
                 v1::GenerateRequest req, int n) {
  req.set_request_id(absl::StrCat("direct-", n));
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(120);
  v1::ReserveRequest rr;
  rr.set_request_id(req.request_id());
  rr.set_prompt_tokens(req.prompt_token_ids_size());
  rr.set_max_tokens(req.max_tokens());
  rr.set_model_fingerprint(info.fingerprint());
  *rr.mutable_kv_format() = info.kv_format();
  v1::Reservation reservation;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    if (!decode.Reserve(&ctx, rr, &reservation).ok()) return false;
  }
  // What the router does: validate (defaults resolved) and send the worker protocol's request.
  absl::StatusOr<v1::GenerateRequest> validated = router::RequestValidator(info).Validate(req);
  if (!validated.ok()) return false;
  const v1::WorkerRequest work = router::ToWorkerRequest(*validated);
  v1::PrefillRequest pr;
  *pr.mutable_request() = work;
  *pr.mutable_destination() = reservation;
  pr.set_decode_worker(decode_address);
  pr.set_model_fingerprint(info.fingerprint());
  v1::PrefillResponse presp;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    if (!prefill.Prefill(&ctx, pr, &presp).ok()) return false;
  }
  v1::DecodeRequest dr;
  *dr.mutable_request() = work;
  dr.set_reservation_id(reservation.reservation_id());
  dr.set_secret(reservation.secret());
  dr.set_first_token(presp.first_token());
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  auto reader = decode.Decode(&ctx, dr);
  v1::DecodeResponse msg;
  while (reader->Read(&msg)) {
  }
  return reader->Finish().ok();
}

int Run(int argc, char** argv) {
  std::string model_path;
  std::string kv_dtype_name = "bf16";  // the workers' default
  int requests = 30;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      model_path = argv[++i];
    } else if (std::strcmp(argv[i], "--requests") == 0 && i + 1 < argc) {
      requests = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--kv-cache-dtype") == 0 && i + 1 < argc) {
      kv_dtype_name = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--model PATH] [--requests N] [--kv-cache-dtype D]\n",
                   argv[0]);
      return 2;
    }
  }
  const absl::StatusOr<DType> kv_dtype = ParseKvCacheDTypeFlag(kv_dtype_name);
  if (!kv_dtype.ok()) {
    std::fprintf(stderr, "%s\n", kv_dtype.status().ToString().c_str());
    return 2;
  }
  // This process's backend and the workers (no --cpu-isa given) run the best level this CPU has.
  std::printf("%s\n", bench::BuildLine(BestCpuIsa()).c_str());
  std::fflush(stdout);
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("pdserve-bench-serving-", getpid())).string();
  fs::create_directories(dir);
  if (model_path.empty()) {
    model_path = dir + "/model";
    ModelConfig c;
    c.hidden_size = 512;
    c.intermediate_size = 1408;
    c.num_layers = 8;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.vocab_size = 4096;
    c.max_position_embeddings = 4096;
    c.tie_word_embeddings = true;
    if (absl::Status s = WriteSyntheticModel(c, model_path, 1); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
  }
  // The one-process baseline keeps its KV cache in the workers' dtype.
  CpuBackend backend(1, std::nullopt, true, *kv_dtype);
  auto model = LoadModel(model_path, backend);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  const int64_t vocab = (*model)->config().vocab_size;
  launch::LocalCluster cluster({.model = model_path,
                                .worker_args = {"--kv-cache-dtype", kv_dtype_name},
                                .log_level = "warn",
                                .run_dir = dir});
  if (absl::Status s = cluster.Start(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  v1::Generation::Stub& router = cluster.router();
  const std::string& decode_address = cluster.decode_addresses()[0];
  auto decode_stub = v1::DecodeWorker::NewStub(cluster.Channel(decode_address));
  auto prefill_stub = v1::PrefillWorker::NewStub(cluster.Channel(cluster.prefill_addresses()[0]));
  // Warm up.
  {
    double t = 0, x = 0;
    if (!RouterTtft(router, Request(Prompt(16, vocab, 0), 2), &t, &x)) return 1;
  }
  std::printf("pdserve serving benchmark: model %s (%s), 1 compute thread per process\n",
              model_path.c_str(), (*model)->kv_format().ToString().c_str());

  std::printf("\n1. exposed KV transfer (goal <= 0.1)\n%8s %12s %14s %14s %12s %10s\n", "prompt",
              "KV MB", "TTFT 1-proc", "TTFT disagg", "transfer", "exposed");
  for (int n : {256, 512, 1024, 2048}) {
    std::vector<double> single, disagg, transfer;
    for (int rep = 0; rep < 5; ++rep) {
      const auto prompt = Prompt(n, vocab, rep + 1);
      SamplingParams greedy;
      greedy.temperature = 0;
      StopCriteria one;
      one.max_tokens = 1;
      const auto start = Clock::now();
      if (!Generate(**model, prompt, greedy, one).ok()) return 1;
      single.push_back(MsSince(start));
      double ttft = 0, xfer = 0;
      // A different prompt each time: no prefix-cache hits on the prefill worker.
      if (!RouterTtft(router, Request(Prompt(n, vocab, rep + 100 + n), 2), &ttft, &xfer)) {
        std::fprintf(stderr, "request failed\n");
        return 1;
      }
      disagg.push_back(ttft);
      transfer.push_back(xfer);
    }
    const double s = Median(single), d = Median(disagg), x = Median(transfer);
    std::printf("%8d %12.2f %11.1f ms %11.1f ms %9.2f ms %10.2f\n", n,
                static_cast<double>((*model)->kv_format().bytes_per_token() * n) / 1e6, s, d, x,
                x > 0 ? (d - s) / x : 0.0);
  }

  std::printf("\n2. router overhead, Complete p50 over %d requests (goal <= 1.05)\n", requests);
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    decode_stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  }
  std::vector<double> via_router, direct;
  // Every request has its own prompt (no prefix-cache hits favour either side), and the two
  // paths take turns going first so warm-up and drifting load fall on both.
  auto via_router_once = [&](int salt) {
    const auto start = Clock::now();
    grpc::ClientContext ctx;
    v1::CompleteResponse resp;
    if (!router.Complete(&ctx, Request(Prompt(32, vocab, salt), 8), &resp).ok()) {
      return false;
    }
    via_router.push_back(MsSince(start));
    return true;
  };
  auto direct_once = [&](int salt) {
    const auto start = Clock::now();
    if (!Orchestrate(*decode_stub, *prefill_stub, info, decode_address,
                     Request(Prompt(32, vocab, salt), 8), salt)) {
      return false;
    }
    direct.push_back(MsSince(start));
    return true;
  };
  for (int i = 0; i < requests; ++i) {
    const int a = 10000 + 2 * i, b = a + 1;
    const bool ok =
        i % 2 == 0 ? via_router_once(a) && direct_once(b) : direct_once(a) && via_router_once(b);
    if (!ok) {
      std::fprintf(stderr, "a request failed\n");
      return 1;
    }
  }
  const double r = Median(via_router), c = Median(direct);
  std::printf("  through the router %.2f ms, client-orchestrated %.2f ms, ratio %.3f\n", r, c,
              c > 0 ? r / c : 0.0);

  cluster.Stop(std::chrono::seconds(15));
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) { return pdserve::Run(argc, argv); }
