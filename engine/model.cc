#include "engine/model.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/llama2c.h"
#include "engine/llama_model.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, Backend& backend) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    auto config = LoadHfConfig((fs::path(path) / "config.json").string());
    if (!config.ok()) return config.status();
    if (config->is_mla()) {
      return absl::UnimplementedError(
          absl::StrCat(path, ": ", config->architecture,
                       " (MLA) configs parse, but the DeepSeek model itself lands with issue 3; "
                       "`pdserve kv-info --model ",
                       path, "` shows its KV cache format meanwhile"));
    }
    return LoadLlamaFromHf(path, *config, backend);
  }
  if (fs::is_regular_file(path, ec)) {
    if (path.ends_with(".bin")) return LoadLlama2c(path, backend);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unknown model file; pass a Hugging Face model directory or a llama2.c .bin"));
  }
  return absl::NotFoundError(absl::StrCat(path, ": no such model file or directory"));
}

}  // namespace pdserve
