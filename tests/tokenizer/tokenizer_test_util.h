// Shared by the tokenizer tests: where the goldens live and how to load them.
// The goldens come from scripts/tokenizer_goldens.py (Hugging Face `tokenizers` and jinja2).
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"
#include "tests/default_model.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::tokenizer_test {

// tests/data/tokenizer of this source tree.
inline std::string DataDir() { return PDSERVE_TOKENIZER_TEST_DATA_DIR; }

// The three small tokenizers trained by the goldens script, each in DataDir()/<name>/.
inline const char* const kCommittedTokenizers[] = {"bytelevel", "llama3", "llama2"};

// The SmolLM2 tokenizer.json the goldens script rebuilds from the GGUF into the model cache
// (testing_util::ModelCacheDir()); too big to commit.
inline std::string SmolLm2TokenizerJson() {
  return (testing_util::ModelCacheDir() / "SmolLM2-135M-Instruct.tokenizer.json").string();
}

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream contents;
  contents << in.rdbuf();
  return nlohmann::json::parse(contents.str());
}

inline std::unique_ptr<Tokenizer> LoadCommitted(const std::string& name) {
  auto tokenizer = Tokenizer::FromHfJson(DataDir() + "/" + name + "/tokenizer.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

}  // namespace pdserve::tokenizer_test
