// What `pdserve bench` sends: one RequestSpec per request, from synthetic lengths or from a
// dataset file (ShareGPT JSON, or JSONL of prompts).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pdserve::loadgen {

// A length flag: "128" (always 128) or "64:256" (uniform in [64, 256]).
struct LengthRange {
  int min = 0;
  int max = 0;
};
// INVALID_ARGUMENT naming `flag` unless `text` is a positive length or an ordered range of them.
absl::StatusOr<LengthRange> ParseLengthRange(absl::string_view flag, absl::string_view text);

// One prompt of a dataset file.
struct DatasetEntry {
  std::string prompt_text{};          // a text prompt, or
  std::vector<int32_t> prompt_ids{};  // token ids (JSONL "prompt": [1, 2, ...])
  std::optional<int> output_len{};    // JSONL "output_len"/"max_tokens"; ShareGPT: estimated
};

// Reads `path`: a JSON list is ShareGPT ([{"conversations": [{"from": "human", "value": ..},
// {"from": "gpt", "value": ..}]}]: the first human turn is the prompt, and the reply after it
// sets the output length at an estimated 4 bytes a token, since the client has no tokenizer),
// anything else JSONL (one {"prompt": "text" or [ids], optional "output_len" or "max_tokens"}
// per line; blank lines skipped). Entries without a prompt are skipped. INVALID_ARGUMENT with
// the file (and line) on malformed input or when no entry has a prompt, NOT_FOUND when the
// file cannot be read.
absl::StatusOr<std::vector<DatasetEntry>> LoadDataset(const std::string& path);
// The same for text already read (`source` names it in errors).
absl::StatusOr<std::vector<DatasetEntry>> ParseDataset(absl::string_view content,
                                                       absl::string_view source);

// What the router serves, as far as building requests goes (from GetModelInfo).
struct ModelLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;
  bool accepts_text = false;
};

struct WorkloadOptions {
  std::string dataset{};  // empty: synthetic prompts
  LengthRange input_len{128, 128};
  LengthRange output_len{128, 128};
  bool output_len_set = false;  // with a dataset: --output-len overrides the file's lengths
  bool ignore_eos = false;      // dataset requests only: synthetic ones always ignore EOS
  int num_requests = 0;
  uint64_t seed = 0;
};

// One request to send.
struct RequestSpec {
  std::vector<int32_t> prompt_ids{};  // synthetic and id datasets
  std::string prompt_text{};          // text datasets
  int max_tokens = 0;
  // Synthetic requests ignore EOS, so that every output has the asked length.
  bool ignore_eos = false;
};

// `options.num_requests` requests. Synthetic: random ids in [0, vocab_size) of the drawn input
// length, max_tokens the drawn output length; INVALID_ARGUMENT when the longest input plus the
// longest output exceed the model's context. Dataset: its entries shuffled with the seed
// (repeated when more requests are asked than it holds); INVALID_ARGUMENT when it has text
// prompts and the router has no tokenizer. Same options, same requests.
absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadOptions& options,
                                                       const ModelLimits& model);
// BuildWorkload's dataset half, on entries already loaded.
absl::StatusOr<std::vector<RequestSpec>> RequestsFromDataset(
    const std::vector<DatasetEntry>& entries, const WorkloadOptions& options,
    const ModelLimits& model);

}  // namespace pdserve::loadgen
