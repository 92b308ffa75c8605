// Services whose methods take their request as bytes (gRPC's WithRawCallbackMethod_*) and parse
// it themselves. For a request that does not parse, gRPC 1.51's generated callback handlers
// answer UNIMPLEMENTED with an empty message (grpc/impl/codegen/server_callback_handlers.h),
// which tells the caller nothing; parsed here, it is INVALID_ARGUMENT naming the message
// expected. A service's descriptor is unchanged, so reflection, grpcurl and ghz still see the
// typed methods.
#pragma once

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace pdserve::rpc {

// The `Message` in `bytes`; INVALID_ARGUMENT saying which message of which .proto to send.
template <typename Message>
absl::StatusOr<Message> ParseMessage(const grpc::ByteBuffer& bytes) {
  grpc::ByteBuffer copy = bytes;  // parsing consumes its buffer; the copy shares the slices
  Message message;
  if (!grpc::SerializationTraits<Message>::Deserialize(&copy, &message).ok()) {
    const auto* d = Message::descriptor();
    return absl::InvalidArgumentError(
        absl::StrCat("request is not a valid ", d->full_name(), " protobuf: send the ", d->name(),
                     " message of ", d->file()->name(), " (string fields must be valid UTF-8)"));
  }
  return message;
}

// `message` as the bytes a raw method sends, replacing what `out` held.
template <typename Message>
void SerializeMessage(const Message& message, grpc::ByteBuffer* out) {
  out->Clear();  // gRPC's serializer appends only to an empty buffer
  bool own_buffer = false;
  (void)grpc::SerializationTraits<Message>::Serialize(message, out, &own_buffer);
}

}  // namespace pdserve::rpc
