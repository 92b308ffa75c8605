#include "kernels/make_backend.h"

#include <gtest/gtest.h>

#if PDSERVE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace pdserve {
namespace {

TEST(ParseDevice, AcceptsCpuCudaAndCudaOrdinal) {
  ASSERT_TRUE(ParseDevice("cpu").ok());
  EXPECT_EQ(ParseDevice("cpu")->device, Device::kCpu);
  EXPECT_EQ(ParseDevice("cuda")->device, Device::kCuda);
  EXPECT_EQ(ParseDevice("cuda")->ordinal, 0);
  EXPECT_EQ(ParseDevice("cuda:3")->device, Device::kCuda);
  EXPECT_EQ(ParseDevice("cuda:3")->ordinal, 3);
}

TEST(ParseDevice, RefusesAnythingElseNamingTheForms) {
  for (const char* bad : {"", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1x", "cuda:x", " cpu",
                          "cuda:99999999999"}) {
    SCOPED_TRACE(bad);
    absl::StatusOr<DeviceSpec> spec = ParseDevice(bad);
    ASSERT_FALSE(spec.ok());
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find("cpu, cuda or cuda:N"), std::string::npos);
  }
}

TEST(MakeBackend, CpuGivesTheCpuBackend) {
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      MakeBackend(DeviceSpec{Device::kCpu, 0}, 1, BestCpuIsa());
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->device(), Device::kCpu);
}

// Without a usable device (or without CUDA in this build) the answer says why; with one, the
// backend is a CUDA backend.
TEST(MakeBackend, CudaGivesTheCudaBackendOrSaysWhyNot) {
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      MakeBackend(DeviceSpec{Device::kCuda, 0}, 1, BestCpuIsa());
#if PDSERVE_WITH_CUDA
  if (CudaBackend::DeviceAvailable(0)) {
    ASSERT_TRUE(backend.ok()) << backend.status();
    EXPECT_EQ((*backend)->device(), Device::kCuda);
    return;
  }
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(backend.status().message().find("no usable CUDA device 0"), std::string::npos);
#else
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(backend.status().message().find("built without CUDA"), std::string::npos);
#endif
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace pdserve
