#include "transport/kv_frame.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

// XXH3 through libxxhash's x86 dispatcher (xxh_x86dispatch.h renames the calls below): the
// checksum runs over every KV byte on both sides, and the library picks its SSE2, AVX2 or
// AVX-512 loop for the CPU at run time, so one portable build hashes at the CPU's full speed.
#include "xxh_x86dispatch.h"
#include "xxhash.h"

namespace pdserve {
namespace {

// Field offsets (see the layout in kv_frame.h).
constexpr size_t kMagicAt = 0, kVersionAt = 4, kHeaderBytesAt = 6, kReservationAt = 8,
                 kSecretAt = 16, kRequestHashAt = 32, kLayerAt = 40, kTokenBeginAt = 44,
                 kTokenCountAt = 48, kFlagsAt = 52, kPayloadBytesAt = 56, kPayloadXxh3At = 64,
                 kHeaderXxh3At = 72;
constexpr size_t kAckStatusAt = 6, kAckReservationAt = 8, kAckLayerAt = 16, kAckTokenBeginAt = 20,
                 kAckTokenCountAt = 24, kAckReasonBytesAt = 28, kAckReasonAt = 32;

template <typename T>
void Put(uint8_t* out, size_t at, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out[at + i] = static_cast<uint8_t>(static_cast<uint64_t>(value) >> (8 * i));
  }
}

template <typename T>
T Get(const uint8_t* in, size_t at) {
  uint64_t value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<uint64_t>(in[at + i]) << (8 * i);
  return static_cast<T>(value);
}

absl::Status BadHeader(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed KV frame header: ", what,
                                                 "; the sender must speak pdserve KV wire version ",
                                                 kKvWireVersion, " (see transport/kv_frame.h)"));
}

}  // namespace

ReservationSecret ReservationSecret::Random() {
  ReservationSecret secret;
  size_t filled = 0;
  while (filled < secret.bytes.size()) {
    const ssize_t n = getrandom(secret.bytes.data() + filled, secret.bytes.size() - filled, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Without an entropy source reservations could be forged: refuse to run.
      std::fprintf(stderr, "getrandom failed: %s; pdserve needs the OS random source\n",
                   std::strerror(errno));
      std::abort();
    }
    filled += static_cast<size_t>(n);
  }
  return secret;
}

absl::StatusOr<ReservationSecret> ReservationSecret::FromBytes(std::string_view bytes) {
  ReservationSecret secret;
  if (bytes.size() != secret.bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reservation secret has ", bytes.size(), " bytes, expected ",
                     secret.bytes.size(), "; pass the secret exactly as Reserve returned it"));
  }
  std::memcpy(secret.bytes.data(), bytes.data(), secret.bytes.size());
  return secret;
}

std::string ReservationSecret::ToBytes() const {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

bool ReservationSecret::operator==(const ReservationSecret& other) const {
  uint8_t diff = 0;
  for (size_t i = 0; i < bytes.size(); ++i) diff |= bytes[i] ^ other.bytes[i];
  return diff == 0;
}

uint64_t RequestIdHash(std::string_view request_id) {
  return XXH3_64bits(request_id.data(), request_id.size());
}

std::string KvFrameHeader::ToString() const {
  if (keepalive()) return absl::StrCat("reservation ", reservation_id, " keepalive");
  if (link_hello()) return "payload link hello";
  return absl::StrCat("reservation ", reservation_id, " layer ", layer, " tokens [", token_begin,
                      ", ", uint64_t{token_begin} + token_count, ")");
}

KvFrameHeaderBytes EncodeKvFrameHeader(const KvFrameHeader& header) {
  KvFrameHeaderBytes out{};
  uint8_t* p = out.data();
  Put<uint32_t>(p, kMagicAt, kKvFrameMagic);
  Put<uint16_t>(p, kVersionAt, kKvWireVersion);
  Put<uint16_t>(p, kHeaderBytesAt, kKvFrameHeaderBytes);
  Put<uint64_t>(p, kReservationAt, header.reservation_id);
  std::memcpy(p + kSecretAt, header.secret.bytes.data(), header.secret.bytes.size());
  Put<uint64_t>(p, kRequestHashAt, header.request_hash);
  Put<uint32_t>(p, kLayerAt, header.layer);
  Put<uint32_t>(p, kTokenBeginAt, header.token_begin);
  Put<uint32_t>(p, kTokenCountAt, header.token_count);
  Put<uint32_t>(p, kFlagsAt, header.flags);
  Put<uint64_t>(p, kPayloadBytesAt, header.payload_bytes);
  Put<uint64_t>(p, kPayloadXxh3At, header.payload_xxh3);
  Put<uint64_t>(p, kHeaderXxh3At, XXH3_64bits(p, kHeaderXxh3At));
  return out;
}

KvFrameHeader PeekKvFrameHeader(std::span<const uint8_t, kKvFrameHeaderBytes> bytes) {
  const uint8_t* p = bytes.data();
  KvFrameHeader h;
  h.reservation_id = Get<uint64_t>(p, kReservationAt);
  std::memcpy(h.secret.bytes.data(), p + kSecretAt, h.secret.bytes.size());
  h.request_hash = Get<uint64_t>(p, kRequestHashAt);
  h.layer = Get<uint32_t>(p, kLayerAt);
  h.token_begin = Get<uint32_t>(p, kTokenBeginAt);
  h.token_count = Get<uint32_t>(p, kTokenCountAt);
  h.payload_bytes = Get<uint64_t>(p, kPayloadBytesAt);
  h.payload_xxh3 = Get<uint64_t>(p, kPayloadXxh3At);
  h.flags = Get<uint32_t>(p, kFlagsAt);
  return h;
}

absl::StatusOr<KvFrameHeader> DecodeKvFrameHeader(
    std::span<const uint8_t, kKvFrameHeaderBytes> bytes) {
  const uint8_t* p = bytes.data();
  if (Get<uint32_t>(p, kMagicAt) != kKvFrameMagic) return BadHeader("bad magic (not a KV frame)");
  if (const uint16_t v = Get<uint16_t>(p, kVersionAt); v != kKvWireVersion) {
    return BadHeader(absl::StrCat("unsupported version ", v));
  }
  if (const uint16_t n = Get<uint16_t>(p, kHeaderBytesAt); n != kKvFrameHeaderBytes) {
    return BadHeader(absl::StrCat("header size ", n, " != ", kKvFrameHeaderBytes));
  }
  if (Get<uint64_t>(p, kHeaderXxh3At) != XXH3_64bits(p, kHeaderXxh3At)) {
    return BadHeader("header checksum mismatch (corrupt or desynchronized stream)");
  }
  KvFrameHeader h = PeekKvFrameHeader(bytes);
  switch (h.flags) {
    case 0:
    case kKvFrameKeepalive:
    case kKvFrameLinkHello:
    case kKvFramePayloadOnLink:
      break;
    default:
      return BadHeader(absl::StrCat("flags ", h.flags, " are not 0 or one known flag"));
  }
  if (h.keepalive()) {
    if (h.layer != 0 || h.token_begin != 0 || h.token_count != 0 || h.payload_bytes != 0) {
      return BadHeader("a keepalive frame must have layer, tokens and payload_bytes 0");
    }
    return h;
  }
  if (h.link_hello()) {
    if (h.reservation_id != 0 || h.layer != 0 || h.token_begin != 0 || h.token_count != 0) {
      return BadHeader("a link hello must have reservation, layer and tokens 0");
    }
    if (h.payload_bytes == 0 || h.payload_bytes > kKvMaxLinkHelloBytes) {
      return BadHeader(absl::StrCat("link hello of ", h.payload_bytes, " bytes outside [1, ",
                                    kKvMaxLinkHelloBytes, "]"));
    }
    return h;
  }
  if (h.payload_on_link() && h.payload_xxh3 != 0) {
    return BadHeader("a frame whose payload is on the link must have payload_xxh3 0");
  }
  if (h.layer >= kKvMaxLayers) {
    return BadHeader(absl::StrCat("layer ", h.layer, " >= ", kKvMaxLayers));
  }
  if (h.token_count == 0) return BadHeader("token_count is 0");
  if (uint64_t{h.token_begin} + h.token_count > kKvMaxTokenPosition) {
    return BadHeader(absl::StrCat("token range ends past ", kKvMaxTokenPosition));
  }
  if (h.payload_bytes == 0 || h.payload_bytes > kKvMaxFramePayloadBytes) {
    return BadHeader(absl::StrCat("payload_bytes ", h.payload_bytes, " outside [1, ",
                                  kKvMaxFramePayloadBytes, "]; split large layers by tokens"));
  }
  if (h.payload_bytes % h.token_count != 0) {
    return BadHeader(absl::StrCat("payload_bytes ", h.payload_bytes,
                                  " is not a whole number of bytes per token for ", h.token_count,
                                  " tokens"));
  }
  return h;
}

uint64_t PayloadChecksum(std::span<const std::span<const std::byte>> payload) {
  PayloadHasher hasher;
  for (const std::span<const std::byte>& s : payload) hasher.Update(s.data(), s.size());
  return hasher.Digest();
}

PayloadHasher::PayloadHasher() : state_(XXH3_createState()) {
  if (state_ == nullptr) std::abort();  // out of memory for a few hundred bytes
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}

PayloadHasher::~PayloadHasher() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void PayloadHasher::Update(const void* data, size_t size) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}

uint64_t PayloadHasher::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

KvAck KvAck::For(const KvFrameHeader& header, absl::Status status) {
  return KvAck{header.reservation_id, header.layer, header.token_begin, header.token_count,
               std::move(status)};
}

bool KvAck::Answers(const KvFrameHeader& header) const {
  return reservation_id == header.reservation_id && layer == header.layer &&
         token_begin == header.token_begin && token_count == header.token_count;
}

KvAckBytes EncodeKvAck(const KvAck& ack) {
  KvAckBytes out{};
  uint8_t* p = out.data();
  Put<uint32_t>(p, kMagicAt, kKvAckMagic);
  Put<uint16_t>(p, kVersionAt, kKvWireVersion);
  Put<uint16_t>(p, kAckStatusAt, static_cast<uint16_t>(ack.status.code()));
  Put<uint64_t>(p, kAckReservationAt, ack.reservation_id);
  Put<uint32_t>(p, kAckLayerAt, ack.layer);
  Put<uint32_t>(p, kAckTokenBeginAt, ack.token_begin);
  Put<uint32_t>(p, kAckTokenCountAt, ack.token_count);
  const std::string_view reason(ack.status.message().data(),
                                std::min(ack.status.message().size(), kKvAckReasonBytes));
  Put<uint32_t>(p, kAckReasonBytesAt, static_cast<uint32_t>(reason.size()));
  if (!reason.empty()) std::memcpy(p + kAckReasonAt, reason.data(), reason.size());
  return out;
}

absl::StatusOr<KvAck> DecodeKvAck(std::span<const uint8_t, kKvAckBytes> bytes) {
  const uint8_t* p = bytes.data();
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed KV ack: ", what,
                     "; the receiver must speak pdserve KV wire version ", kKvWireVersion));
  };
  if (Get<uint32_t>(p, kMagicAt) != kKvAckMagic) return bad("bad magic (not a KV ack)");
  if (const uint16_t v = Get<uint16_t>(p, kVersionAt); v != kKvWireVersion) {
    return bad(absl::StrCat("unsupported version ", v));
  }
  const uint16_t code = Get<uint16_t>(p, kAckStatusAt);
  if (code > static_cast<uint16_t>(absl::StatusCode::kUnauthenticated)) {
    return bad(absl::StrCat("unknown status code ", code));
  }
  const uint32_t reason_bytes = Get<uint32_t>(p, kAckReasonBytesAt);
  if (reason_bytes > kKvAckReasonBytes) {
    return bad(absl::StrCat("reason length ", reason_bytes, " > ", kKvAckReasonBytes));
  }
  KvAck ack;
  ack.reservation_id = Get<uint64_t>(p, kAckReservationAt);
  ack.layer = Get<uint32_t>(p, kAckLayerAt);
  ack.token_begin = Get<uint32_t>(p, kAckTokenBeginAt);
  ack.token_count = Get<uint32_t>(p, kAckTokenCountAt);
  if (code != 0) {
    ack.status = absl::Status(
        static_cast<absl::StatusCode>(code),
        absl::string_view(reinterpret_cast<const char*>(p + kAckReasonAt), reason_bytes));
  } else if (reason_bytes != 0) {
    return bad("an OK ack carries a reason");
  }
  return ack;
}

size_t SpansBytes(std::span<const std::span<std::byte>> spans) {
  size_t n = 0;
  for (const auto& s : spans) n += s.size();
  return n;
}

size_t SpansBytes(std::span<const std::span<const std::byte>> spans) {
  size_t n = 0;
  for (const auto& s : spans) n += s.size();
  return n;
}

std::vector<std::span<const std::byte>> AsConstSpans(std::span<const std::span<std::byte>> spans) {
  return std::vector<std::span<const std::byte>>(spans.begin(), spans.end());
}

}  // namespace pdserve
