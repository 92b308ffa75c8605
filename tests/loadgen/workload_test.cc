// Length flags, synthetic workloads and dataset files (ShareGPT JSON, JSONL; bad files).
#include "loadgen/workload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace pdserve::loadgen {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const ModelLimits kIdsOnly{.vocab_size = 512, .max_context = 512, .accepts_text = false};
const ModelLimits kWithTokenizer{.vocab_size = 49152, .max_context = 8192, .accepts_text = true};

TEST(LoadgenWorkloadTest, ParsesFixedAndRangedLengths) {
  absl::StatusOr<LengthRange> fixed = ParseLengthRange("--input-len", "128");
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(fixed->min, 128);
  EXPECT_EQ(fixed->max, 128);
  absl::StatusOr<LengthRange> ranged = ParseLengthRange("--input-len", "64:256");
  ASSERT_TRUE(ranged.ok()) << ranged.status();
  EXPECT_EQ(ranged->min, 64);
  EXPECT_EQ(ranged->max, 256);
}

TEST(LoadgenWorkloadTest, BadLengthsNameTheFlag) {
  for (const char* bad : {"0", "-3", "abc", "", "256:64", "1:2:3", "8:", ":8", "1.5"}) {
    absl::StatusOr<LengthRange> range = ParseLengthRange("--output-len", bad);
    ASSERT_FALSE(range.ok()) << bad;
    EXPECT_THAT(range.status().message(), HasSubstr("--output-len")) << bad;
  }
}

TEST(LoadgenWorkloadTest, SyntheticRequestsDrawLengthsInRangeAndIdsInVocab) {
  const WorkloadOptions options{
      .input_len = {8, 16}, .output_len = {2, 4}, .num_requests = 400, .seed = 3};
  absl::StatusOr<std::vector<RequestSpec>> specs = BuildWorkload(options, kIdsOnly);
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 400u);
  size_t shortest = 100, longest = 0;
  int fewest = 100, most = 0;
  for (const RequestSpec& spec : *specs) {
    shortest = std::min(shortest, spec.prompt_ids.size());
    longest = std::max(longest, spec.prompt_ids.size());
    fewest = std::min(fewest, spec.max_tokens);
    most = std::max(most, spec.max_tokens);
    for (int32_t id : spec.prompt_ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 512);
    }
    EXPECT_TRUE(spec.ignore_eos);  // so that every output has the asked length
    EXPECT_TRUE(spec.prompt_text.empty());
  }
  // Uniform over the range: 400 draws reach both ends.
  EXPECT_EQ(shortest, 8u);
  EXPECT_EQ(longest, 16u);
  EXPECT_EQ(fewest, 2);
  EXPECT_EQ(most, 4);

  absl::StatusOr<std::vector<RequestSpec>> again = BuildWorkload(options, kIdsOnly);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < specs->size(); ++i) {
    EXPECT_EQ((*again)[i].prompt_ids, (*specs)[i].prompt_ids);
    EXPECT_EQ((*again)[i].max_tokens, (*specs)[i].max_tokens);
  }
}

TEST(LoadgenWorkloadTest, SyntheticLengthsMustFitTheContext) {
  const WorkloadOptions options{
      .input_len = {100, 400}, .output_len = {128, 128}, .num_requests = 1};
  absl::StatusOr<std::vector<RequestSpec>> specs = BuildWorkload(options, kIdsOnly);
  ASSERT_FALSE(specs.ok());
  EXPECT_THAT(specs.status().message(), HasSubstr("context of 512"));
}

TEST(LoadgenWorkloadTest, ShareGptTakesTheFirstHumanTurn) {
  const char* kShareGpt = R"([
    {"id": "a", "conversations": [
      {"from": "system", "value": "be brief"},
      {"from": "human", "value": "What is a KV cache?"},
      {"from": "gpt", "value": "0123456789"},
      {"from": "human", "value": "and then?"}]},
    {"id": "no human", "conversations": [{"from": "gpt", "value": "hello"}]},
    {"id": "no reply", "conversations": [{"from": "human", "value": "Hi"}]},
    {"id": "not a conversation"}
  ])";
  absl::StatusOr<std::vector<DatasetEntry>> entries = ParseDataset(kShareGpt, "test.json");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].prompt_text, "What is a KV cache?");
  EXPECT_EQ((*entries)[0].output_len, 3);  // 10 bytes at 4 a token, rounded up
  EXPECT_EQ((*entries)[1].prompt_text, "Hi");
  EXPECT_EQ((*entries)[1].output_len, std::nullopt);
}

TEST(LoadgenWorkloadTest, JsonlTakesTextOrIdPrompts) {
  const char* kJsonl =
      "{\"prompt\": \"Once upon a time\", \"output_len\": 32}\n"
      "\n"
      "{\"prompt\": [1, 400, 300], \"max_tokens\": 7}\n"
      "{\"prompt\": \"no length\"}\n"
      "{\"other\": \"no prompt: skipped\"}\n";
  absl::StatusOr<std::vector<DatasetEntry>> entries = ParseDataset(kJsonl, "test.jsonl");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].prompt_text, "Once upon a time");
  EXPECT_EQ((*entries)[0].output_len, 32);
  EXPECT_THAT((*entries)[1].prompt_ids, ElementsAre(1, 400, 300));
  EXPECT_EQ((*entries)[1].output_len, 7);
  EXPECT_EQ((*entries)[2].output_len, std::nullopt);
}

TEST(LoadgenWorkloadTest, BadDatasetsSayWhereAndWhat) {
  struct Case {
    const char* content;
    const char* expected;
  };
  for (const Case& c : std::vector<Case>{
           {"{\"prompt\": \"ok\"}\n{\"prompt\": \"unterminated\n",
            "data.jsonl line 2: not valid JSON"},
           {"{\"prompt\": \"x\", \"output_len\": 0}", "line 1: \"output_len\" must be a positive"},
           {"{\"prompt\": [1, \"two\"]}", "line 1: \"prompt\" must be text or a list of token ids"},
           {"{\"prompt\": 5}", "\"prompt\" must be text or a list of token ids"},
           {"[1, 2]", "no conversation"},
           {"", "no line has a \"prompt\""},
           {"[{\"conversations\": [{\"from\": \"gpt\", \"value\": \"x\"}]}]", "no conversation"},
           {"[{\"conversations\": ", "not valid JSON"},
       }) {
    absl::StatusOr<std::vector<DatasetEntry>> entries = ParseDataset(c.content, "data.jsonl");
    ASSERT_FALSE(entries.ok()) << c.content;
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument) << c.content;
    EXPECT_THAT(entries.status().message(), HasSubstr(c.expected)) << c.content;
  }
  absl::StatusOr<std::vector<DatasetEntry>> missing = LoadDataset("/nonexistent/data.jsonl");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("--dataset: cannot read /nonexistent/data.jsonl"));
}

TEST(LoadgenWorkloadTest, LoadsADatasetFile) {
  const std::string path = (std::filesystem::path(::testing::TempDir()) /
                            ("loadgen-" + std::to_string(getpid()) + ".jsonl"))
                               .string();
  std::ofstream(path) << "{\"prompt\": [1, 2, 3]}\n";
  absl::StatusOr<std::vector<DatasetEntry>> entries = LoadDataset(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_THAT((*entries)[0].prompt_ids, ElementsAre(1, 2, 3));
}

TEST(LoadgenWorkloadTest, DatasetRequestsRepeatAndTakeLengths) {
  const std::vector<DatasetEntry> entries = {{.prompt_ids = {1, 2}, .output_len = 5},
                                             {.prompt_ids = {3}}};
  WorkloadOptions options{.output_len = {9, 9}, .num_requests = 5, .seed = 1};
  absl::StatusOr<std::vector<RequestSpec>> specs = RequestsFromDataset(entries, options, kIdsOnly);
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 5u);  // more requests than entries: they repeat
  int from_first = 0;
  for (const RequestSpec& spec : *specs) {
    EXPECT_FALSE(spec.ignore_eos);
    if (spec.prompt_ids.size() == 2) {
      ++from_first;
      EXPECT_EQ(spec.max_tokens, 5);  // the entry's own length
    } else {
      EXPECT_EQ(spec.max_tokens, 9);  // none: --output-len's
    }
  }
  EXPECT_GE(from_first, 2);
  EXPECT_LE(from_first, 3);

  options.output_len_set = true;  // --output-len given: it wins
  options.ignore_eos = true;
  specs = RequestsFromDataset(entries, options, kIdsOnly);
  ASSERT_TRUE(specs.ok());
  for (const RequestSpec& spec : *specs) {
    EXPECT_EQ(spec.max_tokens, 9);
    EXPECT_TRUE(spec.ignore_eos);
  }
}

TEST(LoadgenWorkloadTest, TextPromptsNeedARouterWithATokenizer) {
  const std::vector<DatasetEntry> entries = {{.prompt_text = "Hello"}};
  const WorkloadOptions options{.dataset = "chat.json", .num_requests = 1};
  absl::StatusOr<std::vector<RequestSpec>> specs = RequestsFromDataset(entries, options, kIdsOnly);
  ASSERT_FALSE(specs.ok());
  EXPECT_EQ(specs.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(specs.status().message(), HasSubstr("the router has no tokenizer"));
  specs = RequestsFromDataset(entries, options, kWithTokenizer);
  ASSERT_TRUE(specs.ok()) << specs.status();
  EXPECT_EQ((*specs)[0].prompt_text, "Hello");
}

TEST(LoadgenWorkloadTest, IdPromptsMustBeInTheVocabulary) {
  const std::vector<DatasetEntry> entries = {{.prompt_ids = {1, 512}}};
  absl::StatusOr<std::vector<RequestSpec>> specs =
      RequestsFromDataset(entries, {.num_requests = 1}, kIdsOnly);
  ASSERT_FALSE(specs.ok());
  EXPECT_THAT(specs.status().message(), HasSubstr("token id 512"));
}

}  // namespace
}  // namespace pdserve::loadgen
