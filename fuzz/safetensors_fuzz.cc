// libFuzzer target: SafetensorsFile::Parse on arbitrary bytes, then what a loader does with a
// file that parsed (lookup by name, every tensor byte, conversion to f32), checking the
// parser's promise that a parsed file needs no further checks.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/safetensors.h"

namespace {

constexpr size_t kMaxConvertBytes = size_t{1} << 18;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = pdserve::SafetensorsFile::Parse(std::as_bytes(std::span<const uint8_t>(data, size)),
                                              "fuzz.safetensors");
  if (!file.ok()) return 0;
  const pdserve::SafetensorsFile& f = **file;
  std::vector<float> out;
  for (const pdserve::SafetensorsEntry& e : f.entries()) {
    if (f.Find(e.name) != &e) __builtin_trap();
    volatile uint8_t sink = 0;
    for (std::byte b : e.data) sink = sink ^ static_cast<uint8_t>(b);
    if (!e.dtype || e.data.size() > kMaxConvertBytes) continue;
    out.resize(e.data.size() / 2 + 1);
    // A parsed entry of a loadable dtype always converts: its size was checked.
    if (!f.ReadF32(e, out.data()).ok()) __builtin_trap();
  }
  return 0;
}
