// Choosing a KV transport per (prefill, decode) pair, and what --kv-transport may name.
#include "transport/kv_transport_select.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "transport/device_kv_links.h"

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

// What a worker runs: TCP always; the device links where its cache is in GPU memory and the
// build has them, NCCL (unencrypted) only where KV connections are plaintext. A transport named
// on the flag that the worker cannot run stops it at startup with the reason, never silently
// replaced.
TEST(KvTransportSelect, LocalTransportsFollowTheCacheTheBuildAndTls) {
  const std::vector<Kind> links = {Kind::kCudaIpc, Kind::kNccl};
  const KvTransportAbility cpu{.device = Device::kCpu, .kv_tls = false, .device_links = links};
  const KvTransportAbility gpu{.device = Device::kCuda, .kv_tls = false, .device_links = links};
  const KvTransportAbility gpu_tls{.device = Device::kCuda, .kv_tls = true, .device_links = links};
  const KvTransportAbility gpu_ipc_only{
      .device = Device::kCuda, .kv_tls = false, .device_links = {Kind::kCudaIpc}};
  struct Case {
    const char* flag;
    const KvTransportAbility* ability;
    std::vector<Kind> want;
  };
  for (const Case& c :
       {Case{"auto", &cpu, {Kind::kTcp}}, Case{"tcp", &cpu, {Kind::kTcp}},
        Case{"auto", &gpu, {Kind::kTcp, Kind::kCudaIpc, Kind::kNccl}},
        Case{"auto", &gpu_tls, {Kind::kTcp, Kind::kCudaIpc}},
        Case{"auto", &gpu_ipc_only, {Kind::kTcp, Kind::kCudaIpc}}, Case{"tcp", &gpu, {Kind::kTcp}},
        Case{"cuda-ipc", &gpu_tls, {Kind::kCudaIpc}}, Case{"nccl", &gpu, {Kind::kNccl}}}) {
    absl::StatusOr<std::vector<Kind>> local = LocalKvTransports(c.flag, *c.ability);
    ASSERT_TRUE(local.ok()) << c.flag << ": " << local.status();
    EXPECT_EQ(*local, c.want) << c.flag;
  }
  struct Refused {
    const char* flag;
    const KvTransportAbility* ability;
    const char* says;
  };
  for (const Refused& r :
       {Refused{"cuda-ipc", &cpu, "--device cuda"}, Refused{"nccl", &cpu, "--device cuda"},
        Refused{"nccl", &gpu_ipc_only, "this build has no nccl"},
        Refused{"nccl", &gpu_tls, "--kv-plaintext"}}) {
    absl::StatusOr<std::vector<Kind>> local = LocalKvTransports(r.flag, *r.ability);
    EXPECT_EQ(local.status().code(), absl::StatusCode::kFailedPrecondition) << r.flag;
    EXPECT_NE(local.status().message().find(r.says), std::string::npos) << local.status();
    EXPECT_NE(local.status().message().find("use auto or tcp"), std::string::npos)
        << local.status();
  }
  EXPECT_EQ(LocalKvTransports("udp", gpu).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckKvTransportFlag("auto").ok());
  EXPECT_TRUE(CheckKvTransportFlag("nccl").ok());
  EXPECT_EQ(CheckKvTransportFlag("rdma").code(), absl::StatusCode::kInvalidArgument);
}

// What this build makes: a factory per kind DeviceKvLinks names (named as the kind), none for
// TCP, and a clear refusal for the rest.
TEST(KvTransportSelect, DeviceKvLinksMakeTheFactoriesTheyName) {
  const std::vector<Kind> built = DeviceKvLinks();
#if PDSERVE_WITH_CUDA
  EXPECT_NE(std::find(built.begin(), built.end(), Kind::kCudaIpc), built.end());
#else
  EXPECT_TRUE(built.empty());
#endif
  absl::StatusOr<std::shared_ptr<KvLinkFactory>> tcp = MakeKvLinkFactory(Kind::kTcp, 0);
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(*tcp, nullptr);
  for (Kind kind : {Kind::kCudaIpc, Kind::kNccl}) {
    absl::StatusOr<std::shared_ptr<KvLinkFactory>> link = MakeKvLinkFactory(kind, 0);
    if (std::find(built.begin(), built.end(), kind) == built.end()) {
      EXPECT_EQ(link.status().code(), absl::StatusCode::kFailedPrecondition);
      continue;
    }
    ASSERT_TRUE(link.ok()) << link.status();
    ASSERT_NE(*link, nullptr);
    EXPECT_EQ((*link)->name(), KvTransportName(kind));
    EXPECT_EQ((*link)->device(), Device::kCuda);
  }
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

// Equal within a process's namespaces, which it names: pods on one node differ.
TEST(KvTransportSelect, ThisNodeIdIsTheSameOnEveryCallAndNamesTheNamespaces) {
  const std::string id = ThisNodeId();
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(ThisNodeId(), id);
  for (const char* ns : {"/net:[", "/ipc:[", "/pid:["}) {
    EXPECT_NE(id.find(ns), std::string::npos) << id;
  }
}

}  // namespace
}  // namespace pdserve
