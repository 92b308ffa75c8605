// A pdserve deployment on loopback: decode workers, prefill workers and a router started from
// this process as real child processes (pdserve-decode, pdserve-prefill and pdserve-router from
// the directory of the running executable). The one harness behind `pdserve demo`, the serving
// benchmark and the multi-process tests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "rpc/child_process.h"
#include "rpc/tls.h"

namespace pdserve::launch {

// How one process runs unlike the others (a fault to inject, another network namespace).
struct ProcessOptions {
  // "NAME=value" entries put over the environment it inherits, e.g. PDSERVE_STOP_AT.
  std::vector<std::string> env;
  // A command the binary runs under, e.g. {"/usr/sbin/ip", "netns", "exec", "ns1"}; it must exec
  // the binary in place, so that signals and waits reach the server itself.
  std::vector<std::string> wrapper;
  // The address it listens on and is reached at (empty: 127.0.0.1), and its port (0: any free
  // one).
  std::string host;
  int port = 0;
  // More flags for its command line, e.g. the router's --openai-listen.
  std::vector<std::string> args;
  // Decode workers: where the KV receiver listens and what it advertises to prefill workers
  // (empty: 127.0.0.1).
  std::string kv_host;
};

struct LocalClusterOptions {
  std::string model;  // every worker's --model
  int prefill_workers = 1;
  int decode_workers = 1;
  int kv_blocks = 0;  // per worker; 0: the workers' default (sized by --kv-cache-mb)
  int threads = 1;    // compute threads per worker: they share this machine's cores
  std::vector<std::string> worker_args{};  // more flags for every worker (--dequantize-weights)
  std::string tokenizer{};                 // the router's --tokenizer (empty: token ids only)
  rpc::TlsFiles tls{};      // mutual TLS on every gRPC connection, Channel()'s included
  std::string log_level{};  // every process's --log-level (empty: their default)
  // Where each process's log (decode0.log, prefill0.log, router.log) and port file go; created
  // when missing. Required.
  std::string run_dir{};
  // How long each process may take to listen, and the router to answer its first request.
  std::chrono::seconds start_timeout{60};
  // Per process, by name ("decode0", "prefill1", "router"); the others run as usual.
  std::map<std::string, ProcessOptions> processes{};
  // Start ends with a one-token request through the router (true), or as soon as the router
  // listens (false: it has polled every worker once by then, so all that are up take requests).
  // Off for fault tests, whose stop points that request would trip.
  bool first_request = true;
};

// Owns the processes: whatever still runs when the LocalCluster is destroyed is killed
// (SIGKILL); Stop ends them gracefully first. Thread-compatible; router() and Channel() may be
// used from several threads once Start has returned.
class LocalCluster {
 public:
  explicit LocalCluster(LocalClusterOptions options);

  // Starts the decode workers, then the prefill workers (which the router needs listening),
  // then the router, and returns once the router has answered a one-token request end to end
  // (or, without options.first_request, once it listens).
  // On failure the error names the process that failed, its command line and the tail of its
  // log; the processes started so far keep running until Stop or destruction.
  absl::Status Start();
  // SIGTERM to the router, then to the workers (each drains its requests); waits up to `grace`
  // for each and kills what is left.
  void Stop(std::chrono::milliseconds grace);

  const std::string& router_address() const { return router_address_; }
  const std::vector<std::string>& prefill_addresses() const { return prefill_addresses_; }
  const std::vector<std::string>& decode_addresses() const { return decode_addresses_; }
  rpc::ChildProcess& prefill_process(int i) { return *prefill_[static_cast<size_t>(i)]; }
  rpc::ChildProcess& decode_process(int i) { return *decode_[static_cast<size_t>(i)]; }
  rpc::ChildProcess& router_process() { return *router_process_; }
  // A stub for the router, with the cluster's credentials. After a successful Start.
  v1::Generation::Stub& router() { return *router_; }
  // A channel to `address` (the router's or a worker's) with the cluster's credentials. After a
  // successful Start.
  std::shared_ptr<grpc::Channel> Channel(const std::string& address) const;

 private:
  // Starts `binary` as `name` with `args` plus the flags every process gets, into `process`, and
  // returns its address once it listens.
  absl::StatusOr<std::string> Spawn(const std::string& binary, const std::string& name,
                                    std::vector<std::string> args,
                                    std::unique_ptr<rpc::ChildProcess>& process);
  // options.processes[name], or the defaults.
  const ProcessOptions& For(const std::string& name) const;
  // The flags of the worker `name`, of either role.
  std::vector<std::string> WorkerArgs(const std::string& name) const;
  // A one-token request through the router, end to end.
  absl::Status RouterAnswers();

  LocalClusterOptions options_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::vector<std::unique_ptr<rpc::ChildProcess>> prefill_, decode_;
  std::unique_ptr<rpc::ChildProcess> router_process_;
  std::vector<std::string> prefill_addresses_, decode_addresses_;
  std::string router_address_;
  std::unique_ptr<v1::Generation::Stub> router_;
};

}  // namespace pdserve::launch
