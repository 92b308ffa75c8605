// Where a model's tensors come from: one interface, by Hugging Face tensor name, implemented for
// Hugging Face safetensors checkpoints and for GGUF files, so each model's loader is written
// once.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"
#include "gguf/gguf_file.h"
#include "kernels/backend.h"

namespace pdserve {

// A checkpoint's tensors, named as in Hugging Face checkpoints ("model.layers.0.mlp.up_proj
// .weight") with Hugging Face shapes (matrices [out_features, in_features], row-major).
// Implementations keep their files mapped while they live; Load is safe to call from one
// thread at a time per backend.
class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // What a tensor is used as: matrices (Linear/Embed operands) may stay in a 16-bit dtype when
  // the backend keeps them so; everything else (norms, biases) is f32.
  enum class Use { kMatrix, kVector };

  virtual bool Contains(const std::string& name) const = 0;
  // Loads tensor `name` onto `backend`, checking its shape against `expected`.
  // Errors name the file and the tensor: missing, wrong shape, or an unsupported dtype.
  virtual absl::StatusOr<Tensor> Load(const std::string& name, const Shape& expected,
                                      Backend& backend, Use use) const = 0;
};

// The weights of a Hugging Face model directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json`.
class WeightSource final : public TensorSource {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& dir);

  bool Contains(const std::string& name) const override { return index_.contains(name); }
  absl::StatusOr<Tensor> Load(const std::string& name, const Shape& expected, Backend& backend,
                              Use use) const override;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsEntry*>> index_;
};

// The weights of a llama.cpp GGUF file, under their Hugging Face names (token_embd.weight is
// model.embed_tokens.weight, blk.N.attn_q.weight is model.layers.N.self_attn.q_proj.weight, ...).
// Quantized matrices stay quantized where the backend keeps them (Backend::WeightDType; the CPU
// backend does): each ggml block is repacked, exactly, into the backend's quantized row types
// (gguf/ggml_blocks.h, kernels/tensor.h). Otherwise, and for vectors, they are dequantized to
// f32 at load. Tensors load as stored: llama.cpp's converter permutes the rows of Q and K per
// head for interleaved RoPE, so a model loaded from GGUF must use RopeStyle::kInterleaved
// (ParseGgufConfig sets it).
class GgufWeightSource final : public TensorSource {
 public:
  explicit GgufWeightSource(std::unique_ptr<GgufFile> file) : file_(std::move(file)) {}
  static absl::StatusOr<std::unique_ptr<GgufWeightSource>> Open(const std::string& path);

  const GgufFile& file() const { return *file_; }
  bool Contains(const std::string& name) const override;
  absl::StatusOr<Tensor> Load(const std::string& name, const Shape& expected, Backend& backend,
                              Use use) const override;

 private:
  std::unique_ptr<GgufFile> file_;
};

// The GGUF name of a Hugging Face Llama-family tensor name; empty when it has none.
std::string GgufTensorName(const std::string& hf_name);

// Loads a model's tensors one after another onto a backend, keeping the first error: after a
// failure, later loads return empty tensors without reading, so a loader is a list of names
// and shapes followed by one status() check.
class WeightLoader {
 public:
  WeightLoader(const TensorSource& source, Backend& backend) : source_(source), backend_(backend) {}

  // Rank-2 shapes load as matrices (which may stay 16-bit), others as f32 vectors.
  Tensor Load(const std::string& name, const Shape& shape);
  Tensor Load(const std::string& name, const Shape& shape, TensorSource::Use use);

  const TensorSource& source() const { return source_; }
  Backend& backend() const { return backend_; }
  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }

 private:
  const TensorSource& source_;
  Backend& backend_;
  absl::Status status_;
};

}  // namespace pdserve
