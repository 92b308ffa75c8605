#include "tokenizer/hf_tokenizer_json.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tokenizer/pre_tokenizer.h"

namespace pdserve {
namespace {

using json = nlohmann::json;

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // "▁"

absl::Status Unsupported(const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported ", what,
                   " (pdserve reads byte-level BPE and SentencePiece-style BPE tokenizer.json "
                   "files)"));
}

std::string TypeOf(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"];
  return j.dump();
}

// Quotes `s` for PCRE2 so it matches literally.
std::string QuoteRegex(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(R"(\^$.|?*+()[]{}-/)").find(c) != std::string_view::npos) {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

// What the pipeline components say, gathered while walking them.
struct Pipeline {
  bool byte_level = false;
  bool prepend_space_mark = false;  // normalizer Prepend("▁")
  bool replace_space = false;       // normalizer Replace(" ", "▁")
  bool metaspace = false;
  bool metaspace_first_only = false;
  bool byte_level_prefix_space = false;
  std::vector<std::string> regexes;
  // TemplateProcessing: the special tokens before and after $A.
  bool has_template = false;
  std::optional<std::string> template_bos;
  std::optional<std::string> template_eos;
};

absl::Status WalkNormalizer(const json& n, Pipeline* p) {
  if (n.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(n);
  if (type == "Sequence") {
    for (const json& child : n.at("normalizers")) {
      if (absl::Status s = WalkNormalizer(child, p); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type == "NFC") return absl::OkStatus();  // taken as the identity, as llama.cpp does
  if (type == "Prepend" && n.at("prepend") == kSpaceMark) {
    p->prepend_space_mark = true;
    return absl::OkStatus();
  }
  if (type == "Replace" && n.at("pattern").contains("String") &&
      n.at("pattern").at("String") == " " && n.at("content") == kSpaceMark) {
    p->replace_space = true;
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat("normalizer ", n.dump()));
}

absl::Status WalkPreTokenizer(const json& t, Pipeline* p) {
  if (t.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(t);
  if (type == "Sequence") {
    for (const json& child : t.at("pretokenizers")) {
      if (absl::Status s = WalkPreTokenizer(child, p); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    p->byte_level = true;
    p->byte_level_prefix_space = t.value("add_prefix_space", false);
    if (t.value("use_regex", true)) p->regexes.emplace_back(kGpt2SplitRegex);
    return absl::OkStatus();
  }
  if (type == "Digits") {
    p->regexes.emplace_back(t.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    return absl::OkStatus();
  }
  if (type == "Split") {
    if (t.value("behavior", "") != "Isolated" || t.value("invert", false)) {
      return Unsupported(
          absl::StrCat("pre-tokenizer Split with behavior '", t.value("behavior", ""), "'",
                       t.value("invert", false) ? " inverted" : "", " (only Isolated)"));
    }
    const json& pattern = t.at("pattern");
    if (pattern.contains("Regex")) {
      p->regexes.push_back(pattern.at("Regex").get<std::string>());
    } else {
      p->regexes.push_back(QuoteRegex(pattern.at("String").get<std::string>()));
    }
    return absl::OkStatus();
  }
  if (type == "Metaspace") {
    if (t.value("replacement", std::string(kSpaceMark)) != kSpaceMark) {
      return Unsupported("Metaspace replacement other than \"▁\"");
    }
    p->metaspace = true;
    std::string scheme = t.value("prepend_scheme", "");
    if (scheme.empty()) scheme = t.value("add_prefix_space", true) ? "always" : "never";
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return Unsupported(absl::StrCat("Metaspace prepend_scheme '", scheme, "'"));
    }
    p->prepend_space_mark = scheme != "never";
    p->metaspace_first_only = scheme == "first";
    // split=true: each "▁" starts a new word (Hugging Face's MergedWithNext split).
    if (t.value("split", true))
      p->regexes.push_back("\xE2\x96\x81[^\xE2\x96\x81]*|[^\xE2\x96\x81]+");
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat("pre-tokenizer '", type, "'"));
}

absl::Status WalkDecoder(const json& d) {
  if (d.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(d);
  if (type == "Sequence") {
    for (const json& child : d.at("decoders")) {
      if (absl::Status s = WalkDecoder(child); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  // The decoders of byte-level and SentencePiece BPE; the model kind implies what they do.
  for (std::string_view known : {"ByteLevel", "ByteFallback", "Fuse", "Strip", "Metaspace"}) {
    if (type == known) return absl::OkStatus();
  }
  if (type == "Replace" && d.at("pattern").contains("String") &&
      d.at("pattern").at("String") == kSpaceMark && d.at("content") == " ") {
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat("decoder ", d.dump()));
}

absl::Status WalkPostProcessor(const json& pp, Pipeline* p) {
  if (pp.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(pp);
  if (type == "Sequence") {
    for (const json& child : pp.at("processors")) {
      if (absl::Status s = WalkPostProcessor(child, p); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type != "TemplateProcessing") return Unsupported(absl::StrCat("post-processor '", type, "'"));
  p->has_template = true;
  std::vector<std::string> before, after;
  bool seen_sequence = false;
  for (const json& item : pp.at("single")) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
    } else {
      std::string name = item.at("SpecialToken").at("id");
      const json& special = pp.at("special_tokens").at(name);
      if (special.at("ids").size() != 1) {
        return Unsupported(absl::StrCat("TemplateProcessing token '", name, "' of several ids"));
      }
      (seen_sequence ? after : before).push_back(name);
    }
  }
  if (before.size() > 1 || after.size() > 1) {
    return Unsupported("TemplateProcessing with more than one token before or after $A");
  }
  if (!before.empty()) p->template_bos = before[0];
  if (!after.empty()) p->template_eos = after[0];
  return absl::OkStatus();
}

// "<s>" or {"content": "<s>", ...} or null.
std::optional<std::string> ConfigToken(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return contents.str();
}

absl::StatusOr<TokenizerSpec> Convert(const json& j, const json& config) {
  Pipeline p;
  if (absl::Status s = WalkNormalizer(j.value("normalizer", json()), &p); !s.ok()) return s;
  if (absl::Status s = WalkPreTokenizer(j.value("pre_tokenizer", json()), &p); !s.ok()) return s;
  if (absl::Status s = WalkDecoder(j.value("decoder", json())); !s.ok()) return s;
  if (absl::Status s = WalkPostProcessor(j.value("post_processor", json()), &p); !s.ok()) {
    return s;
  }

  const json& model = j.at("model");
  const std::string model_type = model.value("type", "BPE");
  if (model_type != "BPE") return Unsupported(absl::StrCat("model type '", model_type, "'"));
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      model["dropout"].get<double>() != 0.0) {
    return Unsupported("BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
      return Unsupported(absl::StrCat("BPE ", key));
    }
  }

  TokenizerSpec spec;
  if (p.byte_level) {
    if (p.prepend_space_mark || p.replace_space || p.metaspace) {
      return Unsupported("mix of ByteLevel and \"▁\" (SentencePiece) components");
    }
    if (p.regexes.empty()) return Unsupported("ByteLevel pre-tokenizer without a split regex");
    spec.model = "gpt2";
    spec.add_space_prefix = p.byte_level_prefix_space;
    spec.pre = "custom";
    for (std::string_view name : {"gpt2", "smollm", "llama3", "qwen2", "deepseek-v3"}) {
      if (PreTokenizerRegexes(name).value() == p.regexes) {
        spec.pre = std::string(name);
        break;
      }
    }
  } else if (p.metaspace || p.replace_space) {
    spec.model = "llama";
    spec.add_space_prefix = p.prepend_space_mark;
    spec.space_prefix_first_only = p.metaspace_first_only;
    spec.space_prefix_unless_present = p.metaspace;
  } else {
    return Unsupported(
        "tokenizer: neither a ByteLevel pre-tokenizer (byte-level BPE) nor a \"▁\" normalizer or "
        "Metaspace pre-tokenizer (SentencePiece BPE)");
  }
  spec.pre_regexes = std::move(p.regexes);
  spec.ignore_merges = model.value("ignore_merges", false);

  // Vocabulary: the model's, plus added tokens (which may or may not also be in it).
  int64_t size = 0;
  const json& vocab = model.at("vocab");
  for (const auto& [text, id] : vocab.items())
    size = std::max<int64_t>(size, id.get<int64_t>() + 1);
  const json added = j.value("added_tokens", json::array());
  for (const json& a : added) size = std::max<int64_t>(size, a.at("id").get<int64_t>() + 1);
  if (size <= 0) return absl::InvalidArgumentError("tokenizer has an empty vocabulary");
  if (size > (int64_t{1} << 24)) return absl::InvalidArgumentError("vocabulary ids above 2^24");
  spec.tokens.assign(size, "");
  spec.token_types.assign(size, static_cast<int32_t>(TokenType::kUnused));
  for (const auto& [text, id] : vocab.items()) {
    const int64_t i = id.get<int64_t>();
    if (i < 0) return absl::InvalidArgumentError(absl::StrCat("negative id for '", text, "'"));
    spec.tokens[i] = text;
    spec.token_types[i] = static_cast<int32_t>(TokenType::kNormal);
    if (spec.model == "llama" && text.size() == 6 && text.starts_with("<0x")) {
      spec.token_types[i] = static_cast<int32_t>(TokenType::kByte);
    }
  }
  for (const json& a : added) {
    const int64_t i = a.at("id").get<int64_t>();
    if (i < 0) return absl::InvalidArgumentError("negative added token id");
    spec.tokens[i] = a.at("content").get<std::string>();
    spec.token_types[i] = static_cast<int32_t>(a.value("special", false) ? TokenType::kControl
                                                                         : TokenType::kUserDefined);
  }
  absl::flat_hash_map<std::string, int32_t> id_of;
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    id_of.try_emplace(spec.tokens[i], static_cast<int32_t>(i));
  }
  auto lookup = [&](const std::string& token, const char* what) -> absl::StatusOr<int32_t> {
    auto it = id_of.find(token);
    if (it == id_of.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", token, "' is not in the vocabulary"));
    }
    return it->second;
  };

  for (const json& m : model.at("merges")) {
    if (m.is_string()) {
      spec.merges.push_back(m.get<std::string>());
    } else {
      spec.merges.push_back(
          absl::StrCat(m.at(0).get<std::string>(), " ", m.at(1).get<std::string>()));
    }
  }

  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    absl::StatusOr<int32_t> unk = lookup(model["unk_token"], "unk_token");
    if (!unk.ok()) return unk.status();
    spec.unk_id = *unk;
    spec.token_types[*unk] = static_cast<int32_t>(TokenType::kUnknown);
  }

  // BOS/EOS: what the post-processor adds, else tokenizer_config.json's.
  for (auto [key, id, add, from_template, add_key] :
       {std::tuple{"bos_token", &spec.bos_id, &spec.add_bos, p.template_bos, "add_bos_token"},
        std::tuple{"eos_token", &spec.eos_id, &spec.add_eos, p.template_eos, "add_eos_token"}}) {
    std::optional<std::string> token = from_template ? from_template : ConfigToken(config, key);
    if (token) {
      absl::StatusOr<int32_t> found = lookup(*token, key);
      if (!found.ok()) return found.status();
      *id = *found;
    }
    *add = p.has_template ? from_template.has_value()
                          : (config.contains(add_key) && config[add_key].is_boolean() &&
                             config[add_key].get<bool>() && *id >= 0);
  }
  if (std::optional<std::string> pad = ConfigToken(config, "pad_token")) {
    if (auto it = id_of.find(*pad); it != id_of.end()) spec.pad_id = it->second;
  }

  if (config.contains("chat_template")) {
    const json& t = config["chat_template"];
    if (t.is_string()) {
      spec.chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& named : t) {
        if (spec.chat_template.empty() || named.value("name", "") == "default") {
          spec.chat_template = named.value("template", "");
        }
      }
    }
  }
  return spec;
}

}  // namespace

absl::StatusOr<TokenizerSpec> TokenizerSpecFromHfJsonText(std::string_view tokenizer_json,
                                                          std::string_view config_json,
                                                          std::string_view source_name) {
  const std::string source(source_name);
  json j, config = json::object();
  try {
    j = json::parse(tokenizer_json);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!config_json.empty()) {
    try {
      config = json::parse(config_json);
    } catch (const json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tokenizer_config.json is not valid JSON: ", e.what()));
    }
  }
  if (!j.is_object() || !j.contains("model")) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a tokenizer.json (no \"model\" object)"));
  }
  absl::StatusOr<TokenizerSpec> spec;
  try {
    spec = Convert(j, config.is_object() ? config : json::object());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unexpected tokenizer.json structure: ", e.what()));
  }
  if (!spec.ok()) {
    return absl::Status(spec.status().code(), absl::StrCat(source, ": ", spec.status().message()));
  }
  return spec;
}

absl::StatusOr<TokenizerSpec> TokenizerSpecFromHfJson(const std::string& tokenizer_json_path) {
  absl::StatusOr<std::string> text = ReadFile(tokenizer_json_path);
  if (!text.ok()) return text.status();
  std::string config;
  const std::filesystem::path config_path =
      std::filesystem::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) {
    absl::StatusOr<std::string> c = ReadFile(config_path.string());
    if (!c.ok()) return c.status();
    config = *std::move(c);
  }
  return TokenizerSpecFromHfJsonText(*text, config, tokenizer_json_path);
}

}  // namespace pdserve
