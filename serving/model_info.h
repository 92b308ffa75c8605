// What both workers share on top of the engine: translating between the protos and the
// engine's types, and the model's identity.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/generate.h"
#include "engine/kv_format.h"
#include "engine/model.h"
#include "pdserve/v1/generation.pb.h"

namespace pdserve::serving {

v1::KvFormatInfo ToProto(const KvFormat& format);

// A short hex digest of what must match between prefill and decode: architecture, dims, KV
// format and the bytes of the checkpoint files under `model_path` (config + weights).
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_path, const Model& model);

v1::ModelInfo MakeModelInfo(const Model& model, const std::string& fingerprint);

// A public request as the engine sees it. Unset fields take the API's defaults (SamplingParams
// and StopCriteria defaults: OpenAI/vLLM); nothing is validated here.
struct EngineRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StopCriteria stop;
};
EngineRequest FromProto(const v1::GenerateRequest& request);

}  // namespace pdserve::serving
