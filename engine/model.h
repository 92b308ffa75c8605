// The model interface the generation loop and the workers run, and the loader that picks the
// right model for a path.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"
#include "kernels/backend.h"

namespace pdserve {

// New tokens of one sequence in a batched forward pass. They take positions
// cache->length() .. cache->length() + tokens.size() - 1.
struct SequenceInput {
  std::span<const int32_t> tokens;
  KvCache* cache = nullptr;
};

struct ForwardOptions {
  // Return logits for every new token (rows in batch order) instead of only the last of each
  // sequence.
  bool all_logits = false;
  // Called after layer `l`'s K/V of every sequence is in the caches: the hook the prefill
  // worker uses to ship a layer while later layers compute.
  std::function<void(int64_t layer)> on_layer_done;
};

// A causal language model bound to a backend. Forward passes over disjoint caches may not run
// concurrently on one model (the backend is single-threaded from the caller's view).
class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual Backend& backend() = 0;

  // Runs every sequence's new tokens (prefill: many; decode: one), appends their K/V to each
  // cache and advances it. Returns host logits, [rows, vocab] row-major, where rows is the
  // number of sequences (or of new tokens with all_logits). Invalid ids or a cache without room
  // give InvalidArgument / OutOfRange and leave the caches unchanged.
  virtual absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceInput> batch,
                                                     const ForwardOptions& options = {}) = 0;

  // An empty cache for one sequence of up to `capacity` tokens.
  virtual std::unique_ptr<KvCache> NewKvCache(int64_t capacity) = 0;
};

// Loads a model for `backend`: a Hugging Face directory (config.json + model.safetensors or
// model.safetensors.index.json) or a llama2.c checkpoint file (*.bin).
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, Backend& backend);

}  // namespace pdserve
