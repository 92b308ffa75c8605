#include "serving/model_info.h"

// XXH3 through libxxhash's run-time x86 dispatch: a checkpoint is hashed at start-up.
#include <xxh_x86dispatch.h>
#include <xxhash.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/generate.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/make_backend.h"
#include "spdlog/spdlog.h"

namespace pdserve::serving {

v1::KvFormatInfo ToProto(const KvFormat& f) {
  v1::KvFormatInfo p;
  p.set_kind(f.KindName());
  p.set_num_layers(f.num_layers);
  p.set_num_kv_heads(f.num_kv_heads);
  p.set_k_head_dim(f.k_head_dim);
  p.set_v_head_dim(f.v_head_dim);
  p.set_kv_lora_rank(f.kv_lora_rank);
  p.set_qk_rope_head_dim(f.qk_rope_head_dim);
  p.set_dtype(std::string(DTypeName(f.dtype)));
  p.set_tokens_per_block(f.tokens_per_block);
  p.set_bytes_per_token(f.bytes_per_token());
  p.set_description(f.ToString());
  return p;
}

absl::StatusOr<std::string> ModelFingerprint(const std::string& model_path, const Model& model) {
  namespace fs = std::filesystem;
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  const std::string header =
      absl::StrCat(model.config().ToHfJson().dump(), "|", model.kv_format().ToString());
  XXH3_64bits_update(state, header.data(), header.size());
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) {
    for (const auto& entry : fs::directory_iterator(model_path, ec)) {
      const std::string ext = entry.path().extension().string();
      if (ext == ".safetensors" || entry.path().filename() == "config.json") {
        files.push_back(entry.path());
      }
    }
  } else {
    files.push_back(model_path);
  }
  std::sort(files.begin(), files.end());
  std::vector<char> buf(1 << 20);
  for (const fs::path& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in)
      return absl::NotFoundError(absl::StrCat(file.string(), ": cannot read to fingerprint"));
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      XXH3_64bits_update(state, buf.data(), static_cast<size_t>(in.gcount()));
    }
  }
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return absl::StrFormat("%016x", digest);
}

v1::ModelInfo MakeModelInfo(const Model& model, const std::string& fingerprint) {
  v1::ModelInfo info;
  info.set_architecture(model.config().architecture);
  *info.mutable_kv_format() = ToProto(model.kv_format());
  info.set_max_context(model.config().max_position_embeddings);
  info.set_vocab_size(model.config().vocab_size);
  info.set_fingerprint(fingerprint);
  return info;
}

absl::StatusOr<ServedModel> LoadServedModel(const std::string& path, int threads,
                                            const std::string& cpu_isa, const DeviceSpec& device) {
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa(cpu_isa);
  if (!isa.ok()) return isa.status();
  spdlog::info("{}", DescribeCpuKernels(*isa));
  ServedModel served;
  served.device = device;
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(device, threads, *isa);
  if (!backend.ok()) return backend.status();
  served.backend = *std::move(backend);
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(path, *served.backend);
  if (!model.ok()) return model.status();
  served.model = *std::move(model);
  absl::StatusOr<std::string> fingerprint = ModelFingerprint(path, *served.model);
  if (!fingerprint.ok()) return fingerprint.status();
  served.fingerprint = *std::move(fingerprint);
  return served;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeKvStagingBackend(const ServedModel& served) {
  if (served.device.device == Device::kCpu) return std::unique_ptr<Backend>();
  // The CPU arguments are unused for a CUDA device.
  return MakeBackend(served.device, 1, CpuIsa::kX86_64_V2);
}

int64_t KvBlocksFor(const KvFormat& format, int64_t kv_blocks, int64_t kv_cache_mb) {
  if (kv_blocks > 0) return kv_blocks;
  return std::max<int64_t>(1, (kv_cache_mb << 20) / format.bytes_per_block());
}

v1::WorkerLoad MakeWorkerLoad(const KvStore& store, int waiting, int running, bool draining) {
  const KvPoolStats stats = store.pool().Stats();
  v1::WorkerLoad load;
  load.set_queue_depth(waiting);
  load.set_running_requests(running);
  load.set_kv_blocks_total(stats.total_blocks);
  load.set_kv_blocks_used(stats.used_blocks);
  load.set_kv_blocks_free(stats.available_blocks());
  load.set_kv_blocks_cached(stats.cached_blocks);
  load.set_tokens_per_block(store.format().tokens_per_block);
  load.set_draining(draining);
  return load;
}

absl::StatusOr<EngineRequest> FromProto(const v1::WorkerRequest& request,
                                        const ModelConfig& config) {
  // Workers log the id in every line about the request: the router sends a checked one, and a
  // direct caller's must be as clean (bounded, printable, no spaces).
  const std::string& id = request.request_id();
  if (id.size() > 128 || std::any_of(id.begin(), id.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f;
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id must be at most 128 printable ASCII bytes without spaces (got ",
                     id.size(), " bytes)"));
  }
  EngineRequest r;
  r.prompt.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  r.sampling.temperature = request.temperature();
  r.sampling.top_p = request.top_p();
  r.sampling.top_k = request.top_k();
  r.sampling.min_p = request.min_p();
  r.sampling.repetition_penalty = request.repetition_penalty();
  if (request.has_seed()) r.sampling.seed = request.seed();
  r.stop.max_tokens = request.max_tokens();
  r.stop.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  r.stop.ignore_eos = request.ignore_eos();
  if (absl::Status s = ValidateRequest(config, r.prompt, r.sampling, r.stop); !s.ok()) return s;
  return r;
}

}  // namespace pdserve::serving
