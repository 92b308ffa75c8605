// Single-process prefill and decode throughput of the CPU engine. Prints figures; asserts none.
//
//   pdserve-bench-engine [--quick] [--threads N] [--cpu-isa NAME|all] [--json PATH]
//   pdserve-bench-engine --model PATH [--prompt-tokens N] [--gen-tokens N] [--streams N,...]
//                        [--threads N] [--cpu-isa NAME|all] [--json PATH]
//
// Models: stories260K (../shared/models), a synthetic ~100M-parameter GQA model, a synthetic
// SmolLM2-135M-shaped model (the default model's shape), and a small synthetic DeepSeek-V3 (MLA
// + MoE). Decode is memory-bound, so each decode figure is also shown
// as the weight bytes it streams per second (for MoE: the experts one token uses) and as a
// fraction of the machine's read bandwidth measured in the same run.
//
// --cpu-isa picks the CPU backend's compiled kernel level (x86-64-v2/v3/v4, default the best this
// CPU runs); "all" runs every model once per supported level, one level after another, then
// prints each figure per level beside its ratio to the best level's. --json writes the figures
// (prefill and decode tok/s per model and level) for scripts (bench/compare-native.sh).
//
// --model measures one given model file (anything LoadModel reads, e.g. a GGUF) instead: one
// warm-up request, then one timed greedy request of --prompt-tokens (default 128) prompt tokens
// and --gen-tokens (default 128) decode steps (--quick changes nothing there); --json then holds
// the figures "prefill" and "decode". --streams 1,4,16,64 adds batched decode: that many
// sequences decoding together (one forward pass per step), aggregate tok/s and its ratio to one
// stream's. For bench/llama-cpp-compare.sh, which runs it once per
// round and takes medians. A file that cannot be loaded exits 1 with "error: cannot load PATH: "
// and the loader's message.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "bench/cpu_report.h"
#include "bench/memory_bandwidth.h"
#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/device_spec.h"
#include "nlohmann/json.hpp"

namespace pdserve {
namespace {

// Bytes of weights one decode step streams: every matrix except an untied input embedding
// (only one row of it is read) and the routed experts a token does not use, at the dtype the
// backend stores.
double WeightBytesPerToken(const ModelConfig& c, const Backend& backend) {
  const int64_t vectors = (2 * c.num_layers + 1) * c.hidden_size;
  int64_t matrices = c.NumParameters() - vectors;
  if (!c.tie_word_embeddings) matrices -= c.vocab_size * c.hidden_size;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    matrices -= (c.moe.n_routed_experts - c.moe.num_experts_per_tok) * 3 * c.hidden_size *
                c.moe.moe_intermediate_size;
  }
  return static_cast<double>(matrices) *
         static_cast<double>(DTypeSize(backend.WeightDType(c.torch_dtype)));
}

struct Figures {
  double prefill_tps = 0;
  double decode_tps = 0;
};

// Best of `reps` runs of one greedy request: prompt_len tokens in, decode_len tokens out.
Figures Measure(Model& model, int prompt_len, int decode_len, int reps) {
  std::vector<int32_t> prompt;
  for (int i = 0; i < prompt_len; ++i) {
    prompt.push_back(static_cast<int32_t>((i * 131 + 7) % model.config().vocab_size));
  }
  SamplingParams greedy;
  greedy.temperature = 0;
  StopCriteria stop;
  stop.max_tokens = decode_len + 1;
  stop.ignore_eos = true;
  Figures best;
  for (int r = 0; r < reps; ++r) {
    auto result = Generate(model, prompt, greedy, stop);
    if (!result.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(result.status().message()).c_str());
      std::exit(1);
    }
    best.prefill_tps = std::max(best.prefill_tps, prompt_len / result->prefill_seconds);
    best.decode_tps = std::max(
        best.decode_tps, static_cast<double>(result->tokens.size() - 1) / result->decode_seconds);
  }
  return best;
}

// Prints one row and appends its prefill and decode tok/s to `figures`.
void Report(const std::string& name, Model& model, int threads, int prompt_len, int decode_len,
            int reps, double bandwidth_gbs, std::vector<bench::Figure>& figures) {
  const Figures f = Measure(model, prompt_len, decode_len, reps);
  const double weights_gbs =
      f.decode_tps * WeightBytesPerToken(model.config(), model.backend()) / 1e9;
  std::printf("%-28s %8.1fM %7d %8d %14.1f %8d %13.1f %9.1f %6.2f\n", name.c_str(),
              static_cast<double>(model.config().NumParameters()) / 1e6, threads, prompt_len,
              f.prefill_tps, decode_len, f.decode_tps, weights_gbs, weights_gbs / bandwidth_gbs);
  std::fflush(stdout);
  figures.push_back({name + " prefill", "tok/s", f.prefill_tps});
  figures.push_back({name + " decode", "tok/s", f.decode_tps});
}

// Aggregate decode tok/s of `streams` sequences decoding together, one Forward per step for all
// of them (as a decode worker batches): each first prefilled with its own prompt_len-token
// prompt, then `steps` timed greedy steps.
double BatchedDecodeTps(Model& model, int streams, int prompt_len, int steps) {
  const ModelConfig& c = model.config();
  const KvFormat format = model.kv_format();
  KvStore store(model.backend(), format,
                streams * KvStore::BlocksFor(format, int64_t{prompt_len} + steps + 1));
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<std::vector<int32_t>> next(static_cast<size_t>(streams));
  for (int s = 0; s < streams; ++s) {
    caches.push_back(std::make_unique<KvCache>(store));
    for (int i = 0; i < prompt_len; ++i) {
      next[static_cast<size_t>(s)].push_back(
          static_cast<int32_t>((i * 131 + s * 17 + 7) % c.vocab_size));
    }
  }
  auto step = [&] {
    std::vector<SequenceInput> batch;
    for (int s = 0; s < streams; ++s)
      batch.push_back({next[static_cast<size_t>(s)], caches[static_cast<size_t>(s)].get()});
    auto logits = model.Forward(batch);
    if (!logits.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(logits.status().message()).c_str());
      std::exit(1);
    }
    const auto vocab = static_cast<size_t>(c.vocab_size);
    for (size_t s = 0; s < next.size(); ++s) {
      const float* row = logits->data() + s * vocab;
      next[s] = {static_cast<int32_t>(std::max_element(row, row + vocab) - row)};
    }
  };
  step();  // the prompts (one prefill batch), untimed
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(streams) * steps / seconds;
}

// --model: per kernel level, loads the file, warms up (a prefill and one decode step, so that
// first-touch page faults and thread start-up stay out of the figures, as llama-bench's warm-up
// run does) and times one request.
int RunModelFile(const bench::BenchArgs& args) {
  bench::PrintBuildHeader(args.isas);
  const DType kv_dtype = args.kv_cache_dtype.value_or(DeviceSpec{}.kv_cache_dtype);
  std::printf(
      "pdserve engine benchmark: CPU backend, %d threads, model %s (quantized matrices kept "
      "quantized: integer dot products on 8-bit activations), %s KV cache, one warm-up request "
      "then one timed\n",
      args.threads, args.model_path.c_str(), std::string(DTypeName(kv_dtype)).c_str());
  std::vector<bench::IsaRun> runs;
  for (CpuIsa isa : args.isas) {
    CpuBackend backend(args.threads, isa, true, kv_dtype);
    if (args.isas.size() > 1) std::printf("\n%s\n", DescribeCpuKernels(isa).c_str());
    const auto load_start = std::chrono::steady_clock::now();
    auto model = LoadModel(args.model_path, backend);
    if (!model.ok()) {
      std::fprintf(stderr, "error: cannot load %s: %s\n", args.model_path.c_str(),
                   std::string(model.status().message()).c_str());
      return 1;
    }
    const double load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    Measure(**model, args.prompt_tokens, 1, 1);
    const Figures f = Measure(**model, args.prompt_tokens, args.gen_tokens, 1);
    std::printf("%9s %7s %8s %14s %8s %13s\n", "load s", "threads", "prompt", "prefill tok/s",
                "decode", "decode tok/s");
    std::printf("%9.2f %7d %8d %14.1f %8d %13.1f\n", load_seconds, args.threads, args.prompt_tokens,
                f.prefill_tps, args.gen_tokens, f.decode_tps);
    std::fflush(stdout);
    runs.push_back({isa, {{"prefill", "tok/s", f.prefill_tps}, {"decode", "tok/s", f.decode_tps}}});
    if (!args.streams.empty()) {
      std::printf(
          "batched decode: %d-token prompts, %d steps; aggregate tok/s and its ratio to "
          "one stream's, measured in this run\n",
          args.prompt_tokens, args.gen_tokens);
      std::printf("%9s %14s %14s %10s\n", "streams", "agg tok/s", "tok/s/stream", "x 1 stream");
      double one = 0;
      for (int streams : args.streams) {
        const double tps = BatchedDecodeTps(**model, streams, args.prompt_tokens, args.gen_tokens);
        if (one == 0)
          one = streams == 1 ? tps
                             : BatchedDecodeTps(**model, 1, args.prompt_tokens, args.gen_tokens);
        std::printf("%9d %14.1f %14.1f %10.2f\n", streams, tps, tps / streams, tps / one);
        std::fflush(stdout);
        runs.back().figures.push_back(
            {"decode " + std::to_string(streams) + " streams", "tok/s", tps});
      }
    }
  }
  return bench::FinishReport(args, "engine-model", {}, runs);
}

ModelConfig SynthShape(int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads,
                       int64_t vocab) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = true;
  // bf16, as most published checkpoints: the CPU backend keeps bf16 matrices in memory (bf16
  // GEMV/GEMM, f32 accumulation and activations), so decode streams 2 bytes per weight.
  c.torch_dtype = DType::kBF16;
  return c;
}

// A small DeepSeek-V3: MLA with a query LoRA and YaRN, one dense layer then MoE layers of 16
// experts (top-4 within 2 of 4 groups, noaux_tc) plus a shared expert.
ModelConfig DeepseekV3Shape() {
  auto c = ParseHfConfig(nlohmann::json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 512, "intermediate_size": 1408,
    "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
    "q_lora_rank": 192, "kv_lora_rank": 128, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32,
    "v_head_dim": 64, "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
    "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2, "vocab_size": 8192,
    "max_position_embeddings": 4096, "torch_dtype": "bfloat16",
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 1024,
                     "mscale": 1.0, "mscale_all_dim": 1.0}})"),
                         "deepseek-v3-bench");
  if (!c.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(c.status().message()).c_str());
    std::exit(1);
  }
  return *c;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  using namespace pdserve;
  const std::optional<bench::BenchArgs> args =
      bench::ParseBenchArgs(argc, argv, /*accept_model=*/true);
  if (!args.has_value()) return 2;
  if (!args->model_path.empty()) return RunModelFile(*args);
  const bool quick = args->quick;
  const int threads = args->threads;
  const std::vector<CpuIsa>& isas = args->isas;
  const DType kv_dtype = args->kv_cache_dtype.value_or(DeviceSpec{}.kv_cache_dtype);
  bench::PrintBuildHeader(isas);
  std::printf(
      "pdserve engine benchmark: CPU backend, %d threads, f32 activations (synthetic models: "
      "bf16 weights; stories260K: f32), %s KV cache, best of %d runs\n",
      threads, std::string(DTypeName(kv_dtype)).c_str(), quick ? 1 : 3);
  const double bandwidth = bench::MeasureReadBandwidthGBs(threads);
  std::printf("memory read bandwidth measured now, %d threads: %.1f GB/s\n", threads, bandwidth);

  struct Synthetic {
    const char* name;
    ModelConfig config;
  };
  const Synthetic models[] = {
      {"synthetic-100M-GQA(12/4)", SynthShape(768, 2048, 12, 12, 4, 32000)},
      {"SmolLM2-135M-shape(9/3)", SynthShape(576, 1536, 30, 9, 3, 49152)},
      {"DeepSeek-V3-tiny(MLA+MoE)", DeepseekV3Shape()},
  };
  const std::string stories = std::string(PDSERVE_DEFAULT_MODELS_DIR) + "/stories260K.bin";
  // Each synthetic checkpoint is written once (into its own directory) and loaded once per level.
  const auto dir = std::filesystem::temp_directory_path() / "pdserve-bench-engine";
  std::filesystem::remove_all(dir);  // a checkpoint left half-written by an interrupted run
  std::vector<bench::IsaRun> runs;
  for (CpuIsa isa : isas) {
    CpuBackend backend(threads, isa, true, kv_dtype);
    if (isas.size() > 1) std::printf("\n%s\n", DescribeCpuKernels(isa).c_str());
    std::printf("%-28s %9s %7s %8s %14s %8s %13s %9s %6s\n", "model", "params", "threads", "prompt",
                "prefill tok/s", "decode", "decode tok/s", "wt GB/s", "/bw");
    runs.push_back({isa, {}});
    std::vector<bench::Figure>& figures = runs.back().figures;
    if (std::filesystem::exists(stories)) {
      auto model = LoadModel(stories, backend);
      if (!model.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
        return 1;
      }
      Report("stories260K", **model, threads, quick ? 64 : 256, quick ? 32 : 200, quick ? 1 : 3,
             bandwidth, figures);
    } else {
      std::printf("stories260K: not found at %s (skipped)\n", stories.c_str());
    }
    if (quick) continue;
    for (size_t m = 0; m < std::size(models); ++m) {
      const std::string path = (dir / std::to_string(m)).string();
      if (!std::filesystem::exists(path)) {
        if (absl::Status st = WriteSyntheticModel(models[m].config, path, 0); !st.ok()) {
          std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
          return 1;
        }
      }
      auto model = LoadModel(path, backend);
      if (!model.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
        return 1;
      }
      Report(models[m].name, **model, threads, 512, 64, 3, bandwidth, figures);
    }
  }
  std::filesystem::remove_all(dir);
  return bench::FinishReport(*args, "engine", {{"memory read", "GB/s", bandwidth}}, runs);
}
