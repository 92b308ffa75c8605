#include "loadgen/workload.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace pdserve::loadgen {
namespace {

using nlohmann::json;

// The client has no tokenizer: a ShareGPT reply's length in tokens is estimated from its bytes,
// at what English BPE vocabularies average.
constexpr int kBytesPerTokenEstimate = 4;

absl::StatusOr<int> ParseLength(absl::string_view flag, absl::string_view text) {
  int value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": '", text, "' is not a positive token count (give N, or MIN:MAX for a range)"));
  }
  return value;
}

int Draw(const LengthRange& range, std::mt19937_64& rng) {
  if (range.min == range.max) return range.min;
  return std::uniform_int_distribution<int>(range.min, range.max)(rng);
}

// A JSONL object's "output_len" or "max_tokens", when it has a positive integer there.
absl::StatusOr<std::optional<int>> OutputLenField(const json& object) {
  for (const char* key : {"output_len", "max_tokens"}) {
    const auto it = object.find(key);
    if (it == object.end()) continue;
    if (!it->is_number_integer() || it->get<int64_t>() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", key, "\" must be a positive integer, not ", it->dump()));
    }
    return std::optional<int>(it->get<int>());
  }
  return std::optional<int>();
}

// One JSONL object: {"prompt": "text" or [ids], ...}. nullopt when it has no prompt.
absl::StatusOr<std::optional<DatasetEntry>> JsonlEntry(const json& object) {
  if (!object.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  const auto prompt = object.find("prompt");
  if (prompt == object.end()) return std::optional<DatasetEntry>();
  DatasetEntry entry;
  if (prompt->is_string()) {
    entry.prompt_text = prompt->get<std::string>();
  } else if (prompt->is_array()) {
    for (const json& id : *prompt) {
      if (!id.is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat("\"prompt\" must be text or a list of token ids; it holds ", id.dump()));
      }
      entry.prompt_ids.push_back(id.get<int32_t>());
    }
  } else {
    return absl::InvalidArgumentError("\"prompt\" must be text or a list of token ids");
  }
  if (entry.prompt_text.empty() && entry.prompt_ids.empty()) return std::optional<DatasetEntry>();
  absl::StatusOr<std::optional<int>> output_len = OutputLenField(object);
  if (!output_len.ok()) return output_len.status();
  entry.output_len = *output_len;
  return std::optional<DatasetEntry>(std::move(entry));
}

// One ShareGPT conversation: the first human turn, and the length of the reply after it.
std::optional<DatasetEntry> ShareGptEntry(const json& item) {
  if (!item.is_object()) return std::nullopt;
  const auto turns = item.find("conversations");
  if (turns == item.end() || !turns->is_array()) return std::nullopt;
  std::optional<DatasetEntry> entry;
  for (const json& turn : *turns) {
    if (!turn.is_object() || !turn.contains("from") || !turn.contains("value") ||
        !turn["from"].is_string() || !turn["value"].is_string()) {
      continue;
    }
    const std::string& from = turn["from"].get_ref<const std::string&>();
    const std::string& value = turn["value"].get_ref<const std::string&>();
    if (!entry.has_value()) {
      if (from == "human" && !value.empty()) entry = DatasetEntry{.prompt_text = value};
    } else if (from == "gpt") {
      entry->output_len = std::max<int>(
          1,
          static_cast<int>((value.size() + kBytesPerTokenEstimate - 1) / kBytesPerTokenEstimate));
      break;
    }
  }
  return entry;
}

absl::StatusOr<std::vector<DatasetEntry>> ParseShareGpt(absl::string_view content,
                                                        absl::string_view source) {
  const json list = json::parse(content, nullptr, /*allow_exceptions=*/false);
  if (list.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not valid JSON (a ShareGPT file is one JSON list)"));
  }
  std::vector<DatasetEntry> entries;
  for (const json& item : list) {
    if (std::optional<DatasetEntry> entry = ShareGptEntry(item)) {
      entries.push_back(*std::move(entry));
    }
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source,
                     ": no conversation with a human turn (ShareGPT: [{\"conversations\": "
                     "[{\"from\": \"human\", \"value\": ...}, ...]}, ...])"));
  }
  return entries;
}

absl::StatusOr<std::vector<DatasetEntry>> ParseJsonl(absl::string_view content,
                                                     absl::string_view source) {
  std::vector<DatasetEntry> entries;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
    absl::StatusOr<std::optional<DatasetEntry>> entry =
        object.is_discarded() ? absl::InvalidArgumentError("not valid JSON") : JsonlEntry(object);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, " line ", line_number, ": ", entry.status().message(),
          " (JSONL: one {\"prompt\": \"text\" or [ids], \"output_len\": N} per line)"));
    }
    if (entry->has_value()) entries.push_back(**std::move(entry));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source,
        ": no line has a \"prompt\" (JSONL: one {\"prompt\": \"text\" or [ids]} per line)"));
  }
  return entries;
}

}  // namespace

absl::StatusOr<LengthRange> ParseLengthRange(absl::string_view flag, absl::string_view text) {
  const std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  if (parts.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", text, "' is neither N nor MIN:MAX"));
  }
  absl::StatusOr<int> min = ParseLength(flag, parts.front());
  if (!min.ok()) return min.status();
  absl::StatusOr<int> max = ParseLength(flag, parts.back());
  if (!max.ok()) return max.status();
  if (*min > *max) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", text, "': the range's minimum is above its maximum"));
  }
  return LengthRange{*min, *max};
}

absl::StatusOr<std::vector<DatasetEntry>> ParseDataset(absl::string_view content,
                                                       absl::string_view source) {
  const size_t first = content.find_first_not_of(" \t\r\n");
  if (first != absl::string_view::npos && content[first] == '[') {
    return ParseShareGpt(content, source);
  }
  return ParseJsonl(content, source);
}

absl::StatusOr<std::vector<DatasetEntry>> LoadDataset(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--dataset: cannot read ", path));
  std::stringstream content;
  content << in.rdbuf();
  return ParseDataset(content.str(), absl::StrCat("--dataset ", path));
}

absl::StatusOr<std::vector<RequestSpec>> RequestsFromDataset(
    const std::vector<DatasetEntry>& entries, const WorkloadOptions& options,
    const ModelLimits& model) {
  const std::string source = absl::StrCat("--dataset ", options.dataset);
  for (const DatasetEntry& entry : entries) {
    if (!entry.prompt_text.empty() && !model.accepts_text) {
      return absl::FailedPreconditionError(absl::StrCat(
          source,
          " has text prompts, but the router has no tokenizer (GetModelInfo.accepts_text is "
          "false): start the router with --tokenizer, use token-id prompts (JSONL {\"prompt\": "
          "[1, 2, ...]}) or leave out --dataset for synthetic prompts"));
    }
    for (const int32_t id : entry.prompt_ids) {
      if (id < 0 || id >= model.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(source, " has token id ", id,
                                                       ", outside the model's vocabulary [0, ",
                                                       model.vocab_size, ")"));
      }
    }
  }
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(options.seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<RequestSpec> specs;
  specs.reserve(static_cast<size_t>(options.num_requests));
  for (int i = 0; i < options.num_requests; ++i) {
    const DatasetEntry& entry = entries[order[static_cast<size_t>(i) % order.size()]];
    const int drawn = Draw(options.output_len, rng);
    specs.push_back({
        .prompt_ids = entry.prompt_ids,
        .prompt_text = entry.prompt_text,
        .max_tokens = options.output_len_set ? drawn : entry.output_len.value_or(drawn),
        .ignore_eos = options.ignore_eos,
    });
  }
  return specs;
}

absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadOptions& options,
                                                       const ModelLimits& model) {
  if (!options.dataset.empty()) {
    absl::StatusOr<std::vector<DatasetEntry>> entries = LoadDataset(options.dataset);
    if (!entries.ok()) return entries.status();
    return RequestsFromDataset(*entries, options, model);
  }
  if (options.input_len.max + options.output_len.max > model.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("--input-len (up to ", options.input_len.max, ") + --output-len (up to ",
                     options.output_len.max, ") exceed the model's context of ", model.max_context,
                     " tokens: lower them"));
  }
  if (model.vocab_size < 1) {
    return absl::FailedPreconditionError("the router reports no vocabulary (vocab_size 0)");
  }
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(model.vocab_size - 1));
  std::vector<RequestSpec> specs;
  specs.reserve(static_cast<size_t>(options.num_requests));
  for (int i = 0; i < options.num_requests; ++i) {
    RequestSpec spec;
    spec.prompt_ids.resize(static_cast<size_t>(Draw(options.input_len, rng)));
    for (int32_t& id : spec.prompt_ids) id = token(rng);
    spec.max_tokens = Draw(options.output_len, rng);
    spec.ignore_eos = true;
    specs.push_back(std::move(spec));
  }
  return specs;
}

}  // namespace pdserve::loadgen
