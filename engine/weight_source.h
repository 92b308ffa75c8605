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

}  // namespace pdserve
