#include "launch/local_cluster.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pdserve::launch {

namespace {

// A process's listen host: `host` where ProcessOptions gives one, else loopback.
std::string OrLoopback(const std::string& host) { return host.empty() ? "127.0.0.1" : host; }

}  // namespace

LocalCluster::LocalCluster(LocalClusterOptions options) : options_(std::move(options)) {}

const ProcessOptions& LocalCluster::For(const std::string& name) const {
  static const ProcessOptions kAsUsual;
  const auto it = options_.processes.find(name);
  return it == options_.processes.end() ? kAsUsual : it->second;
}

std::vector<std::string> LocalCluster::WorkerArgs(const std::string& name) const {
  std::vector<std::string> args = {
      "--model=" + options_.model,
      absl::StrCat("--listen=", OrLoopback(For(name).host), ":", For(name).port),
      absl::StrCat("--threads=", options_.threads)};
  if (options_.kv_blocks > 0) args.push_back(absl::StrCat("--kv-blocks=", options_.kv_blocks));
  args.insert(args.end(), options_.worker_args.begin(), options_.worker_args.end());
  return args;
}

absl::StatusOr<std::string> LocalCluster::Spawn(const std::string& binary, const std::string& name,
                                                std::vector<std::string> args,
                                                std::unique_ptr<rpc::ChildProcess>& process) {
  const std::string port_file = absl::StrCat(options_.run_dir, "/", name, ".port");
  std::error_code ignored;
  std::filesystem::remove(port_file, ignored);  // a port from an earlier run is no answer
  const ProcessOptions& own = For(name);
  args.insert(args.begin(), rpc::BinaryPath(binary));
  args.insert(args.begin(), own.wrapper.begin(), own.wrapper.end());
  args.insert(args.end(), own.args.begin(), own.args.end());
  args.push_back("--port-file=" + port_file);
  if (!options_.log_level.empty()) args.push_back("--log-level=" + options_.log_level);
  if (options_.tls.enabled()) {
    args.push_back("--tls-cert=" + options_.tls.cert);
    args.push_back("--tls-key=" + options_.tls.key);
    args.push_back("--tls-ca=" + options_.tls.ca);
  }
  process = std::make_unique<rpc::ChildProcess>(
      args, absl::StrCat(options_.run_dir, "/", name, ".log"), own.env);
  absl::StatusOr<int> port = rpc::WaitForPortFile(port_file, *process, options_.start_timeout);
  if (!port.ok()) {
    return absl::Status(port.status().code(),
                        absl::StrCat(name, " did not start: ", port.status().message(), "\n  ",
                                     absl::StrJoin(args, " "), "\nits log (", process->log_path(),
                                     ") ends with:\n", process->LogTail()));
  }
  return absl::StrCat(OrLoopback(own.host), ":", *port);
}

absl::Status LocalCluster::Start() {
  if (options_.run_dir.empty()) {
    return absl::InvalidArgumentError(
        "LocalClusterOptions.run_dir is empty: give a directory for the logs and port files");
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.run_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create the cluster's directory ",
                                                    options_.run_dir, ": ", ec.message()));
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      rpc::MakeChannelCredentials(options_.tls);
  if (!credentials.ok()) return credentials.status();
  credentials_ = *std::move(credentials);

  for (int i = 0; i < options_.decode_workers; ++i) {
    const std::string name = absl::StrCat("decode", i);
    const std::string kv_host = OrLoopback(For(name).kv_host);
    std::vector<std::string> args = WorkerArgs(name);
    args.push_back("--kv-listen=" + kv_host + ":0");
    args.push_back("--advertise-host=" + kv_host);
    absl::StatusOr<std::string> address =
        Spawn("pdserve-decode", name, std::move(args), decode_.emplace_back());
    if (!address.ok()) return address.status();
    decode_addresses_.push_back(*std::move(address));
  }
  for (int i = 0; i < options_.prefill_workers; ++i) {
    const std::string name = absl::StrCat("prefill", i);
    absl::StatusOr<std::string> address =
        Spawn("pdserve-prefill", name, WorkerArgs(name), prefill_.emplace_back());
    if (!address.ok()) return address.status();
    prefill_addresses_.push_back(*std::move(address));
  }
  std::vector<std::string> router_args = {
      absl::StrCat("--listen=", OrLoopback(For("router").host), ":", For("router").port),
      "--prefill=" + absl::StrJoin(prefill_addresses_, ","),
      "--decode=" + absl::StrJoin(decode_addresses_, ",")};
  if (!options_.tokenizer.empty()) router_args.push_back("--tokenizer=" + options_.tokenizer);
  absl::StatusOr<std::string> address =
      Spawn("pdserve-router", "router", std::move(router_args), router_process_);
  if (!address.ok()) return address.status();
  router_address_ = *std::move(address);
  router_ = v1::Generation::NewStub(Channel(router_address_));
  return options_.first_request ? RouterAnswers() : absl::OkStatus();
}

absl::Status LocalCluster::RouterAnswers() {
  // Nothing to wait for: the router polls every worker once (load and model) before it writes
  // its port file, and the workers all listened before it started.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + options_.start_timeout);
  v1::GenerateRequest req;
  req.add_prompt_token_ids(1);
  req.set_max_tokens(1);
  v1::CompleteResponse resp;
  const grpc::Status status = router_->Complete(&ctx, req, &resp);
  if (status.ok()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "the router did not answer a one-token request (", status.error_message(), "; it ",
      router_process_->running() ? "is still running" : router_process_->ExitDescription(),
      ")\nits log (", router_process_->log_path(), ") ends with:\n", router_process_->LogTail()));
}

void LocalCluster::Stop(std::chrono::milliseconds grace) {
  // The router first, so that it stops taking requests as the workers begin to drain.
  std::vector<rpc::ChildProcess*> order;
  if (router_process_ != nullptr) order.push_back(router_process_.get());
  for (const auto& p : prefill_) order.push_back(p.get());
  for (const auto& p : decode_) order.push_back(p.get());
  for (rpc::ChildProcess* p : order) p->Signal(SIGTERM);
  for (rpc::ChildProcess* p : order) {
    if (p->Wait(grace) < 0) p->Signal(SIGKILL);
  }
}

std::shared_ptr<grpc::Channel> LocalCluster::Channel(const std::string& address) const {
  return grpc::CreateChannel(address, credentials_);
}

}  // namespace pdserve::launch
