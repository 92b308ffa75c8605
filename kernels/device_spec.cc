#include "kernels/device_spec.h"

#include <charconv>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::StatusOr<DeviceSpec> ParseDevice(const std::string& flag) {
  if (flag == "cpu") return DeviceSpec{Device::kCpu, 0};
  if (flag == "cuda") return DeviceSpec{Device::kCuda, 0};
  constexpr std::string_view kCudaPrefix = "cuda:";
  if (flag.starts_with(kCudaPrefix)) {
    const char* begin = flag.data() + kCudaPrefix.size();
    const char* end = flag.data() + flag.size();
    int ordinal = -1;
    const auto [ptr, ec] = std::from_chars(begin, end, ordinal);
    if (ec == std::errc() && ptr == end && begin != end && ordinal >= 0) {
      return DeviceSpec{Device::kCuda, ordinal};
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--device must be cpu, cuda or cuda:N with N a CUDA device ordinal (0, 1, ...); got '", flag,
      "'"));
}

absl::StatusOr<DType> ParseKvCacheDTypeFlag(const std::string& flag) {
  if (std::optional<DType> dtype = ParseKvCacheDType(flag)) return *dtype;
  return absl::InvalidArgumentError(absl::StrCat(
      "--kv-cache-dtype must be bf16, f16, f32, fp8 (e4m3, also fp8_e4m3) or int8; got '", flag,
      "'"));
}

}  // namespace pdserve
