#include "engine/weight_source.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pdserve {
namespace {

namespace fs = std::filesystem;

std::string ShapeString(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Shard file names listed by the index, in first-seen order.
absl::StatusOr<std::vector<std::string>> ReadShardIndex(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
      !j["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a JSON object with a \"weight_map\" object"));
  }
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [tensor, file] : j["weight_map"].items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": weight_map entry for '", tensor, "' is not a file name"));
    }
    const std::string name = file.get<std::string>();
    // Shards live next to the index; refuse paths that would read elsewhere.
    if (name.empty() || name.find('/') != std::string::npos || name == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": shard name '", name, "' for tensor '", tensor,
                       "' must be a plain file name in the model directory"));
    }
    if (seen.insert(name).second) shards.push_back(name);
  }
  return shards;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> WeightSource::Open(const std::string& dir) {
  auto source = std::unique_ptr<WeightSource>(new WeightSource());
  source->dir_ = dir;
  std::vector<std::string> shards;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(fs::path(dir) / "model.safetensors")) {
    shards = {"model.safetensors"};
  } else if (fs::exists(index_path)) {
    auto listed = ReadShardIndex(index_path.string());
    if (!listed.ok()) return listed.status();
    shards = *std::move(listed);
  } else {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no model.safetensors or model.safetensors.index.json in this directory"));
  }
  for (const std::string& shard : shards) {
    auto file = SafetensorsFile::Open((fs::path(dir) / shard).string());
    if (!file.ok()) return file.status();
    for (const SafetensorsEntry& e : (*file)->entries()) {
      if (!source->index_.emplace(e.name, std::make_pair(file->get(), &e)).second) {
        return absl::InvalidArgumentError(
            absl::StrCat((*file)->path(), ": tensor '", e.name, "' also appears in another shard"));
      }
    }
    source->files_.push_back(*std::move(file));
  }
  return source;
}

absl::StatusOr<Tensor> WeightSource::Load(const std::string& name, const Shape& expected,
                                          Backend& backend, Use use) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor '", name, "' (expected shape ",
                                            expected.ToString(), ")"));
  }
  const auto& [file, entry] = it->second;
  bool same = static_cast<int>(entry->shape.size()) == expected.rank();
  for (int i = 0; same && i < expected.rank(); ++i) {
    same = entry->shape[static_cast<size_t>(i)] == expected[i];
  }
  if (!same) {
    return absl::InvalidArgumentError(
        absl::StrCat(file->path(), ": tensor '", name, "' has shape ", ShapeString(entry->shape),
                     " but config.json implies ", expected.ToString()));
  }
  Tensor host;
  if (use == Use::kMatrix && entry->dtype == DType::kBF16 &&
      backend.WeightDType(DType::kBF16) == DType::kBF16) {
    host = Tensor::EmptyCpu(DType::kBF16, expected);
    std::memcpy(host.data(), entry->data.data(), entry->data.size());
  } else {
    host = Tensor::EmptyCpu(DType::kF32, expected);
    if (absl::Status s = file->ReadF32(*entry, host.data_as<float>()); !s.ok()) return s;
  }
  if (backend.device() == Device::kCpu) return host;
  Tensor dev = backend.Allocate(host.dtype(), expected);
  backend.CopyFromHost(host.data(), dev);
  return dev;
}

Tensor WeightLoader::Load(const std::string& name, const Shape& shape) {
  return Load(name, shape,
              shape.rank() == 2 ? WeightSource::Use::kMatrix : WeightSource::Use::kVector);
}

Tensor WeightLoader::Load(const std::string& name, const Shape& shape, WeightSource::Use use) {
  if (!status_.ok()) return {};
  absl::StatusOr<Tensor> t = source_.Load(name, shape, backend_, use);
  if (!t.ok()) {
    status_ = t.status();
    return {};
  }
  return *std::move(t);
}

}  // namespace pdserve
