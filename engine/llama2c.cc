#include "engine/llama2c.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/llama_model.h"

namespace pdserve {
namespace {

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

}  // namespace

absl::StatusOr<ModelConfig> ReadLlama2cConfig(const std::string& path) {
  std::error_code ec;
  const auto file_size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", ec.message()));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  Header hd{};
  if (file_size < static_cast<int64_t>(sizeof(Header)) ||
      !in.read(reinterpret_cast<char*>(&hd), sizeof(Header))) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated: shorter than the 28-byte llama2.c header"));
  }
  const bool shared_classifier = hd.vocab_size > 0;
  const int64_t vocab = hd.vocab_size > 0 ? hd.vocab_size : -static_cast<int64_t>(hd.vocab_size);
  auto bad_header = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a llama2.c checkpoint: ", what));
  };
  if (hd.dim <= 0 || hd.dim > (1 << 16) || hd.hidden_dim <= 0 || hd.hidden_dim > (1 << 18) ||
      hd.n_layers <= 0 || hd.n_layers > 1024 || hd.seq_len <= 0 || hd.seq_len > (1 << 20) ||
      vocab <= 0 || vocab > (1 << 22)) {
    return bad_header(absl::StrCat("header sizes out of range (dim ", hd.dim, ", hidden_dim ",
                                   hd.hidden_dim, ", n_layers ", hd.n_layers, ", vocab ",
                                   hd.vocab_size, ", seq_len ", hd.seq_len, ")"));
  }
  if (hd.n_heads <= 0 || hd.n_kv_heads <= 0 || hd.n_heads % hd.n_kv_heads != 0 ||
      hd.dim % hd.n_heads != 0 || (hd.dim / hd.n_heads) % 2 != 0) {
    return bad_header(absl::StrCat("head counts (n_heads ", hd.n_heads, ", n_kv_heads ",
                                   hd.n_kv_heads, ") do not divide dim ", hd.dim, " evenly"));
  }

  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.hidden_size = hd.dim;
  c.intermediate_size = hd.hidden_dim;
  c.num_layers = hd.n_layers;
  c.num_heads = hd.n_heads;
  c.num_kv_heads = hd.n_kv_heads;
  c.head_dim = hd.dim / hd.n_heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = hd.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.rope_style = RopeStyle::kInterleaved;
  c.format = CheckpointFormat::kLlama2c;
  c.tie_word_embeddings = shared_classifier;
  c.bos_token_id = 1;
  // llama2.c's sampler ends a story when the model emits BOS (1); 2 is the nominal EOS.
  c.eos_token_ids = {1, 2};
  return c;
}

absl::StatusOr<std::unique_ptr<Model>> LoadLlama2c(const std::string& path, Backend& backend) {
  auto config = ReadLlama2cConfig(path);
  if (!config.ok()) return config.status();
  ModelConfig c = *std::move(config);
  std::error_code ec;
  const auto file_size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", ec.message()));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const bool shared_classifier = c.tie_word_embeddings;
  const int64_t vocab = c.vocab_size;

  const int64_t dim = c.hidden_size, hidden = c.intermediate_size, L = c.num_layers;
  const int64_t kv_dim = c.num_kv_heads * c.head_dim;
  const int64_t head_size = c.head_dim;
  int64_t offset = sizeof(Header);
  absl::Status status;
  // Reads the next tensor of the file, stopping at the first one that runs past its end.
  auto read = [&](const char* name, Shape shape) -> Tensor {
    if (!status.ok()) return {};
    const int64_t bytes = shape.numel() * 4;
    if (offset + bytes > file_size) {
      status = absl::InvalidArgumentError(absl::StrCat(
          path, ": truncated: tensor '", name, "' ", shape.ToString(), " needs bytes [", offset,
          ", ", offset + bytes, ") but the file has ", file_size));
      return {};
    }
    Tensor host = Tensor::EmptyCpu(DType::kF32, shape);
    in.seekg(offset);
    in.read(static_cast<char*>(host.data()), bytes);
    offset += bytes;
    if (!in) {
      status = absl::DataLossError(absl::StrCat(path, ": read error in tensor '", name, "'"));
      return {};
    }
    if (backend.device() == Device::kCpu) return host;
    Tensor dev = backend.Allocate(DType::kF32, shape);
    backend.CopyFromHost(host.data(), dev);
    return dev;
  };
  // Tensors are stored per kind with all layers stacked: [L, out, in].
  auto per_layer = [&](Tensor stacked, std::vector<LlamaLayerWeights>& layers,
                       Tensor LlamaLayerWeights::*field, Shape shape) {
    if (!status.ok()) return;
    for (int64_t l = 0; l < L; ++l) {
      layers[static_cast<size_t>(l)].*field = stacked.Rows(l, 1).Reshape(shape);
    }
  };

  LlamaWeights w;
  w.layers.resize(static_cast<size_t>(L));
  w.embed = read("token_embedding", Shape{vocab, dim});
  per_layer(read("rms_att", Shape{L, dim}), w.layers, &LlamaLayerWeights::attn_norm, Shape{dim});
  per_layer(read("wq", Shape{L, dim, dim}), w.layers, &LlamaLayerWeights::wq, Shape{dim, dim});
  per_layer(read("wk", Shape{L, kv_dim, dim}), w.layers, &LlamaLayerWeights::wk,
            Shape{kv_dim, dim});
  per_layer(read("wv", Shape{L, kv_dim, dim}), w.layers, &LlamaLayerWeights::wv,
            Shape{kv_dim, dim});
  per_layer(read("wo", Shape{L, dim, dim}), w.layers, &LlamaLayerWeights::wo, Shape{dim, dim});
  per_layer(read("rms_ffn", Shape{L, dim}), w.layers, &LlamaLayerWeights::ffn_norm, Shape{dim});
  per_layer(read("w1", Shape{L, hidden, dim}), w.layers, &LlamaLayerWeights::w_gate,
            Shape{hidden, dim});
  per_layer(read("w2", Shape{L, dim, hidden}), w.layers, &LlamaLayerWeights::w_down,
            Shape{dim, hidden});
  per_layer(read("w3", Shape{L, hidden, dim}), w.layers, &LlamaLayerWeights::w_up,
            Shape{hidden, dim});
  w.final_norm = read("rms_final", Shape{dim});
  if (!status.ok()) return status;
  // Skip the legacy precomputed RoPE tables (freq_cis_real/imag); RoPE is computed here.
  const int64_t rope_tables = c.max_position_embeddings * head_size * 4;
  if (offset + rope_tables > file_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated: the RoPE tables after 'rms_final' need ", rope_tables,
                     " bytes at offset ", offset, " but the file has ", file_size));
  }
  offset += rope_tables;
  w.lm_head = shared_classifier ? w.embed : read("wcls", Shape{vocab, dim});
  if (!status.ok()) return status;
  if (offset != file_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", file_size - offset,
                     " unexpected bytes after the last tensor; the header does not match the "
                     "file (is this a llama2.c legacy checkpoint?)"));
  }
  return std::make_unique<LlamaModel>(std::move(c), std::move(w), backend);
}

}  // namespace pdserve
