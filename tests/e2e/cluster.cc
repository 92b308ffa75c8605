#include "tests/e2e/cluster.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/synth.h"
#include "tests/test_util.h"

namespace pdserve::testing_util {

std::string MidSizeModel(const std::string& name, int64_t max_position) {
  const std::string path = FreshDir(name);
  ModelConfig c = TinyConfig(2);
  c.hidden_size = 512;
  c.intermediate_size = 1536;
  c.num_heads = 8;
  c.head_dim = 64;
  c.num_layers = 8;
  c.max_position_embeddings = max_position;
  EXPECT_TRUE(WriteSyntheticModel(c, path, 3).ok());
  return path;
}

namespace {

// What the tests rely on where `options` leaves it to the workers or to the caller.
launch::LocalClusterOptions WithTestDefaults(launch::LocalClusterOptions options) {
  if (options.kv_blocks == 0) options.kv_blocks = 256;
  if (options.run_dir.empty()) options.run_dir = FreshDir("cluster");
  return options;
}

// A worker's load report; an error when it does not answer within `timeout`.
template <typename Service>
absl::StatusOr<v1::WorkerLoad> LoadOf(std::shared_ptr<grpc::Channel> channel,
                                      std::chrono::milliseconds timeout) {
  auto stub = Service::NewStub(std::move(channel));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::WorkerLoad load;
  const grpc::Status status = stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("GetLoad failed: ", status.error_message()));
  }
  return load;
}

constexpr std::chrono::seconds kLoadTimeout{5};

}  // namespace

Cluster::Cluster(launch::LocalClusterOptions options)
    : LocalCluster(WithTestDefaults(std::move(options))) {}

v1::WorkerLoad Cluster::PrefillLoad(int i) {
  return LoadOf<v1::PrefillWorker>(Channel(prefill_addresses()[static_cast<size_t>(i)]),
                                   kLoadTimeout)
      .value_or(v1::WorkerLoad());
}

v1::WorkerLoad Cluster::DecodeLoad(int i) {
  return LoadOf<v1::DecodeWorker>(Channel(decode_addresses()[static_cast<size_t>(i)]), kLoadTimeout)
      .value_or(v1::WorkerLoad());
}

bool Cluster::WaitAllBlocksFree(std::string* detail) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (true) {
    // What each worker still holds; one that does not answer counts as holding blocks.
    std::string used;
    const auto note = [&used](const std::string& name, const absl::StatusOr<v1::WorkerLoad>& load,
                              bool count_running) {
      if (!load.ok()) {
        absl::StrAppend(&used, " ", name, ": ", load.status().message(), ";");
      } else if (load->kv_blocks_used() != 0 || (count_running && load->running_requests() != 0)) {
        absl::StrAppend(&used, " ", name, ": ", load->kv_blocks_used(), " blocks, ",
                        load->running_requests(), " running;");
      }
    };
    // Workers the test killed are reaped by running() and skipped.
    for (int i = 0; i < static_cast<int>(decode_addresses().size()); ++i) {
      if (!decode_process(i).running()) continue;
      note(absl::StrCat("decode", i),
           LoadOf<v1::DecodeWorker>(Channel(decode_addresses()[static_cast<size_t>(i)]),
                                    kLoadTimeout),
           /*count_running=*/true);
    }
    for (int i = 0; i < static_cast<int>(prefill_addresses().size()); ++i) {
      if (!prefill_process(i).running()) continue;
      note(absl::StrCat("prefill", i),
           LoadOf<v1::PrefillWorker>(Channel(prefill_addresses()[static_cast<size_t>(i)]),
                                     kLoadTimeout),
           /*count_running=*/false);
    }
    if (used.empty()) return true;
    if (std::chrono::steady_clock::now() > deadline) {
      *detail = used;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace pdserve::testing_util
