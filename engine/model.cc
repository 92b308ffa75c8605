#include "engine/model.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/deepseek_model.h"
#include "engine/llama2c.h"
#include "engine/llama_model.h"
#include "engine/weight_source.h"

namespace pdserve {

absl::StatusOr<BatchPlan> PlanBatch(const ModelConfig& config, const KvFormat& format,
                                    std::span<const SequenceInput> batch) {
  if (batch.empty()) return absl::InvalidArgumentError("forward pass with no sequences");
  BatchPlan plan;
  plan.seqs.resize(batch.size());
  // Validate everything before reserving anything.
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    if (in.tokens.empty() || in.cache == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " has no tokens or no cache"));
    }
    if (in.cache->format() != format) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, "'s KV cache is ",
                                                     in.cache->format().ToString(),
                                                     " but the model reads ", format.ToString()));
    }
    if (plan.store == nullptr) plan.store = &in.cache->store();
    if (plan.store != &in.cache->store()) {
      return absl::InvalidArgumentError("the sequences of one batch must share one KV store");
    }
    const int64_t start = in.cache->length();
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    if (start + n > config.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat("sequence ", s, " would reach position ", start + n,
                                                " but the model's context is ",
                                                config.max_position_embeddings, " tokens"));
    }
    plan.seqs[s].q_begin = plan.rows();
    plan.seqs[s].q_len = n;
    plan.seqs[s].start_pos = start;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t id = in.tokens[static_cast<size_t>(i)];
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
      }
      plan.ids.push_back(id);
      plan.positions.push_back(static_cast<int32_t>(start + i));
    }
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    KvCache& cache = *batch[s].cache;
    if (absl::Status st = cache.Reserve(cache.length() + plan.seqs[s].q_len); !st.ok()) return st;
    plan.seqs[s].block_table = cache.block_table();
  }
  return plan;
}

void AppendBatch(std::span<const SequenceInput> batch) {
  for (const SequenceInput& in : batch) in.cache->Append(in.tokens);
}

namespace {

absl::StatusOr<std::unique_ptr<Model>> LoadModelFile(const std::string& path, Backend& backend) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    auto config = LoadHfConfig((fs::path(path) / "config.json").string());
    if (!config.ok()) return config.status();
    if (config->is_mla()) {
      auto model = LoadDeepseekFromHf(path, *config, backend);
      if (!model.ok()) return model.status();
      return std::unique_ptr<Model>(*std::move(model));
    }
    return LoadLlamaFromHf(path, *config, backend);
  }
  if (fs::is_regular_file(path, ec)) {
    if (path.ends_with(".bin")) return LoadLlama2c(path, backend);
    if (path.ends_with(".gguf")) {
      auto source = GgufWeightSource::Open(path);
      if (!source.ok()) return source.status();
      auto config = ParseGgufConfig((*source)->file());
      if (!config.ok()) return config.status();
      return LoadLlama(**source, *config, backend);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(path,
                     ": unknown model file; pass a Hugging Face model directory, a GGUF file "
                     "(*.gguf) or a llama2.c checkpoint (*.bin)"));
  }
  return absl::NotFoundError(absl::StrCat(path, ": no such model file or directory"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, Backend& backend) {
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModelFile(path, backend);
  if (!model.ok()) return model;
  if (absl::Status s = (*model)->kv_format().CheckStorable(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  }
  return model;
}

}  // namespace pdserve
