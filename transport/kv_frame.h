// The KV transfer wire format: one frame per (request, layer, token range), pushed by the
// prefill worker into blocks the decode worker reserved, and one ack per frame going back.
// Pure encode/decode functions; no I/O.
//
// Frame = 80-byte header + payload. Every integer is little-endian.
//
//   offset size  field
//        0    4  magic           "PDKF" (0x50 0x44 0x4B 0x46)
//        4    2  version         1
//        6    2  header_bytes    80 (lets a later version grow the header)
//        8    8  reservation_id  issued by the decode worker's Reserve
//       16   16  secret          issued with the reservation (random, unguessable)
//       32    8  request_hash    RequestIdHash(request id): XXH3-64 of its bytes, seed 0
//       40    4  layer           0 .. num_layers - 1
//       44    4  token_begin     first token position of the range
//       48    4  token_count     >= 1 tokens in the range
//       52    4  flags           0, or one of kKvFrameKeepalive, kKvFrameLinkHello,
//                                kKvFramePayloadOnLink (other bits reserved, must be 0)
//       56    8  payload_bytes   == format.bytes_per_token_per_layer() * token_count
//       64    8  payload_xxh3    XXH3-64 (seed 0) of the payload bytes
//       72    8  header_xxh3     XXH3-64 (seed 0) of header bytes [0, 72)
//
// Payload: for full K/V formats the K rows of tokens [token_begin, token_begin + token_count)
// of that layer, then their V rows; for MLA the latent rows (c_kv then k_pe per token). Rows
// are the KvStore's storage dtype and width, so the payload is exactly the format's KV bytes:
// the wire carries format.bytes_per_token() * tokens + frames * kKvFrameHeaderBytes per request.
//
// A keepalive frame (flags = kKvFrameKeepalive) renews its reservation's lease while the prefill
// worker queues or computes the prompt: layer, token_begin, token_count and payload_bytes are 0,
// payload_xxh3 is the checksum of no bytes, and it is acked like any frame. A reservation that
// hears nothing (no frame, no keepalive) for its lease is reclaimed.
//
// A payload link (kv_payload_link.h: NCCL, CUDA IPC) carries payloads beside the connection:
//  - the link hello (flags = kKvFrameLinkHello) is a connection's first frame; its payload, in
//    band, is the link's name, a 0 byte, then the link's setup bytes (at most
//    kKvMaxLinkHelloBytes in all); reservation, layer and token fields are 0. The receiver joins
//    the link, then acks: OK, or why it cannot (it does not run that link, the setup failed).
//  - a frame with flags = kKvFramePayloadOnLink is a KV frame whose payload_bytes travel on the
//    connection's link, not after the header; payload_xxh3 is 0 (the link moves exactly
//    payload_bytes, or fails or stalls, which the receiver's payload deadline catches). The
//    receiver posts the link's receive only after Admit, so a rejected frame's payload is
//    drained from the link and dropped.
//
// The header checksum lets the receiver tell a corrupt or desynchronized stream (whose
// payload length cannot be trusted, so the connection is closed) from a well-formed frame that
// a reservation rejects (its payload is skipped and the connection keeps serving).
//
// Ack = 128 bytes, receiver -> sender, one per frame in the order the frames arrived:
//
//   offset size  field
//        0    4  magic           "PDKA"
//        4    2  version         1
//        6    2  status_code     absl::StatusCode (0 = accepted)
//        8    8  reservation_id  echoed from the frame
//       16    4  layer           echoed
//       20    4  token_begin     echoed
//       24    4  token_count     echoed
//       28    4  reason_bytes    <= 96
//       32   96  reason          UTF-8, zero-padded: why the frame was rejected (truncated)
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pdserve {

inline constexpr uint32_t kKvFrameMagic = 0x464B4450;  // "PDKF" read as a little-endian u32
inline constexpr uint32_t kKvAckMagic = 0x414B4450;    // "PDKA"
inline constexpr uint16_t kKvWireVersion = 1;
inline constexpr uint32_t kKvFrameKeepalive = 1;      // flags: a header-only lease renewal
inline constexpr uint32_t kKvFrameLinkHello = 2;      // flags: sets up the payload link
inline constexpr uint32_t kKvFramePayloadOnLink = 4;  // flags: the payload travels on the link
inline constexpr uint64_t kKvMaxLinkHelloBytes = 4096;
inline constexpr size_t kKvFrameHeaderBytes = 80;
inline constexpr size_t kKvAckBytes = 128;
inline constexpr size_t kKvAckReasonBytes = 96;
// Bounds that reject absurd headers before anything is allocated or read. A sender splits a
// larger layer into several token ranges.
inline constexpr uint64_t kKvMaxFramePayloadBytes = uint64_t{1} << 30;
inline constexpr uint32_t kKvMaxLayers = 1 << 12;
inline constexpr uint32_t kKvMaxTokenPosition = 1u << 30;  // token_begin + token_count bound

// The unguessable half of a reservation: 16 random bytes from the OS, compared in constant
// time. Thread-safety: a plain value.
struct ReservationSecret {
  std::array<uint8_t, 16> bytes{};

  // 16 bytes from getrandom(2); aborts if the OS has no entropy source (a broken host).
  static ReservationSecret Random();
  // From the 16 bytes a Reservation message carries; INVALID_ARGUMENT for any other length.
  static absl::StatusOr<ReservationSecret> FromBytes(std::string_view bytes);
  std::string ToBytes() const;
  // Constant time, so a forger learns nothing from how long a rejection takes.
  bool operator==(const ReservationSecret& other) const;
};

// XXH3-64 (seed 0) of a request id: what frames carry to name their request.
uint64_t RequestIdHash(std::string_view request_id);

// A decoded frame header (see the layout above). Thread-safety: a plain value.
struct KvFrameHeader {
  uint64_t reservation_id = 0;
  ReservationSecret secret;
  uint64_t request_hash = 0;
  uint32_t layer = 0;
  uint32_t token_begin = 0;
  uint32_t token_count = 0;
  uint64_t payload_bytes = 0;
  uint64_t payload_xxh3 = 0;
  uint32_t flags = 0;  // 0 or one kKvFrame* flag

  bool keepalive() const { return (flags & kKvFrameKeepalive) != 0; }
  bool link_hello() const { return (flags & kKvFrameLinkHello) != 0; }
  bool payload_on_link() const { return (flags & kKvFramePayloadOnLink) != 0; }
  // "reservation 7 layer 3 tokens [0, 512)", for logs and error messages.
  std::string ToString() const;
  bool operator==(const KvFrameHeader&) const = default;
};

using KvFrameHeaderBytes = std::array<uint8_t, kKvFrameHeaderBytes>;
using KvAckBytes = std::array<uint8_t, kKvAckBytes>;

// Writes `header` (with the header checksum). It does not validate: a header that
// DecodeKvFrameHeader would reject encodes as is, which is what the tests forge frames with.
KvFrameHeaderBytes EncodeKvFrameHeader(const KvFrameHeader& header);
// Parses and validates a header: magic, version, size, header checksum, known flags, token range
// (count >= 1, end <= kKvMaxTokenPosition), layer < kKvMaxLayers, payload_bytes in
// [1, kKvMaxFramePayloadBytes] and a whole number of bytes per token; for a keepalive, every
// one of those fields 0; for a link hello, those fields and the reservation 0 and payload_bytes
// in [1, kKvMaxLinkHelloBytes]; for a payload on the link, payload_xxh3 0. INVALID_ARGUMENT (saying
// which field is wrong) otherwise; then the payload length cannot be trusted.
absl::StatusOr<KvFrameHeader> DecodeKvFrameHeader(
    std::span<const uint8_t, kKvFrameHeaderBytes> bytes);
// The fields as written, unvalidated: only to echo them in the ack of a rejected header.
KvFrameHeader PeekKvFrameHeader(std::span<const uint8_t, kKvFrameHeaderBytes> bytes);

// XXH3-64 (seed 0) of a payload given as spans in payload order (what payload_xxh3 holds).
uint64_t PayloadChecksum(std::span<const std::span<const std::byte>> payload);

// Streaming XXH3-64 for a payload that arrives piece by piece. Thread-safety: one user.
class PayloadHasher {
 public:
  PayloadHasher();
  ~PayloadHasher();
  PayloadHasher(const PayloadHasher&) = delete;
  PayloadHasher& operator=(const PayloadHasher&) = delete;

  void Update(const void* data, size_t size);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t, kept out of this header
};

// The receiver's verdict on one frame.
struct KvAck {
  uint64_t reservation_id = 0;
  uint32_t layer = 0;
  uint32_t token_begin = 0;
  uint32_t token_count = 0;
  absl::Status status;  // the message is truncated to kKvAckReasonBytes on the wire

  // The ack of `header` with `status`.
  static KvAck For(const KvFrameHeader& header, absl::Status status);
  // Whether this ack answers `header` (same reservation, layer and token range).
  bool Answers(const KvFrameHeader& header) const;
};

KvAckBytes EncodeKvAck(const KvAck& ack);
// INVALID_ARGUMENT for a bad magic, version, status code or reason length.
absl::StatusOr<KvAck> DecodeKvAck(std::span<const uint8_t, kKvAckBytes> bytes);

// Total bytes of a frame payload given as `spans`.
size_t SpansBytes(std::span<const std::span<std::byte>> spans);
size_t SpansBytes(std::span<const std::span<const std::byte>> spans);

// The same spans, read-only (what a sender takes).
std::vector<std::span<const std::byte>> AsConstSpans(std::span<const std::span<std::byte>> spans);

}  // namespace pdserve
