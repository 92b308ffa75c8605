#!/usr/bin/env python3
"""A Hugging Face tokenizer rebuilt from a GGUF file's tokenizer.ggml.* metadata, for tools that
load tokenizers the Hugging Face way and cannot reach the hub (aiperf's --tokenizer, and the
tokenizer goldens). Supports what the default model uses: the "gpt2" (byte-level BPE) model with
llama.cpp's "smollm" pre-type, i.e. HF's Sequence[Digits(individual_digits=true),
ByteLevel(add_prefix_space=false, use_regex=true)].

Usage: gguf_tokenizer.py GGUF OUT_DIR   writes OUT_DIR/tokenizer.json and tokenizer_config.json
(bos/eos tokens and the chat template). Needs the PyPI packages `tokenizers` and `gguf`.
"""
import json
import os
import sys


def rebuild(gguf_path):
    """(tokenizers.Tokenizer, chat template, {"bos_token", "eos_token"}) from the GGUF."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    fields = GGUFReader(gguf_path).fields

    def strings(key):
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key):
        return fields[key].contents()

    if scalar("tokenizer.ggml.model") != "gpt2" or scalar("tokenizer.ggml.pre") != "smollm":
        raise SystemExit(f"{gguf_path}: tokenizer {scalar('tokenizer.ggml.model')}/"
                         f"{scalar('tokenizer.ggml.pre')} is not supported (gpt2/smollm only)")
    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    f = fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    template = scalar("tokenizer.chat_template")
    special = {"bos_token": tokens[scalar("tokenizer.ggml.bos_token_id")],
               "eos_token": tokens[scalar("tokenizer.ggml.eos_token_id")]}
    return tok, template, special


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    gguf_path, out_dir = sys.argv[1], sys.argv[2]
    tok, template, special = rebuild(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {**special, "chat_template": template, "add_bos_token": False,
              "tokenizer_class": "PreTrainedTokenizerFast",
              "model_max_length": int(1e9)}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(out_dir)


if __name__ == "__main__":
    main()
