// GGUF parsing: metadata of every type round-trips, tensor records and data are found where
// the file puts them, and every kind of malformed file is refused with a message that names
// the file and the problem.
#include "gguf/gguf_file.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/match.h"
#include "tests/gguf/gguf_writer.h"

namespace pdserve {
namespace {

using testing_util::GgufBytes;
using testing_util::GgufWriter;

absl::StatusOr<std::unique_ptr<GgufFile>> ParseBytes(const std::vector<uint8_t>& bytes) {
  return GgufFile::Parse(bytes, "test.gguf");
}

// Parsing `bytes` fails with InvalidArgument, naming the file, and with `part` in the message.
void ExpectInvalid(const std::vector<uint8_t>& bytes, const std::string& part) {
  auto file = ParseBytes(bytes);
  ASSERT_FALSE(file.ok()) << "expected an error containing: " << part;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  const std::string message(file.status().message());
  EXPECT_TRUE(message.starts_with("test.gguf: ")) << message;
  EXPECT_NE(message.find(part), std::string::npos) << message;
}

// A header with the given counts and nothing else.
GgufBytes Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  GgufBytes b;
  b.PutBytes({'G', 'G', 'U', 'F'});
  b.Put(version);
  b.Put(n_tensors);
  b.Put(n_kv);
  return b;
}

// A file with one tensor record "t" and `data_bytes` bytes of data section.
std::vector<uint8_t> OneTensorFile(const std::vector<uint64_t>& dims, uint32_t type,
                                   uint64_t offset, uint64_t data_bytes) {
  GgufBytes b = Header(1, 0);
  b.PutString("t");
  b.Put<uint32_t>(static_cast<uint32_t>(dims.size()));
  for (uint64_t d : dims) b.Put(d);
  b.Put(type);
  b.Put(offset);
  b.PadTo(32);
  b.bytes.resize(b.bytes.size() + data_bytes, 0x11);
  return b.bytes;
}

TEST(GgufFile, MetadataScalarsOfEveryTypeRoundTrip) {
  GgufWriter w;
  w.Add<uint8_t>("u8", 200);
  w.Add<int8_t>("i8", -100);
  w.Add<uint16_t>("u16", 60000);
  w.Add<int16_t>("i16", -30000);
  w.Add<uint32_t>("u32", 4000000000u);
  w.Add<int32_t>("i32", -2000000000);
  w.Add<float>("f32", 0.15625f);
  w.Add<bool>("bool", true);
  w.AddString("str", "héllo\nworld");
  w.Add<uint64_t>("u64", uint64_t{1} << 40);
  w.Add<int64_t>("i64", -(int64_t{1} << 50));
  w.Add<double>("f64", 1e-300);
  w.Add<uint64_t>("u64max", std::numeric_limits<uint64_t>::max());
  const auto bytes = w.Finish();
  auto file = ParseBytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 13u);

  EXPECT_EQ(f.GetInt("u8"), 200);
  EXPECT_EQ(f.GetInt("i8"), -100);
  EXPECT_EQ(f.GetInt("u16"), 60000);
  EXPECT_EQ(f.GetInt("i16"), -30000);
  EXPECT_EQ(f.GetInt("u32"), 4000000000);
  EXPECT_EQ(f.GetInt("i32"), -2000000000);
  EXPECT_EQ(f.GetInt("u64"), int64_t{1} << 40);
  EXPECT_EQ(f.GetInt("i64"), -(int64_t{1} << 50));
  EXPECT_EQ(f.GetFloat("f32"), 0.15625);
  EXPECT_EQ(f.GetFloat("f64"), 1e-300);
  EXPECT_EQ(f.GetBool("bool"), true);
  ASSERT_NE(f.GetString("str"), nullptr);
  EXPECT_EQ(*f.GetString("str"), "héllo\nworld");
  // The declared type survives: the variant's index is the GGUF type id.
  EXPECT_EQ(TypeOf(*f.Find("u16")), GgufType::kUint16);
  EXPECT_EQ(TypeOf(*f.Find("f64")), GgufType::kFloat64);
  EXPECT_EQ(std::get<uint8_t>(*f.Find("u8")), 200);

  // Wrong types and values that do not fit give nothing rather than a conversion.
  EXPECT_EQ(f.GetInt("u64max"), std::nullopt);
  EXPECT_EQ(f.GetInt("f32"), std::nullopt);
  EXPECT_EQ(f.GetInt("bool"), std::nullopt);
  EXPECT_EQ(f.GetInt("str"), std::nullopt);
  EXPECT_EQ(f.GetFloat("i32"), std::nullopt);
  EXPECT_EQ(f.GetBool("u8"), std::nullopt);
  EXPECT_EQ(f.GetString("u8"), nullptr);
  EXPECT_EQ(f.GetInt("absent"), std::nullopt);
  EXPECT_EQ(f.Find("absent"), nullptr);
}

TEST(GgufFile, MetadataArraysOfEveryElementTypeRoundTrip) {
  GgufWriter w;
  w.AddArray<uint8_t>("a.u8", {0, 255});
  w.AddArray<int8_t>("a.i8", {-128, 127});
  w.AddArray<uint16_t>("a.u16", {1, 65535});
  w.AddArray<int16_t>("a.i16", {-32768, 32767});
  w.AddArray<uint32_t>("a.u32", {7, 4294967295u});
  w.AddArray<int32_t>("a.i32", {-5, 3, 9});
  w.AddArray<uint64_t>("a.u64", {1, uint64_t{1} << 63});
  w.AddArray<int64_t>("a.i64", {std::numeric_limits<int64_t>::min(), 42});
  w.AddArray<float>("a.f32", {0.5f, -2.25f});
  w.AddArray<double>("a.f64", {0.25, 1e10});
  w.AddArray<bool>("a.bool", {true, false, true});
  w.AddStringArray("a.str", {"<s>", "", "Ġthe"});
  w.AddArray<int32_t>("a.empty", {});
  // An array of two arrays: [["x", "yz"], [3, 4, 5] as int32].
  GgufBytes nested;
  nested.Put<uint32_t>(static_cast<uint32_t>(GgufType::kArray));
  nested.Put<uint64_t>(2);
  nested.Put<uint32_t>(static_cast<uint32_t>(GgufType::kString));
  nested.Put<uint64_t>(2);
  nested.PutString("x");
  nested.PutString("yz");
  nested.Put<uint32_t>(static_cast<uint32_t>(GgufType::kInt32));
  nested.Put<uint64_t>(3);
  for (int32_t v : {3, 4, 5}) nested.Put(v);
  w.AddRaw("a.nested", static_cast<uint32_t>(GgufType::kArray), nested.bytes);
  const auto bytes = w.Finish();
  auto file = ParseBytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;

  using Ints = std::vector<int64_t>;
  EXPECT_EQ(f.GetIntArray("a.u8"), (Ints{0, 255}));
  EXPECT_EQ(f.GetIntArray("a.i8"), (Ints{-128, 127}));
  EXPECT_EQ(f.GetIntArray("a.u16"), (Ints{1, 65535}));
  EXPECT_EQ(f.GetIntArray("a.i16"), (Ints{-32768, 32767}));
  EXPECT_EQ(f.GetIntArray("a.u32"), (Ints{7, 4294967295}));
  EXPECT_EQ(f.GetIntArray("a.i32"), (Ints{-5, 3, 9}));
  EXPECT_EQ(f.GetIntArray("a.u64"), std::nullopt);  // 2^63 does not fit int64
  EXPECT_EQ(f.GetIntArray("a.i64"), (Ints{std::numeric_limits<int64_t>::min(), 42}));
  EXPECT_EQ(f.GetIntArray("a.empty"), Ints{});
  EXPECT_EQ(f.GetFloatArray("a.f32"), (std::vector<float>{0.5f, -2.25f}));
  EXPECT_EQ(f.GetFloatArray("a.f64"), (std::vector<float>{0.25f, 1e10f}));
  ASSERT_NE(f.GetStringArray("a.str"), nullptr);
  EXPECT_EQ(*f.GetStringArray("a.str"), (std::vector<std::string>{"<s>", "", "Ġthe"}));
  const GgufArray* bools = f.GetArray("a.bool");
  ASSERT_NE(bools, nullptr);
  EXPECT_EQ(bools->element_type, GgufType::kBool);
  EXPECT_EQ(bools->size, 3u);
  EXPECT_EQ(std::vector<uint8_t>(bools->raw.begin(), bools->raw.end()),
            (std::vector<uint8_t>{1, 0, 1}));

  const GgufArray* nested_array = f.GetArray("a.nested");
  ASSERT_NE(nested_array, nullptr);
  EXPECT_EQ(nested_array->element_type, GgufType::kArray);
  ASSERT_EQ(nested_array->arrays.size(), 2u);
  EXPECT_EQ(nested_array->arrays[0].strings, (std::vector<std::string>{"x", "yz"}));
  EXPECT_EQ(IntElements(nested_array->arrays[1]), (Ints{3, 4, 5}));

  // Wrong element types give nothing.
  EXPECT_EQ(f.GetIntArray("a.f32"), std::nullopt);
  EXPECT_EQ(f.GetIntArray("a.str"), std::nullopt);
  EXPECT_EQ(f.GetIntArray("a.bool"), std::nullopt);
  EXPECT_EQ(f.GetFloatArray("a.i32"), std::nullopt);
  EXPECT_EQ(f.GetStringArray("a.i32"), nullptr);
  EXPECT_EQ(f.GetStringArray("a.nested"), nullptr);
}

TEST(GgufFile, TensorRecordsPointAtTheirAlignedData) {
  for (uint32_t alignment : {32u, 64u}) {
    SCOPED_TRACE(testing::Message() << "alignment " << alignment);
    GgufWriter w(/*version=*/2, alignment);
    if (alignment != 32) w.Add<uint32_t>("general.alignment", alignment);
    w.AddF32Tensor("a.weight", {3, 2}, {1, 2, 3, 4, 5, 6});
    std::vector<uint8_t> q8(2 * 34);
    for (size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<uint8_t>(i);
    w.AddTensor("b.weight", {64}, GgmlType::kQ8_0, q8);
    const auto bytes = w.Finish();
    auto file = ParseBytes(bytes);
    ASSERT_TRUE(file.ok()) << file.status();
    const GgufFile& f = **file;
    EXPECT_EQ(f.version(), 2u);
    EXPECT_EQ(f.alignment(), alignment);
    ASSERT_EQ(f.tensors().size(), 2u);
    const GgufTensorInfo* a = f.FindTensor("a.weight");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->dims, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(a->type, GgmlType::kF32);
    EXPECT_EQ(a->num_elements, 6);
    EXPECT_EQ(a->offset, 0u);
    ASSERT_EQ(a->data.size(), 24u);
    EXPECT_EQ((a->data.data() - bytes.data()) % alignment, 0);
    float first;
    std::memcpy(&first, a->data.data(), 4);
    EXPECT_EQ(first, 1.0f);
    const GgufTensorInfo* b = f.FindTensor("b.weight");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->type, GgmlType::kQ8_0);
    EXPECT_EQ(b->offset, alignment);  // 24 bytes of a, padded
    EXPECT_EQ(std::vector<uint8_t>(b->data.begin(), b->data.end()), q8);
    EXPECT_EQ(f.FindTensor("c.weight"), nullptr);
  }
}

TEST(GgufFile, OpenMapsAFileAndReportsMissingOnes) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddF32Tensor("x", {4}, {1, 2, 3, 4});
  const auto bytes = w.Finish();
  const std::string path = ::testing::TempDir() + "/gguf_open_test.gguf";
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->source_name(), path);
  EXPECT_EQ(*(*file)->GetString("general.architecture"), "llama");
  ASSERT_NE((*file)->FindTensor("x"), nullptr);
  EXPECT_EQ((*file)->FindTensor("x")->data.size(), 16u);
  std::filesystem::remove(path);

  auto missing = GgufFile::Open(path);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path), std::string::npos);
}

TEST(GgufFile, RejectsBadMagic) {
  GgufBytes b = Header(0, 0);
  b.bytes[3] = 'X';
  ExpectInvalid(b.bytes, "not a GGUF file");
  ExpectInvalid({'G', 'G'}, "too short");
}

TEST(GgufFile, RejectsVersion1AndUnknownVersions) {
  ExpectInvalid(Header(0, 0, 1).bytes, "GGUF version 1 is not supported");
  ExpectInvalid(Header(0, 0, 4).bytes, "GGUF version 4 is not supported");
  ExpectInvalid(Header(0, 0, 0x03000000).bytes, "big-endian");
}

TEST(GgufFile, RejectsTruncatedHeader) {
  GgufBytes b = Header(0, 0);
  b.bytes.resize(12);
  ExpectInvalid(b.bytes, "truncated: header tensor count at offset 8 needs 8 bytes");
}

TEST(GgufFile, RejectsStringLengthPastTheEnd) {
  GgufBytes b = Header(0, 1);
  b.PutString("general.name");
  b.Put<uint32_t>(static_cast<uint32_t>(GgufType::kString));
  b.Put<uint64_t>(1000);  // claims 1000 bytes; 3 follow
  b.PutBytes({'a', 'b', 'c'});
  ExpectInvalid(b.bytes, "metadata 'general.name': string length 1000");
  ExpectInvalid(b.bytes, "runs past the end of the file");
  // The same for a key.
  GgufBytes k = Header(0, 1);
  k.Put<uint64_t>(uint64_t{1} << 62);
  k.PutBytes(std::vector<uint8_t>(16, 'k'));
  ExpectInvalid(k.bytes, "metadata key #0: string length 4611686018427387904");
}

TEST(GgufFile, RejectsAbsurdCounts) {
  GgufBytes tensors = Header(uint64_t{1} << 40, 0);
  tensors.bytes.resize(256);
  ExpectInvalid(tensors.bytes, "header claims 1099511627776 tensors");
  GgufBytes kv = Header(0, ~uint64_t{0});
  ExpectInvalid(kv.bytes, "the header is corrupt");
  // An array longer than the file could hold.
  GgufBytes array = Header(0, 1);
  array.PutString("tokenizer.ggml.tokens");
  array.Put<uint32_t>(static_cast<uint32_t>(GgufType::kArray));
  array.Put<uint32_t>(static_cast<uint32_t>(GgufType::kString));
  array.Put<uint64_t>(uint64_t{1} << 60);
  ExpectInvalid(array.bytes, "array of 1152921504606846976 string elements");
}

TEST(GgufFile, RejectsUnknownTypes) {
  GgufBytes value = Header(0, 1);
  value.PutString("k");
  value.Put<uint32_t>(13);
  value.Put<uint32_t>(0);
  ExpectInvalid(value.bytes, "metadata 'k' has unknown value type 13");
  GgufBytes element = Header(0, 1);
  element.PutString("k");
  element.Put<uint32_t>(static_cast<uint32_t>(GgufType::kArray));
  element.Put<uint32_t>(99);
  element.Put<uint64_t>(0);
  ExpectInvalid(element.bytes, "array has unknown element type 99");
  ExpectInvalid(OneTensorFile({32}, 4, 0, 64), "tensor 't' has unknown ggml type 4");
  ExpectInvalid(OneTensorFile({32}, 1000, 0, 64), "unknown ggml type 1000");
}

TEST(GgufFile, RejectsTensorDataOutsideTheFile) {
  // 8 f32 = 32 bytes at offset 64 of a 64-byte data section.
  ExpectInvalid(OneTensorFile({8}, 0, 64, 64),
                "tensor 't' data [offset 64, 32 bytes] ends past the end of the file");
  ExpectInvalid(OneTensorFile({8}, 0, 0, 31), "the file is truncated");
  // Offsets near 2^64 must not wrap around.
  ExpectInvalid(OneTensorFile({8}, 0, ~uint64_t{0} - 31, 64), "ends past the end of the file");
  EXPECT_TRUE(ParseBytes(OneTensorFile({8}, 0, 32, 64)).ok());
}

TEST(GgufFile, RejectsBadDims) {
  const uint64_t big = uint64_t{1} << 32;
  ExpectInvalid(OneTensorFile({big, big}, 0, 0, 64), "dims [4294967296, 4294967296] overflow");
  ExpectInvalid(OneTensorFile({uint64_t{1} << 62}, 0, 0, 64), "overflow the byte size");
  ExpectInvalid(OneTensorFile({~uint64_t{0}}, 0, 0, 64), "does not fit int64");
  ExpectInvalid(OneTensorFile({1, 1, 1, 1, 1}, 0, 0, 64), "has 5 dimensions");
  ExpectInvalid(OneTensorFile({16}, static_cast<uint32_t>(GgmlType::kQ8_0), 0, 64),
                "rows of 16 elements are not a whole number of Q8_0 blocks");
}

TEST(GgufFile, RejectsMisalignedOverlappingAndDuplicateTensors) {
  ExpectInvalid(OneTensorFile({4}, 0, 16, 64),
                "data offset 16 is not a multiple of the file's alignment (32)");

  GgufBytes overlap = Header(2, 0);
  for (const char* name : {"a", "b"}) {
    overlap.PutString(name);
    overlap.Put<uint32_t>(1);
    overlap.Put<uint64_t>(16);  // 64 bytes of f32
    overlap.Put<uint32_t>(0);
    overlap.Put<uint64_t>(name[0] == 'a' ? 0 : 32);
  }
  overlap.PadTo(32);
  overlap.bytes.resize(overlap.bytes.size() + 128);
  ExpectInvalid(overlap.bytes,
                "tensors 'a' [offset 0, 64 bytes] and 'b' [offset 32, 64 bytes] overlap");

  GgufWriter dup;
  dup.AddF32Tensor("w", {1}, {1});
  dup.AddF32Tensor("w", {1}, {2});
  ExpectInvalid(dup.Finish(), "tensor 'w' appears twice");
  GgufWriter dup_key;
  dup_key.Add<uint32_t>("k", 1);
  dup_key.Add<uint32_t>("k", 2);
  ExpectInvalid(dup_key.Finish(), "metadata 'k' appears twice");
}

TEST(GgufFile, RejectsBadAlignment) {
  GgufWriter w;
  w.Add<uint32_t>("general.alignment", 48);
  ExpectInvalid(w.Finish(), "'general.alignment' must be a uint32 power of two");
  GgufWriter wrong_type;
  wrong_type.Add<uint64_t>("general.alignment", 32);
  ExpectInvalid(wrong_type.Finish(), "'general.alignment' must be a uint32 power of two");
}

TEST(GgufFile, RejectsDeeplyNestedArrays) {
  GgufBytes b = Header(0, 1);
  b.PutString("deep");
  b.Put<uint32_t>(static_cast<uint32_t>(GgufType::kArray));
  for (int i = 0; i < 20; ++i) {
    b.Put<uint32_t>(static_cast<uint32_t>(GgufType::kArray));
    b.Put<uint64_t>(1);
  }
  b.bytes.resize(b.bytes.size() + 64);
  ExpectInvalid(b.bytes, "arrays nested more than 8 deep");
}

// Every prefix of a valid file is refused cleanly (no crash, no partial success).
TEST(GgufFile, EveryTruncationIsAnError) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", {"a", "bc"});
  w.AddArray<float>("scores", {1.0f, 2.0f});
  w.AddF32Tensor("x", {8}, {1, 2, 3, 4, 5, 6, 7, 8});
  const auto bytes = w.Finish();
  ASSERT_TRUE(ParseBytes(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto file = GgufFile::Parse(std::span(bytes.data(), n), "test.gguf");
    EXPECT_FALSE(file.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_TRUE(absl::StartsWith(file.status().message(), "test.gguf: ")) << file.status();
  }
}

}  // namespace
}  // namespace pdserve
