#include "openai/openai_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace pdserve::openai {
namespace {

using nlohmann::json;

constexpr char kModel[] = "smol";

ApiRequest Parse(Endpoint endpoint, const json& body) {
  absl::StatusOr<ApiRequest> r = ParseRequest(endpoint, body.dump(), kModel);
  EXPECT_TRUE(r.ok()) << r.status() << " for " << body.dump();
  return r.ok() ? *r : ApiRequest{};
}

absl::Status Error(Endpoint endpoint, const std::string& body) {
  return ParseRequest(endpoint, body, kModel).status();
}

json EventJson(const std::string& event) {
  EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  return json::parse(event.substr(6, event.size() - 8));
}

TEST(OpenAiProtocol, ReadsEveryFormOfACompletionPrompt) {
  EXPECT_EQ(Parse(Endpoint::kCompletions, {{"prompt", "hi"}}).request.prompt(), "hi");
  EXPECT_EQ(Parse(Endpoint::kCompletions, {{"prompt", {"hi"}}}).request.prompt(), "hi");
  const ApiRequest ids = Parse(Endpoint::kCompletions, {{"prompt", {1, 2, 3}}});
  EXPECT_EQ(ids.request.prompt_token_ids_size(), 3);
  EXPECT_EQ(Parse(Endpoint::kCompletions, {{"prompt", {{4, 5}}}}).request.prompt_token_ids(1), 5);
  for (const char* bad :
       {R"({})", R"({"prompt": []})", R"({"prompt": ["a", "b"]})", R"({"prompt": [1, -2]})",
        R"({"prompt": 7})", R"({"prompt": [[1], [2]]})"}) {
    const absl::Status s = Error(Endpoint::kCompletions, bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("prompt"), absl::string_view::npos) << s;
  }
}

TEST(OpenAiProtocol, MapsSamplingLengthAndStopFields) {
  const ApiRequest r =
      Parse(Endpoint::kCompletions, {{"prompt", "x"},
                                     {"temperature", 0.5},
                                     {"top_p", 0.9},
                                     {"top_k", -1},
                                     {"min_p", 0.05},
                                     {"repetition_penalty", 1.1},
                                     {"seed", 42},
                                     {"max_tokens", 7},
                                     {"stop", "\n\n"},
                                     {"stop_token_ids", {2, 3}},
                                     {"ignore_eos", true},
                                     {"user", "someone"},
                                     {"logit_bias", json::object()},
                                     {"stream", true},
                                     {"stream_options", {{"include_usage", true}}}});
  const v1::SamplingParams& s = r.request.sampling();
  EXPECT_FLOAT_EQ(s.temperature(), 0.5f);
  EXPECT_FLOAT_EQ(s.top_p(), 0.9f);
  EXPECT_EQ(s.top_k(), 0);  // vLLM's -1: off
  EXPECT_FLOAT_EQ(s.min_p(), 0.05f);
  EXPECT_FLOAT_EQ(s.repetition_penalty(), 1.1f);
  EXPECT_EQ(s.seed(), 42u);
  EXPECT_EQ(r.request.max_tokens(), 7);
  ASSERT_EQ(r.request.stop_size(), 1);
  EXPECT_EQ(r.request.stop(0), "\n\n");
  EXPECT_EQ(r.request.stop_token_ids_size(), 2);
  EXPECT_TRUE(r.request.ignore_eos());
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);

  const ApiRequest defaults = Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"stop", nullptr}});
  EXPECT_FALSE(defaults.request.has_max_tokens());  // the API's defaults apply downstream
  EXPECT_FALSE(defaults.request.sampling().has_temperature());
  EXPECT_FALSE(defaults.request.sampling().has_seed());
  EXPECT_FALSE(defaults.stream);
  EXPECT_EQ(
      Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"stop", {"a", "b"}}}).request.stop_size(),
      2);
}

TEST(OpenAiProtocol, ReadsChatMessages) {
  const ApiRequest r = Parse(
      Endpoint::kChat,
      {{"model", kModel},
       {"messages",
        {{{"role", "developer"}, {"content", "be brief"}},
         {{"role", "user"},
          {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
         {{"role", "assistant"}, {"content", nullptr}}}},
       {"max_completion_tokens", 9}});
  ASSERT_EQ(r.request.messages_size(), 3);
  EXPECT_EQ(r.request.messages(0).role(), "system");
  EXPECT_EQ(r.request.messages(1).content(), "ab");
  EXPECT_EQ(r.request.messages(2).content(), "");
  EXPECT_EQ(r.request.max_tokens(), 9);
  for (const char* bad :
       {R"({"messages": []})", R"({"messages": "hi"})", R"({"messages": [{"content": "x"}]})",
        R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
        R"({"messages": [{"role": "user", "content": 5}]})"}) {
    EXPECT_EQ(Error(Endpoint::kChat, bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(OpenAiProtocol, RefusesWhatItCannotHonourAndNamesTheField) {
  const struct {
    const char* body;
    const char* field;
  } cases[] = {
      {R"({"prompt": "x", "n": 2})", "n"},
      {R"({"prompt": "x", "best_of": 3})", "best_of"},
      {R"({"prompt": "x", "logprobs": 2})", "logprobs"},
      {R"({"prompt": "x", "echo": true})", "echo"},
      {R"({"prompt": "x", "presence_penalty": 0.5})", "presence_penalty"},
      {R"({"prompt": "x", "logit_bias": {"5": 1}})", "logit_bias"},
      {R"({"prompt": "x", "tools": [{"type": "function"}]})", "tools"},
      {R"({"prompt": "x", "response_format": {"type": "json_object"}})", "response_format"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "seed": -1})", "seed"},
      {R"({"prompt": "x", "stop": 5})", "stop"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "model": 5})", "model"},
  };
  for (const auto& c : cases) {
    const absl::Status s = Error(Endpoint::kCompletions, c.body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_EQ(s.message().find(c.field), 0u) << s << " for " << c.body;
  }
  EXPECT_EQ(Error(Endpoint::kCompletions, "{not json").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Error(Endpoint::kCompletions, "[1]").code(), absl::StatusCode::kInvalidArgument);
  const absl::Status other = Error(Endpoint::kCompletions, R"({"prompt": "x", "model": "gpt"})");
  EXPECT_EQ(other.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(other.message().find("smol"), absl::string_view::npos) << other;
  // Accepted as no-ops: n 1, logprobs false, an empty tool list, a text response format.
  Parse(Endpoint::kChat, {{"messages", {{{"role", "user"}, {"content", "x"}}}},
                          {"n", 1},
                          {"logprobs", false},
                          {"tools", json::array()},
                          {"tool_choice", "none"},
                          {"response_format", {{"type", "text"}}}});
}

TEST(OpenAiProtocol, WritesWholeAnswersInTheApisShape) {
  v1::Usage usage;
  usage.set_prompt_tokens(5);
  usage.set_completion_tokens(3);
  usage.set_cached_prompt_tokens(4);
  const ResponseHeader completion = MakeHeader(Endpoint::kCompletions, "req-1", 100, kModel);
  const json c = json::parse(CompletionBody(completion, "Paris", "stop", usage));
  EXPECT_EQ(c["id"], "cmpl-req-1");
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["created"], 100);
  EXPECT_EQ(c["model"], kModel);
  EXPECT_EQ(c["choices"][0]["text"], "Paris");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["usage"]["total_tokens"], 8);
  EXPECT_EQ(c["usage"]["prompt_tokens_details"]["cached_tokens"], 4);

  const ResponseHeader chat = MakeHeader(Endpoint::kChat, "req-2", 100, kModel);
  const json h = json::parse(CompletionBody(chat, "Hi", "length", usage));
  EXPECT_EQ(h["id"], "chatcmpl-req-2");
  EXPECT_EQ(h["object"], "chat.completion");
  EXPECT_EQ(h["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(h["choices"][0]["message"]["content"], "Hi");
}

TEST(OpenAiProtocol, WritesStreamEvents) {
  const ResponseHeader chat = MakeHeader(Endpoint::kChat, "r", 1, kModel);
  const json first = EventJson(ChunkEvent(chat, "Hel", true, std::nullopt, true));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "Hel");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());
  const json last = EventJson(ChunkEvent(chat, "", false, "stop", false));
  EXPECT_FALSE(last["choices"][0]["delta"].contains("role"));
  EXPECT_FALSE(last["choices"][0]["delta"].contains("content"));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(last.contains("usage"));
  v1::Usage usage;
  usage.set_prompt_tokens(2);
  usage.set_completion_tokens(1);
  const json u = EventJson(UsageEvent(chat, usage));
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 3);
  const json text = EventJson(ChunkEvent(MakeHeader(Endpoint::kCompletions, "r", 1, kModel), "a",
                                         true, std::nullopt, false));
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "a");
  // Bytes that are not UTF-8 are replaced, not thrown over.
  EXPECT_NO_THROW(EventJson(ChunkEvent(chat, "\xff", false, std::nullopt, false)));
}

TEST(OpenAiProtocol, MapsStatusesToHttpAndErrorObjects) {
  EXPECT_EQ(HttpStatus(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kFailedPrecondition), 400);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kInternal), 500);
  const json e =
      json::parse(ErrorBody(absl::ResourceExhaustedError("every decode worker is full")));
  EXPECT_EQ(e["error"]["message"], "every decode worker is full");
  EXPECT_EQ(e["error"]["type"], "rate_limit_error");
  EXPECT_EQ(e["error"]["code"], "resource_exhausted");
  EXPECT_TRUE(e["error"]["param"].is_null());
  EXPECT_EQ(json::parse(ErrorBody(absl::InvalidArgumentError("x")))["error"]["type"],
            "invalid_request_error");
  EXPECT_EQ(EventJson(ErrorEvent(absl::UnavailableError("gone")))["error"]["type"], "server_error");
  const json models = json::parse(ModelListBody(kModel, 7, 2048));
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], kModel);
  EXPECT_EQ(models["data"][0]["max_model_len"], 2048);
}

}  // namespace
}  // namespace pdserve::openai
