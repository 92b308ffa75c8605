// Synthetic models: a Hugging Face-layout checkpoint with deterministic random weights for any
// supported config (Llama family, DeepSeek-V2/V3 with MLA and MoE), so every architecture and
// cache format is testable without downloads.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/model_config.h"

namespace pdserve {

// Writes `out_dir`/config.json and `out_dir`/model.safetensors (in config.torch_dtype).
// Each tensor's values depend only on (seed, tensor name), so equal inputs give equal bytes.
// Creates out_dir if needed; overwrites those two files.
absl::Status WriteSyntheticModel(const ModelConfig& config, const std::string& out_dir,
                                 uint64_t seed);

}  // namespace pdserve
