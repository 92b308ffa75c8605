// The product end to end: router, prefill and decode workers as separate processes on
// loopback, the KV cache moving between them over the TCP transport.
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "engine/generate.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/make_backend.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/cluster.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using testing_util::Cluster;
using testing_util::MidSizeModel;

v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest req;
  req.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_temperature(0.0f);
  req.set_max_tokens(max_tokens);
  return req;
}

absl::StatusOr<std::vector<int32_t>> Complete(Cluster& cluster, const v1::GenerateRequest& req,
                                              v1::FinalInfo* final_info = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::CompleteResponse resp;
  grpc::Status s = cluster.router().Complete(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  if (final_info != nullptr) *final_info = resp.final();
  return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
}

// Single-process reference ids for `req` on the model at `path`.
std::vector<int32_t> LocalGreedy(Model& model, const std::vector<int32_t>& prompt, int max_tokens,
                                 std::vector<int32_t> stop_ids = {}, bool ignore_eos = false) {
  SamplingParams greedy;
  greedy.temperature = 0;
  StopCriteria stop;
  stop.max_tokens = max_tokens;
  stop.stop_token_ids = std::move(stop_ids);
  stop.ignore_eos = ignore_eos;
  auto r = Generate(model, prompt, greedy, stop);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->tokens : std::vector<int32_t>{};
}

std::string SynthModel(const std::string& name, int64_t kv_heads) {
  const std::string dir = testing_util::FreshDir(name);
  ModelConfig c = testing_util::TinyConfig(kv_heads);
  c.eos_token_ids = {2};
  EXPECT_TRUE(WriteSyntheticModel(c, dir, 21).ok());
  return dir;
}

std::vector<int32_t> Prompt(int n, int salt, int vocab) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 41 + salt * 13 + 5) % vocab);
  return p;
}

// One greedy request (EOS ignored) through the cluster: its ids equal `model`'s in this process,
// the wire carried exactly the format's KV bytes for the prompt plus one 80-byte header per
// layer (every layer of these small prompts fits one frame), over `transport`.
void ExpectSameGreedyIdsAndExactKvBytes(Cluster& cluster, Model& model,
                                        const std::vector<int32_t>& prompt, int max_tokens,
                                        const std::string& transport = "tcp") {
  v1::GenerateRequest req = Greedy(prompt, max_tokens);
  req.set_ignore_eos(true);
  v1::FinalInfo info;
  auto got = Complete(cluster, req, &info);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, LocalGreedy(model, prompt, max_tokens, {}, /*ignore_eos=*/true));
  const KvFormat format = model.kv_format();
  EXPECT_EQ(info.timings().kv_transfer_bytes(),
            static_cast<uint64_t>(format.bytes_per_token() * static_cast<int64_t>(prompt.size())) +
                static_cast<uint64_t>(format.num_layers) * 80u)
      << "KV bytes + one 80-byte header per layer";
  EXPECT_EQ(info.timings().kv_transport(), transport);
}

TEST(Disaggregation, Stories260KMatchesLlama2cForAllReferenceCases) {
  const std::string dir = testing_util::ModelsDir();
  std::ifstream in(dir + "/stories260K.reference.json");
  ASSERT_TRUE(in) << "missing " << dir << "/stories260K.reference.json";
  const nlohmann::json reference = nlohmann::json::parse(in);
  // llama2.c computes in f32: so does this cluster's KV cache.
  Cluster cluster({.model = dir + "/stories260K.bin", .worker_args = {"--kv-cache-dtype", "f32"}});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  for (const auto& c : reference["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    v1::GenerateRequest req = Greedy(prompt, 65);
    req.add_stop_token_ids(1);  // run.c ends a story at BOS only
    req.set_ignore_eos(true);
    v1::FinalInfo info;
    auto got = Complete(cluster, req, &info);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, c["greedy_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(info.usage().prompt_tokens(), static_cast<int>(prompt.size()));
    EXPECT_GT(info.timings().kv_transfer_bytes(), 0u);
  }
}

// MHA (4 KV heads), GQA (2) and MQA (1): token for token equal to one process, and the wire
// carries exactly the format's KV bytes plus one header per layer.
TEST(Disaggregation, SyntheticMhaGqaMqaEqualSingleProcess) {
  for (int64_t kv_heads : {4, 2, 1}) {
    SCOPED_TRACE(testing::Message() << "kv_heads=" << kv_heads);
    const std::string path = SynthModel("e2e_synth", kv_heads);
    CpuBackend backend(1, std::nullopt, true, testing_util::WorkerKvCacheDType());
    auto model = LoadModel(path, backend);
    ASSERT_TRUE(model.ok()) << model.status();
    Cluster cluster({.model = path});
    ASSERT_EQ(cluster.Start(), absl::OkStatus());
    for (int i = 0; i < 3; ++i) {
      ExpectSameGreedyIdsAndExactKvBytes(cluster, **model, Prompt(5 + 17 * i, i, 300), 12);
    }
  }
}

// MLA: only the latent (c_kv + k_pe) crosses the wire; decode runs the absorbed form on it.
TEST(Disaggregation, SyntheticDeepseekMlaModelsEqualSingleProcess) {
  for (const char* name : {"deepseek-v2-tiny.json", "deepseek-v3-tiny.json"}) {
    SCOPED_TRACE(name);
    std::ifstream in(testing_util::ConfigsDir() + "/" + name);
    ASSERT_TRUE(in) << name;
    auto config = ParseHfConfig(nlohmann::json::parse(in), name);
    ASSERT_TRUE(config.ok()) << config.status();
    const std::string path = testing_util::FreshDir("e2e_mla");
    ASSERT_TRUE(WriteSyntheticModel(*config, path, 4).ok());
    CpuBackend backend(1, std::nullopt, true, testing_util::WorkerKvCacheDType());
    auto model = LoadModel(path, backend);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_TRUE((*model)->kv_format().is_mla());
    Cluster cluster({.model = path});
    ASSERT_EQ(cluster.Start(), absl::OkStatus());
    const int vocab = static_cast<int>(config->vocab_size);
    for (int i = 0; i < 2; ++i) {
      ExpectSameGreedyIdsAndExactKvBytes(cluster, **model, Prompt(6 + 40 * i, i, vocab), 10);
    }
  }
}

// A tiny DeepSeek (MLA) whose latent rows (c_kv 48 + k_pe 16) are whole groups of 32, as the
// 8-bit KV caches need (the shipped tiny configs have rows of 40 and 80 values).
std::string SynthMlaModelFor8BitKv(const std::string& name) {
  std::ifstream in(testing_util::ConfigsDir() + "/deepseek-v3-tiny.json");
  EXPECT_TRUE(in);
  absl::StatusOr<ModelConfig> config = ParseHfConfig(nlohmann::json::parse(in), "deepseek");
  EXPECT_TRUE(config.ok()) << config.status();
  config->kv_lora_rank = 48;
  const std::string dir = testing_util::FreshDir(name);
  EXPECT_TRUE(WriteSyntheticModel(*config, dir, 4).ok());
  return dir;
}

// int8 and fp8 KV caches (an f16 scale per 32 values): token for token equal to one process with
// the same cache, and the wire carries exactly their bytes, 17/64 of f32's, plus one header per
// layer.
TEST(Disaggregation, EightBitKvCachesEqualSingleProcessAndShipOnlyTheirBytes) {
  const std::vector<std::string> models = {SynthModel("e2e_kv8_gqa", 2),
                                           SynthMlaModelFor8BitKv("e2e_kv8_mla")};
  for (const char* dtype_name : {"int8", "fp8"}) {
    const DType dtype = *ParseKvCacheDType(dtype_name);
    for (const std::string& path : models) {
      SCOPED_TRACE(testing::Message() << dtype_name << " " << path);
      CpuBackend backend(1, std::nullopt, true, dtype);
      auto model = LoadModel(path, backend);
      ASSERT_TRUE(model.ok()) << model.status();
      const KvFormat format = (*model)->kv_format();
      ASSERT_EQ(format.dtype, dtype);
      KvFormat f32 = format;
      f32.dtype = DType::kF32;
      EXPECT_EQ(format.bytes_per_token() * 64, f32.bytes_per_token() * 17);
      Cluster cluster({.model = path, .worker_args = {"--kv-cache-dtype", dtype_name}});
      ASSERT_EQ(cluster.Start(), absl::OkStatus());
      for (int i = 0; i < 2; ++i) {
        ExpectSameGreedyIdsAndExactKvBytes(cluster, **model, Prompt(9 + 30 * i, i, 300), 12);
      }
    }
  }
}

// Prefill and decode workers with different KV cache dtypes: the router serves the first worker's
// model and KV format, excludes the other (its fingerprint covers the format), and refuses every
// request before a byte moves with UNAVAILABLE naming both formats and the flag to fix. (A
// decode worker reached anyway answers FAILED_PRECONDITION: DecodeService::DoReserve.)
TEST(Disaggregation, WorkersWithDifferentKvCacheDTypesRefuseWithBothFormats) {
  const std::string path = SynthModel("e2e_kv_mismatch", 2);
  launch::ProcessOptions prefill;
  prefill.args = {"--kv-cache-dtype", "int8"};
  Cluster cluster({.model = path, .processes = {{"prefill0", prefill}}, .first_request = false});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto got = Complete(cluster, Greedy(Prompt(20, 1, 300), 4));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  for (const char* part : {"int8", "bf16", "excluded", "--kv-cache-dtype"}) {
    EXPECT_NE(got.status().message().find(part), std::string::npos) << part << ": " << got.status();
  }
}

// A worker told to use a transport it cannot run (a device link for a cache in host memory)
// stops at start and says why, instead of offering something else: each role in turn.
TEST(Disaggregation, ADeviceTransportOnACpuWorkerStopsItAtStartWithTheReason) {
  const std::string path = testing_util::ModelsDir() + "/stories260K.bin";
  for (const char* worker : {"prefill0", "decode0"}) {
    SCOPED_TRACE(worker);
    launch::ProcessOptions nccl;
    nccl.args = {"--kv-transport", "nccl"};
    Cluster cluster({.model = path, .processes = {{worker, nccl}}, .first_request = false});
    const absl::Status started = cluster.Start();
    EXPECT_FALSE(started.ok());
    EXPECT_NE(started.message().find("--kv-transport nccl: nccl moves KV between caches in GPU "
                                     "memory and this worker's is in cpu memory"),
              std::string::npos)
        << started;
  }
}

// The GPU tests (label gpu, with e2e: tests/CMakeLists.txt): workers with --device cuda, whose
// model and bf16 KV cache live in GPU memory. Each skips without the GPUs it needs; this is what
// a GPU machine runs of it.

// A synthetic GQA model and the tiny DeepSeek (MLA), written once per test.
std::vector<std::string> GpuTestModels() {
  std::ifstream in(testing_util::ConfigsDir() + "/deepseek-v2-tiny.json");
  EXPECT_TRUE(in);
  absl::StatusOr<ModelConfig> deepseek = ParseHfConfig(nlohmann::json::parse(in), "deepseek");
  EXPECT_TRUE(deepseek.ok()) << deepseek.status();
  const std::string mla = testing_util::FreshDir("e2e_gpu_mla");
  EXPECT_TRUE(deepseek.ok() && WriteSyntheticModel(*deepseek, mla, 4).ok());
  return {SynthModel("e2e_gpu_gqa", 2), mla};
}

// Greedy ids through a cluster whose prefill and decode workers run `prefill_args` and
// `decode_args` equal `reference`'s in one process, for GQA and MLA, over `transport` (what the
// timings say), with the bf16 cache's exact bytes plus one header per layer.
void ExpectGpuClusterEqualsOneProcess(Backend& reference, std::vector<std::string> prefill_args,
                                      std::vector<std::string> decode_args,
                                      const std::string& transport) {
  launch::ProcessOptions prefill, decode;
  prefill.args = std::move(prefill_args);
  decode.args = std::move(decode_args);
  for (const std::string& path : GpuTestModels()) {
    SCOPED_TRACE(path);
    auto model = LoadModel(path, reference);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_EQ((*model)->kv_format().dtype, DType::kBF16);
    Cluster cluster({.model = path, .processes = {{"prefill0", prefill}, {"decode0", decode}}});
    ASSERT_EQ(cluster.Start(), absl::OkStatus());
    for (int i = 0; i < 3; ++i) {
      ExpectSameGreedyIdsAndExactKvBytes(cluster, **model, Prompt(5 + 23 * i, i, 300), 12,
                                         transport);
    }
  }
}

// One GPU, both workers on it: over TCP staged through host memory (pack kernel, device-to-host
// copy, and back on the decode side), and over CUDA IPC (device to device through the sender's
// staging buffer; what auto picks for two GPU workers on one machine).
TEST(GpuDisaggregation, OneGpuOverStagedTcpAndCudaIpcEqualsSingleProcess) {
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      MakeBackend({.device = Device::kCuda, .ordinal = 0}, 1, CpuIsa::kX86_64_V2);
  if (!gpu.ok()) GTEST_SKIP() << gpu.status().message();
  for (const auto& [flag, transport] :
       {std::pair<std::string, std::string>{"tcp", "tcp (staged through host memory)"},
        {"cuda-ipc", "cuda-ipc"},
        {"auto", "cuda-ipc"}}) {
    SCOPED_TRACE(flag);
    const std::vector<std::string> args = {"--device", "cuda", "--kv-transport", flag};
    ExpectGpuClusterEqualsOneProcess(**gpu, args, args, transport);
  }
}

// NCCL between two GPUs: the prefill worker on cuda:0, the decode worker on cuda:1. Skips on a
// machine with one GPU (the next test covers NCCL there, where NCCL allows it).
TEST(GpuDisaggregation, NcclBetweenTwoGpusEqualsSingleProcess) {
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      MakeBackend({.device = Device::kCuda, .ordinal = 0}, 1, CpuIsa::kX86_64_V2);
  if (!gpu.ok()) GTEST_SKIP() << gpu.status().message();
  if (absl::StatusOr<std::unique_ptr<Backend>> second =
          MakeBackend({.device = Device::kCuda, .ordinal = 1}, 1, CpuIsa::kX86_64_V2);
      !second.ok()) {
    GTEST_SKIP() << "needs a second GPU: " << second.status().message();
  }
  ExpectGpuClusterEqualsOneProcess(**gpu, {"--device", "cuda:0", "--kv-transport", "nccl"},
                                   {"--device", "cuda:1", "--kv-transport", "nccl"}, "nccl");
}

// NCCL with both ranks on one GPU, which NCCL refuses ("Duplicate GPU detected") unless its
// build allows several ranks per GPU: skips on exactly that refusal, and otherwise must pass.
TEST(GpuDisaggregation, NcclOnOneGpuWhereNcclAllowsIt) {
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      MakeBackend({.device = Device::kCuda, .ordinal = 0}, 1, CpuIsa::kX86_64_V2);
  if (!gpu.ok()) GTEST_SKIP() << gpu.status().message();
  const std::string path = SynthModel("e2e_gpu_nccl_probe", 2);
  launch::ProcessOptions on_gpu;
  on_gpu.args = {"--device", "cuda", "--kv-transport", "nccl"};
  Cluster probe({.model = path,
                 .processes = {{"prefill0", on_gpu}, {"decode0", on_gpu}},
                 .first_request = false});
  ASSERT_EQ(probe.Start(), absl::OkStatus());
  absl::StatusOr<std::vector<int32_t>> got = Complete(probe, Greedy(Prompt(9, 1, 300), 2));
  if (!got.ok() && got.status().message().find("Duplicate GPU") != std::string::npos) {
    GTEST_SKIP() << "this NCCL refuses two ranks on one GPU: " << got.status().message();
  }
  ASSERT_TRUE(got.ok()) << got.status();
  probe.Stop(std::chrono::milliseconds(5000));
  ExpectGpuClusterEqualsOneProcess(**gpu, on_gpu.args, on_gpu.args, "nccl");
}

TEST(Disaggregation, ThirtyTwoConcurrentStreamsOnTwoByTwoWorkersAllCompleteAndFreeBlocks) {
  const std::string path = SynthModel("e2e_concurrent", 2);
  CpuBackend backend(1, std::nullopt, true, testing_util::WorkerKvCacheDType());
  auto model = LoadModel(path, backend);
  ASSERT_TRUE(model.ok());
  Cluster cluster({.model = path, .prefill_workers = 2, .decode_workers = 2});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  constexpr int kStreams = 32;
  std::vector<std::vector<int32_t>> prompts, expected(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    prompts.push_back(Prompt(3 + (i * 7) % 40, i, 300));
    expected[static_cast<size_t>(i)] = LocalGreedy(**model, prompts.back(), 8 + i % 5);
  }
  std::vector<std::future<absl::StatusOr<std::vector<int32_t>>>> results;
  for (int i = 0; i < kStreams; ++i) {
    results.push_back(
        std::async(std::launch::async, [&, i]() -> absl::StatusOr<std::vector<int32_t>> {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
          auto reader =
              cluster.router().Generate(&ctx, Greedy(prompts[static_cast<size_t>(i)], 8 + i % 5));
          std::vector<int32_t> ids;
          v1::GenerateResponse msg;
          bool saw_final = false;
          while (reader->Read(&msg)) {
            ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
            saw_final = saw_final || msg.has_final();
          }
          grpc::Status s = reader->Finish();
          if (!s.ok()) return absl::UnknownError(s.error_message());
          if (!saw_final) return absl::InternalError("stream ended without its final message");
          return ids;
        }));
  }
  for (int i = 0; i < kStreams; ++i) {
    auto got = results[static_cast<size_t>(i)].get();
    ASSERT_TRUE(got.ok()) << "stream " << i << ": " << got.status();
    EXPECT_EQ(*got, expected[static_cast<size_t>(i)]) << "stream " << i;
  }
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

// A model big enough that 230 decode steps take far longer than the deadline below.

TEST(Disaggregation, CancelAndDeadlineFreeEveryBlock) {
  const std::string path = MidSizeModel("e2e_cancel");
  Cluster cluster({.model = path});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest req = Greedy(Prompt(20, 1, 300), 200);
    req.set_ignore_eos(true);
    auto reader = cluster.router().Generate(&ctx, req);
    v1::GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << "after cancel:" << detail;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
    v1::GenerateRequest req = Greedy(Prompt(20, 2, 300), 230);
    req.set_ignore_eos(true);
    v1::CompleteResponse resp;
    const grpc::Status s = cluster.router().Complete(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  }
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << "after deadline:" << detail;
}

TEST(Disaggregation, PrefillWorkerKilledMidRequestFailsFastAndFreesTheReservation) {
  // The only prefill worker stops itself once layer 2's KV is queued (serving/fault_points.h):
  // killed there, mid-transfer, it leaves a half-filled reservation and nowhere to retry.
  launch::LocalClusterOptions options{.model = MidSizeModel("e2e_kill")};
  options.processes["prefill0"].env.push_back("PDSERVE_STOP_AT=prefill.layer_queued@2");
  options.first_request = false;  // the readiness request would reach the stop point
  Cluster cluster(std::move(options));
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto pending = std::async(std::launch::async,
                            [&] { return Complete(cluster, Greedy(Prompt(300, 3, 300), 8)); });
  const absl::StatusOr<bool> stopped =
      cluster.prefill_process(0).WaitStopped(std::chrono::seconds(30));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  ASSERT_TRUE(*stopped) << cluster.prefill_process(0).ExitDescription();
  cluster.prefill_process(0).Signal(SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  auto result = pending.get();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_LT(seconds, 5.0) << "the request should fail fast once its prefill worker is gone";
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

TEST(Disaggregation, MalformedRequestsAreInvalidArgumentWithAClearMessage) {
  const std::string path = SynthModel("e2e_bad", 2);
  Cluster cluster({.model = path});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  struct Case {
    std::string name;
    std::function<void(v1::GenerateRequest&)> edit;
  };
  const std::vector<Case> cases = {
      {"empty prompt", [](v1::GenerateRequest& r) { r.clear_prompt_token_ids(); }},
      {"prompt over the context",
       [](v1::GenerateRequest& r) {
         for (int i = 0; i < 300; ++i) r.add_prompt_token_ids(3);
       }},
      {"NaN temperature",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(std::nanf("")); }},
      {"negative temperature",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); }},
      {"negative top_p", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(-0.5f); }},
      {"max_tokens 0", [](v1::GenerateRequest& r) { r.set_max_tokens(0); }},
      {"huge max_tokens", [](v1::GenerateRequest& r) { r.set_max_tokens(1 << 30); }},
      {"unknown token id", [](v1::GenerateRequest& r) { r.add_prompt_token_ids(300); }},
      {"negative token id", [](v1::GenerateRequest& r) { r.add_prompt_token_ids(-4); }},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest req = Greedy({1, 2, 3}, 4);
    c.edit(req);
    grpc::ClientContext ctx;
    v1::CompleteResponse resp;
    const grpc::Status s = cluster.router().Complete(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_FALSE(s.error_message().empty()) << c.name;
  }
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

}  // namespace
}  // namespace pdserve
