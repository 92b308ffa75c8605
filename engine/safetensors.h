// Reading and writing .safetensors checkpoints (the Hugging Face weight format).
//
// Layout: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON mapping tensor
// names to {"dtype", "shape", "data_offsets"} (plus an optional "__metadata__" object of
// strings), then the data section; offsets are relative to the start of the data section.
// Files are memory-mapped rather than read so that multi-gigabyte checkpoints cost no copy
// and pages are shared between processes serving the same model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace pdserve {

// One tensor record from a safetensors header. `data` points into the mapped file and stays
// valid for as long as the SafetensorsFile that produced the entry.
struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;           // as in the file: "F32", "BF16", "I64", ...
  std::optional<DType> dtype;       // set for F32/F16/BF16, the dtypes pdserve loads
  std::vector<int64_t> shape;       // empty for a scalar
  std::span<const std::byte> data;  // exactly numel * element size bytes
};

// A read-only, memory-mapped .safetensors file with a fully validated header: every entry has
// a known dtype, non-negative dims, and a byte range inside the data section that matches its
// shape and overlaps no other tensor, so callers may use `data` without further checks.
// Thread-safety: immutable after Open; safe to read from many threads.
class SafetensorsFile {
 public:
  // Maps and validates `path`. NotFound when the file is missing (other system errors map
  // from errno), InvalidArgument (naming the file and, where relevant, the tensor) when it is
  // malformed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates a file already in memory, without copying: `bytes` must outlive the result (and
  // its entries' data). `source_name` names the file in errors and is path().
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::span<const std::byte> bytes,
                                                                std::string source_name);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();  // unmaps what Open mapped; entries' data spans dangle afterwards

  const std::string& path() const { return path_; }
  // In file-header order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // nullptr when absent.
  const SafetensorsEntry* Find(std::string_view name) const;
  // The "__metadata__" object (string values); empty when the file has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Converts the entry (one of this file's) to f32 into dst, which must hold numel floats.
  // InvalidArgument naming the file, tensor and dtype when the dtype is not F32/F16/BF16.
  absl::Status ReadF32(const SafetensorsEntry& entry, float* dst) const;

 private:
  SafetensorsFile(std::string path, const std::byte* base, size_t size);
  // Open and Parse without the exception guard.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenUnchecked(const std::string& path);
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> ParseUnchecked(
      std::span<const std::byte> file_bytes, std::string path);

  std::string path_;
  const std::byte* base_;      // start of the file's bytes
  size_t size_;                // the whole file
  bool owns_mapping_ = false;  // base_ is a mapping Open made, unmapped with this object
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in entries_
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: `data` is numel * DTypeSize(dtype) bytes, already in `dtype`.
struct SafetensorsWriteEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// Writes a valid .safetensors file: header JSON padded with spaces to a multiple of 8 bytes
// (so the data section is 8-byte aligned in the file), tensors contiguous in the given order,
// offsets relative to the data section. The file is written under a temporary name and
// renamed into place, so a process that has the old file mapped never sees it truncated.
// InvalidArgument for duplicate or reserved names, negative dims, or a data size mismatch.
absl::Status WriteSafetensors(const std::string& path,
                              std::span<const SafetensorsWriteEntry> entries,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace pdserve
