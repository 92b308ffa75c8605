// Test suites that run once per x86-64 kernel level (kernels/cpu/cpu_kernels.h): derive the
// fixture from PerCpuIsaTest, write TEST_P, and instantiate with
// PDSERVE_INSTANTIATE_PER_CPU_ISA(Fixture). Every level gets its own test (named ..._x86_64_v3
// and so on); one this CPU lacks is skipped with a message that says so, never passed.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <string>

#include "kernels/cpu/cpu_kernels.h"

namespace pdserve {

// Failure messages name the level, not "1-byte object <02>" (found by argument-dependent lookup).
inline void PrintTo(CpuIsa isa, std::ostream* os) { *os << CpuIsaName(isa); }

class PerCpuIsaTest : public testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    if (const absl::Status s = CheckCpuIsaSupported(GetParam()); !s.ok()) {
      GTEST_SKIP() << "this CPU lacks " << CpuIsaName(GetParam()) << ": " << s.message();
    }
  }
  // The level's kernels (SetUp has skipped a level this CPU lacks).
  const CpuKernels& K() const { return CpuKernelsFor(GetParam()); }
};

inline std::string CpuIsaTestName(const testing::TestParamInfo<CpuIsa>& info) {
  std::string name = CpuIsaName(info.param);
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

}  // namespace pdserve

#define PDSERVE_INSTANTIATE_PER_CPU_ISA(fixture)                                    \
  INSTANTIATE_TEST_SUITE_P(                                                         \
      AllLevels, fixture,                                                           \
      testing::Values(::pdserve::CpuIsa::kX86_64_V2, ::pdserve::CpuIsa::kX86_64_V3, \
                      ::pdserve::CpuIsa::kX86_64_V4),                               \
      ::pdserve::CpuIsaTestName)
