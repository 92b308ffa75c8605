// The router end to end against fake workers: real gRPC servers on localhost with canned
// behaviour, so each test pins one part of the request flow (ordering, retries, release,
// cancellation, deadlines) in well under a second.
#include "router/router.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <sstream>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "rpc/server.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr int32_t kFirstToken = 42;
constexpr int64_t kKvBytes = 4096;

v1::ModelInfo FakeModel() {
  v1::ModelInfo info;
  info.set_architecture("LlamaForCausalLM");
  info.set_fingerprint("fake-fp");
  info.set_vocab_size(1000);
  info.set_max_context(256);
  info.mutable_kv_format()->set_kind("GQA");
  info.mutable_kv_format()->set_tokens_per_block(4);
  info.mutable_kv_format()->set_description("GQA, fake");
  return info;
}

v1::WorkerLoad FakeLoad(int64_t free_blocks) {
  v1::WorkerLoad load;
  load.set_kv_blocks_total(100);
  load.set_kv_blocks_free(free_blocks);
  load.set_tokens_per_block(4);
  return load;
}

// Waits until `done` holds or `limit` passes. `done` reads state that its writers change while
// holding `mu`: each release of `mu` wakes the wait (no polling).
template <typename Predicate>
bool Await(absl::Mutex& mu, Predicate done, milliseconds limit = milliseconds(5000)) {
  absl::MutexLock lock(&mu);
  return mu.AwaitWithTimeout(absl::Condition(&done), absl::FromChrono(limit));
}

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, grpc::Status status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

// Fake workers on the callback API, like the real ones: a call that waits (for a cancel, or for
// the test to resume it) holds no thread. Counters the tests wait on change under `mu`.
// What both fake workers answer alike: their load (FreeBlocks free KV blocks) and the model.
template <typename Service>
class FakeWorker : public Service {
 public:
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context, const v1::GetLoadRequest*,
                                    v1::WorkerLoad* load) override {
    *load = FakeLoad(FreeBlocks());
    return Answer(context, grpc::Status::OK);
  }
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest*,
                                         v1::ModelInfo* info) override {
    *info = FakeModel();
    return Answer(context, grpc::Status::OK);
  }

 protected:
  virtual int64_t FreeBlocks() const { return 50; }
};

class FakeDecode final : public FakeWorker<v1::DecodeWorker::CallbackService> {
 public:
  // Decode streams the first token, then 100, 101, ... one per message, up to max_tokens.
  // With `pause_after` > 0, a stream pauses after that many messages until ResumeStreams (or
  // its cancellation).
  std::atomic<bool> full{false};
  std::atomic<int> pause_after{0};
  std::atomic<int> reserves{0}, releases{0}, decodes{0};
  std::atomic<bool> decode_cancelled{false};
  absl::Mutex mu;
  std::vector<uint64_t> released_ids ABSL_GUARDED_BY(mu);
  v1::DecodeRequest last_decode ABSL_GUARDED_BY(mu);

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const v1::ReserveRequest* request,
                                    v1::Reservation* reservation) override {
    absl::MutexLock lock(&mu);
    ++reserves;
    if (full) return Answer(context, {grpc::StatusCode::RESOURCE_EXHAUSTED, "no free KV blocks"});
    if (request->model_fingerprint() != "fake-fp") {
      return Answer(context, {grpc::StatusCode::FAILED_PRECONDITION, "fingerprint"});
    }
    reservation->set_reservation_id(static_cast<uint64_t>(reserves.load()));
    reservation->set_secret("secret");
    reservation->set_reserved_tokens(request->prompt_tokens() + request->max_tokens());
    return Answer(context, grpc::Status::OK);
  }
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse*) override {
    absl::MutexLock lock(&mu);
    released_ids.push_back(request->reservation_id());
    ++releases;
    return Answer(context, grpc::Status::OK);
  }
  grpc::ServerWriteReactor<v1::DecodeResponse>* Decode(grpc::CallbackServerContext*,
                                                       const v1::DecodeRequest* request) override {
    absl::MutexLock lock(&mu);
    last_decode = *request;
    ++decodes;
    auto* stream = new Stream(*this, *request);
    streams_.insert(stream);
    stream->NextLocked();
    return stream;
  }
  int64_t FreeBlocks() const override { return full ? 0 : 50; }

  // Lets every paused stream (and any about to pause) run to its end.
  void ResumeStreams() {
    absl::MutexLock lock(&mu);
    for (Stream* stream : streams_) stream->ResumeLocked();
  }

 private:
  // One Decode stream; its state is guarded by the fake's `mu`.
  class Stream final : public grpc::ServerWriteReactor<v1::DecodeResponse> {
   public:
    Stream(FakeDecode& fake, const v1::DecodeRequest& request)
        : fake_(fake), request_(request), pause_after_(fake.pause_after) {}

    void NextLocked() {
      if (ended_ || writing_) return;
      const int n = request_.request().max_tokens();
      if (sent_ >= n) return EndLocked(grpc::Status::OK);
      if (pause_after_ > 0 && sent_ == pause_after_) return;  // until ResumeLocked
      out_.Clear();
      out_.add_token_ids(sent_ == 0 ? request_.first_token() : 100 + sent_ - 1);
      if (++sent_ == n) {
        out_.set_finish_reason("length");
        out_.set_decode_ms(1.0);
        ended_ = true;
        StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
        return;
      }
      writing_ = true;
      StartWrite(&out_);
    }
    void ResumeLocked() {
      pause_after_ = 0;
      NextLocked();
    }
    void OnWriteDone(bool ok) override {
      absl::MutexLock lock(&fake_.mu);
      writing_ = false;
      if (!ok || cancelled_) return EndLocked({grpc::StatusCode::CANCELLED, "gone"});
      NextLocked();
    }
    void OnCancel() override {
      absl::MutexLock lock(&fake_.mu);
      cancelled_ = true;
      fake_.decode_cancelled = true;
      if (!writing_) EndLocked({grpc::StatusCode::CANCELLED, "cancelled"});
    }
    void OnDone() override {
      {
        absl::MutexLock lock(&fake_.mu);
        fake_.streams_.erase(this);
      }
      delete this;
    }

   private:
    void EndLocked(const grpc::Status& status) {
      if (ended_) return;
      ended_ = true;
      Finish(status);
    }

    FakeDecode& fake_;
    const v1::DecodeRequest request_;
    int pause_after_;
    int sent_ = 0;
    bool writing_ = false, cancelled_ = false, ended_ = false;
    v1::DecodeResponse out_;
  };

  absl::flat_hash_set<Stream*> streams_ ABSL_GUARDED_BY(mu);
};

class FakePrefill final : public FakeWorker<v1::PrefillWorker::CallbackService> {
 public:
  // Answers `failure_code` while the shared `*failures_left` is positive (decrementing it).
  std::atomic<int>* failures_left = nullptr;
  std::atomic<grpc::StatusCode> failure_code{grpc::StatusCode::UNAVAILABLE};
  std::atomic<bool> hang{false};  // wait for cancellation instead of answering
  std::atomic<int> prefills{0};
  std::atomic<bool> cancelled{false};
  absl::Mutex mu;
  std::chrono::system_clock::time_point deadline ABSL_GUARDED_BY(mu);
  v1::PrefillRequest last ABSL_GUARDED_BY(mu);

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response) override {
    {
      absl::MutexLock lock(&mu);
      ++prefills;
      deadline = context->deadline();
      last = *request;
    }
    if (failures_left != nullptr && failures_left->fetch_sub(1) > 0) {
      return Answer(context, {failure_code, "worker is going away"});
    }
    if (hang) return new HangingCall(*this);
    response->set_first_token(kFirstToken);
    response->set_prefill_ms(3.0);
    response->set_queue_ms(0.5);
    response->set_kv_transfer_ms(1.5);
    response->set_kv_transfer_bytes(kKvBytes);
    response->set_cached_prompt_tokens(0);
    response->set_kv_format("GQA, fake");
    response->set_kv_transport("tcp (fake)");
    return Answer(context, grpc::Status::OK);
  }

 private:
  // A Prefill that answers only its cancellation.
  class HangingCall final : public grpc::ServerUnaryReactor {
   public:
    explicit HangingCall(FakePrefill& fake) : fake_(fake) {}
    void OnCancel() override {
      {
        absl::MutexLock lock(&fake_.mu);
        fake_.cancelled = true;
      }
      Finish({grpc::StatusCode::CANCELLED, "cancelled"});
    }
    void OnDone() override { delete this; }

   private:
    FakePrefill& fake_;
  };
};

// Sends `bytes` unserialized as the request of `method` (unary or server-streaming: on the wire
// both are a stream with one request) and returns the call's status.
class RawCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static grpc::Status Run(grpc::GenericStub& stub, const std::string& method,
                          const std::string& bytes) {
    RawCall call;
    grpc::Slice slice(bytes);
    call.request_ = grpc::ByteBuffer(&slice, 1);
    call.context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    stub.PrepareBidiStreamingCall(&call.context_, method, grpc::StubOptions(), &call);
    call.StartWriteLast(&call.request_, grpc::WriteOptions());
    call.StartRead(&call.response_);
    call.StartCall();
    return call.done_.get_future().get();
  }
  void OnReadDone(bool ok) override {
    if (ok) StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override { done_.set_value(status); }

 private:
  grpc::ClientContext context_;
  grpc::ByteBuffer request_, response_;
  std::promise<grpc::Status> done_;
};

// Routes spdlog's default logger into a string for the test's lifetime.
class CapturedLog {
 public:
  CapturedLog() : previous_(spdlog::default_logger()) {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "captured", std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)));
  }
  ~CapturedLog() { spdlog::set_default_logger(previous_); }
  std::string text() {
    spdlog::default_logger()->flush();
    return out_.str();
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

template <typename Service>
std::unique_ptr<rpc::Server> Serve(Service* service) {
  auto server = rpc::Server::Start("127.0.0.1:0", {service});
  EXPECT_TRUE(server.ok()) << server.status();
  (*server)->SetServing(true);
  return *std::move(server);
}

// Fake workers (two prefill, two decode by default) and a router in front of them.
class RouterTest : public ::testing::Test {
 protected:
  void StartAll(int prefill_workers = 2, int decode_workers = 1,
                milliseconds request_timeout = milliseconds(5000)) {
    RouterConfig config;
    config.listen = "127.0.0.1:0";
    config.monitor.poll_interval = milliseconds(50);
    config.flow.request_timeout = request_timeout;
    config.flow.queue_timeout = milliseconds(400);
    for (int i = 0; i < prefill_workers; ++i) {
      prefill_[i].failures_left = &prefill_failures_;
      prefill_servers_.push_back(Serve(&prefill_[i]));
      config.discovery.prefill.push_back(prefill_servers_.back()->address());
    }
    for (int i = 0; i < decode_workers; ++i) {
      decode_servers_.push_back(Serve(&decode_[i]));
      config.discovery.decode.push_back(decode_servers_.back()->address());
    }
    absl::StatusOr<std::unique_ptr<Router>> router = Router::Start(config);
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = *std::move(router);
    // Start polled the workers once already; the wait is for slow (sanitizer) builds.
    ASSERT_TRUE(router_->AwaitServing(true, milliseconds(10000)));
    stub_ = v1::Generation::NewStub(
        grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (router_ != nullptr) router_->Shutdown(milliseconds(0));
  }

  static v1::GenerateRequest Request(int max_tokens) {
    v1::GenerateRequest request;
    request.set_request_id("test-req");
    for (int32_t id : {1, 2, 3, 4, 5, 6}) request.add_prompt_token_ids(id);
    request.set_max_tokens(max_tokens);
    return request;
  }
  int TotalPrefills() { return prefill_[0].prefills + prefill_[1].prefills; }
  // A 3-token Complete whose first `prefills` Prefill calls the fake workers cut (CANCELLED), as
  // a server shutting down does to calls racing with it.
  grpc::Status CompleteWithPrefillsCancelled(int prefills, v1::CompleteResponse& response) {
    for (FakePrefill& fake : prefill_) fake.failure_code = grpc::StatusCode::CANCELLED;
    prefill_failures_ = prefills;
    grpc::ClientContext context;
    return stub_->Complete(&context, Request(3), &response);
  }
  // Starts a Generate call and reads its first message into `first`.
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> GenerateFirst(
      grpc::ClientContext* context, int max_tokens, v1::GenerateResponse* first) {
    auto reader = stub_->Generate(context, Request(max_tokens));
    EXPECT_TRUE(reader->Read(first));
    return reader;
  }

  std::atomic<int> prefill_failures_{0};
  FakePrefill prefill_[2];
  FakeDecode decode_[2];
  std::vector<std::unique_ptr<rpc::Server>> prefill_servers_, decode_servers_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

TEST_F(RouterTest, GenerateStreamsTokensInOrderAndEndsWithFinalInfo) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, Request(5));
  std::vector<int32_t> tokens;
  std::vector<v1::GenerateResponse> messages;
  v1::GenerateResponse message;
  while (reader->Read(&message)) {
    messages.push_back(message);
    tokens.insert(tokens.end(), message.token_ids().begin(), message.token_ids().end());
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, (std::vector<int32_t>{kFirstToken, 100, 101, 102, 103}));
  ASSERT_GE(messages.size(), 2u);  // streamed, not gathered
  for (size_t i = 0; i + 1 < messages.size(); ++i) EXPECT_FALSE(messages[i].has_final());
  const v1::FinalInfo& final_info = messages.back().final();
  EXPECT_EQ(messages.back().request_id(), "test-req");
  EXPECT_EQ(final_info.finish_reason(), "length");
  EXPECT_EQ(final_info.usage().prompt_tokens(), 6);
  EXPECT_EQ(final_info.usage().completion_tokens(), 5);
  EXPECT_EQ(final_info.timings().kv_transfer_bytes(), static_cast<uint64_t>(kKvBytes));
  EXPECT_EQ(final_info.timings().kv_transport(), "tcp (fake)");
  EXPECT_EQ(final_info.timings().prefill_ms(), 3.0);
  EXPECT_GT(final_info.timings().ttft_ms(), 0.0);
  EXPECT_GE(final_info.timings().total_ms(), final_info.timings().ttft_ms());
  EXPECT_EQ(final_info.kv_format(), "GQA, fake");
  EXPECT_EQ(final_info.decode_worker(), decode_servers_[0]->address());
  EXPECT_TRUE(final_info.prefill_worker() == prefill_servers_[0]->address() ||
              final_info.prefill_worker() == prefill_servers_[1]->address());
  // The workers saw one reservation, handed from Reserve through Prefill to Decode.
  EXPECT_EQ(decode_[0].reserves, 1);
  EXPECT_EQ(decode_[0].releases, 0);
  EXPECT_EQ(TotalPrefills(), 1);
  absl::MutexLock lock(&decode_[0].mu);
  EXPECT_EQ(decode_[0].last_decode.first_token(), kFirstToken);
  EXPECT_EQ(decode_[0].last_decode.reservation_id(), 1u);
  EXPECT_EQ(decode_[0].last_decode.request().temperature(), 1.0f);  // defaults filled
}

TEST_F(RouterTest, CompleteReturnsEveryToken) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  grpc::ClientContext context;
  v1::CompleteResponse response;
  v1::GenerateRequest request = Request(4);
  request.clear_request_id();
  ASSERT_TRUE(stub_->Complete(&context, request, &response).ok());
  EXPECT_EQ(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()),
            (std::vector<int32_t>{kFirstToken, 100, 101, 102}));
  EXPECT_EQ(response.request_id().rfind("req-", 0), 0u);  // assigned by the router
  EXPECT_EQ(response.final().finish_reason(), "length");
  EXPECT_EQ(response.final().usage().completion_tokens(), 4);
}

TEST_F(RouterTest, GetModelInfoReportsTheWorkersModel) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.fingerprint(), "fake-fp");
  EXPECT_EQ(info.max_context(), 256);
}

TEST_F(RouterTest, InvalidRequestIsRejectedBeforeAnyWorkerIsCalled) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  grpc::ClientContext context;
  v1::CompleteResponse response;
  v1::GenerateRequest request = Request(4);
  request.add_prompt_token_ids(5000);  // not in the vocabulary
  const grpc::Status status = stub_->Complete(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("prompt_token_ids[6]"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(decode_[0].reserves, 0);
}

TEST_F(RouterTest, UndecodableRequestBytesAreInvalidArgument) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  grpc::GenericStub raw(
      grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  const std::string garbage[] = {
      "\xff\xff\xff\xff",          // a field number of zero, wire type 7
      "\x12\x05\x01\x02",          // prompt_token_ids: 5 bytes announced, 2 sent
      "\x3a\x02\xc3\x28",          // prompt (a string) that is not UTF-8
      std::string("\x0a\x80", 2),  // request_id with a truncated length
  };
  for (const char* method :
       {"/pdserve.v1.Generation/Complete", "/pdserve.v1.Generation/Generate"}) {
    for (const std::string& bytes : garbage) {
      SCOPED_TRACE(method);
      const grpc::Status status = RawCall::Run(raw, method, bytes);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_EQ(status.error_message().rfind(
                    "request is not a valid pdserve.v1.GenerateRequest protobuf", 0),
                0u)
          << status.error_message();
    }
  }
  EXPECT_EQ(decode_[0].reserves, 0);
  // Well-formed bytes through the same raw path are served as usual.
  const grpc::Status ok =
      RawCall::Run(raw, "/pdserve.v1.Generation/Complete", Request(2).SerializeAsString());
  EXPECT_TRUE(ok.ok()) << ok.error_message();
}

TEST_F(RouterTest, RequestWithoutPromptSaysWhichFieldsCarryOne) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  grpc::ClientContext context;
  v1::CompleteResponse response;
  v1::GenerateRequest request = Request(4);
  request.clear_prompt_token_ids();
  request.set_prompt("");  // empty text is no prompt
  const grpc::Status status = stub_->Complete(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(),
            "the request has no prompt: set prompt, messages or prompt_token_ids");
}

// An id that could forge log lines is refused before anything else is looked at, and the line
// that logs the refusal shows it escaped and cut.
TEST_F(RouterTest, BadRequestIdIsRefusedFirstAndLoggedEscaped) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  CapturedLog log;
  v1::GenerateRequest request = Request(4);
  request.set_request_id("evil\n[error] forged line" + std::string(5 << 20, 'x'));
  request.set_prompt("also a text prompt, which this router cannot read");  // a second error
  grpc::ClientContext context;
  v1::CompleteResponse response;
  const grpc::Status status = stub_->Complete(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind(
                "request_id must be at most 128 printable ASCII bytes (got 5242904 bytes)", 0),
            0u)
      << status.error_message();
  const std::string text = log.text();
  EXPECT_NE(text.find("request evil\\x0A[error] forged line"), std::string::npos) << text;
  EXPECT_EQ(text.find("\n[error] forged"), std::string::npos) << text;
  EXPECT_LT(text.size(), 4096u);
  EXPECT_EQ(decode_[0].reserves, 0);
}

TEST_F(RouterTest, UnavailablePrefillIsRetriedOnTheOtherWorker) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  prefill_failures_ = 1;
  grpc::ClientContext context;
  v1::CompleteResponse response;
  ASSERT_TRUE(stub_->Complete(&context, Request(3), &response).ok());
  EXPECT_EQ(response.token_ids_size(), 3);
  EXPECT_EQ(prefill_[0].prefills, 1);
  EXPECT_EQ(prefill_[1].prefills, 1);
  // The first reservation was released and the retry ran on a fresh one.
  EXPECT_EQ(decode_[0].reserves, 2);
  EXPECT_EQ(decode_[0].releases, 1);
  absl::MutexLock lock(&decode_[0].mu);
  EXPECT_EQ(decode_[0].released_ids, std::vector<uint64_t>{1});
  EXPECT_EQ(decode_[0].last_decode.reservation_id(), 2u);
}

// A server that shuts down cancels the calls racing with it: the client did not cancel, so the
// request goes to the other worker, as for UNAVAILABLE.
TEST_F(RouterTest, PrefillCancelledByTheWorkerIsRetriedOnTheOtherWorker) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  v1::CompleteResponse response;
  ASSERT_TRUE(CompleteWithPrefillsCancelled(1, response).ok());
  EXPECT_EQ(response.token_ids_size(), 3);
  EXPECT_EQ(TotalPrefills(), 2);
  EXPECT_EQ(decode_[0].reserves, 2);
  EXPECT_EQ(decode_[0].releases, 1);
}

// When both cut the call the client hears UNAVAILABLE (retry later), not CANCELLED, which would
// say that the client cancelled.
TEST_F(RouterTest, PrefillCancelledByBothWorkersGivesUnavailable) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  v1::CompleteResponse response;
  const grpc::Status status = CompleteWithPrefillsCancelled(2, response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("cut by the worker"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(decode_[0].releases, 2);
}

TEST_F(RouterTest, BothPrefillWorkersFailingGivesUnavailableAndReleases) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  prefill_failures_ = 2;
  grpc::ClientContext context;
  v1::CompleteResponse response;
  const grpc::Status status = stub_->Complete(&context, Request(3), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("worker is going away"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(TotalPrefills(), 2);
  // Released before the client got its answer: nothing is held for the request.
  EXPECT_EQ(decode_[0].reserves, 2);
  EXPECT_EQ(decode_[0].releases, 2);
  EXPECT_EQ(decode_[0].decodes, 0);
}

TEST_F(RouterTest, FullDecodeWorkerIsSkippedAndAllFullIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(StartAll(/*prefill_workers=*/1, /*decode_workers=*/2));
  decode_[0].full = true;
  {
    grpc::ClientContext context;
    v1::CompleteResponse response;
    ASSERT_TRUE(stub_->Complete(&context, Request(2), &response).ok());
    EXPECT_EQ(response.final().decode_worker(), decode_servers_[1]->address());
  }
  decode_[1].full = true;
  grpc::ClientContext context;
  v1::CompleteResponse response;
  const grpc::Status status = stub_->Complete(&context, Request(2), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_EQ(prefill_[0].prefills, 1);  // only the first request reached prefill
}

TEST_F(RouterTest, RequestWaitsForKvBlocksWhenEveryDecodeWorkerIsFull) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  decode_[0].full = true;
  grpc::ClientContext context;
  v1::CompleteResponse response;
  auto call = std::async(std::launch::async,
                         [&] { return stub_->Complete(&context, Request(2), &response); });
  // Three refusals: the router has backed off twice (10 ms, then 20 ms) and tries again.
  ASSERT_TRUE(Await(decode_[0].mu, [&] { return decode_[0].reserves.load() >= 3; }));
  decode_[0].full = false;
  const grpc::Status status = call.get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(decode_[0].reserves, 3);
  EXPECT_GE(response.final().timings().queue_ms(), 30.0);  // the router's wait is queue time
}

TEST_F(RouterTest, ClientCancelMidStreamCancelsTheDecodeStream) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  decode_[0].pause_after = 1;  // the first token, then wait for the cancel
  grpc::ClientContext context;
  v1::GenerateResponse message;
  auto reader = GenerateFirst(&context, 10, &message);
  ASSERT_EQ(message.token_ids_size(), 1);
  EXPECT_EQ(message.token_ids(0), kFirstToken);
  context.TryCancel();
  while (reader->Read(&message)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Await(decode_[0].mu, [&] { return decode_[0].decode_cancelled.load(); }));
}

TEST_F(RouterTest, ClientDeadlineReachesTheWorkersAndFreesTheReservation) {
  ASSERT_NO_FATAL_FAILURE(StartAll(/*prefill_workers=*/1));
  prefill_[0].hang = true;
  grpc::ClientContext context;
  const auto deadline = std::chrono::system_clock::now() + milliseconds(300);
  context.set_deadline(deadline);
  v1::CompleteResponse response;
  const auto start = Clock::now();
  const grpc::Status status = stub_->Complete(&context, Request(3), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(Clock::now() - start, milliseconds(1500));
  // The prefill call carried the client's deadline and was cancelled when it passed.
  EXPECT_TRUE(Await(prefill_[0].mu, [&] { return prefill_[0].cancelled.load(); }));
  {
    absl::MutexLock lock(&prefill_[0].mu);
    // Not the router's 5 s default (the margin covers the relative timeouts' transit).
    EXPECT_LE(prefill_[0].deadline, deadline + milliseconds(100));
  }
  EXPECT_TRUE(Await(decode_[0].mu, [&] { return decode_[0].releases.load() == 1; }));
}

TEST_F(RouterTest, RouterDeadlineAppliesWhenTheClientSetsNone) {
  prefill_[0].hang = true;
  ASSERT_NO_FATAL_FAILURE(StartAll(1, 1, /*request_timeout=*/milliseconds(200)));
  grpc::ClientContext context;
  v1::CompleteResponse response;
  const grpc::Status status = stub_->Complete(&context, Request(3), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_NE(status.error_message().find("--request-timeout"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(decode_[0].releases, 1);  // released before the answer
}

TEST_F(RouterTest, ShutdownLetsInFlightRequestsFinishAndRefusesNewOnes) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  decode_[0].pause_after = 1;
  grpc::ClientContext context;
  v1::GenerateResponse message;
  auto reader = GenerateFirst(&context, 10, &message);  // in flight, paused after one token
  std::thread drain([&] { router_->Shutdown(milliseconds(5000)); });
  ASSERT_TRUE(router_->AwaitServing(false, milliseconds(5000)));
  {
    // While the stream is still open, a new request is refused.
    grpc::ClientContext late;
    v1::CompleteResponse response;
    EXPECT_EQ(stub_->Complete(&late, Request(2), &response).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
  decode_[0].ResumeStreams();  // the rest of the stream comes while the router drains
  int tokens = message.token_ids_size();
  while (reader->Read(&message)) tokens += message.token_ids_size();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, 10);
  drain.join();
}

TEST_F(RouterTest, DeadWorkerMakesTheRouterNotServing) {
  ASSERT_NO_FATAL_FAILURE(StartAll(/*prefill_workers=*/1));
  EXPECT_TRUE(router_->serving());
  prefill_servers_[0]->Shutdown(milliseconds(0));
  EXPECT_TRUE(router_->AwaitServing(false, milliseconds(5000)));
  grpc::ClientContext context;
  v1::CompleteResponse response;
  EXPECT_EQ(stub_->Complete(&context, Request(2), &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(decode_[0].releases.load(), decode_[0].reserves.load());
}

}  // namespace
}  // namespace pdserve::router
