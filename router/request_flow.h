// One request's trip through the workers (SPEC "Request flow"): Reserve KV blocks on a decode
// worker, Prefill on a prefill worker into that reservation, then relay the decode worker's
// token stream to the client.
#pragma once

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "router/router_metrics.h"
#include "router/text_io.h"
#include "router/worker_clients.h"
#include "router/worker_pool.h"

namespace pdserve::router {

struct FlowOptions {
  // Deadline of a whole request when the client sets none: no worker call waits forever.
  std::chrono::milliseconds request_timeout{120000};
  // How long a request waits for KV blocks when every decode worker is full (retrying Reserve
  // with backoff) before RESOURCE_EXHAUSTED; capped by its deadline. 0: fail at once.
  std::chrono::milliseconds queue_timeout{10000};
  // Deadline of a Release, which runs even after the request's own deadline has passed.
  std::chrono::milliseconds release_timeout{2000};
  // How many times a stream whose decode worker died (UNAVAILABLE) moves to another one.
  int max_migrations = 2;
};

// What every request shares: the pool, the channels, the options. Outlives every flow.
struct FlowEnv {
  WorkerPool* pool = nullptr;
  WorkerClients* clients = nullptr;
  FlowOptions options;
  // The model's tokenizer: text prompts, chat messages, stop strings, text in responses. Null:
  // token ids only.
  const Tokenizer* tokenizer = nullptr;
  RouterMetrics* metrics = nullptr;  // inter-token latency and KV waits are recorded here, if set
};

// Where a flow's results go: a Generate stream or a Complete response.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // New tokens for the client, and their text (empty without a tokenizer). `sent(ok)` runs,
  // possibly inline, once the sink can take more; ok is false when the client is gone. At most
  // one Send is outstanding.
  virtual void Send(std::span<const int32_t> tokens, std::string text,
                    std::function<void(bool ok)> sent) = 0;
  // The end, exactly once and last (the flow never touches the sink again). On OK, `tokens` and
  // `text` are the last new ones and `final_info` is complete; otherwise all are empty.
  virtual void Finish(const absl::Status& status, std::span<const int32_t> tokens, std::string text,
                      const v1::FinalInfo& final_info) = 0;
};

// Drives one request asynchronously on gRPC's callback threads.
//
// Reserve: decode workers in DecodeCandidates order; RESOURCE_EXHAUSTED, UNAVAILABLE or a model
// mismatch moves on to the next. When every decode worker is full, the request waits for room
// (Reserve again, with backoff, up to queue_timeout; not FIFO). Prefill: PickPrefill's worker; when
// it is unavailable, full or aborts, the reservation is released (the failed push may have written
// part of it) and the request retried once, with a fresh reservation, on another prefill worker.
// Migration: when the Decode stream fails with UNAVAILABLE (the decode worker died, was cut off
// or is shutting down), the request continues on another decode worker, up to max_migrations
// times: its prompt plus every token relayed so far is reserved and prefilled again (the prefix
// cache usually holds most of it) with generated_before telling the workers how many sampler
// draws to skip, so the client's stream goes on with no token repeated or lost, and greedy or
// seeded output equals an uninterrupted run.
// Decode: the stream is relayed one message at a time (the next read starts once the client took
// the previous message, so a slow client slows its own decode stream, not the router's memory).
// With a tokenizer, text prompts are encoded before anything starts, and the ids coming back are
// decoded; a stop string ends the request with "stop" and cancels the Decode stream, which frees
// its blocks.
//
// Every worker call carries the request's deadline: the client's, capped by request_timeout.
// Cancel (client gone, deadline) cancels the call in flight; a reservation not yet handed to
// Decode is released before the sink is finished, so when the client sees an error nothing is
// held on any worker for this request.
//
// Thread-safety: Cancel may be called from any thread at any time; everything else runs as a
// chain of callbacks, one step at a time. The sink's owner holds the flow until the sink's
// Finish has run (worker calls in flight hold it too).
class RequestFlow : public std::enable_shared_from_this<RequestFlow> {
 public:
  // Encodes a text prompt (EncodePrompt) and validates `request` against the pool's model;
  // INVALID_ARGUMENT (bad field), FAILED_PRECONDITION (text without a tokenizer) or UNAVAILABLE
  // (no worker has reported a model yet). `client_deadline` is the server context's deadline
  // (far future when the client set none). `sink` must stay valid until its Finish runs.
  static absl::StatusOr<std::shared_ptr<RequestFlow>> Create(
      const FlowEnv& env, const v1::GenerateRequest& request,
      std::chrono::system_clock::time_point client_deadline, ResponseSink* sink);

  const std::string& request_id() const { return request_.request_id(); }
  void Start();
  void Cancel();

  // Public for make_shared; use Create.
  RequestFlow(const FlowEnv& env, v1::GenerateRequest request,
              std::vector<std::string> stop_strings, std::shared_ptr<const v1::ModelInfo> model,
              std::chrono::system_clock::time_point deadline, ResponseSink* sink);

 private:
  class DecodeRelay;
  using Clock = std::chrono::steady_clock;

  // Each step starts one worker call whose callback runs the next.
  void Reserve();
  // Schedules another round of Reserve after a backoff; false when the queue time is up.
  bool WaitForRoom();
  // Counts the request as waiting for KV room, or not, in the metrics.
  void SetWaitingForKv(bool waiting);
  void OnReserved(const std::string& address, const grpc::Status& status);
  void Prefill();
  void OnPrefilled(const std::string& address, const grpc::Status& status);
  void StartDecode();
  void OnDecodeMessage(const v1::DecodeResponse& response);
  void OnDecodeEnd(const grpc::Status& status);
  // Continues the request on another decode worker after `address` failed with `error`.
  void Migrate(const std::string& address, const absl::Status& error);
  // Releases the reservation if one is held, then runs `then`.
  void ReleaseThen(std::function<void()> then);
  void Fail(absl::Status status);
  void Finish(const absl::Status& status);

  // A context with the request's deadline, registered for Cancel; null once cancelled.
  grpc::ClientContext* NewContext();
  // Whether a healthy decode worker this request has not failed on is left.
  bool HasOtherDecodeWorker() const;
  bool cancelled() const;
  // The status for a failed worker call: cancellation and deadline say so plainly.
  absl::Status CallError(const grpc::Status& status, WorkerRole role, const std::string& address,
                         absl::string_view call) const;

  const FlowEnv env_;
  v1::GenerateRequest request_;  // the prompt grows by the tokens so far when a stream migrates
  const std::vector<int32_t> prompt_;  // the client's prompt
  const int32_t max_tokens_;           // the client's max_tokens
  const std::shared_ptr<const v1::ModelInfo> model_;
  const std::chrono::system_clock::time_point deadline_;
  ResponseSink* const sink_;
  const Clock::time_point received_ = Clock::now();

  // Reserve.
  std::vector<std::string> decode_candidates_;
  size_t next_decode_ = 0;
  std::vector<std::string> reserve_errors_;
  bool decode_full_ = false;  // some decode worker answered RESOURCE_EXHAUSTED
  int queue_rounds_ = 0;
  double queued_ms_ = 0;  // waiting for KV blocks, before Reserve succeeded
  std::shared_ptr<const WorkerStubs> decode_;
  v1::ReserveRequest reserve_request_;
  v1::Reservation reservation_;
  bool holds_reservation_ = false;  // ours to Release until Decode takes it over
  // Prefill.
  std::shared_ptr<const WorkerStubs> prefill_;
  v1::PrefillRequest prefill_request_;
  v1::PrefillResponse prefill_response_;
  grpc::ClientContext* prefill_context_ = nullptr;
  absl::flat_hash_set<std::string> failed_prefill_;
  std::vector<std::string> prefill_errors_;
  // Migration.
  std::vector<int32_t> generated_;  // every id the decode workers sent, in order
  int32_t generated_before_ = 0;    // of them, those in request_'s prompt
  int migrations_ = 0;
  absl::flat_hash_set<std::string> failed_decode_;
  // Decode.
  DecodeRelay* relay_ = nullptr;  // valid while it holds its stream open
  grpc::ClientContext* decode_context_ = nullptr;
  std::unique_ptr<TextOutput> text_;  // with a tokenizer
  bool stopped_by_text_ = false;      // a stop string ended the request
  std::vector<int32_t> last_tokens_;
  std::string last_text_;
  std::string finish_reason_;
  int32_t completion_tokens_ = 0;
  Clock::time_point first_token_at_{};
  Clock::time_point last_token_at_{};
  bool waiting_for_kv_ = false;  // counted in the metrics' waiting requests
  bool finished_ = false;

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<grpc::Alarm>> alarms_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::router
