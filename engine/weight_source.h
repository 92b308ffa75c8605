// Finds a Hugging Face checkpoint's tensors by name across one or many safetensors shards.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"
#include "kernels/backend.h"

namespace pdserve {

// The weights of a model directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json`. Files stay mapped while this object lives.
class WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& dir);

  bool Contains(const std::string& name) const { return index_.contains(name); }
  // What a tensor is used as: matrices (Linear/Embed operands) may stay in a 16-bit dtype when
  // the backend keeps them so; everything else (norms, biases) is f32.
  enum class Use { kMatrix, kVector };

  // Loads tensor `name` onto `backend`, checking its shape against `expected`.
  // Errors name the file and the tensor: missing, wrong shape, or an unsupported dtype.
  absl::StatusOr<Tensor> Load(const std::string& name, const Shape& expected, Backend& backend,
                              Use use) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsEntry*>> index_;
};

// Loads a model's tensors one after another onto a backend, keeping the first error: after a
// failure, later loads return empty tensors without reading, so a loader is a list of names
// and shapes followed by one status() check.
class WeightLoader {
 public:
  WeightLoader(const WeightSource& source, Backend& backend) : source_(source), backend_(backend) {}

  // Rank-2 shapes load as matrices (which may stay 16-bit), others as f32 vectors.
  Tensor Load(const std::string& name, const Shape& shape);
  Tensor Load(const std::string& name, const Shape& shape, WeightSource::Use use);

  const WeightSource& source() const { return source_; }
  Backend& backend() const { return backend_; }
  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }

 private:
  const WeightSource& source_;
  Backend& backend_;
  absl::Status status_;
};

}  // namespace pdserve
