// The router's OpenAI-compatible HTTP front (--openai-listen): /v1/models,
// /v1/completions and /v1/chat/completions (whole, or streamed as server-sent events), and
// /health. It serves in the router's process over cpp-httplib, and each request takes the same
// path as a gRPC one (router::CreateRequestFlow, the same admission), so routing, validation,
// metrics and drain behave alike; only the encoding differs (openai_protocol).
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "openai/openai_protocol.h"
#include "router/generation_service.h"
#include "rpc/tls.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace pdserve::openai {

class OpenAiCall;

struct OpenAiOptions {
  std::string listen;                         // HOST:PORT; port 0 picks a free one
  std::string served_model_name = "default";  // what /v1/models lists and requests must name
  // HTTP connections served at once: each holds a thread for its request (a stream's whole
  // life) and its keep-alive. More wait in the kernel's accept queue.
  int threads = 64;
  // The router's --tls-* files: HTTPS that requires a client certificate from the CA, as the
  // gRPC port does (none: plain HTTP).
  rpc::TlsFiles tls;
};

// Thread-safe. Stop (or the destructor) cancels the requests still being answered, stops
// accepting and waits for its threads; drain the router first (Router::Shutdown), which refuses
// new requests on both fronts and gives those in flight their grace.
class OpenAiServer {
 public:
  static absl::StatusOr<std::unique_ptr<OpenAiServer>> Start(const OpenAiOptions& options,
                                                             router::GenerationService& service);
  ~OpenAiServer();
  OpenAiServer(const OpenAiServer&) = delete;
  OpenAiServer& operator=(const OpenAiServer&) = delete;

  int port() const { return port_; }
  void Stop();
  // Requests being answered.
  int in_flight() const;

 private:
  OpenAiServer(const OpenAiOptions& options, router::GenerationService& service);
  void Route();
  // POST /v1/completions and /v1/chat/completions.
  void Answer(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);

  const OpenAiOptions options_;
  router::GenerationService& service_;
  const int64_t created_;  // Unix seconds: /v1/models' "created"
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
  mutable absl::Mutex calls_mu_;
  absl::flat_hash_map<const OpenAiCall*, std::weak_ptr<OpenAiCall>> calls_
      ABSL_GUARDED_BY(calls_mu_);
};

}  // namespace pdserve::openai
