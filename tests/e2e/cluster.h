// A pdserve deployment on loopback for the multi-process tests: prefill and decode workers and
// a router as real processes, and a client stub for the router.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pdserve/v1/generation.grpc.pb.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "rpc/child_process.h"
#include "rpc/tls.h"

namespace pdserve::testing_util {

using rpc::ChildProcess;

struct ClusterOptions {
  std::string model;
  int prefill_workers = 1;
  int decode_workers = 1;
  int kv_blocks = 256;      // per worker
  int threads = 1;          // per worker: the test box has 2 cores for everything
  std::string tokenizer{};  // the router's --tokenizer (empty: token ids only)
  rpc::TlsFiles tls{};      // mutual TLS on every gRPC connection, the test's included
};

// A synthetic Llama-family model (8 layers, hidden 512, GQA) written under a fresh `name`
// directory: big enough that a prompt of several hundred tokens keeps a prefill worker busy for
// a while on the 2-core test machine. Returns its directory.
std::string MidSizeModel(const std::string& name, int64_t max_position = 1024);

class Cluster {
 public:
  explicit Cluster(ClusterOptions options);
  // Everything up and the router answering; false (with the logs in `error`) otherwise.
  bool Start(std::string* error);

  v1::Generation::Stub& router() { return *router_; }
  std::string router_address() const { return router_address_; }
  std::vector<std::string> prefill_addresses() const { return prefill_addresses_; }
  std::vector<std::string> decode_addresses() const { return decode_addresses_; }
  ChildProcess& prefill_process(int i) { return *prefill_[static_cast<size_t>(i)]; }
  ChildProcess& decode_process(int i) { return *decode_[static_cast<size_t>(i)]; }
  ChildProcess& router_process() { return *router_process_; }

  // A channel to `address` with the cluster's credentials.
  std::shared_ptr<grpc::Channel> Channel(const std::string& address) const;
  // The load report of a worker, through its own service.
  v1::WorkerLoad PrefillLoad(int i);
  v1::WorkerLoad DecodeLoad(int i);
  // Waits until every decode and prefill worker reports no used KV blocks (true) or 10 s pass.
  bool WaitAllBlocksFree(std::string* detail);

 private:
  std::unique_ptr<ChildProcess> Spawn(const std::string& binary, std::vector<std::string> args,
                                      const std::string& name, int* port, std::string* error);

  ClusterOptions options_;
  std::string dir_;
  std::vector<std::unique_ptr<ChildProcess>> prefill_, decode_;
  std::unique_ptr<ChildProcess> router_process_;
  std::vector<std::string> prefill_addresses_, decode_addresses_;
  std::string router_address_;
  std::unique_ptr<v1::Generation::Stub> router_;
};

}  // namespace pdserve::testing_util
