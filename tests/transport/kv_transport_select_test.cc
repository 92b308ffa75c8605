// Choosing a KV transport per (prefill, decode) pair, and what --kv-transport may name.
#include "transport/kv_transport_select.h"

#include <gtest/gtest.h>

namespace pdserve {
namespace {

using Kind = KvTransportKind;

KvTransferPeer Peer(Device device, std::string node, std::vector<Kind> transports) {
  return {.device = device, .node = std::move(node), .transports = std::move(transports)};
}

TEST(KvTransportSelect, NamesRoundTripAndUnknownNamesSayWhatIsAccepted) {
  for (Kind kind : {Kind::kTcp, Kind::kCudaIpc, Kind::kNccl}) {
    absl::StatusOr<Kind> parsed = ParseKvTransportKind(KvTransportName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
  }
  absl::StatusOr<Kind> bad = ParseKvTransportKind("rdma");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("auto, tcp, cuda-ipc or nccl"), std::string::npos);
}

// What workers run: TCP, whatever the flag; a transport they do not run yet is refused at
// startup with a message that says so, not silently replaced.
TEST(KvTransportSelect, LocalTransportsAreTcpAndUnwiredOnesAreRefused) {
  for (const char* flag : {"auto", "tcp"}) {
    absl::StatusOr<std::vector<Kind>> local = LocalKvTransports(flag);
    ASSERT_TRUE(local.ok()) << flag << ": " << local.status();
    EXPECT_EQ(*local, std::vector<Kind>{Kind::kTcp}) << flag;
  }
  for (const char* flag : {"nccl", "cuda-ipc"}) {
    absl::StatusOr<std::vector<Kind>> local = LocalKvTransports(flag);
    EXPECT_EQ(local.status().code(), absl::StatusCode::kFailedPrecondition) << flag;
    EXPECT_NE(local.status().message().find("use auto or tcp"), std::string::npos)
        << local.status();
  }
  EXPECT_EQ(LocalKvTransports("udp").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvTransportSelect, PrefersDeviceToDeviceTransportsWhereBothCachesAreOnGpus) {
  const std::vector<Kind> all = {Kind::kTcp, Kind::kCudaIpc, Kind::kNccl};
  struct Case {
    const char* name;
    KvTransferPeer prefill, decode;
    Kind want;
  };
  const std::vector<Case> cases = {
      {"CPU workers", Peer(Device::kCpu, "a", all), Peer(Device::kCpu, "a", all), Kind::kTcp},
      {"GPUs on one node", Peer(Device::kCuda, "a", all), Peer(Device::kCuda, "a", all),
       Kind::kCudaIpc},
      {"GPUs on two nodes", Peer(Device::kCuda, "a", all), Peer(Device::kCuda, "b", all),
       Kind::kNccl},
      {"GPUs, node unknown", Peer(Device::kCuda, "", all), Peer(Device::kCuda, "", all),
       Kind::kNccl},
      {"GPU to CPU", Peer(Device::kCuda, "a", all), Peer(Device::kCpu, "a", all), Kind::kTcp},
      {"one side without NCCL", Peer(Device::kCuda, "a", all),
       Peer(Device::kCuda, "b", {Kind::kTcp, Kind::kCudaIpc}), Kind::kTcp},
      {"decode forced to NCCL", Peer(Device::kCuda, "a", all),
       Peer(Device::kCuda, "a", {Kind::kNccl}), Kind::kNccl},
      {"this build (TCP only)", Peer(Device::kCuda, "a", {Kind::kTcp}),
       Peer(Device::kCuda, "a", {Kind::kTcp}), Kind::kTcp},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Kind> chosen = SelectKvTransport(c.prefill, c.decode);
    ASSERT_TRUE(chosen.ok()) << c.name << ": " << chosen.status();
    EXPECT_EQ(KvTransportName(*chosen), KvTransportName(c.want)) << c.name;
  }
}

TEST(KvTransportSelect, NoSharedTransportIsFailedPreconditionNamingBothSides) {
  const absl::StatusOr<Kind> none = SelectKvTransport(Peer(Device::kCuda, "a", {Kind::kTcp}),
                                                      Peer(Device::kCuda, "b", {Kind::kNccl}));
  ASSERT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(none.status().message());
  EXPECT_NE(message.find("offers [tcp]"), std::string::npos) << message;
  EXPECT_NE(message.find("accepts [nccl]"), std::string::npos) << message;
  EXPECT_NE(message.find("--kv-transport"), std::string::npos) << message;
  // NCCL between a GPU and a CPU cache is no transport: TCP or nothing.
  EXPECT_FALSE(SelectKvTransport(Peer(Device::kCpu, "a", {Kind::kNccl}),
                                 Peer(Device::kCuda, "a", {Kind::kNccl}))
                   .ok());
  // Nor is CUDA IPC across nodes.
  EXPECT_FALSE(SelectKvTransport(Peer(Device::kCuda, "a", {Kind::kCudaIpc}),
                                 Peer(Device::kCuda, "b", {Kind::kCudaIpc}))
                   .ok());
}

TEST(KvTransportSelect, ThisNodeIdIsTheSameOnEveryCallAndNotEmptyOnLinux) {
  const std::string id = ThisNodeId();
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(ThisNodeId(), id);
}

}  // namespace
}  // namespace pdserve
