#include "tests/e2e/cluster.h"

#include <algorithm>
#include <memory>

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

// Reads the worker's WatchLoad stream until a load satisfies `done`.
template <typename Service>
absl::StatusOr<v1::WorkerLoad> AwaitLoad(std::shared_ptr<grpc::Channel> channel,
                                         const Cluster::LoadCondition& done,
                                         std::chrono::milliseconds limit) {
  auto stub = Service::NewStub(std::move(channel));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + limit);
  auto reader = stub->WatchLoad(&ctx, v1::WatchLoadRequest());
  v1::WorkerLoad load;
  bool seen = false;
  while (reader->Read(&load)) {
    seen = true;
    if (done(load)) {
      ctx.TryCancel();
      (void)reader->Finish();
      return load;
    }
  }
  const grpc::Status status = reader->Finish();
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && seen) {
    return absl::DeadlineExceededError(absl::StrCat(
        "after ", limit.count(), " ms the worker's load is still ", load.ShortDebugString()));
  }
  return absl::UnavailableError(
      absl::StrCat("WatchLoad ended (", status.error_code(), "): ", status.error_message(),
                   seen ? absl::StrCat("; last load ", load.ShortDebugString()) : ""));
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

absl::StatusOr<v1::WorkerLoad> Cluster::AwaitPrefillLoad(int i, const LoadCondition& done,
                                                         std::chrono::milliseconds limit) {
  return AwaitLoad<v1::PrefillWorker>(Channel(prefill_addresses()[static_cast<size_t>(i)]), done,
                                      limit);
}

absl::StatusOr<v1::WorkerLoad> Cluster::AwaitDecodeLoad(int i, const LoadCondition& done,
                                                        std::chrono::milliseconds limit) {
  return AwaitLoad<v1::DecodeWorker>(Channel(decode_addresses()[static_cast<size_t>(i)]), done,
                                     limit);
}

bool Cluster::WaitAllBlocksFree(std::string* detail) {
  using std::chrono::milliseconds;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const auto left = [&deadline] {
    return std::max(milliseconds(1), std::chrono::duration_cast<milliseconds>(
                                         deadline - std::chrono::steady_clock::now()));
  };
  // What each worker still holds (or why it did not say); workers the test killed are reaped by
  // running() and skipped.
  std::string used;
  for (int i = 0; i < static_cast<int>(decode_addresses().size()); ++i) {
    if (!decode_process(i).running()) continue;
    const auto load = AwaitDecodeLoad(
        i,
        [](const v1::WorkerLoad& l) {
          return l.kv_blocks_used() == 0 && l.running_requests() == 0;
        },
        left());
    if (!load.ok()) absl::StrAppend(&used, " decode", i, ": ", load.status().message(), ";");
  }
  for (int i = 0; i < static_cast<int>(prefill_addresses().size()); ++i) {
    if (!prefill_process(i).running()) continue;
    const auto load = AwaitPrefillLoad(
        i, [](const v1::WorkerLoad& l) { return l.kv_blocks_used() == 0; }, left());
    if (!load.ok()) absl::StrAppend(&used, " prefill", i, ": ", load.status().message(), ";");
  }
  *detail = used;
  return used.empty();
}

}  // namespace pdserve::testing_util
