// libFuzzer target: the KV wire format's decoders (transport/kv_frame.h) on arbitrary bytes.
// Every frame header and ack byte comes from the network, so DecodeKvFrameHeader,
// PeekKvFrameHeader and DecodeKvAck must refuse anything malformed without a crash, and what
// they accept must keep the decoder's promises: a header that decodes is within every bound the
// receiver relies on and re-encodes to the same 80 bytes; an ack that decodes re-encodes to the
// same bytes (its zero padding aside) and decodes again to the same ack.
//
// Input: byte 0 selects options, then 80 header bytes, then 128 ack bytes (missing bytes are
// zero). Option bit 0 rewrites the header checksum to match, so the fuzzer explores the checks
// behind it (it cannot invert XXH3 by mutation).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "transport/kv_frame.h"
#include "xxhash.h"

namespace {

using pdserve::KvAck;
using pdserve::KvAckBytes;
using pdserve::KvFrameHeader;
using pdserve::KvFrameHeaderBytes;

constexpr size_t kHeaderChecksumAt = 72;
constexpr size_t kAckReasonBytesAt = 28, kAckReasonAt = 32;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

void FuzzHeader(KvFrameHeaderBytes bytes, bool fix_checksum) {
  if (fix_checksum) {
    const uint64_t sum = XXH3_64bits(bytes.data(), kHeaderChecksumAt);
    for (size_t i = 0; i < 8; ++i) bytes[kHeaderChecksumAt + i] = uint8_t(sum >> (8 * i));
  }
  const KvFrameHeader peeked = pdserve::PeekKvFrameHeader(bytes);  // any bytes: never fails
  const absl::StatusOr<KvFrameHeader> h = pdserve::DecodeKvFrameHeader(bytes);
  if (!h.ok()) {
    Check(h.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  // The bounds the receiver trusts without checking again.
  Check(*h == peeked);
  if (h->link_hello()) {
    // A link hello: its setup bytes in band, no reservation, no token range.
    Check(h->reservation_id == 0 && h->layer == 0 && h->token_begin == 0 && h->token_count == 0);
    Check(h->payload_bytes >= 1 && h->payload_bytes <= pdserve::kKvMaxLinkHelloBytes);
  } else if (h->payload_bytes == 0) {
    // Only a header-only frame (a keepalive) carries no payload, and no token range either.
    Check(h->keepalive());
    Check(h->layer == 0 && h->token_begin == 0 && h->token_count == 0);
  } else {
    Check(h->flags == 0 || h->payload_on_link());
    Check(h->layer < pdserve::kKvMaxLayers);
    Check(h->token_count >= 1);
    Check(uint64_t{h->token_begin} + h->token_count <= pdserve::kKvMaxTokenPosition);
    Check(h->payload_bytes <= pdserve::kKvMaxFramePayloadBytes);
    Check(h->payload_bytes % h->token_count == 0);
    if (h->payload_on_link()) Check(h->payload_xxh3 == 0);  // the link carries no checksum
  }
  Check(!h->ToString().empty());
  // Every byte of a valid header is a field: it re-encodes exactly, and round-trips.
  const KvFrameHeaderBytes again = pdserve::EncodeKvFrameHeader(*h);
  Check(again == bytes);
  const absl::StatusOr<KvFrameHeader> redecoded = pdserve::DecodeKvFrameHeader(again);
  Check(redecoded.ok() && *redecoded == *h);
}

void FuzzAck(const KvAckBytes& bytes) {
  const absl::StatusOr<KvAck> ack = pdserve::DecodeKvAck(bytes);
  if (!ack.ok()) {
    Check(ack.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  uint32_t reason_bytes = 0;
  for (size_t i = 0; i < 4; ++i) reason_bytes |= uint32_t{bytes[kAckReasonBytesAt + i]} << (8 * i);
  Check(reason_bytes <= pdserve::kKvAckReasonBytes);
  Check(ack->status.message().size() == reason_bytes);
  // The same bytes up to the end of the reason, zeros after it.
  const KvAckBytes again = pdserve::EncodeKvAck(*ack);
  const size_t used = kAckReasonAt + reason_bytes;
  Check(std::equal(again.begin(), again.begin() + used, bytes.begin()));
  Check(std::all_of(again.begin() + used, again.end(), [](uint8_t b) { return b == 0; }));
  const absl::StatusOr<KvAck> redecoded = pdserve::DecodeKvAck(again);
  Check(redecoded.ok());
  Check(redecoded->reservation_id == ack->reservation_id && redecoded->layer == ack->layer &&
        redecoded->token_begin == ack->token_begin && redecoded->token_count == ack->token_count &&
        redecoded->status == ack->status);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t options = data[0];
  ++data;
  --size;
  KvFrameHeaderBytes header{};
  std::memcpy(header.data(), data, std::min(size, header.size()));
  FuzzHeader(header, (options & 1) != 0);
  KvAckBytes ack{};
  if (size > header.size()) {
    std::memcpy(ack.data(), data + header.size(), std::min(size - header.size(), ack.size()));
  }
  FuzzAck(ack);
  return 0;
}
