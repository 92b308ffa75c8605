#include "router/request_validator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

namespace pdserve::router {
namespace {

constexpr int64_t kVocab = 1000;
constexpr int64_t kContext = 64;

v1::GenerateRequest Prompt(std::initializer_list<int32_t> ids) {
  v1::GenerateRequest r;
  r.mutable_prompt_token_ids()->Add(ids.begin(), ids.end());
  return r;
}

TEST(RequestValidatorTest, FillsTheApiDefaults) {
  const RequestValidator validator(kVocab, kContext);
  absl::StatusOr<v1::GenerateRequest> r = validator.Validate(Prompt({1, 2, 3}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->max_tokens(), 16);
  EXPECT_EQ(r->sampling().temperature(), 1.0f);
  EXPECT_EQ(r->sampling().top_p(), 1.0f);
  EXPECT_EQ(r->sampling().top_k(), 0);
  EXPECT_EQ(r->sampling().min_p(), 0.0f);
  EXPECT_EQ(r->sampling().repetition_penalty(), 1.0f);
  EXPECT_FALSE(r->sampling().has_seed());
  EXPECT_EQ(r->prompt_token_ids_size(), 3);
}

TEST(RequestValidatorTest, KeepsExplicitValues) {
  const RequestValidator validator(kVocab, kContext);
  v1::GenerateRequest in = Prompt({5});
  in.set_request_id("client-7");
  in.set_max_tokens(40);
  in.mutable_sampling()->set_temperature(0.0f);
  in.mutable_sampling()->set_top_k(5);
  in.mutable_sampling()->set_seed(9);
  in.add_stop_token_ids(999);
  absl::StatusOr<v1::GenerateRequest> r = validator.Validate(in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_id(), "client-7");
  EXPECT_EQ(r->max_tokens(), 40);
  EXPECT_EQ(r->sampling().temperature(), 0.0f);
  EXPECT_EQ(r->sampling().top_k(), 5);
  EXPECT_EQ(r->sampling().seed(), 9u);
}

TEST(RequestValidatorTest, AssignsUniqueRequestIdsWhenEmpty) {
  const RequestValidator validator(kVocab, kContext);
  const std::string a = validator.Validate(Prompt({1}))->request_id();
  const std::string b = validator.Validate(Prompt({1}))->request_id();
  EXPECT_EQ(a.rfind("req-", 0), 0u) << a;
  EXPECT_EQ(a.size(), 4u + 16u);
  EXPECT_NE(a, b);
}

TEST(RequestValidatorTest, UnsetMaxTokensShrinksToTheContextLeft) {
  const RequestValidator validator(kVocab, kContext);
  v1::GenerateRequest in;
  for (int i = 0; i < kContext - 5; ++i) in.add_prompt_token_ids(1);
  absl::StatusOr<v1::GenerateRequest> r = validator.Validate(in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->max_tokens(), 5);
}

TEST(RequestValidatorTest, ExactlyFullContextIsAccepted) {
  const RequestValidator validator(kVocab, kContext);
  v1::GenerateRequest in = Prompt({1, 2, 3, 4});
  in.set_max_tokens(kContext - 4);
  EXPECT_TRUE(validator.Validate(in).ok());
}

struct BadCase {
  const char* name;
  std::function<void(v1::GenerateRequest&)> mutate;
  const char* field;  // the message must name it
};

class RequestValidatorRejectsTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(RequestValidatorRejectsTest, WithInvalidArgumentNamingTheField) {
  const RequestValidator validator(kVocab, kContext);
  v1::GenerateRequest in = Prompt({1, 2, 3});
  GetParam().mutate(in);
  absl::StatusOr<v1::GenerateRequest> r = validator.Validate(in);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find(GetParam().field), absl::string_view::npos)
      << r.status().message();
}

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

INSTANTIATE_TEST_SUITE_P(
    Malformed, RequestValidatorRejectsTest,
    ::testing::Values(
        BadCase{"EmptyPrompt", [](auto& r) { r.clear_prompt_token_ids(); },
                "the request has no prompt: set prompt, messages or prompt_token_ids"},
        BadCase{"NegativeId", [](auto& r) { r.set_prompt_token_ids(1, -1); },
                "prompt_token_ids[1]"},
        BadCase{"IdEqualToVocab", [](auto& r) { r.set_prompt_token_ids(2, kVocab); },
                "prompt_token_ids[2]"},
        BadCase{"PromptFillsContext",
                [](auto& r) {
                  for (int i = 0; i < kContext; ++i) r.add_prompt_token_ids(1);
                },
                "prompt_token_ids"},
        BadCase{"MaxTokensZero", [](auto& r) { r.set_max_tokens(0); }, "max_tokens"},
        BadCase{"MaxTokensNegative", [](auto& r) { r.set_max_tokens(-3); }, "max_tokens"},
        BadCase{"MaxTokensHuge", [](auto& r) { r.set_max_tokens(1 << 30); }, "max_tokens"},
        BadCase{"PromptPlusMaxTokensOverContext", [](auto& r) { r.set_max_tokens(kContext - 2); },
                "max_tokens"},
        BadCase{"StopIdOutOfVocab", [](auto& r) { r.add_stop_token_ids(kVocab + 5); },
                "stop_token_ids[0]"},
        BadCase{"TemperatureNegative",
                [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); },
                "sampling.temperature"},
        BadCase{"TemperatureNan", [](auto& r) { r.mutable_sampling()->set_temperature(kNan); },
                "sampling.temperature"},
        BadCase{"TemperatureInf", [](auto& r) { r.mutable_sampling()->set_temperature(kInf); },
                "sampling.temperature"},
        BadCase{"TopPZero", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); },
                "sampling.top_p"},
        BadCase{"TopPOverOne", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); },
                "sampling.top_p"},
        BadCase{"TopPNan", [](auto& r) { r.mutable_sampling()->set_top_p(kNan); },
                "sampling.top_p"},
        BadCase{"TopKNegative", [](auto& r) { r.mutable_sampling()->set_top_k(-1); },
                "sampling.top_k"},
        BadCase{"MinPNegative", [](auto& r) { r.mutable_sampling()->set_min_p(-0.1f); },
                "sampling.min_p"},
        BadCase{"MinPOverOne", [](auto& r) { r.mutable_sampling()->set_min_p(1.01f); },
                "sampling.min_p"},
        BadCase{"MinPNan", [](auto& r) { r.mutable_sampling()->set_min_p(kNan); },
                "sampling.min_p"},
        BadCase{"RepetitionPenaltyZero",
                [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); },
                "sampling.repetition_penalty"},
        BadCase{"RepetitionPenaltyNegative",
                [](auto& r) { r.mutable_sampling()->set_repetition_penalty(-1.0f); },
                "sampling.repetition_penalty"},
        BadCase{"RepetitionPenaltyNan",
                [](auto& r) { r.mutable_sampling()->set_repetition_penalty(kNan); },
                "sampling.repetition_penalty"},
        BadCase{"RepetitionPenaltyInf",
                [](auto& r) { r.mutable_sampling()->set_repetition_penalty(kInf); },
                "sampling.repetition_penalty"},
        BadCase{"RequestIdWithSpace", [](auto& r) { r.set_request_id("a b"); }, "request_id"},
        BadCase{"RequestIdTooLong",
                [](auto& r) { r.set_request_id(std::string(kMaxRequestIdBytes + 1, 'x')); },
                "request_id"},
        BadCase{"RequestIdWithNewline", [](auto& r) { r.set_request_id("a\nb"); }, "request_id"}),
    [](const ::testing::TestParamInfo<BadCase>& param) { return std::string(param.param.name); });

// The id is checked before anything else, so that no later message or log line sees a bad one,
// and the message says the rule and how the id breaks it without echoing it.
TEST(RequestValidatorTest, RequestIdIsCheckedFirstAndNotEchoed) {
  const RequestValidator validator(kVocab, kContext);
  v1::GenerateRequest in;  // no prompt either
  in.set_request_id("evil\n2026-01-01 [info] forged line");
  absl::StatusOr<v1::GenerateRequest> r = validator.Validate(in);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "request_id must be at most 128 printable ASCII bytes (got 34 bytes, byte 4 is 0x0A: "
            "spaces, control characters and non-ASCII are not allowed); leave it empty to have "
            "the router assign one");
}

TEST(RequestValidatorTest, CheckRequestIdSaysTheSizeOfAnOversizeId) {
  const std::string huge(5 << 20, 'x');
  const absl::Status s = CheckRequestId(huge);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("request_id must be at most 128 printable ASCII bytes (got 5242880 "
                             "bytes)"),
            absl::string_view::npos)
      << s.message();
  EXPECT_LT(s.message().size(), 200u);
  EXPECT_TRUE(CheckRequestId(std::string(kMaxRequestIdBytes, '~')).ok());
  EXPECT_TRUE(CheckRequestId("").ok());  // the router assigns one
  EXPECT_FALSE(CheckRequestId("caf\xc3\xa9").ok());
  EXPECT_FALSE(CheckRequestId(std::string("a\0b", 3)).ok());
}

TEST(LoggableTextTest, EscapesControlCharactersAndNonAscii) {
  EXPECT_EQ(LoggableText("req-7"), "req-7");
  EXPECT_EQ(LoggableText("a\nb\r\x1b[31m"), "a\\x0Ab\\x0D\\x1B[31m");
  EXPECT_EQ(LoggableText("caf\xc3\xa9"), "caf\\xC3\\xA9");
  // The escape character itself is escaped, so "\\x0A" written by a client stays distinct.
  EXPECT_EQ(LoggableText("a\\x0A"), "a\\\\x0A");
  EXPECT_EQ(LoggableText(std::string("a\0", 2)), "a\\x00");
}

TEST(LoggableTextTest, CutsLongTextAndSaysItsSize) {
  const std::string huge(5 << 20, 'x');
  EXPECT_EQ(LoggableText(huge), std::string(kMaxLoggedTextBytes, 'x') + "...[5242880 bytes]");
  EXPECT_EQ(LoggableText("abcdef", 3), "abc...[6 bytes]");
  EXPECT_EQ(LoggableText("abc", 3), "abc");
}

}  // namespace
}  // namespace pdserve::router
