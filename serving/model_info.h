// What both workers share on top of the engine: translating between the protos and the
// engine's types, and the model's identity.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/kv_format.h"
#include "engine/model.h"
#include "kernels/device_spec.h"
#include "pdserve/v1/generation.pb.h"
#include "pdserve/v1/worker.pb.h"

namespace pdserve::serving {

v1::KvFormatInfo ToProto(const KvFormat& format);

// A short hex digest of what must match between prefill and decode: architecture, dims, KV
// format and the bytes of the checkpoint files under `model_path` (config + weights).
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_path, const Model& model);

v1::ModelInfo MakeModelInfo(const Model& model, const std::string& fingerprint);

// A model loaded for a worker: its CPU backend, the model and its fingerprint.
struct ServedModel {
  DeviceSpec device;  // where the model and its KV cache live
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::string fingerprint;
};
// The model at `path` on `device` (MakeBackend). `cpu_isa` is the --cpu-isa flag ("" = the best
// this CPU supports; see kernels/cpu/cpu_kernels.h); the chosen kernels are logged once.
// InvalidArgument for an unknown name, FailedPrecondition for a level this CPU lacks or a CUDA
// device this build or machine lacks.
absl::StatusOr<ServedModel> LoadServedModel(const std::string& path, int threads,
                                            const std::string& cpu_isa, const DeviceSpec& device);

// For a model whose KV cache lives in GPU memory: a second backend of its device (its own
// stream), through which the decode worker's KV receiver writes frames into the cache
// (ReservedBlocksSink's host staging) while the model's backend computes. Null on the CPU.
absl::StatusOr<std::unique_ptr<Backend>> MakeKvStagingBackend(const ServedModel& served);

// Blocks for a worker's KV store: `kv_blocks` when > 0, else as many as `kv_cache_mb` MiB hold.
int64_t KvBlocksFor(const KvFormat& format, int64_t kv_blocks, int64_t kv_cache_mb);

// A worker's load report: its scheduler's counts and its KV store's blocks.
v1::WorkerLoad MakeWorkerLoad(const KvStore& store, int waiting, int running, bool draining);

// A worker request as the engine sees it.
struct EngineRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StopCriteria stop;
};
// The request as given (the worker protocol carries every parameter; no defaults are applied)
// once it passes ValidateRequest against `config`, and its request id is clean: INVALID_ARGUMENT
// naming the field otherwise.
absl::StatusOr<EngineRequest> FromProto(const v1::WorkerRequest& request,
                                        const ModelConfig& config);

}  // namespace pdserve::serving
