#include "tests/e2e/cluster.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

Cluster::Cluster(ClusterOptions options)
    : options_(std::move(options)), dir_(FreshDir("cluster")) {}

std::unique_ptr<ChildProcess> Cluster::Spawn(const std::string& binary,
                                             std::vector<std::string> args, const std::string& name,
                                             int* port, std::string* error) {
  const std::string port_file = absl::StrCat(dir_, "/", name, ".port");
  args.insert(args.begin(), rpc::BinaryPath(binary));
  args.push_back("--port-file=" + port_file);
  if (options_.tls.enabled()) {
    args.push_back("--tls-cert=" + options_.tls.cert);
    args.push_back("--tls-key=" + options_.tls.key);
    args.push_back("--tls-ca=" + options_.tls.ca);
  }
  auto child = std::make_unique<ChildProcess>(args, absl::StrCat(dir_, "/", name, ".log"));
  *port = rpc::WaitForPortFile(port_file, *child, std::chrono::seconds(60));
  if (*port == 0) {
    *error =
        absl::StrCat(name, " did not start (", absl::StrJoin(args, " "), "):\n", child->LogTail());
  }
  return child;
}

bool Cluster::Start(std::string* error) {
  const std::string threads = absl::StrCat("--threads=", options_.threads);
  const std::string blocks = absl::StrCat("--kv-blocks=", options_.kv_blocks);
  for (int i = 0; i < options_.decode_workers; ++i) {
    int port = 0;
    std::vector<std::string> args = {"--model=" + options_.model, "--listen=127.0.0.1:0",
                                     "--kv-listen=127.0.0.1:0", threads, blocks};
    decode_.push_back(Spawn("pdserve-decode", args, absl::StrCat("decode", i), &port, error));
    if (port == 0) return false;
    decode_addresses_.push_back(absl::StrCat("127.0.0.1:", port));
  }
  for (int i = 0; i < options_.prefill_workers; ++i) {
    int port = 0;
    prefill_.push_back(Spawn("pdserve-prefill",
                             {"--model=" + options_.model, "--listen=127.0.0.1:0", threads, blocks},
                             absl::StrCat("prefill", i), &port, error));
    if (port == 0) return false;
    prefill_addresses_.push_back(absl::StrCat("127.0.0.1:", port));
  }
  int port = 0;
  std::vector<std::string> router_args = {"--listen=127.0.0.1:0",
                                          "--prefill=" + absl::StrJoin(prefill_addresses_, ","),
                                          "--decode=" + absl::StrJoin(decode_addresses_, ",")};
  if (!options_.tokenizer.empty()) router_args.push_back("--tokenizer=" + options_.tokenizer);
  router_process_ = Spawn("pdserve-router", router_args, "router", &port, error);
  if (port == 0) return false;
  router_address_ = absl::StrCat("127.0.0.1:", port);
  router_ = v1::Generation::NewStub(Channel(router_address_));
  // Ready when the router answers a request end to end.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  grpc::Status last;
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GenerateRequest req;
    req.add_prompt_token_ids(1);
    req.set_max_tokens(1);
    v1::CompleteResponse resp;
    last = router_->Complete(&ctx, req, &resp);
    if (last.ok()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  *error = absl::StrCat("router never answered: ", last.error_message(), "\n",
                        router_process_->LogTail());
  return false;
}

namespace {

template <typename Service>
v1::WorkerLoad LoadOf(std::shared_ptr<grpc::Channel> channel) {
  auto stub = Service::NewStub(std::move(channel));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::WorkerLoad load;
  stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
  return load;
}

}  // namespace

std::shared_ptr<grpc::Channel> Cluster::Channel(const std::string& address) const {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      rpc::MakeChannelCredentials(options_.tls);
  return grpc::CreateChannel(address,
                             credentials.ok() ? *credentials : grpc::InsecureChannelCredentials());
}

v1::WorkerLoad Cluster::PrefillLoad(int i) {
  return LoadOf<v1::PrefillWorker>(Channel(prefill_addresses_[static_cast<size_t>(i)]));
}

v1::WorkerLoad Cluster::DecodeLoad(int i) {
  return LoadOf<v1::DecodeWorker>(Channel(decode_addresses_[static_cast<size_t>(i)]));
}

bool Cluster::WaitAllBlocksFree(std::string* detail) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (true) {
    std::string used;
    for (int i = 0; i < static_cast<int>(decode_addresses_.size()); ++i) {
      if (!decode_[static_cast<size_t>(i)]->running()) continue;
      const v1::WorkerLoad load = DecodeLoad(i);
      if (load.kv_blocks_used() != 0 || load.running_requests() != 0) {
        absl::StrAppend(&used, " decode", i, ": ", load.kv_blocks_used(), " blocks, ",
                        load.running_requests(), " running;");
      }
    }
    for (int i = 0; i < static_cast<int>(prefill_addresses_.size()); ++i) {
      if (!prefill_[static_cast<size_t>(i)]->running()) continue;
      const v1::WorkerLoad load = PrefillLoad(i);
      if (load.kv_blocks_used() != 0) {
        absl::StrAppend(&used, " prefill", i, ": ", load.kv_blocks_used(), " blocks;");
      }
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
