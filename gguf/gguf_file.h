// Reading GGUF files (llama.cpp's single-file model format, versions 2 and 3).
//
// Layout, all little-endian: magic "GGUF", u32 version, u64 tensor count, u64 metadata count;
// the metadata key/value pairs (key: u64 length + bytes; u32 value type; value); one record per
// tensor (name, u32 n_dims, u64 dims innermost-first, u32 ggml type, u64 offset); padding to
// `general.alignment` (default 32); the data section, where each tensor's offset points.
//
// Every count, length, type, dimension and byte range is checked against the file before it is
// used, so a GgufFile that parsed is safe to read without further checks, and a hostile or
// truncated file costs at most memory proportional to its size. This component depends on
// nothing but Abseil: the router links it to read tokenizer metadata without the model code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* GgufTypeName(GgufType type);  // "uint8", ..., "float64"

// An array value. Numbers and bools are left in the file (`raw`: `size` little-endian elements,
// no copy: a 128k-entry score table stays 512 KiB); strings and nested arrays are decoded.
struct GgufArray {
  GgufType element_type = GgufType::kUint8;
  uint64_t size = 0;
  std::span<const uint8_t> raw;      // numeric and bool elements
  std::vector<std::string> strings;  // element_type == kString
  std::vector<GgufArray> arrays;     // element_type == kArray
};

// One metadata value. The alternative's index is its GgufType value, so
// `static_cast<GgufType>(value.index())` is the type the file declared.
using GgufValue = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, GgufArray, uint64_t, int64_t, double>;
inline GgufType TypeOf(const GgufValue& value) { return static_cast<GgufType>(value.index()); }

// Tensor element types, numbered as in ggml (gaps are types ggml has removed).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// How a ggml type stores elements: blocks of `block_size` elements in `block_bytes` bytes.
struct GgmlTypeTraits {
  GgmlType type;
  const char* name;  // "F32", "Q4_1", ...
  int64_t block_size;
  int64_t block_bytes;
};
// nullptr for numbers that are not a ggml type (or a removed one).
const GgmlTypeTraits* FindGgmlType(uint32_t type);
// Traits of a valid enumerator.
const GgmlTypeTraits& TraitsOf(GgmlType type);

// One tensor record, validated: known type, rows a whole number of blocks, and `data` inside
// the file's data section, aligned and overlapping no other tensor.
struct GgufTensorInfo {
  std::string name;
  // ggml's ne, innermost first: a matrix whose row-major shape is [out, in] has dims [in, out].
  std::vector<int64_t> dims;
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  int64_t num_elements = 0;
  std::span<const uint8_t> data;  // exactly the tensor's bytes
};

// A parsed GGUF file: metadata and tensor records, with the tensor bytes left where they are
// (in the mapping Open made, or in the caller's buffer for Parse).
// Thread-safety: immutable after construction; safe to read from many threads.
class GgufFile {
 public:
  // Maps `path` read-only and parses it. NotFound when the file is missing (other system errors
  // map from errno); InvalidArgument, naming the file and what is wrong, when it is malformed.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses a file already in memory, without copying: `bytes` must outlive the result.
  // `source_name` names the file in errors.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::span<const uint8_t> bytes,
                                                         std::string source_name);

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();  // unmaps what Open mapped; spans into the file dangle afterwards

  const std::string& source_name() const { return source_name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // Metadata, by key. The typed getters return nullopt (nullptr) when the key is absent or holds
  // another type; integers of any width convert to int64 (a uint64 above INT64_MAX does not),
  // float32 and float64 to double / float.
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;
  std::optional<int64_t> GetInt(std::string_view key) const;
  std::optional<double> GetFloat(std::string_view key) const;
  std::optional<bool> GetBool(std::string_view key) const;
  const std::string* GetString(std::string_view key) const;
  const GgufArray* GetArray(std::string_view key) const;
  const std::vector<std::string>* GetStringArray(std::string_view key) const;
  std::optional<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  std::optional<std::vector<float>> GetFloatArray(std::string_view key) const;

  // In file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  static absl::StatusOr<std::unique_ptr<GgufFile>> ParseUnchecked(std::span<const uint8_t> bytes,
                                                                  std::string source_name);

  std::string source_name_;
  void* mapping_ = nullptr;  // set by Open
  size_t mapping_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;  // name -> position in tensors_
};

// Integer elements of an array of any integer type as int64 (nullopt for other element types
// or a uint64 above INT64_MAX); float32/float64 elements as float.
std::optional<std::vector<int64_t>> IntElements(const GgufArray& array);
std::optional<std::vector<float>> FloatElements(const GgufArray& array);

}  // namespace pdserve
