// Where the tests find the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), and what they do
// when it is not there.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace pdserve::testing_util {

// Where scripts/fetch-model.sh keeps models: $PDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/pdserve,
// else ~/.cache/pdserve; then models/.
inline std::filesystem::path ModelCacheDir() {
  auto env = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? v : nullptr;
  };
  std::filesystem::path cache;
  if (const char* dir = env("PDSERVE_CACHE_DIR")) {
    cache = dir;
  } else if (const char* xdg = env("XDG_CACHE_HOME")) {
    cache = std::filesystem::path(xdg) / "pdserve";
  } else {
    cache = std::filesystem::path(env("HOME") ? env("HOME") : "/") / ".cache" / "pdserve";
  }
  return cache / "models";
}

// $PDSERVE_DEFAULT_GGUF, else the default model in ModelCacheDir().
inline std::string DefaultGgufPath() {
  const char* p = std::getenv("PDSERVE_DEFAULT_GGUF");
  if (p != nullptr && *p != '\0') return p;
  return (ModelCacheDir() / "SmolLM2-135M-Instruct.Q4_1.gguf").string();
}

}  // namespace pdserve::testing_util

// Skips the calling test when the model file `path` is missing, or fails it where
// scripts/test.sh has made the default model a requirement (PDSERVE_REQUIRE_DEFAULT_MODEL), so
// CI never passes by skipping.
#define PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(path)                          \
  do {                                                                    \
    if (!std::filesystem::exists(path)) {                                 \
      if (std::getenv("PDSERVE_REQUIRE_DEFAULT_MODEL") != nullptr) {      \
        FAIL() << (path) << " is missing: run scripts/fetch-model.sh";    \
      }                                                                   \
      GTEST_SKIP() << (path) << " not found: run scripts/fetch-model.sh"; \
    }                                                                     \
  } while (0)
