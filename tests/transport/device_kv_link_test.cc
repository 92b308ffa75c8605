// The GPU payload links (NCCL, CUDA IPC) through the KV transport, their CUDA runtime and NCCL
// calls served by the emulator (simt/cuda_runtime.cc, simt/nccl.cc): the link set up through the
// hello, payloads of one or several spans (gathered and scattered through staging buffers; in
// chunks for CUDA IPC, whose staging here is smaller than a frame) arriving byte for byte in
// "device" memory, and a rejected frame's payload drained. For NCCL, an abort on the sending side
// fails the transfer at once while the receiver's payload deadline frees its frame.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "kernels/cuda/cuda_backend.h"
#include "prefill_worker/kv_layer_sender.h"
#include "tests/transport/transport_test_util.h"
#include "transport/cuda_ipc_kv_link.h"
#include "transport/kv_receiver.h"
#if PDSERVE_TEST_NCCL
#include "transport/nccl_kv_link.h"
#endif
#include "transport/tcp_kv_transport.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

// cudaMalloc'd bytes, copied to and from the host for the checks.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&data_, bytes), cudaSuccess);
  }
  ~DeviceBuffer() { (void)cudaFree(data_); }
  std::byte* data() const { return static_cast<std::byte*>(data_); }
  void Upload(const std::vector<uint8_t>& host) const {
    ASSERT_EQ(cudaMemcpy(data_, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<uint8_t> Download() const {
    std::vector<uint8_t> host(bytes_);
    EXPECT_EQ(cudaMemcpy(host.data(), data_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

// A sink over one device buffer: reservation 1 takes layer L's frame at L * layer_bytes, handed
// out as three spans (so the link scatters through its staging buffer); anything else is
// refused. `admit_gate`, when set, holds Admit until notified.
class DeviceSink final : public KvFrameSink {
 public:
  DeviceSink(uint64_t layer_bytes, int layers)
      : layer_bytes_(layer_bytes), memory_(layer_bytes * layers) {}

  absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& h) override {
    if (admit_gate != nullptr) {
      admitting.Notify();
      admit_gate->WaitForNotification();
    }
    if (h.reservation_id != 1) return absl::PermissionDeniedError("not reservation 1");
    std::byte* at = memory_.data() + h.layer * layer_bytes_;
    const uint64_t third = h.payload_bytes / 3;
    return std::vector<std::span<std::byte>>{
        {at, third}, {at + third, third}, {at + 2 * third, h.payload_bytes - 2 * third}};
  }
  absl::Status Complete(const KvFrameHeader&, absl::Status status) override {
    absl::MutexLock lock(&mu_);
    completions.push_back(status);
    return status;
  }

  const DeviceBuffer& memory() const { return memory_; }
  absl::Notification* admit_gate = nullptr;
  absl::Notification admitting;
  absl::Mutex mu_;
  std::vector<absl::Status> completions ABSL_GUARDED_BY(mu_);

 private:
  const uint64_t layer_bytes_;
  DeviceBuffer memory_;
};

std::vector<uint8_t> Pattern(size_t bytes, uint8_t seed) {
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = static_cast<uint8_t>(i * 31 + seed);
  return v;
}

using MakeLink = std::shared_ptr<KvLinkFactory> (*)();

// A receiver with the link `make` makes and a transport with another of its kind.
struct LinkPair {
  LinkPair(MakeLink make, DeviceSink& sink,
           std::chrono::milliseconds stall = std::chrono::seconds(2)) {
    KvReceiver::Options options;
    options.host = "127.0.0.1";
    options.links = {make()};
    options.stall_timeout = stall;
    auto r = KvReceiver::Start(sink, options);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) receiver = *std::move(r);
    TcpKvTransport::Options sender;
    sender.link = make();
    transport = std::make_unique<TcpKvTransport>(sender);
  }
  KvDestination Destination(uint64_t reservation) const {
    return KvDestination{"127.0.0.1:" + std::to_string(receiver->port()), reservation, {}, 0};
  }
  std::unique_ptr<KvReceiver> receiver;
  std::unique_ptr<TcpKvTransport> transport;
};

constexpr uint64_t kLayerBytes = 3 * 4096 + 96;  // 96 tokens of 129 bytes
constexpr uint32_t kTokens = 96;

struct LinkCase {
  const char* name;
  MakeLink make;
};

class DeviceKvLink : public ::testing::TestWithParam<LinkCase> {};

TEST_P(DeviceKvLink, FramesArriveByteForByteInDeviceMemory) {
  DeviceSink sink(kLayerBytes, 3);
  LinkPair pair(GetParam().make, sink);
  ASSERT_NE(pair.receiver, nullptr);
  EXPECT_EQ(pair.transport->device(), Device::kCuda);
  const KvDestination dest = pair.Destination(1);
  std::vector<std::unique_ptr<DeviceBuffer>> sources;
  for (uint32_t layer = 0; layer < 3; ++layer) {
    auto& src = sources.emplace_back(std::make_unique<DeviceBuffer>(kLayerBytes));
    src->Upload(Pattern(kLayerBytes, static_cast<uint8_t>(layer)));
    std::vector<std::span<const std::byte>> payload;
    if (layer == 1) {  // one span: sent straight from it
      payload = {{src->data(), kLayerBytes}};
    } else {  // two spans: gathered into the staging buffer first
      payload = {{src->data(), 1000}, {src->data() + 1000, kLayerBytes - 1000}};
    }
    ASSERT_TRUE(pair.transport->SendLayer(dest, layer, 0, kTokens, payload).ok());
  }
  auto stats = pair.transport->Flush(dest, Clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->payload_bytes, 3 * kLayerBytes);
  EXPECT_EQ(stats->wire_bytes, 3 * (kLayerBytes + kKvFrameHeaderBytes));
  const std::vector<uint8_t> landed = sink.memory().Download();
  for (uint32_t layer = 0; layer < 3; ++layer) {
    EXPECT_EQ(std::vector<uint8_t>(landed.begin() + layer * kLayerBytes,
                                   landed.begin() + (layer + 1) * kLayerBytes),
              Pattern(kLayerBytes, static_cast<uint8_t>(layer)))
        << "layer " << layer;
  }
  EXPECT_EQ(pair.receiver->stats().links_joined, 1u);
  EXPECT_EQ(pair.receiver->stats().link_frames, 3u);
}

TEST_P(DeviceKvLink, RejectedPayloadIsDrainedAndTheNextFrameArrives) {
  DeviceSink sink(kLayerBytes, 1);
  LinkPair pair(GetParam().make, sink);
  ASSERT_NE(pair.receiver, nullptr);
  DeviceBuffer src(kLayerBytes);
  src.Upload(Pattern(kLayerBytes, 7));
  const std::vector<std::span<const std::byte>> payload{{src.data(), kLayerBytes}};
  const KvDestination refused = pair.Destination(2);
  ASSERT_TRUE(pair.transport->SendLayer(refused, 0, 0, kTokens, payload).ok());
  EXPECT_EQ(pair.transport->Flush(refused, Clock::now() + std::chrono::seconds(10)).status().code(),
            absl::StatusCode::kPermissionDenied);
  const KvDestination dest = pair.Destination(1);
  ASSERT_TRUE(pair.transport->SendLayer(dest, 0, 0, kTokens, payload).ok());
  ASSERT_TRUE(pair.transport->Flush(dest, Clock::now() + std::chrono::seconds(10)).ok());
  EXPECT_EQ(sink.memory().Download(), Pattern(kLayerBytes, 7));
  EXPECT_EQ(pair.transport->stats().connections_opened, 1u);
}

// A model's KV cache in GPU memory (the emulated CudaBackend's pools) crossing into a decode
// worker's reservation the way the workers send it: SendLayerFromStore straight from the pools
// (no host staging: a link moves device memory), a ReservedBlocksSink over a device store with
// its host staging set (as a GPU decode worker's is; link frames bypass it), shuffled block
// tables on both sides. For every cache format the rows arrive byte for byte, the reserved room
// past the prompt is untouched, and the wire carries exactly the format's KV bytes plus one
// header per frame (headers on the connection, payloads on the link).
TEST_P(DeviceKvLink, KvStoreRowsCrossIntoReservedBlocksForEveryCacheFormat) {
  for (const auto& [name, format] :
       {std::pair<const char*, KvFormat>{"MHA_bf16", testing_util::MhaFormat()},
        {"GQA_f32", testing_util::GqaFormat(DType::kF32)},
        {"MQA_f16", testing_util::MqaFormat(DType::kF16)},
        {"MLA_bf16", testing_util::MlaFormat()}}) {
    SCOPED_TRACE(name);
    constexpr int64_t kPrompt = 45;  // 11 full blocks of 4 and a partial one
    CudaBackend prefill_gpu, decode_gpu, decode_staging;
    KvStore src(prefill_gpu, format, 64);
    ASSERT_EQ(src.k(0).device(), Device::kCuda);
    testing_util::FillRandom(src, 5);
    testing_util::ShufflePool(src.pool(), 5);
    absl::StatusOr<std::vector<int32_t>> table =
        src.pool().Allocate(KvStore::BlocksFor(format, kPrompt));
    ASSERT_TRUE(table.ok()) << table.status();

    KvStore dst(decode_gpu, format, 64);
    testing_util::ShufflePool(dst.pool(), 99);
    testing_util::FillByte(dst, 0xAB);
    ReservedBlocksSink sink(dst, {.reap_expired = false, .staging = &decode_staging});
    KvReceiver::Options options;
    options.host = "127.0.0.1";
    options.links = {GetParam().make()};
    auto receiver = KvReceiver::Start(sink, options);
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    auto ticket =
        sink.Reserve(RequestIdHash("req"), kPrompt, kPrompt + 20, std::chrono::minutes(5));
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    const KvDestination dest{testing_util::Endpoint(**receiver), ticket->id, ticket->secret,
                             RequestIdHash("req")};

    TcpKvTransport::Options sender;
    sender.link = GetParam().make();
    TcpKvTransport transport(sender);
    for (int64_t layer = 0; layer < format.num_layers; ++layer) {
      ASSERT_TRUE(SendLayerFromStore(transport, dest, src, layer, *table, 0, kPrompt).ok());
    }
    auto stats = transport.Flush(dest, Clock::now() + std::chrono::seconds(10));
    ASSERT_TRUE(stats.ok()) << stats.status();
    testing_util::ExpectExactBytes(*stats, format, kPrompt, format.num_layers);
    EXPECT_EQ((*receiver)->stats().link_frames, static_cast<uint64_t>(format.num_layers));

    ASSERT_TRUE(
        sink.WaitComplete(dest.reservation_id, Clock::now() + std::chrono::seconds(5)).ok());
    auto taken = sink.Take(dest.reservation_id, dest.secret);
    ASSERT_TRUE(taken.ok()) << taken.status();
    const std::vector<int32_t> blocks = taken->blocks.ids();
    ASSERT_NE(std::vector<int32_t>(blocks.begin(), blocks.begin() + 3),
              std::vector<int32_t>(table->begin(), table->begin() + 3))
        << "the two sides' block tables differ, so rows really were remapped";
    for (int64_t layer = 0; layer < format.num_layers; ++layer) {
      EXPECT_EQ(testing_util::LayerBytes(dst, layer, blocks, 0, kPrompt),
                testing_util::LayerBytes(src, layer, *table, 0, kPrompt))
          << "layer " << layer;
    }
    const std::vector<uint8_t> room = testing_util::LayerBytes(dst, 0, blocks, kPrompt, 20);
    EXPECT_TRUE(std::all_of(room.begin(), room.end(), [](uint8_t b) { return b == 0xAB; }));
  }
}

std::vector<LinkCase> Links() {
  std::vector<LinkCase> links;
#if PDSERVE_TEST_NCCL
  links.push_back({"nccl", [] { return std::shared_ptr<KvLinkFactory>(new NcclLinkFactory(0)); }});
#endif
  // A staging buffer of 4 KiB: each 12 KiB frame crosses in four chunks.
  links.push_back(
      {"cuda_ipc", [] { return std::shared_ptr<KvLinkFactory>(new CudaIpcLinkFactory(0, 4096)); }});
  return links;
}

INSTANTIATE_TEST_SUITE_P(Links, DeviceKvLink, ::testing::ValuesIn(Links()),
                         [](const ::testing::TestParamInfo<LinkCase>& p) {
                           return std::string(p.param.name);
                         });

#if PDSERVE_TEST_NCCL
std::shared_ptr<KvLinkFactory> Nccl() { return std::make_shared<NcclLinkFactory>(0); }

// The sender aborts while its ncclSend waits for a receive that is not posted yet: the transfer
// fails at once; the receiver, whose ncclRecv then has no peer, hits its payload deadline and
// completes the frame as UNAVAILABLE (the sink frees it).
TEST(NcclKvLink, SenderAbortFailsAtOnceAndTheReceiversDeadlineFreesTheFrame) {
  DeviceSink sink(kLayerBytes, 1);
  absl::Notification gate;
  sink.admit_gate = &gate;
  LinkPair pair(Nccl, sink, std::chrono::milliseconds(200));
  ASSERT_NE(pair.receiver, nullptr);
  DeviceBuffer src(kLayerBytes);
  const KvDestination dest = pair.Destination(1);
  ASSERT_TRUE(pair.transport->SendLayer(dest, 0, 0, kTokens, {{src.data(), kLayerBytes}}).ok());
  sink.admitting.WaitForNotification();
  const auto start = Clock::now();
  pair.transport->Abort(dest, absl::CancelledError("the request was cancelled"));
  auto flushed = pair.transport->Flush(dest, start + std::chrono::seconds(10));
  EXPECT_EQ(flushed.status().code(), absl::StatusCode::kCancelled) << flushed.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  gate.Notify();          // now the receiver posts its ncclRecv, which no send will match
  pair.receiver->Stop();  // or its deadline: either way the frame completes, once
  absl::MutexLock lock(&sink.mu_);
  ASSERT_EQ(sink.completions.size(), 1u);
  EXPECT_EQ(sink.completions[0].code(), absl::StatusCode::kUnavailable) << sink.completions[0];
}

#endif  // PDSERVE_TEST_NCCL

}  // namespace
}  // namespace pdserve
