#include "serving/model_info.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace pdserve::serving {
namespace {

v1::WorkerRequest Valid() {
  v1::WorkerRequest r;
  r.set_request_id("req-1");
  r.add_prompt_token_ids(3);
  r.add_prompt_token_ids(9);
  r.set_temperature(0.5f);
  r.set_top_p(0.9f);
  r.set_top_k(40);
  r.set_min_p(0.05f);
  r.set_repetition_penalty(1.1f);
  r.set_seed(11);
  r.set_max_tokens(7);
  r.add_stop_token_ids(5);
  r.set_ignore_eos(true);
  return r;
}

TEST(FromProto, CopiesEveryFieldAsGiven) {
  auto e = FromProto(Valid(), testing_util::TinyConfig(2));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->prompt, (std::vector<int32_t>{3, 9}));
  EXPECT_FLOAT_EQ(e->sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(e->sampling.top_p, 0.9f);
  EXPECT_EQ(e->sampling.top_k, 40);
  EXPECT_FLOAT_EQ(e->sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(e->sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(e->sampling.seed, std::optional<uint64_t>(11));
  EXPECT_EQ(e->stop.max_tokens, 7);
  EXPECT_EQ(e->stop.stop_token_ids, (std::vector<int32_t>{5}));
  EXPECT_TRUE(e->stop.ignore_eos);
}

// The worker protocol has no defaults: a field left at proto's zero is taken as given, and
// rejected when zero is out of its range, naming the field.
TEST(FromProto, AppliesNoDefaultsAndNamesTheFieldOutOfRange) {
  struct Case {
    const char* field;
    void (*mutate)(v1::WorkerRequest&);
  };
  const Case cases[] = {
      {"top_p", [](v1::WorkerRequest& r) { r.clear_top_p(); }},
      {"repetition_penalty", [](v1::WorkerRequest& r) { r.clear_repetition_penalty(); }},
      {"max_tokens", [](v1::WorkerRequest& r) { r.clear_max_tokens(); }},
      {"temperature", [](v1::WorkerRequest& r) { r.set_temperature(-1); }},
      {"request_id", [](v1::WorkerRequest& r) { r.set_request_id("two words"); }},
  };
  for (const Case& c : cases) {
    v1::WorkerRequest r = Valid();
    c.mutate(r);
    auto e = FromProto(r, testing_util::TinyConfig(2));
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(e.status().message().find(c.field), std::string::npos) << e.status();
  }
  v1::WorkerRequest unseeded = Valid();
  unseeded.clear_seed();
  auto e = FromProto(unseeded, testing_util::TinyConfig(2));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_FALSE(e->sampling.seed.has_value()) << "no seed: a random stream";
}

}  // namespace
}  // namespace pdserve::serving
