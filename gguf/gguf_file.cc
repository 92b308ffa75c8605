#include "gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

// Values are read with memcpy as host integers; GGUF is little-endian (big-endian GGUF files
// exist but are rare, and are reported as such below).
static_assert(std::endian::native == std::endian::little, "GGUF data is little-endian");

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Nested arrays are legal but nobody writes more than two levels; the cap bounds recursion.
constexpr int kMaxArrayDepth = 8;
// The fewest bytes a record can take, used to reject counts the file cannot hold before any
// memory is reserved for them: a metadata pair is key length (8) + value type (4) + a 1-byte
// value; a tensor record is name length (8) + n_dims (4) + type (4) + offset (8).
constexpr uint64_t kMinKvBytes = 13;
constexpr uint64_t kMinTensorBytes = 24;

constexpr GgmlTypeTraits kGgmlTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},
    {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},
    {GgmlType::kQ4_1, "Q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", 32, 22},
    {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},
    {GgmlType::kQ8_1, "Q8_1", 32, 36},
    {GgmlType::kQ2_K, "Q2_K", 256, 84},
    {GgmlType::kQ3_K, "Q3_K", 256, 110},
    {GgmlType::kQ4_K, "Q4_K", 256, 144},
    {GgmlType::kQ5_K, "Q5_K", 256, 176},
    {GgmlType::kQ6_K, "Q6_K", 256, 210},
    {GgmlType::kQ8_K, "Q8_K", 256, 292},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 66},
    {GgmlType::kIQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 98},
    {GgmlType::kIQ1_S, "IQ1_S", 256, 50},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 18},
    {GgmlType::kIQ3_S, "IQ3_S", 256, 110},
    {GgmlType::kIQ2_S, "IQ2_S", 256, 82},
    {GgmlType::kIQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::kI8, "I8", 1, 1},
    {GgmlType::kI16, "I16", 1, 2},
    {GgmlType::kI32, "I32", 1, 4},
    {GgmlType::kI64, "I64", 1, 8},
    {GgmlType::kF64, "F64", 1, 8},
    {GgmlType::kIQ1_M, "IQ1_M", 256, 56},
    {GgmlType::kBF16, "BF16", 1, 2},
    {GgmlType::kTQ1_0, "TQ1_0", 256, 54},
    {GgmlType::kTQ2_0, "TQ2_0", 256, 66},
    {GgmlType::kMXFP4, "MXFP4", 32, 17},
};

// Bytes of one numeric or bool value; 0 for strings and arrays.
uint64_t ScalarBytes(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

bool IsValidType(uint32_t type) { return type <= static_cast<uint32_t>(GgufType::kFloat64); }

// Names and keys come from untrusted files and end up in logs: control bytes are escaped and
// very long names cut, so a message stays one readable line.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 96;
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += s[i];
    }
  }
  if (s.size() > kMaxShown)
    absl::StrAppend(&out, "...' (", s.size(), " bytes)");
  else
    out += "'";
  return out;
}

#define GGUF_RETURN_IF_ERROR(expr)            \
  do {                                        \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                              \
    }                                         \
  } while (0)

// Sequential reads over the file, each checked against its end. `what` names the field read
// in the error.
class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const std::string& source)
      : bytes_(bytes), source_(source) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
  }

  template <typename T>
  absl::Status Read(T& out, absl::string_view what) {
    if (remaining() < sizeof(T)) return Truncated(what, sizeof(T));
    std::memcpy(&out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  // `n` bytes in place; the caller has checked n <= remaining().
  std::span<const uint8_t> Take(uint64_t n) {
    auto span = bytes_.subspan(pos_, n);
    pos_ += n;
    return span;
  }

  absl::Status ReadString(std::string& out, absl::string_view what) {
    uint64_t length = 0;
    GGUF_RETURN_IF_ERROR(Read(length, what));
    if (length > remaining()) {
      return Error(absl::StrCat(what, ": string length ", length, " at offset ", pos_ - 8,
                                " runs past the end of the file (", bytes_.size(),
                                " bytes); the file is truncated or corrupt"));
    }
    auto span = Take(length);
    out.assign(reinterpret_cast<const char*>(span.data()), span.size());
    return absl::OkStatus();
  }

 private:
  absl::Status Truncated(absl::string_view what, uint64_t need) const {
    return Error(absl::StrCat("truncated: ", what, " at offset ", pos_, " needs ", need,
                              " bytes but the file ends at ", bytes_.size()));
  }

  std::span<const uint8_t> bytes_;
  const std::string& source_;
  uint64_t pos_ = 0;
};

absl::Status ReadValue(Reader& r, GgufType type, int depth, absl::string_view what, GgufValue& out);

absl::Status ReadArray(Reader& r, int depth, absl::string_view what, GgufArray& out) {
  if (depth >= kMaxArrayDepth) {
    return r.Error(absl::StrCat(what, ": arrays nested more than ", kMaxArrayDepth, " deep"));
  }
  uint32_t element_type = 0;
  GGUF_RETURN_IF_ERROR(r.Read(element_type, what));
  if (!IsValidType(element_type)) {
    return r.Error(absl::StrCat(what, ": array has unknown element type ", element_type));
  }
  out.element_type = static_cast<GgufType>(element_type);
  GGUF_RETURN_IF_ERROR(r.Read(out.size, what));
  // Every element takes at least this many bytes, so the count is bounded by the file before
  // anything is reserved for it.
  const uint64_t min_bytes = out.element_type == GgufType::kString  ? 8
                             : out.element_type == GgufType::kArray ? 12
                                                                    : ScalarBytes(out.element_type);
  if (out.size > r.remaining() / min_bytes) {
    return r.Error(absl::StrCat(what, ": array of ", out.size, " ", GgufTypeName(out.element_type),
                                " elements needs at least ", min_bytes, " bytes each but only ",
                                r.remaining(), " bytes remain in the file"));
  }
  switch (out.element_type) {
    case GgufType::kString:
      out.strings.resize(out.size);
      for (std::string& s : out.strings) GGUF_RETURN_IF_ERROR(r.ReadString(s, what));
      return absl::OkStatus();
    case GgufType::kArray:
      out.arrays.resize(out.size);
      for (GgufArray& a : out.arrays) GGUF_RETURN_IF_ERROR(ReadArray(r, depth + 1, what, a));
      return absl::OkStatus();
    default:
      out.raw = r.Take(out.size * min_bytes);
      return absl::OkStatus();
  }
}

template <typename T, size_t kIndex>
absl::Status ReadScalar(Reader& r, absl::string_view what, GgufValue& out) {
  T v{};
  GGUF_RETURN_IF_ERROR(r.Read(v, what));
  out.emplace<kIndex>(v);
  return absl::OkStatus();
}

absl::Status ReadValue(Reader& r, GgufType type, int depth, absl::string_view what,
                       GgufValue& out) {
  switch (type) {
    case GgufType::kUint8:
      return ReadScalar<uint8_t, 0>(r, what, out);
    case GgufType::kInt8:
      return ReadScalar<int8_t, 1>(r, what, out);
    case GgufType::kUint16:
      return ReadScalar<uint16_t, 2>(r, what, out);
    case GgufType::kInt16:
      return ReadScalar<int16_t, 3>(r, what, out);
    case GgufType::kUint32:
      return ReadScalar<uint32_t, 4>(r, what, out);
    case GgufType::kInt32:
      return ReadScalar<int32_t, 5>(r, what, out);
    case GgufType::kFloat32:
      return ReadScalar<float, 6>(r, what, out);
    case GgufType::kBool: {
      uint8_t b = 0;
      GGUF_RETURN_IF_ERROR(r.Read(b, what));
      out.emplace<7>(b != 0);
      return absl::OkStatus();
    }
    case GgufType::kString:
      return r.ReadString(out.emplace<8>(), what);
    case GgufType::kArray:
      return ReadArray(r, depth, what, out.emplace<9>());
    case GgufType::kUint64:
      return ReadScalar<uint64_t, 10>(r, what, out);
    case GgufType::kInt64:
      return ReadScalar<int64_t, 11>(r, what, out);
    case GgufType::kFloat64:
      return ReadScalar<double, 12>(r, what, out);
  }
  return r.Error(absl::StrCat(what, ": unknown value type"));  // callers check the type first
}

// A tensor record as read, before its byte range is known.
struct RawTensor {
  GgufTensorInfo info;
  uint64_t bytes = 0;
};

absl::Status ReadTensorInfo(Reader& r, uint64_t index, RawTensor& out) {
  GgufTensorInfo& t = out.info;
  const std::string record = absl::StrCat("tensor record #", index);
  GGUF_RETURN_IF_ERROR(r.ReadString(t.name, absl::StrCat(record, " name")));
  const std::string what = absl::StrCat("tensor ", Quote(t.name));
  uint32_t n_dims = 0;
  GGUF_RETURN_IF_ERROR(r.Read(n_dims, what));
  if (n_dims > kMaxDims) {
    return r.Error(
        absl::StrCat(what, " has ", n_dims, " dimensions; GGUF allows at most ", kMaxDims));
  }
  uint64_t numel = 1;
  bool overflow = false;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t dim = 0;
    GGUF_RETURN_IF_ERROR(r.Read(dim, what));
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return r.Error(
          absl::StrCat(what, " dimension ", d, " is ", dim, ", which does not fit int64"));
    }
    t.dims.push_back(static_cast<int64_t>(dim));
    overflow |= __builtin_mul_overflow(numel, dim, &numel);
  }
  uint32_t type = 0;
  GGUF_RETURN_IF_ERROR(r.Read(type, what));
  GGUF_RETURN_IF_ERROR(r.Read(t.offset, what));
  const GgmlTypeTraits* traits = FindGgmlType(type);
  if (traits == nullptr) {
    return r.Error(absl::StrCat(what, " has unknown ggml type ", type,
                                " (newer than this reader, or removed from ggml)"));
  }
  t.type = traits->type;
  std::string shape = "[";
  for (size_t d = 0; d < t.dims.size(); ++d) absl::StrAppend(&shape, d ? ", " : "", t.dims[d]);
  shape += "]";
  if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return r.Error(absl::StrCat(what, " dims ", shape, " overflow the element count"));
  }
  const uint64_t block = static_cast<uint64_t>(traits->block_size);
  const uint64_t row = t.dims.empty() ? 1 : static_cast<uint64_t>(t.dims[0]);
  if (row % block != 0) {
    return r.Error(absl::StrCat(what, " dims ", shape, ": rows of ", row, " elements are not a ",
                                "whole number of ", traits->name, " blocks (", block,
                                " elements each)"));
  }
  if (__builtin_mul_overflow(numel / block, static_cast<uint64_t>(traits->block_bytes),
                             &out.bytes)) {
    return r.Error(absl::StrCat(what, " dims ", shape, " overflow the byte size"));
  }
  t.num_elements = static_cast<int64_t>(numel);
  return absl::OkStatus();
}

// Gives each tensor its bytes, checking alignment, bounds and overlap.
absl::Status PlaceTensors(std::span<const uint8_t> bytes, const std::string& source,
                          uint64_t data_start, uint64_t alignment, std::vector<RawTensor>& raw) {
  auto error = [&](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
  };
  const uint64_t size = bytes.size();
  for (RawTensor& t : raw) {
    GgufTensorInfo& info = t.info;
    const std::string what = absl::StrCat("tensor ", Quote(info.name));
    if (info.offset % alignment != 0) {
      return error(absl::StrCat(what, " data offset ", info.offset,
                                " is not a multiple of the file's alignment (", alignment, ")"));
    }
    uint64_t begin = 0, end = 0;
    if (__builtin_add_overflow(data_start, info.offset, &begin) ||
        __builtin_add_overflow(begin, t.bytes, &end) || end > size) {
      return error(absl::StrCat(what, " data [offset ", info.offset, ", ", t.bytes,
                                " bytes] ends past the end of the file (", size,
                                " bytes); the file is truncated"));
    }
    info.data = bytes.subspan(begin, t.bytes);
  }
  // Sorted by start, each non-empty tensor must begin at or after the furthest end so far.
  std::vector<size_t> order(raw.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return raw[a].info.offset < raw[b].info.offset; });
  const RawTensor* furthest = nullptr;
  for (size_t i : order) {
    const RawTensor& t = raw[i];
    if (t.bytes == 0) continue;
    if (furthest != nullptr && t.info.offset < furthest->info.offset + furthest->bytes) {
      auto describe = [](const RawTensor& x) {
        return absl::StrCat(Quote(x.info.name), " [offset ", x.info.offset, ", ", x.bytes,
                            " bytes]");
      };
      return error(absl::StrCat("tensors ", describe(*furthest), " and ", describe(t), " overlap"));
    }
    if (furthest == nullptr || t.info.offset + t.bytes > furthest->info.offset + furthest->bytes) {
      furthest = &t;
    }
  }
  return absl::OkStatus();
}

template <typename T>
T LoadElement(const GgufArray& a, uint64_t i) {
  T v;
  std::memcpy(&v, a.raw.data() + i * sizeof(T), sizeof(T));
  return v;
}

// The value as int64 when it is an integer of any width that fits.
std::optional<int64_t> AsInt(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_same_v<T, uint64_t>) {
            if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
          }
          return static_cast<int64_t>(x);
        } else {
          return std::nullopt;
        }
      },
      v);
}

}  // namespace

const char* GgufTypeName(GgufType type) {
  static constexpr const char* kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                           "int32",  "float32", "bool",   "string", "array",
                                           "uint64", "int64",   "float64"};
  const auto i = static_cast<uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

const GgmlTypeTraits* FindGgmlType(uint32_t type) {
  for (const GgmlTypeTraits& t : kGgmlTypes) {
    if (static_cast<uint32_t>(t.type) == type) return &t;
  }
  return nullptr;
}

const GgmlTypeTraits& TraitsOf(GgmlType type) {
  const GgmlTypeTraits* t = FindGgmlType(static_cast<uint32_t>(type));
  return t != nullptr ? *t : kGgmlTypes[0];  // only reachable with a cast-in invalid value
}

std::optional<std::vector<int64_t>> IntElements(const GgufArray& a) {
  std::vector<int64_t> out(a.size);
  for (uint64_t i = 0; i < a.size; ++i) {
    GgufValue v;
    switch (a.element_type) {
      case GgufType::kUint8:
        v = LoadElement<uint8_t>(a, i);
        break;
      case GgufType::kInt8:
        v = LoadElement<int8_t>(a, i);
        break;
      case GgufType::kUint16:
        v = LoadElement<uint16_t>(a, i);
        break;
      case GgufType::kInt16:
        v = LoadElement<int16_t>(a, i);
        break;
      case GgufType::kUint32:
        v = LoadElement<uint32_t>(a, i);
        break;
      case GgufType::kInt32:
        v = LoadElement<int32_t>(a, i);
        break;
      case GgufType::kUint64:
        v = LoadElement<uint64_t>(a, i);
        break;
      case GgufType::kInt64:
        v = LoadElement<int64_t>(a, i);
        break;
      default:
        return std::nullopt;
    }
    std::optional<int64_t> x = AsInt(v);
    if (!x) return std::nullopt;
    out[i] = *x;
  }
  return out;
}

std::optional<std::vector<float>> FloatElements(const GgufArray& a) {
  if (a.element_type != GgufType::kFloat32 && a.element_type != GgufType::kFloat64) {
    return std::nullopt;
  }
  std::vector<float> out(a.size);
  for (uint64_t i = 0; i < a.size; ++i) {
    out[i] = a.element_type == GgufType::kFloat32 ? LoadElement<float>(a, i)
                                                  : static_cast<float>(LoadElement<double>(a, i));
  }
  return out;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* addr = nullptr;
  if (size > 0) {
    // A process that truncates the file while it is mapped can still cause SIGBUS; model files
    // are replaced, not rewritten in place.
    addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int error = errno;
    ::close(fd);
    if (addr == MAP_FAILED) return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot mmap"));
  } else {
    ::close(fd);
  }
  auto file = Parse(std::span<const uint8_t>(static_cast<const uint8_t*>(addr), size), path);
  if (!file.ok()) {
    if (addr != nullptr) ::munmap(addr, size);
    return file.status();
  }
  (*file)->mapping_ = addr;
  (*file)->mapping_size_ = size;
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const uint8_t> bytes,
                                                          std::string source_name) {
  // Only allocation can throw; every count is bounded by the file size first, so this is a
  // file too large for the memory at hand, not a hostile count.
  try {
    return ParseUnchecked(bytes, source_name);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(source_name, ": out of memory while parsing"));
  }
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::ParseUnchecked(std::span<const uint8_t> bytes,
                                                                   std::string source_name) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->source_name_ = std::move(source_name);
  const std::string& source = file->source_name_;
  Reader r(bytes, source);

  uint32_t magic = 0;
  if (bytes.size() < 4) {
    return r.Error(absl::StrCat("file is ", bytes.size(), " bytes, too short to be a GGUF file"));
  }
  GGUF_RETURN_IF_ERROR(r.Read(magic, "magic"));
  if (magic != kMagic) {
    std::string shown;
    for (size_t i = 0; i < 4; ++i) {
      absl::StrAppend(&shown, i ? " " : "", absl::Hex(bytes[i], absl::kZeroPad2));
    }
    return r.Error(absl::StrCat("not a GGUF file: starts with bytes ", shown,
                                ", expected \"GGUF\" (47 47 55 46)"));
  }
  GGUF_RETURN_IF_ERROR(r.Read(file->version_, "header version"));
  const uint32_t version = file->version_;
  if (version == 1) {
    return r.Error(
        "GGUF version 1 is not supported (it predates 64-bit counts); re-convert the model "
        "with a current llama.cpp");
  }
  if (version != 2 && version != 3) {
    const bool swapped = (version & 0xffffu) == 0 && ((version >> 24) == 2 || (version >> 24) == 3);
    return r.Error(absl::StrCat("GGUF version ", version, " is not supported; pdserve reads ",
                                "versions 2 and 3",
                                swapped ? " (this looks like a big-endian file, which it does "
                                          "not read)"
                                        : ""));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  GGUF_RETURN_IF_ERROR(r.Read(n_tensors, "header tensor count"));
  GGUF_RETURN_IF_ERROR(r.Read(n_kv, "header metadata count"));
  if (n_kv > r.remaining() / kMinKvBytes ||
      n_tensors > (r.remaining() - n_kv * kMinKvBytes) / kMinTensorBytes) {
    return r.Error(absl::StrCat("header claims ", n_tensors, " tensors and ", n_kv,
                                " metadata entries but only ", r.remaining(),
                                " bytes follow it; the header is corrupt"));
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    GGUF_RETURN_IF_ERROR(r.ReadString(key, absl::StrCat("metadata key #", i)));
    const std::string what = absl::StrCat("metadata ", Quote(key));
    uint32_t type = 0;
    GGUF_RETURN_IF_ERROR(r.Read(type, what));
    if (!IsValidType(type)) {
      return r.Error(absl::StrCat(what, " has unknown value type ", type));
    }
    GgufValue value;
    GGUF_RETURN_IF_ERROR(ReadValue(r, static_cast<GgufType>(type), 0, what, value));
    if (!file->metadata_.emplace(std::move(key), std::move(value)).second) {
      return r.Error(absl::StrCat(what, " appears twice"));
    }
  }
  if (const GgufValue* a = file->Find("general.alignment")) {
    const auto* v = std::get_if<uint32_t>(a);
    if (v == nullptr || *v == 0 || !std::has_single_bit(*v)) {
      return r.Error(
          "metadata 'general.alignment' must be a uint32 power of two (GGUF's default is 32)");
    }
    file->alignment_ = *v;
  } else {
    file->alignment_ = kDefaultAlignment;
  }

  std::vector<RawTensor> raw(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GGUF_RETURN_IF_ERROR(ReadTensorInfo(r, i, raw[i]));
    if (!file->tensor_index_.emplace(raw[i].info.name, i).second) {
      return r.Error(absl::StrCat("tensor ", Quote(raw[i].info.name), " appears twice"));
    }
  }
  // The data section starts at the next multiple of the alignment (pos < 2^63 here).
  const uint64_t align = file->alignment_;
  const uint64_t data_start = (r.pos() + align - 1) / align * align;
  GGUF_RETURN_IF_ERROR(PlaceTensors(bytes, source, data_start, align, raw));
  file->tensors_.reserve(raw.size());
  for (RawTensor& t : raw) file->tensors_.push_back(std::move(t.info));
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::optional<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v != nullptr ? AsInt(*v) : std::nullopt;
}

std::optional<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return std::nullopt;
  if (const auto* f = std::get_if<float>(v)) return *f;
  if (const auto* d = std::get_if<double>(v)) return *d;
  return std::nullopt;
}

std::optional<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return std::nullopt;
  if (const auto* b = std::get_if<bool>(v)) return *b;
  return std::nullopt;
}

const std::string* GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v != nullptr ? std::get_if<std::string>(v) : nullptr;
}

const GgufArray* GgufFile::GetArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v != nullptr ? std::get_if<GgufArray>(v) : nullptr;
}

const std::vector<std::string>* GgufFile::GetStringArray(std::string_view key) const {
  const GgufArray* a = GetArray(key);
  return a != nullptr && a->element_type == GgufType::kString ? &a->strings : nullptr;
}

std::optional<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufArray* a = GetArray(key);
  return a != nullptr ? IntElements(*a) : std::nullopt;
}

std::optional<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  const GgufArray* a = GetArray(key);
  return a != nullptr ? FloatElements(*a) : std::nullopt;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace pdserve
