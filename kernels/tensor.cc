#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace pdserve {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "f32" || name == "float32" || name == "F32") return DType::kF32;
  if (name == "f16" || name == "float16" || name == "F16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::kBF16;
  return std::nullopt;
}

std::string_view DeviceName(Device device) { return device == Device::kCpu ? "cpu" : "cuda"; }

Shape::Shape(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) {
    if (rank_ < kMaxRank) dims_[static_cast<size_t>(rank_++)] = d;
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& other) const {
  if (rank_ != other.rank_) return false;
  for (int i = 0; i < rank_; ++i) {
    if (dims_[static_cast<size_t>(i)] != other.dims_[static_cast<size_t>(i)]) return false;
  }
  return true;
}

std::string Shape::ToString() const {
  std::string s = "[";
  for (int i = 0; i < rank_; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[static_cast<size_t>(i)]);
  }
  return s + "]";
}

Tensor::Tensor(std::shared_ptr<void> storage, void* data, Device device, DType dtype, Shape shape)
    : storage_(std::move(storage)), data_(data), device_(device), dtype_(dtype), shape_(shape) {}

Tensor Tensor::EmptyCpu(DType dtype, Shape shape) {
  size_t bytes = static_cast<size_t>(shape.numel()) * DTypeSize(dtype);
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::shared_ptr<void> storage(p, [](void* q) { std::free(q); });
  return Tensor(std::move(storage), p, Device::kCpu, dtype, shape);
}

Tensor Tensor::ZerosCpu(DType dtype, Shape shape) {
  Tensor t = EmptyCpu(dtype, shape);
  std::memset(t.data(), 0, t.bytes());
  return t;
}

Tensor Tensor::Rows(int64_t begin, int64_t count) const {
  int64_t row_elems = shape_.rank() > 0 && shape_[0] > 0 ? numel() / shape_[0] : 0;
  Shape s = shape_;
  Shape out;
  switch (shape_.rank()) {
    case 1:
      out = Shape{count};
      break;
    case 2:
      out = Shape{count, s[1]};
      break;
    case 3:
      out = Shape{count, s[1], s[2]};
      break;
    default:
      out = Shape{count, s[1], s[2], s[3]};
      break;
  }
  char* base =
      static_cast<char*>(data_) + static_cast<size_t>(begin * row_elems) * DTypeSize(dtype_);
  return Tensor(storage_, base, device_, dtype_, out);
}

Tensor Tensor::Reshape(Shape shape) const {
  return Tensor(storage_, data_, device_, dtype_, shape);
}

}  // namespace pdserve
