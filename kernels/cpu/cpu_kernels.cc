#include "kernels/cpu/cpu_kernels.h"

#include <cpuid.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pdserve {

// One definition per compilation of simd_kernels.cc.
namespace level2 {
const CpuKernels& Kernels();
}
namespace level3 {
const CpuKernels& Kernels();
}
namespace level4 {
const CpuKernels& Kernels();
}

namespace {

struct Cpuid {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Cpuid Query(unsigned leaf, unsigned subleaf = 0) {
  Cpuid r;
  if (__get_cpuid_count(leaf, subleaf, &r.a, &r.b, &r.c, &r.d) == 0) return {};
  return r;
}

bool Bit(unsigned reg, int bit) { return (reg >> bit) & 1u; }

// XCR0: which register states the OS saves on a context switch (without it the instructions
// exist but the registers would be corrupted, so the CPU must be treated as lacking them).
uint64_t ReadXcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

CpuFeatures Detect() {
  CpuFeatures f;
  const Cpuid l1 = Query(1);
  const Cpuid l7 = Query(7, 0);
  const Cpuid l7_1 = Query(7, 1);
  const Cpuid ext = Query(0x80000001);

  // x86-64-v2: CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSE4.1, SSE4.2, SSSE3.
  f.x86_64_v2 = Bit(l1.c, 13) && Bit(ext.c, 0) && Bit(l1.c, 23) && Bit(l1.c, 0) && Bit(l1.c, 19) &&
                Bit(l1.c, 20) && Bit(l1.c, 9);

  const bool osxsave = Bit(l1.c, 27);
  const uint64_t xcr0 = osxsave ? ReadXcr0() : 0;
  const bool os_ymm = (xcr0 & 0x6) == 0x6;              // SSE and AVX state
  const bool os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM0-15 upper, ZMM16-31

  // x86-64-v3: AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT (ABM), MOVBE, OSXSAVE.
  f.x86_64_v3 = f.x86_64_v2 && os_ymm && Bit(l1.c, 28) && Bit(l7.b, 5) && Bit(l7.b, 3) &&
                Bit(l7.b, 8) && Bit(l1.c, 29) && Bit(l1.c, 12) && Bit(ext.c, 5) && Bit(l1.c, 22);
  // x86-64-v4: AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL.
  f.x86_64_v4 = f.x86_64_v3 && os_zmm && Bit(l7.b, 16) && Bit(l7.b, 30) && Bit(l7.b, 28) &&
                Bit(l7.b, 17) && Bit(l7.b, 31);
  f.avx512_vnni = f.x86_64_v4 && Bit(l7.c, 11);
  f.avx512_bf16 = f.x86_64_v4 && Bit(l7_1.a, 5);
  f.avx_vnni = f.x86_64_v3 && Bit(l7_1.a, 4);

  char brand[49] = {};
  if (Query(0x80000000).a >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) {
      const Cpuid r = Query(0x80000002 + i);
      std::memcpy(brand + 16 * i, &r, 16);
    }
  }
  f.brand = std::string(absl::StripAsciiWhitespace(brand));
  return f;
}

// Everything pdserve knows about one level, in one row.
struct Level {
  CpuIsa isa;
  const char* names[4];  // the canonical name first, then accepted aliases (nullptr: none)
  const char* summary;
  bool CpuFeatures::*supported;
  const CpuKernels& (*kernels)();
};

constexpr Level kLevels[] = {
    {CpuIsa::kX86_64_V2,
     {"x86-64-v2", "v2", "sse4.2", "sse4_2"},
     "SSE4.2",
     &CpuFeatures::x86_64_v2,
     level2::Kernels},
    {CpuIsa::kX86_64_V3,
     {"x86-64-v3", "v3", "avx2", nullptr},
     "AVX2+FMA",
     &CpuFeatures::x86_64_v3,
     level3::Kernels},
    {CpuIsa::kX86_64_V4,
     {"x86-64-v4", "v4", "avx512", "avx-512"},
     "AVX-512",
     &CpuFeatures::x86_64_v4,
     level4::Kernels},
};

const Level& LevelOf(CpuIsa isa) {
  for (const Level& level : kLevels) {
    if (level.isa == isa) return level;
  }
  std::abort();  // not an enumerator
}

bool Supports(CpuIsa isa) { return DetectCpuFeatures().*LevelOf(isa).supported; }

}  // namespace

const char* CpuIsaName(CpuIsa isa) { return LevelOf(isa).names[0]; }

absl::StatusOr<CpuIsa> ParseCpuIsa(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  for (const Level& level : kLevels) {
    for (const char* alias : level.names) {
      if (alias != nullptr && n == alias) return level.isa;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown CPU ISA '", name,
                   "': use x86-64-v2 (sse4.2), x86-64-v3 (avx2) or x86-64-v4 (avx512)"));
}

const CpuFeatures& DetectCpuFeatures() {
  static const CpuFeatures features = Detect();
  return features;
}

std::vector<CpuIsa> SupportedCpuIsas() {
  std::vector<CpuIsa> out;
  for (const Level& level : kLevels) {
    if (Supports(level.isa)) out.push_back(level.isa);
  }
  return out;
}

CpuIsa BestCpuIsa() {
  static const CpuIsa best = [] {
    const std::vector<CpuIsa> all = SupportedCpuIsas();
    if (all.empty()) {
      // The binary itself is compiled for x86-64-v2; reaching here means it already ran
      // baseline instructions successfully, so only the CPUID report is odd (some emulators).
      std::fprintf(stderr,
                   "pdserve: CPUID does not report x86-64-v2; using the baseline kernels\n");
      return CpuIsa::kX86_64_V2;
    }
    return all.back();
  }();
  return best;
}

absl::Status CheckCpuIsaSupported(CpuIsa isa) {
  // The binary itself is x86-64-v2, so that level is always there.
  if (isa == CpuIsa::kX86_64_V2 || Supports(isa)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("this CPU (", DetectCpuFeatures().brand, ") does not support ", CpuIsaName(isa),
                   " (", LevelOf(isa).summary, "); the best it supports is ",
                   CpuIsaName(BestCpuIsa()), ": pick that or a lower level, or leave it unset"));
}

absl::StatusOr<CpuIsa> ResolveCpuIsa(const std::string& flag) {
  if (flag.empty() || absl::AsciiStrToLower(flag) == "auto") return BestCpuIsa();
  absl::StatusOr<CpuIsa> isa = ParseCpuIsa(flag);
  if (!isa.ok()) return isa.status();
  if (absl::Status s = CheckCpuIsaSupported(*isa); !s.ok()) return s;
  return *isa;
}

std::string DescribeCpuKernels(CpuIsa isa) {
  const CpuFeatures& f = DetectCpuFeatures();
  std::vector<std::string> supported;
  for (CpuIsa i : SupportedCpuIsas()) supported.push_back(CpuIsaName(i));
  const char* vnni =
      f.avx512_vnni ? (f.avx_vnni ? "avx512, avx" : "avx512") : (f.avx_vnni ? "avx" : "none");
  return absl::StrCat(
      "CPU kernels ", CpuIsaName(isa), " (", LevelOf(isa).summary, ", ",
      CpuKernelsFor(isa).f32_lanes, " f32 lanes) on ", f.brand.empty() ? "an unnamed CPU" : f.brand,
      "; supported: ", supported.empty() ? "none reported" : absl::StrJoin(supported, " "),
      "; VNNI: ", vnni, "; KV checksum: libxxhash x86 dispatch");
}

const CpuKernels& CpuKernelsFor(CpuIsa isa) {
  if (absl::Status s = CheckCpuIsaSupported(isa); !s.ok()) {
    std::fprintf(stderr, "pdserve: %s\n", std::string(s.message()).c_str());
    std::abort();
  }
  return LevelOf(isa).kernels();
}

GemmQFn BestGemmQ(const CpuKernels& kernels) {
  return kernels.gemm_q_vnni != nullptr && DetectCpuFeatures().avx512_vnni ? kernels.gemm_q_vnni
                                                                           : kernels.gemm_q;
}

const CpuKernels& BestCpuKernels() {
  static const CpuKernels& best = CpuKernelsFor(BestCpuIsa());
  return best;
}

}  // namespace pdserve
