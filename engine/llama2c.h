// Loader for llama2.c "legacy" checkpoints (e.g. stories260K.bin).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model.h"

namespace pdserve {

// Reads a llama2.c checkpoint: a 7 x int32 header (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; vocab negative = untied classifier) then f32 tensors.
// The checkpoint rotates consecutive pairs, so the model uses RopeStyle::kInterleaved.
absl::StatusOr<std::unique_ptr<Model>> LoadLlama2c(const std::string& path, Backend& backend);

// Reads and validates only the header of a llama2.c checkpoint and returns its config (f32
// weights, interleaved RoPE, eos ids {1, 2}); the tensors are not read or size-checked.
absl::StatusOr<ModelConfig> ReadLlama2cConfig(const std::string& path);

}  // namespace pdserve
