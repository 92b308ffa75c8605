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
// cache->length() .. cache->length() + tokens.size() - 1; the cache's store must have been made
// with the model's kv_format().
struct SequenceInput {
  std::span<const int32_t> tokens;
  KvCache* cache = nullptr;
};

struct ForwardOptions {
  // Return logits for every new token (rows in batch order) instead of only the last of each
  // sequence.
  bool all_logits = false;
  // Called after layer `l`'s K/V of every sequence is in the caches: the hook the prefill
  // worker uses to ship a layer while later layers compute. A non-OK status abandons the pass
  // (Forward returns it; the caches' lengths are unchanged): how a cancelled prefill stops
  // between layers.
  std::function<absl::Status(int64_t layer)> on_layer_done;
};

// A causal language model bound to a backend. Forward passes over disjoint caches may not run
// concurrently on one model (the backend is single-threaded from the caller's view).
class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual Backend& backend() = 0;

  // The format of the KV cache this model reads and writes on its backend (the storage dtype
  // its kernels use, default block size). KvStores for this model are made with it.
  virtual KvFormat kv_format() const = 0;

  // Runs every sequence's new tokens (prefill: many; decode: one), reserving cache blocks as
  // needed and appending the new K/V to each cache. Returns host logits, [rows, vocab]
  // row-major, where rows is the number of sequences (or of new tokens with all_logits).
  // Invalid ids or positions past the model's context give InvalidArgument / OutOfRange, a
  // store without enough free blocks ResourceExhausted; on error no cache has grown.
  virtual absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceInput> batch,
                                                     const ForwardOptions& options = {}) = 0;
};

// The validated layout of one batched forward pass, shared by every model: token ids and
// positions of all new tokens in batch order, one AttentionSeq per sequence (block tables
// point into the caches), and the one KvStore all caches share.
struct BatchPlan {
  std::vector<int32_t> ids;
  std::vector<int32_t> positions;
  std::vector<AttentionSeq> seqs;
  KvStore* store = nullptr;
  int64_t rows() const { return static_cast<int64_t>(ids.size()); }
  // One new token per sequence: a decode step.
  bool is_decode_step() const { return ids.size() == seqs.size(); }
};

// Checks `batch` against the model (tokens present and in the vocabulary, caches of `format`
// from one store, positions within max_position_embeddings) and reserves the blocks every
// sequence needs. Errors as Model::Forward documents; call AppendBatch after the pass.
absl::StatusOr<BatchPlan> PlanBatch(const ModelConfig& config, const KvFormat& format,
                                    std::span<const SequenceInput> batch);
// Records the new tokens of every sequence in its cache once their K/V are stored.
void AppendBatch(std::span<const SequenceInput> batch);

// Loads a model for `backend`: a Hugging Face directory (config.json + model.safetensors or
// model.safetensors.index.json), a GGUF file (*.gguf, architecture "llama"; quantized matrices
// stay quantized where the backend keeps them, engine/weight_source.h) or a llama2.c checkpoint
// file (*.bin).
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, Backend& backend);

}  // namespace pdserve
