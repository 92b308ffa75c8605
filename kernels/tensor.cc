#include "kernels/tensor.h"

#include <sys/mman.h>

#include <algorithm>
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
    case DType::kQ4G32:
    case DType::kQ8G32:
    case DType::kQ8G16:
    case DType::kI8:
    case DType::kF8E4M3:
      return 0;
  }
  return 0;
}

bool IsQuantized(DType dtype) { return DTypeSize(dtype) == 0 && !IsScaledKv(dtype); }

size_t DTypeBytes(DType dtype, int64_t numel) {
  if (IsScaledKv(dtype)) {  // codes, then an f16 scale per group
    return static_cast<size_t>(numel + numel / DTypeGroup(dtype) * int64_t{sizeof(uint16_t)});
  }
  if (!IsQuantized(dtype)) return static_cast<size_t>(numel) * DTypeSize(dtype);
  // Codes, then an f32 scale and an f32 offset per group.
  return static_cast<size_t>(QuantCodeBytes(dtype, numel) +
                             numel / DTypeGroup(dtype) * 2 * int64_t{sizeof(float)});
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kQ4G32:
      return "q4g32";
    case DType::kQ8G32:
      return "q8g32";
    case DType::kQ8G16:
      return "q8g16";
    case DType::kI8:
      return "int8";
    case DType::kF8E4M3:
      return "fp8";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "f32" || name == "float32" || name == "F32") return DType::kF32;
  if (name == "f16" || name == "float16" || name == "F16") return DType::kF16;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::kBF16;
  return std::nullopt;
}

std::optional<DType> ParseKvCacheDType(std::string_view name) {
  if (name == "int8") return DType::kI8;
  if (name == "fp8" || name == "fp8_e4m3") return DType::kF8E4M3;
  return ParseDType(name);
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
  // Large tensors (weights, KV pools) go on 2 MiB pages where the kernel allows it: streaming a
  // weight matrix on 4 KiB pages costs a TLB miss, and a hardware prefetcher stop, every 4 KiB.
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t bytes = DTypeBytes(dtype, shape.numel());
  const size_t align = bytes >= kHugePage ? kHugePage : 64;
  const size_t rounded = std::max((bytes + align - 1) / align * align, align);
  void* p = std::aligned_alloc(align, rounded);
  if (p == nullptr) throw std::bad_alloc();
  if (align == kHugePage) (void)madvise(p, rounded, MADV_HUGEPAGE);  // a hint: may be refused
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
  char* base = static_cast<char*>(data_) + DTypeBytes(dtype_, begin * row_elems);
  return Tensor(storage_, base, device_, dtype_, out);
}

Tensor Tensor::Reshape(Shape shape) const {
  return Tensor(storage_, data_, device_, dtype_, shape);
}

}  // namespace pdserve
