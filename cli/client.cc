// `pdserve client`: one request to any router, through the public API. Prints the answer's text
// as it streams (or its ids with --ids, or when the prompt is ids), the final info on stderr.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "absl/status/status.h"
#include "cli/commands.h"
#include "pdserve/v1/generation.grpc.pb.h"

namespace pdserve::cli {
namespace {

v1::GenerateRequest ToRequest(const ClientOptions& o) {
  v1::GenerateRequest r;
  r.set_request_id(o.request_id);
  r.mutable_prompt_token_ids()->Add(o.prompt_ids.begin(), o.prompt_ids.end());
  r.set_prompt(o.prompt);
  if (!o.chat.empty()) {
    if (!o.system.empty()) {
      v1::ChatMessage* m = r.add_messages();
      m->set_role("system");
      m->set_content(o.system);
    }
    v1::ChatMessage* m = r.add_messages();
    m->set_role("user");
    m->set_content(o.chat);
  }
  for (const std::string& stop : o.stop_strings) r.add_stop(stop);
  v1::SamplingParams* s = r.mutable_sampling();
  if (o.temperature_set) s->set_temperature(o.sampling.temperature);
  if (o.top_k_set) s->set_top_k(o.sampling.top_k);
  if (o.top_p_set) s->set_top_p(o.sampling.top_p);
  if (o.min_p_set) s->set_min_p(o.sampling.min_p);
  if (o.repetition_penalty_set) s->set_repetition_penalty(o.sampling.repetition_penalty);
  if (o.sampling.seed) s->set_seed(*o.sampling.seed);
  r.set_max_tokens(o.stop.max_tokens);
  r.mutable_stop_token_ids()->Add(o.stop.stop_token_ids.begin(), o.stop.stop_token_ids.end());
  r.set_ignore_eos(o.stop.ignore_eos);
  return r;
}

void PrintFinal(const std::string& request_id, const v1::FinalInfo& f) {
  const v1::Timings& t = f.timings();
  std::fprintf(stderr,
               "request %s: finish_reason=%s, %d prompt + %d generated tokens (%d cached), "
               "TTFT %.1f ms (queue %.1f, prefill %.1f, KV transfer %.2f ms / %llu B), "
               "decode %.1f ms, total %.1f ms; %s; prefill %s, decode %s\n",
               request_id.c_str(), f.finish_reason().c_str(), f.usage().prompt_tokens(),
               f.usage().completion_tokens(), f.usage().cached_prompt_tokens(), t.ttft_ms(),
               t.queue_ms(), t.prefill_ms(), t.kv_transfer_ms(),
               static_cast<unsigned long long>(t.kv_transfer_bytes()), t.decode_ms(), t.total_ms(),
               f.kv_format().c_str(), f.prefill_worker().c_str(), f.decode_worker().c_str());
}

}  // namespace

int RunClient(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      rpc::MakeChannelCredentials(options.tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(credentials.status().message()).c_str());
    return 2;
  }
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(options.router, *credentials));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1e3)));
  const v1::GenerateRequest request = ToRequest(options);
  grpc::Status status;
  if (options.unary) {
    v1::CompleteResponse response;
    status = stub->Complete(&ctx, request, &response);
    if (status.ok()) {
      if (options.ids) {
        for (int i = 0; i < response.token_ids_size(); ++i) {
          std::printf(i ? " %d" : "%d", response.token_ids(i));
        }
      } else {
        std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      }
      std::printf("\n");
      PrintFinal(response.request_id(), response.final());
    }
  } else {
    auto reader = stub->Generate(&ctx, request);
    v1::GenerateResponse msg;
    bool first = true;
    while (reader->Read(&msg)) {
      if (options.ids) {
        for (int32_t id : msg.token_ids()) {
          std::printf(first ? "%d" : " %d", id);
          first = false;
        }
      } else {
        std::fwrite(msg.text().data(), 1, msg.text().size(), stdout);
      }
      std::fflush(stdout);
      if (msg.has_final()) {
        std::printf("\n");
        PrintFinal(msg.request_id(), msg.final());
      }
    }
    status = reader->Finish();
  }
  if (!status.ok()) {
    std::fprintf(
        stderr, "error: %s: %s\n",
        absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
        status.error_message().c_str());
    return 1;
  }
  return 0;
}

}  // namespace pdserve::cli
