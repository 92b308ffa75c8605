#include "openai/openai_protocol.h"

#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "rpc/status.h"

namespace pdserve::openai {
namespace {

using nlohmann::json;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", what));
}

// The JSON type a field has, in the words of the API's documentation.
absl::string_view TypeName(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "a number";
  }
}

// A present, non-null field of `body`, or null.
const json* Present(const json& body, absl::string_view key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<std::optional<int64_t>> ReadInteger(const json& body, absl::string_view key) {
  const json* v = Present(body, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) {
    return Invalid(key, absl::StrCat("must be an integer, not ", TypeName(*v)));
  }
  return v->get<int64_t>();
}

// An integer field for an int32 proto field: in [lo, hi] or INVALID_ARGUMENT.
absl::StatusOr<std::optional<int32_t>> ReadInt32(const json& body, absl::string_view key,
                                                 int64_t lo) {
  absl::StatusOr<std::optional<int64_t>> v = ReadInteger(body, key);
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::nullopt;
  if (**v < lo || **v > std::numeric_limits<int32_t>::max()) {
    return Invalid(key, absl::StrCat("= ", **v, ": must be in [", lo, ", ",
                                     std::numeric_limits<int32_t>::max(), "]"));
  }
  return static_cast<int32_t>(**v);
}

absl::StatusOr<std::optional<double>> ReadNumber(const json& body, absl::string_view key) {
  const json* v = Present(body, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return Invalid(key, absl::StrCat("must be a number, not ", TypeName(*v)));
  return v->get<double>();
}

absl::StatusOr<std::optional<bool>> ReadBool(const json& body, absl::string_view key) {
  const json* v = Present(body, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return Invalid(key, absl::StrCat("must be a boolean, not ", TypeName(*v)));
  return v->get<bool>();
}

// A string or an array of strings (stop), or an array of integers (stop_token_ids).
absl::Status ReadStop(const json& body, v1::GenerateRequest& request) {
  if (const json* stop = Present(body, "stop")) {
    if (stop->is_string()) {
      request.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) return Invalid("stop", "must be a string or an array of strings");
        request.add_stop(s.get<std::string>());
      }
    } else {
      return Invalid(
          "stop", absl::StrCat("must be a string or an array of strings, not ", TypeName(*stop)));
    }
  }
  if (const json* ids = Present(body, "stop_token_ids")) {
    if (!ids->is_array()) return Invalid("stop_token_ids", "must be an array of integers");
    for (const json& id : *ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return Invalid("stop_token_ids", "must be an array of non-negative token ids");
      }
      request.add_stop_token_ids(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  return absl::OkStatus();
}

// Sampling, length and stop fields, common to both endpoints.
absl::Status ReadSampling(const json& body, Endpoint endpoint, v1::GenerateRequest& request) {
  v1::SamplingParams& sampling = *request.mutable_sampling();
  for (const auto& [key, set] :
       std::initializer_list<std::pair<absl::string_view, void (v1::SamplingParams::*)(float)>>{
           {"temperature", &v1::SamplingParams::set_temperature},
           {"top_p", &v1::SamplingParams::set_top_p},
           {"min_p", &v1::SamplingParams::set_min_p},
           {"repetition_penalty", &v1::SamplingParams::set_repetition_penalty}}) {
    absl::StatusOr<std::optional<double>> v = ReadNumber(body, key);
    if (!v.ok()) return v.status();
    if (v->has_value()) (sampling.*set)(static_cast<float>(**v));
  }
  absl::StatusOr<std::optional<int32_t>> top_k = ReadInt32(body, "top_k", -1);
  if (!top_k.ok()) return top_k.status();
  if (top_k->has_value()) sampling.set_top_k(std::max(**top_k, 0));  // vLLM's -1 = off
  if (const json* seed = Present(body, "seed")) {
    if (seed->is_number_unsigned()) {
      sampling.set_seed(seed->get<uint64_t>());
    } else if (seed->is_number_integer()) {
      return Invalid("seed", absl::StrCat("= ", seed->get<int64_t>(), ": must be >= 0"));
    } else {
      return Invalid("seed", absl::StrCat("must be an integer, not ", TypeName(*seed)));
    }
  }
  // max_completion_tokens is the chat API's newer name for max_tokens.
  for (absl::string_view key : {"max_tokens", "max_completion_tokens"}) {
    if (key == "max_completion_tokens" && endpoint != Endpoint::kChat) continue;
    absl::StatusOr<std::optional<int32_t>> n = ReadInt32(body, key, 1);
    if (!n.ok()) return n.status();
    if (n->has_value()) request.set_max_tokens(**n);
  }
  absl::StatusOr<std::optional<bool>> ignore_eos = ReadBool(body, "ignore_eos");
  if (!ignore_eos.ok()) return ignore_eos.status();
  request.set_ignore_eos(ignore_eos->value_or(false));
  return ReadStop(body, request);
}

// Fields that would change the answer in ways this server does not do: refused, not ignored.
absl::Status RefuseUnsupported(const json& body, Endpoint endpoint) {
  absl::StatusOr<std::optional<int64_t>> n = ReadInteger(body, "n");
  if (!n.ok()) return n.status();
  if (n->value_or(1) != 1) return Invalid("n", "must be 1: send one request per choice");
  absl::StatusOr<std::optional<int64_t>> best_of = ReadInteger(body, "best_of");
  if (!best_of.ok()) return best_of.status();
  if (best_of->value_or(1) != 1) return Invalid("best_of", "must be 1");
  for (absl::string_view key : {"presence_penalty", "frequency_penalty"}) {
    absl::StatusOr<std::optional<double>> v = ReadNumber(body, key);
    if (!v.ok()) return v.status();
    if (v->value_or(0.0) != 0.0) {
      return Invalid(key, "is not supported (use repetition_penalty)");
    }
  }
  if (const json* logprobs = Present(body, "logprobs")) {
    if (!(logprobs->is_boolean() && !logprobs->get<bool>())) {
      return Invalid("logprobs", "are not supported");
    }
  }
  if (Present(body, "top_logprobs") != nullptr) return Invalid("top_logprobs", "is not supported");
  if (const json* echo = Present(body, "echo"); echo != nullptr && *echo != json(false)) {
    return Invalid("echo", "is not supported");
  }
  if (const json* suffix = Present(body, "suffix");
      suffix != nullptr && !(suffix->is_string() && suffix->get<std::string>().empty())) {
    return Invalid("suffix", "is not supported");
  }
  if (const json* bias = Present(body, "logit_bias"); bias != nullptr && !bias->empty()) {
    return Invalid("logit_bias", "is not supported");
  }
  for (absl::string_view key : {"tools", "functions"}) {
    if (const json* tools = Present(body, key); tools != nullptr && !tools->empty()) {
      return Invalid(key, "are not supported: this server has no tool calling");
    }
  }
  if (const json* format = Present(body, "response_format")) {
    const json* type = format->is_object() ? Present(*format, "type") : nullptr;
    if (type == nullptr || *type != json("text")) {
      return Invalid("response_format",
                     "must be {\"type\": \"text\"}: structured output is not "
                     "supported");
    }
  }
  if (endpoint == Endpoint::kChat) {
    if (const json* choice = Present(body, "tool_choice");
        choice != nullptr && *choice != json("none")) {
      return Invalid("tool_choice", "must be \"none\": this server has no tool calling");
    }
  }
  return absl::OkStatus();
}

// A completion's prompt: a string, token ids, or a list holding one of either.
absl::Status ReadPrompt(const json& body, v1::GenerateRequest& request) {
  const json* prompt = Present(body, "prompt");
  if (prompt == nullptr) return Invalid("prompt", "is required");
  const auto read_ids = [&request](const json& ids) {
    for (const json& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return Invalid("prompt",
                       "must be a string, an array of token ids, or an array holding "
                       "one of either");
      }
      request.add_prompt_token_ids(static_cast<int32_t>(id.get<int64_t>()));
    }
    return absl::OkStatus();
  };
  if (prompt->is_string()) {
    request.set_prompt(prompt->get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt->is_array() || prompt->empty()) {
    return Invalid("prompt",
                   "must be a string, an array of token ids, or an array holding one "
                   "of either");
  }
  const json& first = prompt->front();
  if (first.is_number()) return read_ids(*prompt);
  if (prompt->size() > 1) {
    return Invalid("prompt",
                   absl::StrCat("holds ", prompt->size(), " prompts: send one per request"));
  }
  if (first.is_string()) {
    request.set_prompt(first.get<std::string>());
    return absl::OkStatus();
  }
  if (first.is_array()) return read_ids(first);
  return Invalid("prompt",
                 "must be a string, an array of token ids, or an array holding one of "
                 "either");
}

// Chat messages: content as a string or as text parts; "developer" is OpenAI's newer "system".
absl::Status ReadMessages(const json& body, v1::GenerateRequest& request) {
  const json* messages = Present(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    return Invalid("messages", "must be a non-empty array of {\"role\", \"content\"} objects");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string field = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Invalid(field, "must be an object with role and content");
    const json* role = Present(m, "role");
    if (role == nullptr || !role->is_string()) return Invalid(field, "needs a string role");
    v1::ChatMessage& out = *request.add_messages();
    out.set_role(*role == json("developer") ? "system" : role->get<std::string>());
    const json* content = Present(m, "content");
    if (content == nullptr) continue;  // an assistant turn may have none
    if (content->is_string()) {
      out.set_content(content->get<std::string>());
    } else if (content->is_array()) {
      for (const json& part : *content) {
        const json* type = part.is_object() ? Present(part, "type") : nullptr;
        const json* text = part.is_object() ? Present(part, "text") : nullptr;
        if (type == nullptr || *type != json("text") || text == nullptr || !text->is_string()) {
          return Invalid(field + ".content",
                         "parts must be {\"type\": \"text\", \"text\": ...}: "
                         "this server takes text only");
        }
        out.mutable_content()->append(text->get<std::string>());
      }
    } else {
      return Invalid(field + ".content", "must be a string or an array of text parts");
    }
  }
  return absl::OkStatus();
}

json Header(const ResponseHeader& header) {
  return {{"id", header.id},
          {"object", header.endpoint == Endpoint::kChat ? "chat.completion" : "text_completion"},
          {"created", header.created},
          {"model", header.model}};
}

// Text from clients and models is UTF-8 by the time it gets here; a stray byte is replaced
// rather than thrown over.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Event(const json& data) { return absl::StrCat("data: ", Dump(data), "\n\n"); }

}  // namespace

absl::StatusOr<ApiRequest> ParseRequest(Endpoint endpoint, absl::string_view body,
                                        absl::string_view served_model) {
  const json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError("the body is not valid JSON");
  if (!parsed.is_object()) return absl::InvalidArgumentError("the body must be a JSON object");
  ApiRequest out;
  out.endpoint = endpoint;
  if (const json* model = Present(parsed, "model")) {
    if (!model->is_string()) return Invalid("model", "must be a string");
    if (*model != json(served_model)) {
      return absl::NotFoundError(absl::StrCat(
          "The model '", rpc::LoggableText(model->get<std::string>()),
          "' does not exist: this server serves '", served_model, "' (GET /v1/models)"));
    }
  }
  if (absl::Status s = RefuseUnsupported(parsed, endpoint); !s.ok()) return s;
  absl::Status read = endpoint == Endpoint::kChat ? ReadMessages(parsed, out.request)
                                                  : ReadPrompt(parsed, out.request);
  if (!read.ok()) return read;
  if (absl::Status s = ReadSampling(parsed, endpoint, out.request); !s.ok()) return s;
  absl::StatusOr<std::optional<bool>> stream = ReadBool(parsed, "stream");
  if (!stream.ok()) return stream.status();
  out.stream = stream->value_or(false);
  if (const json* options = Present(parsed, "stream_options")) {
    if (!out.stream) return Invalid("stream_options", "is only allowed when stream is true");
    if (!options->is_object()) return Invalid("stream_options", "must be an object");
    absl::StatusOr<std::optional<bool>> usage = ReadBool(*options, "include_usage");
    if (!usage.ok()) return Invalid("stream_options.include_usage", "must be a boolean");
    out.include_usage = usage->value_or(false);
  }
  return out;
}

ResponseHeader MakeHeader(Endpoint endpoint, absl::string_view request_id, int64_t created,
                          std::string model) {
  return {endpoint, absl::StrCat(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-", request_id),
          created, std::move(model)};
}

json UsageJson(const v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_prompt_tokens()}}}};
}

std::string CompletionBody(const ResponseHeader& header, absl::string_view text,
                           absl::string_view finish_reason, const v1::Usage& usage) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  if (header.endpoint == Endpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  json body = Header(header);
  body["choices"] = json::array({std::move(choice)});
  body["usage"] = UsageJson(usage);
  return Dump(body);
}

std::string ChunkEvent(const ResponseHeader& header, absl::string_view text, bool first,
                       std::optional<absl::string_view> finish_reason, bool with_usage) {
  json choice = {{"index", 0}, {"logprobs", nullptr}};
  choice["finish_reason"] = finish_reason.has_value() ? json(*finish_reason) : json(nullptr);
  if (header.endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  json chunk = Header(header);
  if (header.endpoint == Endpoint::kChat) chunk["object"] = "chat.completion.chunk";
  chunk["choices"] = json::array({std::move(choice)});
  if (with_usage) chunk["usage"] = nullptr;
  return Event(chunk);
}

std::string UsageEvent(const ResponseHeader& header, const v1::Usage& usage) {
  json chunk = Header(header);
  if (header.endpoint == Endpoint::kChat) chunk["object"] = "chat.completion.chunk";
  chunk["choices"] = json::array();
  chunk["usage"] = UsageJson(usage);
  return Event(chunk);
}

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;  // the client went away (nginx's code); it sees nothing
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

namespace {

json ErrorJson(const absl::Status& status) {
  const int http = HttpStatus(status.code());
  const char* type = http == 429   ? "rate_limit_error"
                     : http >= 500 ? "server_error"
                     : http == 401 ? "authentication_error"
                     : http == 403 ? "permission_error"
                                   : "invalid_request_error";
  // The canonical code's name ("resource_exhausted"): the same as the gRPC API would say.
  std::string code = absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
  return {{"error",
           {{"message", std::string(status.message())},
            {"type", type},
            {"param", nullptr},
            {"code", std::move(code)}}}};
}

}  // namespace

std::string ErrorBody(const absl::Status& status) { return Dump(ErrorJson(status)); }

std::string ErrorEvent(const absl::Status& status) { return Event(ErrorJson(status)); }

json ModelJson(absl::string_view name, int64_t created, int64_t max_context) {
  return {{"id", name},
          {"object", "model"},
          {"created", created},
          {"owned_by", "pdserve"},
          {"max_model_len", max_context}};
}

std::string ModelBody(absl::string_view name, int64_t created, int64_t max_context) {
  return Dump(ModelJson(name, created, max_context));
}

std::string ModelListBody(absl::string_view name, int64_t created, int64_t max_context) {
  return Dump(
      json{{"object", "list"}, {"data", json::array({ModelJson(name, created, max_context)})}});
}

}  // namespace pdserve::openai
