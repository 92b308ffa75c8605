// A tiny GGUF writer for tests: builds a file in memory, valid by default, with the pieces
// exposed so tests can also build malformed files byte by byte.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "gguf/gguf_file.h"

namespace pdserve::testing_util {

// Little-endian bytes appended one field at a time.
struct GgufBytes {
  std::vector<uint8_t> bytes;

  template <typename T>
  void Put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void PutString(std::string_view s) {
    Put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void PutBytes(const std::vector<uint8_t>& b) { bytes.insert(bytes.end(), b.begin(), b.end()); }
  void PadTo(uint64_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(0);
  }
};

// The GGUF type id of a C++ scalar type.
template <typename T>
constexpr GgufType GgufTypeFor() {
  if constexpr (std::is_same_v<T, uint8_t>) return GgufType::kUint8;
  if constexpr (std::is_same_v<T, int8_t>) return GgufType::kInt8;
  if constexpr (std::is_same_v<T, uint16_t>) return GgufType::kUint16;
  if constexpr (std::is_same_v<T, int16_t>) return GgufType::kInt16;
  if constexpr (std::is_same_v<T, uint32_t>) return GgufType::kUint32;
  if constexpr (std::is_same_v<T, int32_t>) return GgufType::kInt32;
  if constexpr (std::is_same_v<T, float>) return GgufType::kFloat32;
  if constexpr (std::is_same_v<T, bool>) return GgufType::kBool;
  if constexpr (std::is_same_v<T, uint64_t>) return GgufType::kUint64;
  if constexpr (std::is_same_v<T, int64_t>) return GgufType::kInt64;
  if constexpr (std::is_same_v<T, double>) return GgufType::kFloat64;
}

// Collects metadata and tensors; Finish() lays them out as a GGUF file: header, metadata,
// tensor records, padding to the alignment, then each tensor's data padded to the alignment.
class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3, uint64_t alignment = 32)
      : version_(version), alignment_(alignment) {}

  template <typename T>
  void Add(std::string_view key, T value) {
    Key(key, GgufTypeFor<T>());
    if constexpr (std::is_same_v<T, bool>) {
      kv_.Put<uint8_t>(value ? 1 : 0);
    } else {
      kv_.Put(value);
    }
  }
  void AddString(std::string_view key, std::string_view value) {
    Key(key, GgufType::kString);
    kv_.PutString(value);
  }
  template <typename T>
  void AddArray(std::string_view key, const std::vector<T>& values) {
    Key(key, GgufType::kArray);
    kv_.Put(static_cast<uint32_t>(GgufTypeFor<T>()));
    kv_.Put<uint64_t>(values.size());
    for (const T& v : values) kv_.Put(v);
  }
  void AddStringArray(std::string_view key, const std::vector<std::string>& values) {
    Key(key, GgufType::kArray);
    kv_.Put(static_cast<uint32_t>(GgufType::kString));
    kv_.Put<uint64_t>(values.size());
    for (const std::string& v : values) kv_.PutString(v);
  }
  // A value whose bytes the caller encodes (nested arrays, malformed values).
  void AddRaw(std::string_view key, uint32_t type, const std::vector<uint8_t>& value) {
    Key(key, static_cast<GgufType>(type));
    kv_.PutBytes(value);
  }

  // `dims` innermost first, as GGUF stores them; `data` already encoded in `type`.
  void AddTensor(std::string name, std::vector<uint64_t> dims, GgmlType type,
                 std::vector<uint8_t> data) {
    tensors_.push_back(
        {std::move(name), std::move(dims), static_cast<uint32_t>(type), std::move(data)});
  }
  void AddF32Tensor(std::string name, std::vector<uint64_t> dims, const std::vector<float>& v) {
    std::vector<uint8_t> data(v.size() * 4);
    std::memcpy(data.data(), v.data(), data.size());
    AddTensor(std::move(name), std::move(dims), GgmlType::kF32, std::move(data));
  }

  std::vector<uint8_t> Finish() const {
    GgufBytes out;
    out.PutBytes({'G', 'G', 'U', 'F'});
    out.Put(version_);
    out.Put<uint64_t>(tensors_.size());
    out.Put<uint64_t>(kv_count_);
    out.PutBytes(kv_.bytes);
    uint64_t offset = 0;
    for (const Tensor& t : tensors_) {
      out.PutString(t.name);
      out.Put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) out.Put(d);
      out.Put(t.type);
      out.Put(offset);
      offset += (t.data.size() + alignment_ - 1) / alignment_ * alignment_;
    }
    out.PadTo(alignment_);
    for (const Tensor& t : tensors_) {
      out.PutBytes(t.data);
      out.PadTo(alignment_);
    }
    return out.bytes;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> data;
  };
  void Key(std::string_view key, GgufType type) {
    kv_.PutString(key);
    kv_.Put(static_cast<uint32_t>(type));
    ++kv_count_;
  }

  uint32_t version_;
  uint64_t alignment_;
  GgufBytes kv_;
  uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace pdserve::testing_util
