#include "engine/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/convert.h"

namespace pdserve {
namespace {

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

std::string LittleEndian64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(value >> (8 * i));
  return out;
}

// Each test gets its own directory: ctest runs tests as parallel processes.
class SafetensorsTest : public testing::Test {
 protected:
  void SetUp() override {
    const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(testing::TempDir()) /
           (std::string("safetensors_") + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes `bytes` verbatim and returns the path.
  std::string WriteRaw(const std::string& name, const std::string& bytes) const {
    std::string path = Path(name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good());
    return path;
  }

  // A file whose header length field matches `header` exactly, followed by `data`.
  std::string WriteFile(const std::string& name, const std::string& header,
                        const std::string& data = "") const {
    return WriteRaw(name, LittleEndian64(header.size()) + header + data);
  }

  // Opens `path`, expects InvalidArgument, and checks the message names the path and each of
  // `needles` (tensor names in quotes, the problem).
  void ExpectInvalid(const std::string& path, std::initializer_list<std::string> needles) const {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << path << " opened unexpectedly";
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    const std::string message(file.status().message());
    EXPECT_NE(message.find(path), std::string::npos) << message;
    for (const std::string& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos)
          << "'" << needle << "' not in: " << message;
    }
  }

  std::filesystem::path dir_;
};

TEST_F(SafetensorsTest, RoundTripsF32Exactly) {
  const std::vector<float> values = {0.0f, -1.5f, 3.25f, 1e-30f, -7e20f, 42.0f};
  const std::string path = Path("f32.safetensors");
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "w", .dtype = DType::kF32, .shape = {2, 3}, .data = Bytes(values)}};
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->entries().size(), 1u);
  const SafetensorsEntry& entry = (*file)->entries()[0];
  EXPECT_EQ(entry.name, "w");
  EXPECT_EQ(entry.dtype_name, "F32");
  EXPECT_EQ(entry.dtype, DType::kF32);
  EXPECT_EQ(entry.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(entry.data.size(), values.size() * 4);
  std::vector<float> out(values.size());
  ASSERT_TRUE((*file)->ReadF32(entry, out.data()).ok());
  EXPECT_EQ(out, values);
}

// Values go through FloatToHalf on write, so the tolerance is half's rounding error: relative
// 2^-11 for normal numbers.
TEST_F(SafetensorsTest, RoundTripsF16WithinHalfPrecision) {
  const std::vector<float> values = {0.0f, 1.0f, -0.1f, 3.14159f, 65504.0f, -1e-3f, 0.333f};
  std::vector<uint16_t> halves(values.size());
  ConvertFromF32(values.data(), DType::kF16, halves.data(), values.size());
  const std::string path = Path("f16.safetensors");
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "h", .dtype = DType::kF16, .shape = {7}, .data = Bytes(halves)}};
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsEntry* entry = (*file)->Find("h");
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->dtype_name, "F16");
  EXPECT_EQ(entry->dtype, DType::kF16);
  std::vector<float> out(values.size());
  ASSERT_TRUE((*file)->ReadF32(*entry, out.data()).ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_NEAR(out[i], values[i], std::fabs(values[i]) / 2048.0f) << i;
  }
}

// bfloat16 keeps 8 significant bits: round-to-nearest error is at most relative 2^-9; the
// test allows 2^-8.
TEST_F(SafetensorsTest, RoundTripsBF16WithinBF16Precision) {
  const std::vector<float> values = {0.0f, 1.0f, -0.1f, 3.14159f, 1e30f, -2.5e-20f};
  std::vector<uint16_t> bf16(values.size());
  ConvertFromF32(values.data(), DType::kBF16, bf16.data(), values.size());
  const std::string path = Path("bf16.safetensors");
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "b", .dtype = DType::kBF16, .shape = {3, 2}, .data = Bytes(bf16)}};
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsEntry* entry = (*file)->Find("b");
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->dtype_name, "BF16");
  EXPECT_EQ(entry->dtype, DType::kBF16);
  std::vector<float> out(values.size());
  ASSERT_TRUE((*file)->ReadF32(*entry, out.data()).ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_NEAR(out[i], values[i], std::fabs(values[i]) / 256.0f) << i;
  }
}

TEST_F(SafetensorsTest, KeepsHeaderOrderAndFindsByName) {
  const std::vector<float> a = {1, 2}, b = {3}, c = {4, 5, 6};
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "zeta", .dtype = DType::kF32, .shape = {2}, .data = Bytes(a)},
      {.name = "alpha", .dtype = DType::kF32, .shape = {}, .data = Bytes(b)},
      {.name = "mid", .dtype = DType::kF32, .shape = {1, 3}, .data = Bytes(c)}};
  const std::string path = Path("order.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  ASSERT_EQ((*file)->entries().size(), 3u);
  EXPECT_EQ((*file)->entries()[0].name, "zeta");
  EXPECT_EQ((*file)->entries()[1].name, "alpha");
  EXPECT_EQ((*file)->entries()[2].name, "mid");
  EXPECT_TRUE((*file)->entries()[1].shape.empty());  // a scalar: numel 1
  EXPECT_EQ((*file)->Find("alpha"), &(*file)->entries()[1]);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  EXPECT_TRUE((*file)->metadata().empty());
  float scalar = 0;
  ASSERT_TRUE((*file)->ReadF32(*(*file)->Find("alpha"), &scalar).ok());
  EXPECT_EQ(scalar, 3.0f);
}

TEST_F(SafetensorsTest, RoundTripsMetadata) {
  const std::vector<float> w = {1};
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "quotes \" and \\ and unicode \xc3\xa9"}, {"empty", ""}};
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "w", .dtype = DType::kF32, .shape = {1}, .data = Bytes(w)}};
  const std::string path = Path("meta.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, entries, metadata).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  ASSERT_EQ((*file)->entries().size(), 1u);  // "__metadata__" is not a tensor
}

TEST_F(SafetensorsTest, WritesPaddedHeaderAndContiguousData) {
  const std::vector<float> a = {1, 2, 3};
  const std::vector<uint16_t> b = {0x3c00};
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "a", .dtype = DType::kF32, .shape = {3}, .data = Bytes(a)},
      {.name = "b", .dtype = DType::kF16, .shape = {1}, .data = Bytes(b)}};
  const std::string path = Path("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());

  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  }
  EXPECT_EQ(header_size % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + header_size + 12 + 2);
  const std::string header = bytes.substr(8, header_size);
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));  // only spaces after the JSON
  EXPECT_NE(header.find("\"data_offsets\":[0,12]"), std::string::npos) << header;
  EXPECT_NE(header.find("\"data_offsets\":[12,14]"), std::string::npos) << header;
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + header_size, a.data(), 12), 0);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + header_size + 12, b.data(), 2), 0);
}

TEST_F(SafetensorsTest, OpensFileWithEmptyDataSection) {
  auto empty = SafetensorsFile::Open(WriteFile("empty.safetensors", "{}"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)->entries().empty());

  const std::string path = WriteFile(
      "zero.safetensors", R"({"z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}})");
  auto zero = SafetensorsFile::Open(path);
  ASSERT_TRUE(zero.ok()) << zero.status();
  ASSERT_EQ((*zero)->entries().size(), 1u);
  EXPECT_TRUE((*zero)->entries()[0].data.empty());
  EXPECT_TRUE((*zero)->ReadF32((*zero)->entries()[0], nullptr).ok());
}

TEST_F(SafetensorsTest, WritesAndReopensEmptyFile) {
  const std::string path = Path("none.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->entries().empty());
}

TEST_F(SafetensorsTest, ReadF32RejectsUnsupportedDtypeButOpenSucceeds) {
  std::vector<int64_t> ids = {1, -2, 3};
  const std::string data(reinterpret_cast<const char*>(ids.data()), 24);
  const std::string path =
      WriteFile("i64.safetensors",
                R"({"token_ids": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}})", data);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsEntry* entry = (*file)->Find("token_ids");
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->dtype_name, "I64");
  EXPECT_FALSE(entry->dtype.has_value());
  EXPECT_EQ(std::memcmp(entry->data.data(), ids.data(), 24), 0);

  std::vector<float> out(3);
  absl::Status status = (*file)->ReadF32(*entry, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message(status.message());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("'token_ids'"), std::string::npos) << message;
  EXPECT_NE(message.find("I64"), std::string::npos) << message;
}

// A header length that is not a multiple of 2 leaves 16-bit data at odd addresses; ReadF32
// must still convert correctly (and without misaligned loads, which UBSan would flag).
TEST_F(SafetensorsTest, ReadsF16FromUnalignedDataSection) {
  const std::vector<float> values = {1.0f, -2.0f, 0.5f, 1024.0f};
  std::vector<uint16_t> halves(values.size());
  ConvertFromF32(values.data(), DType::kF16, halves.data(), values.size());
  const std::string data(reinterpret_cast<const char*>(halves.data()), 8);
  std::string header = R"({"h": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}})";
  if (header.size() % 2 == 0) header += ' ';
  auto file = SafetensorsFile::Open(WriteFile("unaligned.safetensors", header, data));
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsEntry& entry = (*file)->entries()[0];
  ASSERT_NE(reinterpret_cast<uintptr_t>(entry.data.data()) % 2, 0u);
  std::vector<float> out(values.size());
  ASSERT_TRUE((*file)->ReadF32(entry, out.data()).ok());
  EXPECT_EQ(out, values);
}

TEST_F(SafetensorsTest, IgnoresUnknownTensorFieldsEvenWhenDeeplyNested) {
  const std::string nested = std::string(100000, '[') + std::string(100000, ']');
  const std::string path =
      WriteFile("extra.safetensors",
                R"({"w": {"note": {"a": [1, "x", null]}, "deep": )" + nested +
                    R"(, "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                std::string(4, '\0'));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->entries()[0].shape, (std::vector<int64_t>{1}));
}

TEST_F(SafetensorsTest, AcceptsGapsBetweenTensors) {
  const std::string path =
      WriteFile("gap.safetensors",
                R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [6, 8]},)"
                R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})",
                "abcdefgh");
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(std::to_integer<char>((*file)->Find("a")->data[0]), 'g');
  EXPECT_EQ(std::to_integer<char>((*file)->Find("b")->data[1]), 'b');
}

TEST_F(SafetensorsTest, ReturnsNotFoundForMissingFile) {
  const std::string path = Path("does_not_exist.safetensors");
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status();
}

TEST_F(SafetensorsTest, RejectsDirectory) { ExpectInvalid(dir_.string(), {"not a regular file"}); }

TEST_F(SafetensorsTest, RejectsFileShorterThanEightBytes) {
  ExpectInvalid(WriteRaw("empty.safetensors", ""), {"0 bytes"});
  ExpectInvalid(WriteRaw("short.safetensors", std::string(7, '\0')), {"7 bytes"});
}

TEST_F(SafetensorsTest, RejectsHeaderLengthBeyondFile) {
  ExpectInvalid(WriteRaw("beyond.safetensors", LittleEndian64(100) + "{}"),
                {"header length 100", "past the end"});
  ExpectInvalid(WriteRaw("huge.safetensors", LittleEndian64(~uint64_t{0}) + "{}"), {"exceeds"});
}

// The cap holds even when the file really is that large (a sparse file, so it costs no disk).
TEST_F(SafetensorsTest, RejectsHeaderLengthOver100MiB) {
  const uint64_t header_size = (uint64_t{100} << 20) + 8;
  const std::string path = WriteRaw("big.safetensors", LittleEndian64(header_size) + "{}");
  std::filesystem::resize_file(path, header_size + 16);
  ExpectInvalid(path, {"header length 104857608", "limit"});
}

TEST_F(SafetensorsTest, RejectsInvalidJson) {
  ExpectInvalid(WriteFile("trunc.safetensors", R"({"w": {"dtype": "F32")"), {"not valid JSON"});
  ExpectInvalid(WriteFile("garbage.safetensors", "hello world!"), {"not valid JSON"});
  ExpectInvalid(WriteFile("trailing.safetensors", "{} {}"), {"not valid JSON"});
  ExpectInvalid(WriteFile("nul_padded.safetensors", std::string("{}\0\0", 4)), {"not valid JSON"});
  ExpectInvalid(WriteFile("zero_length.safetensors", ""), {"not valid JSON"});
  ExpectInvalid(WriteFile("bad_utf8.safetensors", "{\"\xff\": 1}"), {"not valid JSON"});
}

TEST_F(SafetensorsTest, RejectsHeaderThatIsNotAnObject) {
  ExpectInvalid(WriteFile("array.safetensors", "[1, 2]"), {"must be a JSON object"});
  ExpectInvalid(WriteFile("string.safetensors", R"("w")"), {"must be a JSON object"});
  ExpectInvalid(WriteFile("deep.safetensors", std::string(50000, '[') + std::string(50000, ']')),
                {"must be a JSON object"});
}

TEST_F(SafetensorsTest, RejectsEntryThatIsNotAnObject) {
  ExpectInvalid(WriteFile("num.safetensors", R"({"w": 5})"), {"'w'", "must be a JSON object"});
  ExpectInvalid(WriteFile("arr.safetensors", R"({"w": ["F32", [1], [0, 4]]})"),
                {"'w'", "must be a JSON object"});
}

TEST_F(SafetensorsTest, RejectsEntryMissingKeys) {
  ExpectInvalid(WriteFile("no_dtype.safetensors",
                          R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
                {"'w'", "missing \"dtype\""});
  ExpectInvalid(
      WriteFile("no_shape.safetensors", R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})",
                std::string(4, '\0')),
      {"'w'", "missing \"shape\""});
  ExpectInvalid(WriteFile("no_offsets.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})",
                          std::string(4, '\0')),
                {"'w'", "missing \"data_offsets\""});
}

TEST_F(SafetensorsTest, RejectsWrongJsonTypes) {
  struct Case {
    const char* header;
    const char* expected;
  };
  const Case cases[] = {
      {R"({"w": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}})", "\"dtype\" must be"},
      {R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", "\"shape\" must be"},
      {R"({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})", "\"shape\" must be"},
      {R"({"w": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}})", "\"shape\" must be"},
      {R"({"w": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}})", "\"shape\" must be"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}})",
       "\"data_offsets\" must be"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": {"0": 4}}})",
       "\"data_offsets\" must be"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, null]}})",
       "\"data_offsets\" must be"},
      {R"({"w": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
       "duplicate \"dtype\""},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    ExpectInvalid(
        WriteFile("types" + std::to_string(i++) + ".safetensors", c.header, std::string(4, '\0')),
        {"'w'", c.expected});
  }
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  ExpectInvalid(WriteFile("q4.safetensors",
                          R"({"w": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 4]}})",
                          std::string(4, '\0')),
                {"'w'", "unknown dtype 'Q4_K'"});
  // dtype names are case-sensitive in the format.
  ExpectInvalid(WriteFile("lower.safetensors",
                          R"({"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})",
                          std::string(4, '\0')),
                {"'w'", "unknown dtype 'f32'"});
}

TEST_F(SafetensorsTest, RejectsNegativeDimension) {
  ExpectInvalid(WriteFile("neg.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}})",
                          std::string(24, '\0')),
                {"'w'", "negative dimension -3"});
}

TEST_F(SafetensorsTest, RejectsByteSizeOverflow) {
  // 2^32 * 2^32 elements, and separately 2^62 elements of 8 bytes: both overflow u64 bytes.
  ExpectInvalid(
      WriteFile(
          "overflow.safetensors",
          R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})",
          std::string(4, '\0')),
      {"'w'", "overflows"});
  ExpectInvalid(
      WriteFile(
          "overflow2.safetensors",
          R"({"w": {"dtype": "I64", "shape": [4611686018427387904], "data_offsets": [0, 8]}})",
          std::string(8, '\0')),
      {"'w'", "overflows"});
  ExpectInvalid(
      WriteFile(
          "too_big.safetensors",
          R"({"w": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 1]}})",
          std::string(1, '\0')),
      {"'w'", "does not fit in int64"});
}

TEST_F(SafetensorsTest, RejectsShapeWithTooManyDimensions) {
  std::string shape = "[1";
  for (int i = 0; i < 64; ++i) shape += ", 1";
  shape += "]";
  ExpectInvalid(
      WriteFile("rank.safetensors",
                R"({"w": {"dtype": "U8", "shape": )" + shape + R"(, "data_offsets": [0, 1]}})",
                std::string(1, '\0')),
      {"'w'", "more than 64 dimensions"});
}

TEST_F(SafetensorsTest, RejectsMalformedDataOffsets) {
  const char* cases[] = {
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})",
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4]}})",
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": []}})",
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})",
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551616]}})",
  };
  int i = 0;
  for (const char* header : cases) {
    SCOPED_TRACE(header);
    ExpectInvalid(
        WriteFile("offsets" + std::to_string(i++) + ".safetensors", header, std::string(8, '\0')),
        {"'w'", "data_offsets"});
  }
}

TEST_F(SafetensorsTest, RejectsOffsetsBeginAfterEnd) {
  ExpectInvalid(WriteFile("reversed.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
                          std::string(8, '\0')),
                {"'w'", "[8, 4]", "begin is after end"});
}

TEST_F(SafetensorsTest, RejectsOffsetsBeyondDataSection) {
  ExpectInvalid(WriteFile("past.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                          std::string(8, '\0')),
                {"'w'", "[4, 12]", "data section (8 bytes)"});
  // Huge offsets must not wrap around when compared with the section size.
  ExpectInvalid(WriteFile("wrap.safetensors",
                          R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": )"
                          R"([18446744073709551615, 18446744073709551615]}})",
                          std::string(8, '\0')),
                {"'w'", "data section"});
}

TEST_F(SafetensorsTest, RejectsByteLengthMismatch) {
  const std::string path =
      WriteFile("model.safetensors",
                R"({"model.layers.0.mlp.up_proj.weight": )"
                R"({"dtype": "F32", "shape": [5, 6], "data_offsets": [0, 100]}})",
                std::string(120, '\0'));
  ExpectInvalid(path,
                {"'model.layers.0.mlp.up_proj.weight'",
                 "data_offsets [0, 100] hold 100 bytes but dtype F32 shape [5, 6] needs 120"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectInvalid(WriteFile("overlap.safetensors",
                          R"({"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},)"
                          R"( "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                          std::string(12, '\0')),
                {"'a'", "'b'", "overlap"});
  // Containment, with an unrelated tensor sorted in between.
  ExpectInvalid(WriteFile("contained.safetensors",
                          R"({"outer": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},)"
                          R"( "x": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]},)"
                          R"( "y": {"dtype": "U8", "shape": [1], "data_offsets": [5, 6]}})",
                          std::string(10, '\0')),
                {"'outer'", "'x'", "overlap"});
  ExpectInvalid(WriteFile("same.safetensors",
                          R"({"p": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                          R"( "q": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                          std::string(4, '\0')),
                {"'p'", "'q'", "overlap"});
}

TEST_F(SafetensorsTest, AllowsEmptyTensorInsideAnotherRange) {
  auto file = SafetensorsFile::Open(
      WriteFile("empty_inside.safetensors",
                R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
                std::string(8, '\0')));
  EXPECT_TRUE(file.ok()) << file.status();
}

TEST_F(SafetensorsTest, RejectsDuplicateTensorNames) {
  ExpectInvalid(WriteFile("dup.safetensors",
                          R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
                          R"( "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                          std::string(2, '\0')),
                {"duplicate tensor name 'w'"});
}

TEST_F(SafetensorsTest, RejectsMalformedMetadata) {
  ExpectInvalid(WriteFile("meta_num.safetensors", R"({"__metadata__": {"epoch": 3}})"),
                {"'epoch'", "must be a string"});
  ExpectInvalid(WriteFile("meta_arr.safetensors", R"({"__metadata__": ["a"]})"),
                {"\"__metadata__\" must be a JSON object"});
  ExpectInvalid(
      WriteFile("meta_dup.safetensors", R"({"__metadata__": {"k": "a"}, "__metadata__": {}})"),
      {"duplicate \"__metadata__\""});
  ExpectInvalid(WriteFile("meta_key_dup.safetensors", R"({"__metadata__": {"k": "a", "k": "b"}})"),
                {"duplicate \"__metadata__\" key 'k'"});
}

TEST_F(SafetensorsTest, EscapesControlCharactersInNamesInMessages) {
  ExpectInvalid(WriteFile("ctrl.safetensors", R"({"a\u0000b\n": 1})"), {"'a\\x00b\\x0a'"});
}

// Every truncation and many single-byte corruptions of a valid file must produce either a
// clean error or a file whose entries are readable; ASan/UBSan builds catch anything else.
TEST_F(SafetensorsTest, SurvivesTruncationAndCorruption) {
  const std::vector<float> f32 = {1, 2, 3, 4};
  const std::vector<uint16_t> bf16 = {0x3f80, 0x4000};
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "a", .dtype = DType::kF32, .shape = {2, 2}, .data = Bytes(f32)},
      {.name = "b", .dtype = DType::kBF16, .shape = {2}, .data = Bytes(bf16)}};
  const std::string path = Path("valid.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, entries, {{"k", "v"}}).ok());
  std::ifstream in(path, std::ios::binary);
  const std::string valid((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  auto exercise = [&](const std::string& bytes) {
    auto file = SafetensorsFile::Open(WriteRaw("mutant.safetensors", bytes));
    if (!file.ok()) {
      EXPECT_NE(file.status().message().find("mutant.safetensors"), std::string::npos);
      return;
    }
    for (const SafetensorsEntry& entry : (*file)->entries()) {
      if (!entry.dtype) continue;
      std::vector<float> out(entry.data.size() / DTypeSize(*entry.dtype));
      EXPECT_TRUE((*file)->ReadF32(entry, out.data()).ok());
    }
  };
  for (size_t len = 0; len < valid.size(); ++len) {
    auto file = SafetensorsFile::Open(WriteRaw("mutant.safetensors", valid.substr(0, len)));
    EXPECT_FALSE(file.ok()) << "truncated to " << len;
  }
  for (size_t pos = 0; pos < valid.size(); ++pos) {
    for (unsigned char value : {0x00, 0x01, 0x22, 0x2c, 0x2d, 0x30, 0x39, 0x5b, 0x7b, 0xff}) {
      std::string mutant = valid;
      mutant[pos] = static_cast<char>(value);
      exercise(mutant);
    }
  }
}

TEST_F(SafetensorsTest, WriteRejectsDataSizeMismatch) {
  const std::vector<float> w = {1, 2, 3};
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "w", .dtype = DType::kF32, .shape = {2, 2}, .data = Bytes(w)}};
  const std::string path = Path("mismatch.safetensors");
  absl::Status status = WriteSafetensors(path, entries);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("'w'"), std::string::npos) << status;
  EXPECT_NE(status.message().find("needs 16"), std::string::npos) << status;
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(SafetensorsTest, WriteRejectsBadNamesAndShapes) {
  const std::vector<float> w = {1};
  const std::string path = Path("bad.safetensors");
  const SafetensorsWriteEntry ok = {
      .name = "w", .dtype = DType::kF32, .shape = {1}, .data = Bytes(w)};
  SafetensorsWriteEntry reserved = ok;
  reserved.name = "__metadata__";
  SafetensorsWriteEntry negative = ok;
  negative.shape = {-1};
  const std::vector<std::vector<SafetensorsWriteEntry>> cases = {{ok, ok}, {reserved}, {negative}};
  for (const auto& entries : cases) {
    absl::Status status = WriteSafetensors(path, entries);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find(path), std::string::npos) << status;
  }
  absl::Status utf8 = WriteSafetensors(path, {}, {{"k", "\xff"}});
  EXPECT_EQ(utf8.code(), absl::StatusCode::kInvalidArgument) << utf8;
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(SafetensorsTest, WriteReplacesExistingFileLeavingOpenMappingIntact) {
  const std::vector<float> first = {1, 2}, second = {3, 4, 5};
  const std::string path = Path("replace.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path,
                       std::vector<SafetensorsWriteEntry>{
                           {.name = "w", .dtype = DType::kF32, .shape = {2}, .data = Bytes(first)}})
          .ok());
  auto old_file = SafetensorsFile::Open(path);
  ASSERT_TRUE(old_file.ok()) << old_file.status();
  ASSERT_TRUE(WriteSafetensors(
                  path,
                  std::vector<SafetensorsWriteEntry>{
                      {.name = "w", .dtype = DType::kF32, .shape = {3}, .data = Bytes(second)}})
                  .ok());
  std::vector<float> out(2);
  ASSERT_TRUE((*old_file)->ReadF32((*old_file)->entries()[0], out.data()).ok());
  EXPECT_EQ(out, first);
  auto new_file = SafetensorsFile::Open(path);
  ASSERT_TRUE(new_file.ok()) << new_file.status();
  EXPECT_EQ((*new_file)->entries()[0].shape, (std::vector<int64_t>{3}));
  // No temporaries left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_),
                          std::filesystem::directory_iterator()),
            1);
}

TEST_F(SafetensorsTest, ReadF32RejectsEntryFromAnotherFile) {
  const std::vector<float> w = {1};
  const std::vector<SafetensorsWriteEntry> entries = {
      {.name = "w", .dtype = DType::kF32, .shape = {1}, .data = Bytes(w)}};
  ASSERT_TRUE(WriteSafetensors(Path("one.safetensors"), entries).ok());
  ASSERT_TRUE(WriteSafetensors(Path("two.safetensors"), entries).ok());
  auto one = SafetensorsFile::Open(Path("one.safetensors"));
  auto two = SafetensorsFile::Open(Path("two.safetensors"));
  ASSERT_TRUE(one.ok() && two.ok());
  float out = 0;
  EXPECT_EQ((*one)->ReadF32((*two)->entries()[0], &out).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve
