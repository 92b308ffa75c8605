#include "openai/openai_server.h"

#include <chrono>
#include <csignal>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "httplib.h"
#include "metrics/http_bind.h"
#include "openai/openai_protocol.h"
#include "router/text_io.h"
#include "rpc/status.h"
#include "spdlog/spdlog.h"

namespace pdserve::openai {
namespace {

constexpr char kJson[] = "application/json";
constexpr size_t kMaxBodyBytes = 16 << 20;

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SetError(httplib::Response& res, const absl::Status& status) {
  res.status = HttpStatus(status.code());
  res.set_content(ErrorBody(status), kJson);
}

}  // namespace

// One request's answer: the flow's sink on gRPC's threads, read by the HTTP thread that serves
// the request. A whole answer is gathered; a stream is written one event at a time, and the
// flow's next read waits until the client took the previous one (as the gRPC stream does).
// The HTTP thread holds the call until the flow has finished with it (Await).
class OpenAiCall final : public router::ResponseSink {
 public:
  OpenAiCall(router::GenerationService& service, const ApiRequest& api)
      : service_(service), stream_(api.stream), include_usage_(api.include_usage) {}
  ~OpenAiCall() override {
    if (admitted_) service_.admission().Leave();
  }

  // Admits and starts the request; an error (a bad request, a draining router) finishes it
  // at once through this sink, as it would a gRPC call.
  void Start(absl::StatusOr<v1::GenerateRequest> request) {
    const absl::Status admitted = service_.admission().Enter();
    admitted_ = admitted.ok();
    if (!admitted.ok()) request = admitted;
    flow_ = router::CreateRequestFlow(service_.env(), service_.prompt_options(), std::move(request),
                                      std::chrono::system_clock::time_point::max(), this);
    if (flow_ == nullptr) return;
    request_id_ = flow_->request_id();  // read before the flow runs (a migration rewrites it)
    flow_->Start();
  }
  const std::string& request_id() const { return request_id_; }

  void Send(std::span<const int32_t>, std::string text, std::function<void(bool)> sent) override {
    if (!stream_) {
      {
        absl::MutexLock lock(&mu_);
        text_ += text;
      }
      sent(true);
      return;
    }
    absl::MutexLock lock(&mu_);
    pending_text_ += text;
    sent_ = std::move(sent);
  }
  void Finish(const absl::Status& status, std::span<const int32_t>, std::string text,
              const v1::FinalInfo& final_info) override {
    if (router::RouterMetrics* metrics = service_.env().metrics) {
      metrics->RequestEnded(status, final_info);
    }
    absl::MutexLock lock(&mu_);
    status_ = status;
    text_ += text;
    final_ = final_info;
    finished_ = true;
  }

  // Until the flow has finished: the whole answer's status, text and final info.
  absl::Status AwaitFinish() {
    mu_.LockWhen(absl::Condition(&finished_));
    absl::Status status = status_;
    mu_.Unlock();
    return status;
  }
  std::string text() const {
    absl::MutexLock lock(&mu_);
    return text_;
  }
  v1::FinalInfo final_info() const {
    absl::MutexLock lock(&mu_);
    return final_;
  }

  // A stream: waits for its first event. An error before any token is answered as an HTTP
  // error (the status line still says what happened); otherwise the events follow.
  absl::Status AwaitFirstEvent() {
    mu_.LockWhen(absl::Condition(this, &OpenAiCall::HasEvent));
    absl::Status status = sent_ == nullptr ? status_ : absl::OkStatus();
    mu_.Unlock();
    return status;
  }

  // httplib's chunked content provider: writes the next event(s); false ends the connection.
  bool WriteEvents(const ResponseHeader& header, httplib::DataSink& sink) {
    mu_.LockWhen(absl::Condition(this, &OpenAiCall::HasEvent));
    std::function<void(bool)> sent = std::move(sent_);
    sent_ = nullptr;
    std::string text = std::move(pending_text_);
    pending_text_.clear();
    const absl::Status status = status_;
    if (sent == nullptr) text = text_;  // finished: the last text
    const v1::FinalInfo final_info = sent == nullptr ? final_ : v1::FinalInfo();
    mu_.Unlock();
    if (sent != nullptr) {
      const bool ok = text.empty() ||
                      Write(sink, ChunkEvent(header, text, first_, std::nullopt, include_usage_));
      if (!text.empty()) first_ = false;
      sent(ok);  // may Send again at once, so not under mu_
      if (!ok) CancelFlow();
      return ok;
    }
    // Finished, nothing pending: the last chunk (the rest of the text, the finish reason), the
    // usage chunk if asked for, [DONE].
    std::string tail;
    if (status.ok()) {
      tail = ChunkEvent(header, text, first_, final_info.finish_reason(), include_usage_);
      if (include_usage_) tail += UsageEvent(header, final_info.usage());
    } else {
      tail = ErrorEvent(status);
    }
    absl::StrAppend(&tail, kDoneEvent);
    Write(sink, tail);
    sink.done();
    return true;
  }

  void CancelFlow() {
    if (flow_ != nullptr) flow_->Cancel();
  }

  // The response is over (sent, or the connection dropped): a flow still running is cancelled,
  // and the HTTP thread waits until it has let go of this sink.
  void OnResponseDone() {
    bool finished;
    std::function<void(bool)> sent;
    {
      absl::MutexLock lock(&mu_);
      finished = finished_;
      sent = std::move(sent_);
      sent_ = nullptr;
    }
    if (!finished) {
      if (sent != nullptr) sent(false);
      CancelFlow();
    }
    mu_.LockWhen(absl::Condition(&finished_));
    mu_.Unlock();
  }

 private:
  bool HasEvent() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_ || sent_ != nullptr; }
  static bool Write(httplib::DataSink& sink, const std::string& event) {
    return sink.write(event.data(), event.size());
  }

  router::GenerationService& service_;
  const bool stream_;
  const bool include_usage_;
  bool admitted_ = false;
  std::shared_ptr<router::RequestFlow> flow_;
  std::string request_id_;
  bool first_ = true;  // no chunk with text written yet (the chat role goes on the first)

  mutable absl::Mutex mu_;
  std::string pending_text_ ABSL_GUARDED_BY(mu_);        // streamed, not yet written
  std::function<void(bool)> sent_ ABSL_GUARDED_BY(mu_);  // the flow's pending Send
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Written once by Finish; read by the HTTP thread after it saw finished_.
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::string text_ ABSL_GUARDED_BY(mu_);  // the whole answer, or a stream's last text
  v1::FinalInfo final_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(
    const OpenAiOptions& options, router::GenerationService& service) {
  const size_t colon = options.listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(options.listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--openai-listen '", options.listen,
                                                   "' is not HOST:PORT (e.g. 0.0.0.0:8000)"));
  }
  const std::string host = options.listen.substr(0, colon);
  if (options.threads < 1) {
    return absl::InvalidArgumentError("--openai-threads must be at least 1");
  }
  // httplib writes with send() and SSL_write(), which raise SIGPIPE when a client has gone: the
  // process must ignore it (httplib does so too, but only once its listening thread runs).
  std::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<OpenAiServer> server(new OpenAiServer(options, service));
  if (!server->http_->is_valid()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the OpenAI API cannot use the TLS files --tls-cert ", options.tls.cert,
                     ", --tls-key ", options.tls.key, ", --tls-ca ", options.tls.ca));
  }
  server->Route();
  httplib::Server& http = *server->http_;
  server->port_ = metrics::BindHttpServer(http, host, port);
  if (server->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve the OpenAI API on ", options.listen,
                                               ": the address is taken or not this machine's"));
  }
  server->thread_ = metrics::ListenInBackground(http);
  return server;
}

OpenAiServer::OpenAiServer(const OpenAiOptions& options, router::GenerationService& service)
    : options_(options),
      service_(service),
      created_(UnixSeconds()),
      // With a client CA, httplib's SSLServer requires and verifies client certificates.
      http_(options.tls.enabled()
                ? std::make_unique<httplib::SSLServer>(
                      options.tls.cert.c_str(), options.tls.key.c_str(), options.tls.ca.c_str())
                : std::make_unique<httplib::Server>()) {}

OpenAiServer::~OpenAiServer() { Stop(); }

void OpenAiServer::Stop() {
  std::vector<std::shared_ptr<OpenAiCall>> live;
  {
    absl::MutexLock lock(&calls_mu_);
    for (const auto& [key, call] : calls_) {
      if (std::shared_ptr<OpenAiCall> c = call.lock()) live.push_back(std::move(c));
    }
  }
  if (!live.empty()) spdlog::warn("OpenAI API: cancelling {} requests in flight", live.size());
  for (const std::shared_ptr<OpenAiCall>& call : live) call->CancelFlow();
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

int OpenAiServer::in_flight() const {
  absl::MutexLock lock(&calls_mu_);
  return static_cast<int>(calls_.size());
}

void OpenAiServer::Route() {
  httplib::Server& http = *http_;
  const int threads = options_.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(kMaxBodyBytes);
  http.set_tcp_nodelay(true);  // a streamed token is one small write: send it now
  // Unmatched paths and httplib's own refusals (413, 400) in the API's error shape.
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return;
    const std::string path = rpc::LoggableText(req.path);
    absl::Status status =
        res.status == 404
            ? absl::NotFoundError(absl::StrCat(req.method, " ", path,
                                               ": no such endpoint (/v1/models, /v1/completions, "
                                               "/v1/chat/completions, /health)"))
        : res.status == 413
            ? absl::InvalidArgumentError(
                  absl::StrCat("the body is over ", kMaxBodyBytes >> 20, " MiB"))
            : absl::InvalidArgumentError(absl::StrCat("HTTP ", res.status, " for ", path));
    const int code = res.status;
    SetError(res, status);
    res.status = code;
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (service_.env().pool->model_info() == nullptr) {
      SetError(res, absl::UnavailableError("no worker has reported its model yet"));
    } else {
      res.set_content("{}", kJson);
    }
  });
  const auto model_info = [this](httplib::Response& res) {
    std::shared_ptr<const v1::ModelInfo> info = service_.env().pool->model_info();
    if (info == nullptr) {
      SetError(res, absl::UnavailableError("no worker has reported its model yet: retry shortly"));
    }
    return info;
  };
  http.Get("/v1/models", [this, model_info](const httplib::Request&, httplib::Response& res) {
    if (auto info = model_info(res)) {
      res.set_content(ModelListBody(options_.served_model_name, created_, info->max_context()),
                      kJson);
    }
  });
  http.Get(R"(/v1/models/(.+))", [this, model_info](const httplib::Request& req,
                                                    httplib::Response& res) {
    if (req.matches[1] != options_.served_model_name) {
      SetError(res,
               absl::NotFoundError(absl::StrCat(
                   "The model '", rpc::LoggableText(req.matches[1].str()),
                   "' does not exist: this server serves '", options_.served_model_name, "'")));
    } else if (auto info = model_info(res)) {
      res.set_content(ModelBody(options_.served_model_name, created_, info->max_context()), kJson);
    }
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Answer(Endpoint::kCompletions, req, res);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Answer(Endpoint::kChat, req, res);
  });
}

void OpenAiServer::Answer(Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
  const int64_t created = UnixSeconds();
  absl::StatusOr<ApiRequest> api = ParseRequest(endpoint, req.body, options_.served_model_name);
  absl::StatusOr<v1::GenerateRequest> request =
      api.ok() ? absl::StatusOr<v1::GenerateRequest>(api->request) : api.status();
  if (request.ok()) {
    request->set_request_id(req.get_header_value("X-Request-Id"));
    // OpenAI's chat API answers up to the context's end when max_tokens is unset (the gRPC
    // API's default is a few tokens): encode the prompt now to know the room left.
    if (endpoint == Endpoint::kChat && !request->has_max_tokens()) {
      request = router::EncodePrompt(service_.env().tokenizer, *std::move(request),
                                     service_.prompt_options());
      std::shared_ptr<const v1::ModelInfo> info = service_.env().pool->model_info();
      if (request.ok() && info != nullptr) {
        request->set_max_tokens(static_cast<int32_t>(
            std::max<int64_t>(1, info->max_context() - request->prompt_token_ids_size())));
      }
    }
  }
  auto call = std::make_shared<OpenAiCall>(service_, api.ok() ? *api : ApiRequest{});
  call->Start(std::move(request));
  // Listed for Stop once started (its flow is set); whoever lets go of it last (this handler,
  // or a stream's end) takes it off.
  {
    absl::MutexLock lock(&calls_mu_);
    calls_[call.get()] = call;
  }
  std::shared_ptr<void> forget(nullptr, [this, key = call.get()](void*) {
    absl::MutexLock lock(&calls_mu_);
    calls_.erase(key);
  });
  if (!call->request_id().empty()) res.set_header("X-Request-Id", call->request_id());
  const ResponseHeader header =
      MakeHeader(endpoint, call->request_id(), created, options_.served_model_name);

  if (!api.ok() || !api->stream) {
    if (absl::Status status = call->AwaitFinish(); !status.ok()) {
      SetError(res, status);
      return;
    }
    const v1::FinalInfo info = call->final_info();
    res.set_content(CompletionBody(header, call->text(), info.finish_reason(), info.usage()),
                    kJson);
    return;
  }
  if (absl::Status status = call->AwaitFirstEvent(); !status.ok()) {
    SetError(res, status);
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [call, header](size_t, httplib::DataSink& sink) { return call->WriteEvents(header, sink); },
      [call, forget](bool) { call->OnResponseDone(); });
}

}  // namespace pdserve::openai
