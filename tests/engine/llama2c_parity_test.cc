// External reference: greedy generation on stories260K must reproduce llama2.c's run.c ids.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/generate.h"
#include "engine/model.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace pdserve {
namespace {

TEST(Llama2cParity, GreedyIdsMatchRunCForAllReferenceCasesOnEveryCpuKernelLevel) {
  const std::string dir = testing_util::ModelsDir();
  const std::string model_path = dir + "/stories260K.bin";
  const std::string ref_path = dir + "/stories260K.reference.json";
  ASSERT_TRUE(std::filesystem::exists(model_path) && std::filesystem::exists(ref_path))
      << "missing " << model_path << " or " << ref_path
      << "; put ../shared/models beside the repository or set PDSERVE_MODELS_DIR";
  std::ifstream in(ref_path);
  const nlohmann::json reference = nlohmann::json::parse(in);
  ASSERT_EQ(reference["cases"].size(), 5u);

  // Every CPU kernel level this machine runs (kernels/cpu/cpu_kernels.h), not only the best.
  for (CpuIsa isa : SupportedCpuIsas()) {
    SCOPED_TRACE(CpuIsaName(isa));
    CpuBackend backend(2, isa);
    auto model = LoadModel(model_path, backend);
    ASSERT_TRUE(model.ok()) << model.status();
    for (const auto& c : reference["cases"]) {
      const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
      const auto expected = c["greedy_ids"].get<std::vector<int32_t>>();
      SamplingParams greedy;
      greedy.temperature = 0.0f;
      // run.c with steps = len(prompt) + 64 emits 65 tokens and ends a story at BOS (1) only.
      StopCriteria stop;
      stop.max_tokens = 65;
      stop.stop_token_ids = {1};
      stop.ignore_eos = true;
      auto result = Generate(**model, prompt, greedy, stop);
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_EQ(result->tokens, expected) << "prompt of " << prompt.size() << " tokens";
      EXPECT_EQ(result->finish_reason,
                expected.back() == 1 ? FinishReason::kStop : FinishReason::kLength);
    }
  }
}

}  // namespace
}  // namespace pdserve
