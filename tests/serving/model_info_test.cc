#include "serving/model_info.h"

#include <gtest/gtest.h>

namespace pdserve::serving {
namespace {

TEST(FromProto, CopiesIdsSamplingAndStopCriteria) {
  v1::GenerateRequest r;
  r.add_prompt_token_ids(3);
  r.add_prompt_token_ids(9);
  r.mutable_sampling()->set_temperature(0.5f);
  r.mutable_sampling()->set_seed(11);
  r.set_max_tokens(7);
  r.add_stop_token_ids(5);
  r.set_ignore_eos(true);
  auto e = FromProto(r);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->prompt, (std::vector<int32_t>{3, 9}));
  EXPECT_FLOAT_EQ(e->sampling.temperature, 0.5f);
  EXPECT_EQ(e->sampling.seed, std::optional<uint64_t>(11));
  EXPECT_EQ(e->stop.max_tokens, 7);
  EXPECT_EQ(e->stop.stop_token_ids, (std::vector<int32_t>{5}));
  EXPECT_TRUE(e->stop.ignore_eos);
}

// Text reaching a worker means a client skipped the router: say where to send it.
TEST(FromProto, TextIsRefusedBecauseWorkersTakeTokenIds) {
  v1::GenerateRequest text;
  text.set_prompt("hello");
  v1::GenerateRequest chat;
  chat.add_messages()->set_content("hello");
  v1::GenerateRequest stop;
  stop.add_prompt_token_ids(1);
  stop.add_stop("x");
  for (const auto& r : {text, chat, stop}) {
    auto e = FromProto(r);
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(e.status().message().find("router"), std::string::npos) << e.status();
  }
}

}  // namespace
}  // namespace pdserve::serving
