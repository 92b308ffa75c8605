// Bad model files fail with a clear message naming the file and tensor; never a crash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <cstring>
#include <functional>
#include <iterator>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

namespace fs = std::filesystem;
using testing_util::FreshDir;

void ExpectError(const absl::StatusOr<std::unique_ptr<Model>>& r,
                 std::initializer_list<const char*> needles) {
  ASSERT_FALSE(r.ok());
  for (const char* n : needles) {
    EXPECT_NE(r.status().message().find(n), absl::string_view::npos)
        << "message lacks '" << n << "': " << r.status();
  }
}

std::string Stories() { return testing_util::ModelsDir() + "/stories260K.bin"; }

std::string CopyPrefix(const std::string& src, size_t bytes, const std::string& name) {
  std::ifstream in(src, std::ios::binary);
  std::string data(std::istreambuf_iterator<char>(in), {});
  const std::string out = FreshDir(name) + "/model.bin";
  std::ofstream(out, std::ios::binary)
      .write(data.data(), static_cast<std::streamsize>(std::min(bytes, data.size())));
  return out;
}

TEST(ModelLoader, TruncatedLlama2cNamesTheCutTensor) {
  CpuBackend be(1);
  // Header (28 B) + embedding 512*64*4 + rms_att 5*64*4 + part of wq.
  const std::string path = CopyPrefix(Stories(), 28 + 512 * 64 * 4 + 5 * 64 * 4 + 100, "trunc");
  ExpectError(LoadModel(path, be), {"model.bin", "truncated", "'wq'"});
  ExpectError(LoadModel(CopyPrefix(Stories(), 10, "tiny"), be), {"model.bin", "header"});
}

TEST(ModelLoader, Llama2cWithTrailingBytesOrAbsurdHeaderIsRejected) {
  CpuBackend be(1);
  std::ifstream in(Stories(), std::ios::binary);
  std::string data(std::istreambuf_iterator<char>(in), {});
  const std::string dir = FreshDir("llama2c_bad");
  std::ofstream(dir + "/extra.bin", std::ios::binary) << data << "junk";
  ExpectError(LoadModel(dir + "/extra.bin", be), {"extra.bin", "unexpected bytes"});
  std::string absurd = data;
  const int32_t huge = 1 << 30;
  std::memcpy(absurd.data(), &huge, 4);  // dim
  std::ofstream(dir + "/absurd.bin", std::ios::binary) << absurd;
  ExpectError(LoadModel(dir + "/absurd.bin", be), {"absurd.bin", "out of range"});
}

// Writes a synthetic model, then rewrites its safetensors with `edit` applied to the entries.
std::string SynthWithEdit(const std::string& name,
                          const std::function<void(std::vector<SafetensorsWriteEntry>&)>& edit) {
  const std::string dir = FreshDir(name);
  EXPECT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(2), dir, 1).ok());
  std::vector<std::byte> copy;
  {
    auto file = SafetensorsFile::Open(dir + "/model.safetensors");
    EXPECT_TRUE(file.ok());
    std::vector<SafetensorsWriteEntry> entries;
    std::vector<std::vector<std::byte>> keep;
    for (const auto& e : (*file)->entries()) {
      keep.emplace_back(e.data.begin(), e.data.end());
    }
    for (size_t i = 0; i < keep.size(); ++i) {
      const auto& e = (*file)->entries()[i];
      entries.push_back({e.name, *e.dtype, e.shape, keep[i]});
    }
    file->reset();
    edit(entries);
    EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", entries).ok());
  }
  return dir;
}

TEST(ModelLoader, MissingTensorIsNamed) {
  CpuBackend be(1);
  const std::string dir = SynthWithEdit("missing", [](auto& entries) {
    std::erase_if(entries,
                  [](const auto& e) { return e.name == "model.layers.1.mlp.up_proj.weight"; });
  });
  ExpectError(LoadModel(dir, be), {"missing tensor", "model.layers.1.mlp.up_proj.weight"});
}

TEST(ModelLoader, ShapeMismatchNamesTensorAndBothShapes) {
  CpuBackend be(1);
  const std::string dir = SynthWithEdit("shape", [](auto& entries) {
    for (auto& e : entries) {
      if (e.name == "model.layers.0.self_attn.k_proj.weight") e.shape = {16, 128};
    }
  });
  ExpectError(LoadModel(dir, be), {"model.safetensors", "model.layers.0.self_attn.k_proj.weight",
                                   "[16, 128]", "[32, 64]"});
}

TEST(ModelLoader, UnsupportedDtypeIsNamed) {
  CpuBackend be(1);
  const std::string dir = FreshDir("dtype");
  ASSERT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(2), dir, 1).ok());
  // Retag one F32 tensor as I32 (same element size) by editing the JSON header in place.
  std::fstream f(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  uint64_t header_len = 0;
  f.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, ' ');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  auto j = nlohmann::json::parse(header);
  j["model.norm.weight"]["dtype"] = "I32";
  std::string patched = j.dump();
  ASSERT_LE(patched.size(), header_len);
  patched.resize(header_len, ' ');
  f.seekp(8);
  f.write(patched.data(), static_cast<std::streamsize>(patched.size()));
  f.close();
  ExpectError(LoadModel(dir, be), {"model.safetensors", "model.norm.weight", "I32"});
}

TEST(ModelLoader, AbsurdSafetensorsHeaderSizeIsRejected) {
  CpuBackend be(1);
  const std::string dir = FreshDir("absurd_header");
  ASSERT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(2), dir, 1).ok());
  std::fstream f(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  const uint64_t huge = uint64_t{1} << 62;
  f.write(reinterpret_cast<const char*>(&huge), 8);
  f.close();
  ExpectError(LoadModel(dir, be), {"model.safetensors"});
}

TEST(ModelLoader, BadDirectoriesSayWhatIsMissing) {
  CpuBackend be(1);
  const std::string empty = FreshDir("empty");
  ExpectError(LoadModel(empty, be), {"config.json"});
  const std::string no_weights = FreshDir("no_weights");
  ASSERT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(2), no_weights, 1).ok());
  fs::remove(no_weights + "/model.safetensors");
  ExpectError(LoadModel(no_weights, be), {"model.safetensors"});
  std::ofstream(no_weights + "/model.safetensors.index.json")
      << R"({"weight_map": {"model.norm.weight": "../../etc/passwd"}})";
  ExpectError(LoadModel(no_weights, be), {"plain file name"});
  ExpectError(LoadModel(empty + "/nope", be), {"no such model"});
  std::ofstream(empty + "/config.json") << "{not json";
  ExpectError(LoadModel(empty, be), {"config.json", "JSON"});
}

}  // namespace
}  // namespace pdserve
