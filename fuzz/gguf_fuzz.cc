// libFuzzer target: GgufFile::Parse on arbitrary bytes, then everything a loader does with a
// file that parsed (metadata getters, every tensor byte, dequantization), checking the
// parser's promise that a parsed file needs no further checks.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "gguf/dequantize.h"
#include "gguf/gguf_file.h"

namespace {

// Dequantize tensors up to this many elements (a hostile file may declare huge empty-data
// tensors only when it is large itself, but keep each run fast).
constexpr int64_t kMaxDequantElements = int64_t{1} << 16;

void VisitArray(const pdserve::GgufArray& a) {
  (void)pdserve::IntElements(a);
  (void)pdserve::FloatElements(a);
  for (const pdserve::GgufArray& inner : a.arrays) VisitArray(inner);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = pdserve::GgufFile::Parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
  if (!file.ok()) return 0;
  const pdserve::GgufFile& f = **file;
  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetBool(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    if (const pdserve::GgufArray* a = f.GetArray(key)) VisitArray(*a);
  }
  std::vector<float> out;
  for (const pdserve::GgufTensorInfo& t : f.tensors()) {
    if (f.FindTensor(t.name) != &t) __builtin_trap();
    // Every byte the parser hands out must lie inside the input (ASan checks the reads).
    volatile uint8_t sink = 0;
    for (uint8_t b : t.data) sink = sink ^ b;
    if (!pdserve::CanDequantize(t.type) || t.num_elements > kMaxDequantElements) continue;
    out.resize(static_cast<size_t>(t.num_elements));
    // A parsed tensor of a supported type always dequantizes: its size was checked.
    if (!pdserve::DequantizeToF32(t.type, t.data, t.num_elements, out.data()).ok()) {
      __builtin_trap();
    }
  }
  return 0;
}
