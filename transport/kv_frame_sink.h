// Where a KV receiver puts the frames it reads: the transport moves payload bytes into memory a
// KvFrameSink names and knows nothing else of what that memory is (the decode worker's
// ReservedBlocksSink maps it onto its KV cache blocks).
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transport/kv_frame.h"

namespace pdserve {

// Where received frames go. The receiver calls Admit with a decoded header before reading any
// payload byte, reads the payload straight into the spans Admit returned (computing the
// checksum as it goes), then calls Complete exactly once for every admitted frame.
// Thread-safety: implementations must be thread-safe (receivers call from their own threads).
class KvFrameSink {
 public:
  virtual ~KvFrameSink() = default;

  // Validates `header` (reservation, secret, request, layer, token range, byte length) and
  // returns where each payload byte goes, in payload order; the sizes add up to
  // header.payload_bytes. The spans stay valid until Complete. An error rejects the frame and
  // nothing is written; its message is sent back to the sender.
  virtual absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& header) = 0;
  // Ends an admitted frame: OK when the payload arrived and its checksum matched, DATA_LOSS on a
  // checksum mismatch, UNAVAILABLE when the connection broke mid-payload. On success returns
  // OK; otherwise (or when the sink refuses the completed frame) the status to nack with.
  virtual absl::Status Complete(const KvFrameHeader& header, absl::Status status) = 0;
};

}  // namespace pdserve
