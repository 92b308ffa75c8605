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
        BadCase{"EmptyPrompt", [](auto& r) { r.clear_prompt_token_ids(); }, "prompt_token_ids"},
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
                "request_id"}),
    [](const ::testing::TestParamInfo<BadCase>& param) { return std::string(param.param.name); });

}  // namespace
}  // namespace pdserve::router
