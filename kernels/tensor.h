// Device-tagged tensors: the unit of data the model hands to a compute backend.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace pdserve {

// Where a tensor's memory lives. Kernels only ever see tensors of their own device.
enum class Device : uint8_t { kCpu, kCuda };

// Element types for storage. CPU compute is always f32; f16/bf16 are storage formats.
//
// The q* types are quantized weight rows, kept as a checkpoint's integer codes (GGUF's Q4_0,
// Q4_K, Q8_0, ... repacked at load, gguf/ggml_blocks.h): each row of k values is split into
// groups of G, and each group has an f32 scale d and offset m with value = d * code + m. A row
// is laid out as its k codes (one per byte; for q4, two per byte: in each group of 32, byte i
// holds code i in its low nibble and code i + 16 in its high one), then its k / G scales, then
// its k / G offsets. Codes are unsigned; signed formats fold their zero point into m.
//   q4g32: 4-bit codes, G = 32 (Q4_0, Q4_1, Q4_K)      0.75 bytes per value
//   q8g32: 8-bit codes, G = 32 (Q8_0, Q5_0, Q5_1, Q5_K) 1.25 bytes per value
//   q8g16: 8-bit codes, G = 16 (Q6_K)                   1.5 bytes per value
//
// int8 and fp8 are KV cache rows (a paged pool's row: one token's K, V or MLA latent), scaled
// per group of 32 values so that one outlier costs only its own group's precision: a row of k
// values is its k signed codes (int8, |code| <= 127; or fp8 e4m3, |value| <= 448), then its
// k / 32 f16 scales, value = scale * code. 1.0625 bytes per value: 3.76x fewer than f32.
enum class DType : uint8_t { kF32, kF16, kBF16, kQ4G32, kQ8G32, kQ8G16, kI8, kF8E4M3 };

// Bytes per value of a float type; 0 for the quantized row types (use DTypeBytes).
size_t DTypeSize(DType dtype);
// Bytes that `numel` values take; for a quantized or scaled type, numel must be whole groups.
size_t DTypeBytes(DType dtype, int64_t numel);
// The quantized weight row types (q4g32, q8g32, q8g16).
bool IsQuantized(DType dtype);
// The scaled 8-bit KV cache types (int8, fp8).
constexpr bool IsScaledKv(DType dtype) { return dtype == DType::kI8 || dtype == DType::kF8E4M3; }
// The dtypes a KV cache may be stored in: the float types, int8 and fp8.
constexpr bool IsKvCacheDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 || IsScaledKv(dtype);
}
// Values per group of a quantized or scaled type (32 or 16); 1 for a float type.
constexpr int64_t DTypeGroup(DType dtype) {
  return dtype == DType::kQ4G32 || dtype == DType::kQ8G32 || IsScaledKv(dtype) ? 32
         : dtype == DType::kQ8G16                                              ? 16
                                                                               : 1;
}
// Bytes of the codes of `n` values of a quantized type: where a row's scales start.
constexpr int64_t QuantCodeBytes(DType dtype, int64_t n) {
  return dtype == DType::kQ4G32 ? n / 2 : n;
}
// "f32", "f16", "bf16", "q4g32", "q8g32", "q8g16", "int8", "fp8"
std::string_view DTypeName(DType dtype);
// The float types only (a config's torch_dtype is never quantized rows).
std::optional<DType> ParseDType(std::string_view name);
// A KV cache dtype: a float type, "int8", or "fp8" (also "fp8_e4m3").
std::optional<DType> ParseKvCacheDType(std::string_view name);
std::string_view DeviceName(Device device);

// Up to four dimensions, row-major.
class Shape {
 public:
  static constexpr int kMaxRank = 4;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t numel() const;
  bool operator==(const Shape& other) const;
  std::string ToString() const;  // e.g. "[2, 64]"

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

// A contiguous, row-major view of typed memory on one device. Copies are cheap and share the
// underlying storage (reference counted); a default-constructed Tensor is empty.
// Thread-safety: like a pointer; concurrent reads are fine, writers must coordinate.
class Tensor {
 public:
  Tensor() = default;
  // Views memory owned by `storage` (may be null for non-owning views of caller memory).
  Tensor(std::shared_ptr<void> storage, void* data, Device device, DType dtype, Shape shape);

  // Allocates uninitialized, 64-byte aligned host memory.
  static Tensor EmptyCpu(DType dtype, Shape shape);
  // Allocates zeroed host memory.
  static Tensor ZerosCpu(DType dtype, Shape shape);

  bool empty() const { return data_ == nullptr; }
  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t bytes() const { return DTypeBytes(dtype_, numel()); }

  // View of rows [begin, begin + count) along dimension 0.
  Tensor Rows(int64_t begin, int64_t count) const;
  // Same memory, new shape with the same number of elements.
  Tensor Reshape(Shape shape) const;

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Device device_ = Device::kCpu;
  DType dtype_ = DType::kF32;
  Shape shape_;
};

}  // namespace pdserve
