#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/convert.h"
#include "nlohmann/json.hpp"

namespace pdserve {
namespace {

// Tensor bytes are handed out raw and ConvertToF32 reads them as host integers; safetensors
// data is little-endian, so a big-endian host would silently read garbage.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// Real headers are at most a few MiB (the reference implementation caps them at 1e8 bytes);
// the cap bounds what a hostile header can make us parse.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
// No real tensor comes close; the cap bounds the memory a hostile shape array can claim.
constexpr size_t kMaxRank = 64;
constexpr std::string_view kMetadataKey = "__metadata__";

struct DTypeInfo {
  std::string_view name;
  size_t size;
  std::optional<DType> dtype;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {"BOOL", 1, std::nullopt},
    {"U8", 1, std::nullopt},
    {"I8", 1, std::nullopt},
    {"F8_E4M3", 1, std::nullopt},
    {"F8_E5M2", 1, std::nullopt},
    {"I16", 2, std::nullopt},
    {"U16", 2, std::nullopt},
    {"F16", 2, DType::kF16},
    {"BF16", 2, DType::kBF16},
    {"I32", 4, std::nullopt},
    {"U32", 4, std::nullopt},
    {"F32", 4, DType::kF32},
    {"F64", 8, std::nullopt},
    {"I64", 8, std::nullopt},
    {"U64", 8, std::nullopt},
}};

const DTypeInfo* LookupDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

const char* SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    default:  // quantized rows are never read from or written to safetensors
      return "?";
  }
}

// Names come from untrusted files and end up in logs; control characters (including NUL,
// which JSON allows in strings) are escaped so a message stays one readable line.
std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  out += "'";
  return out;
}

template <typename T>
std::string FormatList(const std::vector<T>& values) {
  return absl::StrCat("[", absl::StrJoin(values, ", "), "]");
}

// Checked numel * element size; nullopt on overflow (negative dims are rejected earlier).
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, size_t element_size) {
  uint64_t bytes = element_size;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) return std::nullopt;
  }
  return bytes;
}

// A tensor record as it appears in the header, before semantic validation.
struct RawEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint64_t> offsets;
  unsigned seen = 0;  // bit set of Field values already present
};

// Streams the header through nlohmann's SAX interface instead of building a DOM: the DOM would
// lose header order (json sorts keys) and silently merge duplicate keys, and it can cost many
// times the header size in memory. Structure is checked as it streams, so a hostile header is
// rejected at the first unexpected token without materialising it.
class HeaderParser {
 public:
  using Json = nlohmann::json;

  explicit HeaderParser(const std::string& path) : path_(path) {}

  // Returns false with error() set when the header is malformed.
  bool Parse(const char* begin, const char* end) {
    // nlohmann's lexer treats a NUL byte as end of input and would silently ignore whatever
    // follows; JSON never contains a raw NUL, so reject it up front.
    if (const void* nul = std::memchr(begin, 0, static_cast<size_t>(end - begin))) {
      return Fail(absl::StrCat("header is not valid JSON: NUL byte at offset ",
                               static_cast<const char*>(nul) - begin));
    }
    bool ok = false;
    try {
      ok = Json::sax_parse(begin, end, this);
    } catch (const std::bad_alloc&) {
      return Fail("out of memory while parsing the header");
    } catch (const std::exception& e) {  // the parser should report via parse_error instead
      return Fail(absl::StrCat("header is not valid JSON: ", e.what()));
    }
    if (!ok && error_.empty()) return Fail("header is not valid JSON");
    return ok;
  }

  const std::string& error() const { return error_; }
  std::vector<RawEntry>& entries() { return entries_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }

  // --- nlohmann SAX interface ---
  bool null() { return Scalar(); }
  bool boolean(bool /*value*/) { return Scalar(); }
  bool number_float(Json::number_float_t /*value*/, const Json::string_t& /*text*/) {
    return Scalar();
  }
  bool binary(Json::binary_t& /*value*/) { return Scalar(); }

  bool number_integer(Json::number_integer_t value) {
    if (value >= 0) return number_unsigned(static_cast<uint64_t>(value));
    if (state_ == State::kShape) {
      return TensorFail(absl::StrCat("shape has negative dimension ", value));
    }
    if (state_ == State::kOffsets) {
      return TensorFail(absl::StrCat("data_offsets has negative value ", value));
    }
    return Scalar();
  }

  bool number_unsigned(Json::number_unsigned_t value) {
    if (state_ == State::kShape) {
      if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return TensorFail(absl::StrCat("shape dimension ", value, " does not fit in int64"));
      }
      if (Current().shape.size() == kMaxRank) {
        return TensorFail(absl::StrCat("shape has more than ", kMaxRank, " dimensions"));
      }
      Current().shape.push_back(static_cast<int64_t>(value));
      return true;
    }
    if (state_ == State::kOffsets) {
      if (Current().offsets.size() == 2) return TensorFail(kOffsetsError);
      Current().offsets.push_back(value);
      return true;
    }
    return Scalar();
  }

  bool string(Json::string_t& value) {
    if (state_ == State::kField && field_ == Field::kDType) {
      Current().dtype = std::move(value);
      state_ = State::kTensor;
      return true;
    }
    if (state_ == State::kMetadataValue) {
      metadata_[metadata_key_] = std::move(value);
      state_ = State::kMetadata;
      return true;
    }
    return Scalar();
  }

  bool start_object(std::size_t /*elements*/) {
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kTensorValue:
        state_ = State::kTensor;
        return true;
      case State::kMetadataObject:
        state_ = State::kMetadata;
        return true;
      default:
        return StartCompound();
    }
  }

  bool end_object() {
    switch (state_) {
      case State::kTop:
        state_ = State::kDone;
        return true;
      case State::kTensor:
        for (auto [bit, key] :
             {std::pair{Field::kDType, "dtype"}, std::pair{Field::kShape, "shape"},
              std::pair{Field::kOffsets, "data_offsets"}}) {
          if (!(Current().seen & Bit(bit))) {
            return TensorFail(absl::StrCat("missing \"", key, "\""));
          }
        }
        state_ = State::kTop;
        return true;
      case State::kMetadata:
        state_ = State::kTop;
        return true;
      case State::kSkip:
        return EndSkipped();
      default:
        return Fail("header has unexpected structure");  // unreachable: the parser pairs braces
    }
  }

  bool start_array(std::size_t /*elements*/) {
    if (state_ == State::kField && field_ == Field::kShape) {
      state_ = State::kShape;
      return true;
    }
    if (state_ == State::kField && field_ == Field::kOffsets) {
      state_ = State::kOffsets;
      return true;
    }
    return StartCompound();
  }

  bool end_array() {
    switch (state_) {
      case State::kShape:
        state_ = State::kTensor;
        return true;
      case State::kOffsets:
        if (Current().offsets.size() != 2) return TensorFail(kOffsetsError);
        state_ = State::kTensor;
        return true;
      case State::kSkip:
        return EndSkipped();
      default:
        return Fail("header has unexpected structure");  // unreachable: the parser pairs brackets
    }
  }

  bool key(Json::string_t& name) {
    switch (state_) {
      case State::kTop:
        if (name == kMetadataKey) {
          if (seen_metadata_) return Fail("duplicate \"__metadata__\"");
          seen_metadata_ = true;
          state_ = State::kMetadataObject;
          return true;
        }
        if (!names_.insert(name).second) {
          return Fail(absl::StrCat("duplicate tensor name ", Quote(name)));
        }
        entries_.emplace_back();
        entries_.back().name = std::move(name);
        state_ = State::kTensorValue;
        return true;
      case State::kTensor: {
        field_ = name == "dtype"          ? Field::kDType
                 : name == "shape"        ? Field::kShape
                 : name == "data_offsets" ? Field::kOffsets
                                          : Field::kUnknown;
        if (field_ != Field::kUnknown) {
          if (Current().seen & Bit(field_)) {
            return TensorFail(absl::StrCat("duplicate \"", name, "\""));
          }
          Current().seen |= Bit(field_);
        }
        state_ = State::kField;
        return true;
      }
      case State::kMetadata:
        if (metadata_.count(name) != 0) {
          return Fail(absl::StrCat("duplicate \"__metadata__\" key ", Quote(name)));
        }
        metadata_key_ = std::move(name);
        state_ = State::kMetadataValue;
        return true;
      case State::kSkip:
        return true;
      default:
        return Fail("header has unexpected structure");  // unreachable: keys only in objects
    }
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) {
    return Fail(absl::StrCat("header is not valid JSON: ", ex.what()));
  }

 private:
  // Where in the expected grammar the next token lands.
  enum class State {
    kStart,           // before the top-level value
    kTop,             // in the top-level object: tensor names and "__metadata__"
    kTensorValue,     // after a tensor name
    kTensor,          // in a tensor's object
    kField,           // after a key in a tensor's object
    kShape,           // in "shape"
    kOffsets,         // in "data_offsets"
    kMetadataObject,  // after "__metadata__"
    kMetadata,        // in the metadata object
    kMetadataValue,   // after a metadata key
    kSkip,            // inside the value of an unknown tensor field
    kDone,
  };
  enum class Field { kDType, kShape, kOffsets, kUnknown };
  static constexpr char kOffsetsError[] =
      "\"data_offsets\" must be an array of two non-negative integers";

  static unsigned Bit(Field field) { return 1u << static_cast<unsigned>(field); }
  RawEntry& Current() { return entries_.back(); }

  bool Fail(absl::string_view message) {
    error_ = absl::StrCat(path_, ": ", message);
    return false;
  }
  bool TensorFail(absl::string_view message) {
    return Fail(absl::StrCat("tensor ", Quote(Current().name), ": ", message));
  }

  // Unknown fields in a tensor's object are ignored, as serde-based readers (the reference
  // implementation) do, so that files from newer writers still load.
  bool StartCompound() {
    if (state_ == State::kSkip) {
      ++skip_depth_;
      return true;
    }
    if (state_ == State::kField && field_ == Field::kUnknown) {
      state_ = State::kSkip;
      skip_depth_ = 1;
      return true;
    }
    return Unexpected();
  }
  bool EndSkipped() {
    if (--skip_depth_ == 0) state_ = State::kTensor;
    return true;
  }
  bool Scalar() {
    if (state_ == State::kSkip) return true;
    if (state_ == State::kField && field_ == Field::kUnknown) {
      state_ = State::kTensor;
      return true;
    }
    return Unexpected();
  }

  // A value of the wrong JSON type for where it appears.
  bool Unexpected() {
    switch (state_) {
      case State::kStart:
        return Fail("header must be a JSON object");
      case State::kTensorValue:
        return TensorFail("entry must be a JSON object");
      case State::kField:
        switch (field_) {
          case Field::kDType:
            return TensorFail("\"dtype\" must be a string");
          case Field::kShape:
            return TensorFail("\"shape\" must be an array of non-negative integers");
          case Field::kOffsets:
            return TensorFail(kOffsetsError);
          case Field::kUnknown:
            break;
        }
        break;
      case State::kShape:
        return TensorFail("\"shape\" must be an array of non-negative integers");
      case State::kOffsets:
        return TensorFail(kOffsetsError);
      case State::kMetadataObject:
        return Fail("\"__metadata__\" must be a JSON object");
      case State::kMetadataValue:
        return Fail(absl::StrCat("\"__metadata__\" value for key ", Quote(metadata_key_),
                                 " must be a string"));
      default:
        break;
    }
    return Fail("header has unexpected structure");
  }

  const std::string& path_;
  State state_ = State::kStart;
  Field field_ = Field::kUnknown;
  int64_t skip_depth_ = 0;
  bool seen_metadata_ = false;
  std::string metadata_key_;
  std::set<std::string, std::less<>> names_;
  std::vector<RawEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::string error_;
};

// Owns a mapping until released; keeps Open's early returns leak-free.
class Mapping {
 public:
  Mapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr_ != nullptr) munmap(addr_, size_);
  }
  const std::byte* data() const { return static_cast<const std::byte*>(addr_); }
  void Release() { addr_ = nullptr; }

 private:
  void* addr_;
  size_t size_;
};

absl::Status ErrnoError(int error, const std::string& path, absl::string_view what) {
  return absl::ErrnoToStatus(error, absl::StrCat(path, ": ", what));
}

// Writes all of `data`, retrying short writes and EINTR.
bool WriteAll(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

SafetensorsFile::SafetensorsFile(std::string path, const std::byte* base, size_t size)
    : path_(std::move(path)), base_(base), size_(size) {}

SafetensorsFile::~SafetensorsFile() {
  if (owns_mapping_) munmap(const_cast<std::byte*>(base_), size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  // Only allocation can throw past the parser's own handling; keep the API exception-free.
  try {
    return OpenUnchecked(path);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::span<const std::byte> bytes, std::string source_name) {
  try {
    return ParseUnchecked(bytes, source_name);
  } catch (const std::exception& e) {  // allocation failure
    return absl::ResourceExhaustedError(absl::StrCat(source_name, ": ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::OpenUnchecked(
    const std::string& path) {
  auto invalid = [&path](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
  };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, path, "cannot open");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int error = errno;
    ::close(fd);
    return ErrnoError(error, path, "cannot stat");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid("not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return invalid(
        absl::StrCat("file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  // The whole file is mapped; a process that truncates it while mapped can still cause
  // SIGBUS, which is why WriteSafetensors replaces files by rename rather than rewriting them.
  void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_error = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (addr == MAP_FAILED) return ErrnoError(mmap_error, path, "cannot mmap");
  Mapping mapping(addr, file_size);
  auto file = ParseUnchecked(std::span<const std::byte>(mapping.data(), file_size), path);
  if (!file.ok()) return file.status();
  (*file)->owns_mapping_ = true;
  mapping.Release();
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::ParseUnchecked(
    std::span<const std::byte> file_bytes, std::string path) {
  auto invalid = [&path](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
  };
  const std::byte* base = file_bytes.data();
  const uint64_t file_size = file_bytes.size();
  if (file_size < 8) {
    return invalid(
        absl::StrCat("file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | std::to_integer<uint64_t>(base[i]);
  }
  if (header_size > kMaxHeaderBytes) {
    return invalid(absl::StrCat("header length ", header_size, " exceeds the ", kMaxHeaderBytes,
                                "-byte limit"));
  }
  if (header_size > file_size - 8) {
    return invalid(absl::StrCat("header length ", header_size, " runs past the end of the ",
                                file_size, "-byte file"));
  }
  const auto* header = reinterpret_cast<const char*>(base + 8);
  HeaderParser parser(path);
  if (!parser.Parse(header, header + header_size)) {
    return absl::InvalidArgumentError(parser.error());
  }

  const uint64_t data_begin = 8 + header_size;
  const uint64_t data_size = file_size - data_begin;
  std::vector<SafetensorsEntry> entries;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // data_offsets, parallel to entries
  entries.reserve(parser.entries().size());
  ranges.reserve(parser.entries().size());
  for (RawEntry& raw : parser.entries()) {
    auto tensor_error = [&](absl::string_view message) {
      return invalid(absl::StrCat("tensor ", Quote(raw.name), ": ", message));
    };
    const DTypeInfo* info = LookupDType(raw.dtype);
    if (info == nullptr) return tensor_error(absl::StrCat("unknown dtype ", Quote(raw.dtype)));
    // Negative dims were rejected while parsing; ByteSize relies on that.
    std::optional<uint64_t> bytes = ByteSize(raw.shape, info->size);
    if (!bytes) {
      return tensor_error(absl::StrCat("dtype ", raw.dtype, " shape ", FormatList(raw.shape),
                                       " overflows 64-bit byte size"));
    }
    const uint64_t begin = raw.offsets[0];
    const uint64_t end = raw.offsets[1];
    const std::string offsets = FormatList(raw.offsets);
    if (begin > end) {
      return tensor_error(absl::StrCat("data_offsets ", offsets, " begin is after end"));
    }
    if (end > data_size) {
      return tensor_error(absl::StrCat("data_offsets ", offsets,
                                       " run past the end of the data section (", data_size,
                                       " bytes)"));
    }
    if (end - begin != *bytes) {
      return tensor_error(absl::StrCat("data_offsets ", offsets, " hold ", end - begin,
                                       " bytes but dtype ", raw.dtype, " shape ",
                                       FormatList(raw.shape), " needs ", *bytes));
    }
    ranges.emplace_back(begin, end);
    entries.push_back(SafetensorsEntry{
        .name = std::move(raw.name),
        .dtype_name = std::move(raw.dtype),
        .dtype = info->dtype,
        .shape = std::move(raw.shape),
        .data = std::span<const std::byte>(base + data_begin + begin, static_cast<size_t>(*bytes)),
    });
  }

  // Overlap check: sorted by start, each non-empty range must begin at or after the furthest
  // end seen so far. Empty tensors occupy no bytes and so cannot overlap anything. Gaps are
  // allowed: they waste space but cannot make two tensors alias.
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  std::optional<size_t> furthest;  // the entry with the largest end so far
  for (size_t i : order) {
    if (ranges[i].first == ranges[i].second) continue;
    if (furthest && ranges[i].first < ranges[*furthest].second) {
      auto describe = [&](size_t j) {
        return absl::StrCat(Quote(entries[j].name), " (data_offsets [", ranges[j].first, ", ",
                            ranges[j].second, "])");
      };
      return invalid(
          absl::StrCat("tensors ", describe(*furthest), " and ", describe(i), " overlap"));
    }
    if (!furthest || ranges[i].second > ranges[*furthest].second) furthest = i;
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(std::move(path), base, file_size));
  file->entries_ = std::move(entries);
  for (size_t i = 0; i < file->entries_.size(); ++i) {
    file->index_.emplace(file->entries_[i].name, i);
  }
  file->metadata_ = std::move(parser.metadata());
  return file;
}

const SafetensorsEntry* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

absl::Status SafetensorsFile::ReadF32(const SafetensorsEntry& entry, float* dst) const {
  auto invalid = [&](absl::string_view message) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor ", Quote(entry.name), ": ", message));
  };
  if (!entry.dtype) {
    return invalid(absl::StrCat("dtype ", entry.dtype_name,
                                " cannot be read as f32 (only F32, F16 and BF16 are supported)"));
  }
  // Entries are plain structs, so guard against one from another (possibly closed) file.
  const auto begin = reinterpret_cast<uintptr_t>(entry.data.data());
  const auto map_begin = reinterpret_cast<uintptr_t>(base_);
  if (begin < map_begin || begin - map_begin > size_ ||
      entry.data.size() > size_ - (begin - map_begin)) {
    return invalid("entry does not belong to this file");
  }
  const DType dtype = *entry.dtype;
  const size_t element_size = DTypeSize(dtype);
  if (entry.data.size() % element_size != 0) {
    return invalid(absl::StrCat(entry.data.size(), " bytes is not a whole number of ",
                                SafetensorsDTypeName(dtype), " elements"));
  }
  const size_t count = entry.data.size() / element_size;
  if (count == 0) return absl::OkStatus();
  if (dst == nullptr) return invalid("destination is null");
  if (begin % element_size == 0) {
    ConvertToF32(entry.data.data(), dtype, dst, count);
    return absl::OkStatus();
  }
  // A header whose length is not a multiple of the element size leaves the data misaligned;
  // ConvertToF32 reads 16-bit words directly, so stage through an aligned buffer.
  alignas(8) std::array<std::byte, 4096> staging;
  const size_t chunk = staging.size() / element_size;
  for (size_t done = 0; done < count; done += chunk) {
    const size_t n = std::min(chunk, count - done);
    std::memcpy(staging.data(), entry.data.data() + done * element_size, n * element_size);
    ConvertToF32(staging.data(), dtype, dst + done, n);
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path,
                              std::span<const SafetensorsWriteEntry> entries,
                              const std::map<std::string, std::string>& metadata) {
  auto invalid = [&path](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
  };

  std::string header_text;
  try {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    // First, as the reference writer does, so a reader that peeks at the header sees it early.
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [key, value] : metadata) meta[key] = value;
      header[std::string(kMetadataKey)] = std::move(meta);
    }
    uint64_t offset = 0;
    std::set<std::string_view> names;
    for (const SafetensorsWriteEntry& entry : entries) {
      auto tensor_error = [&](absl::string_view message) {
        return invalid(absl::StrCat("tensor ", Quote(entry.name), ": ", message));
      };
      if (entry.name == kMetadataKey) return tensor_error("name is reserved for metadata");
      if (!names.insert(entry.name).second) return tensor_error("duplicate tensor name");
      for (int64_t dim : entry.shape) {
        if (dim < 0) {
          return tensor_error(
              absl::StrCat("shape ", FormatList(entry.shape), " has negative dimension ", dim));
        }
      }
      std::optional<uint64_t> bytes = ByteSize(entry.shape, DTypeSize(entry.dtype));
      if (!bytes) return tensor_error("byte size overflows 64 bits");
      if (entry.data.size() != *bytes) {
        return tensor_error(absl::StrCat("data is ", entry.data.size(), " bytes but dtype ",
                                         SafetensorsDTypeName(entry.dtype), " shape ",
                                         FormatList(entry.shape), " needs ", *bytes));
      }
      uint64_t end;
      if (__builtin_add_overflow(offset, *bytes, &end)) {
        return tensor_error("data section size overflows 64 bits");
      }
      header[entry.name] = {{"dtype", SafetensorsDTypeName(entry.dtype)},
                            {"shape", entry.shape},
                            {"data_offsets", {offset, end}}};
      offset = end;
    }
    header_text = header.dump();  // throws type_error on invalid UTF-8 in a name or value
  } catch (const nlohmann::json::exception& e) {
    return invalid(absl::StrCat("cannot encode header: ", e.what()));
  } catch (const std::exception& e) {  // allocation failure
    return absl::ResourceExhaustedError(absl::StrCat(path, ": ", e.what()));
  }
  // Padding keeps the data section 8-byte aligned relative to the file start, so mapped
  // tensors are naturally aligned for every dtype.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  if (header_text.size() > kMaxHeaderBytes) {
    return invalid(absl::StrCat("header would be ", header_text.size(),
                                " bytes, over the readers' limit of ", kMaxHeaderBytes));
  }
  std::array<unsigned char, 8> length;
  for (size_t i = 0; i < 8; ++i) {
    length[i] = static_cast<unsigned char>(static_cast<uint64_t>(header_text.size()) >> (8 * i));
  }

  // A unique sibling name, so concurrent writers never share a temporary and rename() stays
  // within one file system.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp_path =
      absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1, std::memory_order_relaxed));
  int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, path, absl::StrCat("cannot create ", tmp_path));
  bool ok = WriteAll(fd, length.data(), length.size()) &&
            WriteAll(fd, header_text.data(), header_text.size());
  for (size_t i = 0; ok && i < entries.size(); ++i) {
    ok = WriteAll(fd, entries[i].data.data(), entries[i].data.size());
  }
  int error = ok ? 0 : errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (ok && ::rename(tmp_path.c_str(), path.c_str()) != 0) {
    ok = false;
    error = errno;
  }
  if (!ok) {
    ::unlink(tmp_path.c_str());
    return ErrnoError(error, path, "write failed");
  }
  return absl::OkStatus();
}

}  // namespace pdserve
