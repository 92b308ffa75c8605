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
enum class DType : uint8_t { kF32, kF16, kBF16 };

size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);  // "f32", "f16", "bf16"
std::optional<DType> ParseDType(std::string_view name);
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
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }

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
