#include "engine/weight_source.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gguf/dequantize.h"
#include "gguf/ggml_blocks.h"
#include "kernels/cpu/cpu_kernels.h"
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

// Checks a checkpoint tensor's shape (in Hugging Face order) against what the config implies.
absl::Status CheckShape(const std::string& file, const std::string& tensor,
                        const std::vector<int64_t>& dims, const Shape& expected,
                        absl::string_view implied_by) {
  bool same = static_cast<int>(dims.size()) == expected.rank();
  for (int i = 0; same && i < expected.rank(); ++i) {
    same = dims[static_cast<size_t>(i)] == expected[i];
  }
  if (same) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor ", tensor, " has shape ",
                                                 ShapeString(dims), " but ", implied_by,
                                                 " implies ", expected.ToString()));
}

// Puts one checkpoint tensor on `backend` the way the backend keeps weights. A matrix stored as
// `stored` (bf16, f16, or a quantized row type) stays so when the backend keeps that type:
// copied from `raw` (bf16, f16) or repacked by `to_rows(uint8_t* dst)` (quantized). Anything else
// becomes f32 through `to_f32(float* dst)`. Both checkpoint formats load through here.
template <typename ToF32, typename ToRows>
absl::StatusOr<Tensor> PlaceWeight(Backend& backend, TensorSource::Use use, const Shape& shape,
                                   DType stored, std::span<const std::byte> raw, ToF32&& to_f32,
                                   ToRows&& to_rows) {
  Tensor host;
  const bool kept = use == TensorSource::Use::kMatrix && stored != DType::kF32 &&
                    backend.WeightDType(stored) == stored;
  if (kept && !IsQuantized(stored)) {  // bf16 or f16: the checkpoint's bytes
    host = Tensor::EmptyCpu(stored, shape);
    std::memcpy(host.data(), raw.data(), raw.size());
  } else if (kept) {
    host = Tensor::EmptyCpu(stored, shape);
    to_rows(host.data_as<uint8_t>());
  } else {
    host = Tensor::EmptyCpu(DType::kF32, shape);
    if (absl::Status s = to_f32(host.data_as<float>()); !s.ok()) return s;
  }
  if (backend.device() == Device::kCpu) return host;
  Tensor dev = backend.Allocate(host.dtype(), shape);
  backend.CopyFromHost(host.data(), dev);
  return dev;
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
  if (absl::Status st = CheckShape(file->path(), absl::StrCat("'", name, "'"), entry->shape,
                                   expected, "config.json");
      !st.ok()) {
    return st;
  }
  return PlaceWeight(
      backend, use, expected, entry->dtype.value_or(DType::kF32), entry->data,
      [&](float* dst) { return file->ReadF32(*entry, dst); }, [](uint8_t*) {});
}

std::string GgufTensorName(const std::string& hf_name) {
  static constexpr std::pair<absl::string_view, absl::string_view> kTop[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  static constexpr std::pair<absl::string_view, absl::string_view> kLayer[] = {
      {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  for (const auto& [hf, gguf] : kTop) {
    if (hf_name == hf) return std::string(gguf);
  }
  // model.layers.<N>.<module>.<weight|bias> -> blk.<N>.<gguf module>.<weight|bias>
  absl::string_view rest = hf_name;
  constexpr absl::string_view kPrefix = "model.layers.";
  if (!absl::StartsWith(rest, kPrefix)) return "";
  rest.remove_prefix(kPrefix.size());
  const size_t dot = rest.find('.');
  const size_t last_dot = rest.rfind('.');
  uint32_t layer = 0;
  if (dot == absl::string_view::npos || dot == last_dot ||
      !absl::SimpleAtoi(rest.substr(0, dot), &layer)) {
    return "";
  }
  const absl::string_view module = rest.substr(dot + 1, last_dot - dot - 1);
  const absl::string_view suffix = rest.substr(last_dot + 1);
  if (suffix != "weight" && suffix != "bias") return "";
  for (const auto& [hf, gguf] : kLayer) {
    if (module == hf) return absl::StrCat("blk.", layer, ".", gguf, ".", suffix);
  }
  return "";
}

absl::StatusOr<std::unique_ptr<GgufWeightSource>> GgufWeightSource::Open(const std::string& path) {
  auto file = GgufFile::Open(path);
  if (!file.ok()) return file.status();
  return std::make_unique<GgufWeightSource>(*std::move(file));
}

bool GgufWeightSource::Contains(const std::string& name) const {
  const std::string gguf_name = GgufTensorName(name);
  return !gguf_name.empty() && file_->FindTensor(gguf_name) != nullptr;
}

namespace {

// The quantized row type (kernels/tensor.h) a ggml type repacks into; nullopt for the float
// types and the quantized ones gguf/ggml_blocks.h does not unpack.
std::optional<DType> RowTypeOf(GgmlType type) {
  const std::optional<GgmlGroups> groups = GgmlGroupsOf(type);
  if (!groups) return std::nullopt;
  if (groups->group_size == 16) return DType::kQ8G16;
  return groups->code_bits == 4 ? DType::kQ4G32 : DType::kQ8G32;
}

// Repacks a quantized tensor, row by row, into `dtype` rows (RowTypeOf(t.type)) at dst: each
// ggml block unpacked to codes and per-group (d, m), exactly, then laid out as kernels/tensor.h
// describes. GgufFile checked that rows are whole blocks and that the data is their size.
void RepackRows(const GgufTensorInfo& t, DType dtype, uint8_t* dst) {
  const GgmlTypeTraits& traits = TraitsOf(t.type);
  const int64_t k = t.dims.empty() ? 0 : t.dims[0];
  const int64_t rows = k == 0 ? 0 : t.num_elements / k;
  const int64_t group = DTypeGroup(dtype);
  const int64_t block = traits.block_size, groups_per_block = block / group;
  const size_t row_bytes = DTypeBytes(dtype, k);
  const int64_t code_bytes = QuantCodeBytes(dtype, k);
  uint8_t codes[kMaxGgmlBlockElements];
  float d[kMaxGgmlBlockGroups], m[kMaxGgmlBlockGroups];
  const uint8_t* src = t.data.data();
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* out = dst + static_cast<size_t>(r) * row_bytes;
    auto* scales = reinterpret_cast<float*>(out + code_bytes);
    float* offsets = scales + k / group;
    for (int64_t b = 0; b < k / block; ++b, src += traits.block_bytes) {
      UnpackGgmlBlock(t.type, src, codes, d, m);
      for (int64_t g = 0; g < groups_per_block; ++g) {
        const int64_t at = b * groups_per_block + g;  // the group's index in the row
        scales[at] = d[g];
        offsets[at] = m[g];
        const uint8_t* c = codes + g * group;
        if (dtype == DType::kQ4G32) {
          for (int i = 0; i < 16; ++i) {
            out[at * 16 + i] = static_cast<uint8_t>(c[i] | (c[i + 16] << 4));
          }
        } else {
          std::memcpy(out + at * group, c, static_cast<size_t>(group));
        }
      }
    }
  }
}

// A GGUF tensor as f32: quantized ones (`rows_type`, RowTypeOf(t.type)) repacked and decoded by
// the CPU kernels dispatched for this machine (equal to gguf's reference decoder,
// tests/engine/gguf_model_test.cc), the float types through the reference; both after the same
// size checks.
absl::Status DequantizeTensor(const GgufTensorInfo& t, std::optional<DType> rows_type, float* dst) {
  if (!rows_type || t.dims.empty()) return DequantizeToF32(t.type, t.data, t.num_elements, dst);
  absl::StatusOr<int64_t> blocks = DequantizeBlockCount(t.type, t.data, t.num_elements);
  if (!blocks.ok()) return blocks.status();
  const int64_t k = t.dims[0];
  Tensor rows = Tensor::EmptyCpu(*rows_type, Shape{t.num_elements / k, k});
  RepackRows(t, *rows_type, rows.data_as<uint8_t>());
  BestCpuKernels().dequantize_rows(*rows_type, rows.data_as<uint8_t>(), rows.dim(0), k, dst);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tensor> GgufWeightSource::Load(const std::string& name, const Shape& expected,
                                              Backend& backend, Use use) const {
  const std::string gguf_name = GgufTensorName(name);
  const GgufTensorInfo* info = gguf_name.empty() ? nullptr : file_->FindTensor(gguf_name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(file_->source_name(), ": missing tensor '",
                     gguf_name.empty() ? name : absl::StrCat(gguf_name, "' ('", name, "')"),
                     "' (expected shape ", expected.ToString(), ")"));
  }
  const std::string tensor = absl::StrCat("'", gguf_name, "'");
  // GGUF lists dims innermost first: ne [in, out] is the row-major matrix [out, in].
  const std::vector<int64_t> dims(info->dims.rbegin(), info->dims.rend());
  if (absl::Status st = CheckShape(file_->source_name(), tensor, dims, expected, "the metadata");
      !st.ok()) {
    return st;
  }
  const std::optional<DType> rows_type = RowTypeOf(info->type);
  const DType stored = info->type == GgmlType::kBF16  ? DType::kBF16
                       : info->type == GgmlType::kF16 ? DType::kF16
                                                      : rows_type.value_or(DType::kF32);
  return PlaceWeight(
      backend, use, expected, stored, std::as_bytes(info->data),
      [&](float* dst) -> absl::Status {
        absl::Status s = DequantizeTensor(*info, rows_type, dst);
        if (s.ok()) return s;
        return absl::InvalidArgumentError(
            absl::StrCat(file_->source_name(), ": tensor ", tensor, ": ", s.message()));
      },
      [&](uint8_t* dst) { RepackRows(*info, stored, dst); });
}

Tensor WeightLoader::Load(const std::string& name, const Shape& shape) {
  return Load(name, shape,
              shape.rank() == 2 ? TensorSource::Use::kMatrix : TensorSource::Use::kVector);
}

Tensor WeightLoader::Load(const std::string& name, const Shape& shape, TensorSource::Use use) {
  if (!status_.ok()) return {};
  absl::StatusOr<Tensor> t = source_.Load(name, shape, backend_, use);
  if (!t.ok()) {
    status_ = t.status();
    return {};
  }
  return *std::move(t);
}

}  // namespace pdserve
