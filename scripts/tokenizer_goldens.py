#!/usr/bin/env python3
"""Reference outputs for pdserve's tokenizer tests, computed with Hugging Face `tokenizers`.

Writes (committed) under tests/data/tokenizer/:
  bytelevel/  GPT-2/SmolLM-style byte-level BPE: Sequence[Digits(individual), ByteLevel(regex)]
  llama3/     Llama-3-style: Sequence[Split(Llama-3 regex), ByteLevel(use_regex=false)],
              ignore_merges, "<|begin_of_text|> $A" post-processor
  llama2/     Llama-2-style SentencePiece BPE: Prepend/Replace "▁" normalizer, byte_fallback with
              the <0x00>..<0xFF> tokens, "<s> $A" post-processor
  each with tokenizer.json, tokenizer_config.json and goldens.json; the three are trained here on
  a built-in corpus (deterministic), so they stay small.
  smollm2_goldens.json  encode/decode goldens and chat-template renders for SmolLM2-135M-Instruct.

And, not committed (big): the SmolLM2 tokenizer rebuilt from the GGUF's tokenizer.ggml.* metadata
(llama.cpp pre-type "smollm" = the HF pre-tokenizer Sequence[Digits(individual_digits=true),
ByteLevel(add_prefix_space=false, use_regex=true)]) at
<cache>/models/SmolLM2-135M-Instruct.tokenizer.json (cache as in scripts/fetch-model.sh:
$PDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/pdserve, else ~/.cache/pdserve), which the C++ tests use
when present.

Usage: scripts/tokenizer_goldens.py [--gguf PATH]   (creates .venv-goldens/ on first run)
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-goldens")
PACKAGES = ["tokenizers", "gguf", "jinja2", "numpy"]


def ensure_venv():
    """Re-runs this script inside .venv-goldens (created on demand) unless already there."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    try:
        subprocess.check_call([python, "-c", "import tokenizers, gguf, jinja2, numpy"],
                              stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        subprocess.check_call([python, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check"] + PACKAGES)
    os.execv(python, [python] + sys.argv)


ensure_venv()

import jinja2  # noqa: E402
import jinja2.ext  # noqa: E402
import jinja2.sandbox  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data", "tokenizer")
# The model cache, as scripts/fetch-model.sh resolves it.
CACHE = os.environ.get("PDSERVE_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pdserve")
DEFAULT_GGUF = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM2_JSON = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.tokenizer.json")

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Training text for the three small tokenizers: English prose and code, a little of other
# scripts so some non-ASCII merges exist (and most CJK/emoji stay out of the vocab, which
# exercises byte fallback in the Llama-2 style one).
TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. The dog didn't care; it's been sleeping all day.
We'll see what they're doing tomorrow, and I'd say you've got a point, haven't you?
Once upon a time there was a little girl named Lily. She liked to play outside in the sun.
One day she saw a big red ball in the park and she wanted to play with it.
Her mother said: "Be careful, Lily!" and Lily smiled. They played together until the evening.
In 2024, the company reported revenue of $1,234,567.89, up 12.5% from 2023.
Call 555-0100 or write to info@example.com before 10:30 a.m. on March 3rd.
def tokenize(text: str) -> list[int]:
    return [vocab[word] for word in text.split()]
for (int i = 0; i < n; ++i) { sum += values[i] * weights[i]; }
if x == 0 and y != 1:
    print("hello, world")
Servers stream tokens to clients; the router detokenizes them incrementally.
Prefill and decode run on different workers and the KV cache moves between them.
café résumé naïve façade jalapeño über straße garçon señor déjà vu
Привет, как дела? Хорошо, спасибо.
日本語のテキストです。東京は大きな都市です。
中文文本，你好世界。
مرحبا بالعالم
Emoji: 🙂 👍 🚀 ❤️
""" * 3


def train_bytelevel():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=800, min_frequency=2, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT.splitlines(), trainer=trainer)
    return tok


def train_llama3():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900, min_frequency=2, show_progress=False,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT.splitlines(), trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    # A non-special added token: matched in text even when special tokens are not parsed.
    tok.add_tokens([AddedToken("<|custom|>", special=False, normalized=False)])
    return tok


def train_llama2():
    # Train with whitespace-split words (as SentencePiece never merges across "▁"-words), then
    # rebuild the model the way Llama-2's tokenizer.json is laid out: <unk> <s> </s>, the 256
    # byte tokens, then the learned pieces; no pre-tokenizer.
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False)
    # Leave emoji, Chinese and Arabic out of the alphabet so they take the byte fallback.
    # (limit_alphabet would do it too, but breaks frequency ties differently run to run.)
    lines = [line for line in TRAIN_TEXT.splitlines()
             if not line.startswith(("Emoji", "中文", "مرحبا"))]
    trainer_tok.train_from_iterator(lines, trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def corpus(specials):
    texts = [
        "",
        "Hello world",
        "Hello, world! How are you doing today?",
        " leading space",
        "trailing space ",
        "  two leading and three trailing   ",
        "multiple   spaces    between words",
        "tabs\tand\ttabs\t\tdouble",
        "line one\nline two\n\nline four\r\nwindows line",
        "\n\n\n",
        " ",
        "I'm sure they're here; we'll see, you've said it's fine, I'd go. DON'T SHOUT'S",
        "Numbers: 7, 42, 1234567890123456789, 3.14159, -0.001, 1e10, 2024-06-01",
        "punctuation!!! ??? ... --- ((( ))) [x] {y} <z> @#$%^&*_+=|\\/~`",
        "Emoji: 🙂👍🚀 and a family 👨‍👩‍👧‍👦 and a flag 🇫🇷 and a heart ❤️",
        "日本語のテキストです。東京は大きな都市です。",
        "中文文本，你好世界。",
        "مرحبا بالعالم",
        "Привет, как дела?",
        "café résumé naïve façade jalapeño über straße",
        "def tokenize(text: str) -> list[int]:\n    return [vocab[w] for w in text.split()]\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += v[i];\n}",
        "mixed: abc123def 4five6 ７８９ ①②",
        "non-breaking\u00a0space and\u3000ideographic space",
        "zero\u200bwidth and combining e\u0301",
        "The quick brown fox jumps over the lazy dog. " * 3,
    ]
    for s in specials:
        texts.append(f"{s}Hello{s} world {s}")
    if len(specials) >= 2:
        texts.append(f"{specials[0]}{specials[1]}x")
    return texts


def goldens_for(tok, texts, has_added_non_special=False):
    entries = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_bos = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        ids_no_parse = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        entries.append({
            "text": text,
            "ids": ids,
            "ids_add_special": ids_bos,
            "ids_no_parse_special": ids_no_parse,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_add_special": tok.decode(ids_bos, skip_special_tokens=False),
            "decoded_add_special_skip": tok.decode(ids_bos, skip_special_tokens=True),
        })
    return entries


def write_json(path, obj, indent=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                   "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Count to 3, then stop.\nThanks 🙂"}],
    [{"role": "user", "content": "first"},
     {"role": "assistant", "content": "second"}],
]


def render_chat(template, messages, add_generation_prompt, special_tokens):
    """Renders as transformers' apply_chat_template does (sandboxed, trim/lstrip blocks)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt,
                                            **special_tokens)


def chat_goldens(tok, template, special_tokens):
    out = []
    for messages in CHATS:
        for agp in (True, False):
            text = render_chat(template, messages, agp, special_tokens)
            out.append({"messages": messages, "add_generation_prompt": agp, "rendered": text,
                        "ids": tok.encode(text, add_special_tokens=False).ids})
    return out


def rebuild_smollm2(gguf_path):
    """The SmolLM2 tokenizer from the GGUF's tokenizer.ggml.* metadata (scripts/gguf_tokenizer.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gguf_tokenizer
    return gguf_tokenizer.rebuild(gguf_path)


def main():
    gguf_path = DEFAULT_GGUF
    if len(sys.argv) == 3 and sys.argv[1] == "--gguf":
        gguf_path = sys.argv[2]

    small = {
        "bytelevel": (train_bytelevel(), ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                      {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                       "add_bos_token": False, "chat_template": CHATML_TEMPLATE}),
        "llama3": (train_llama3(), ["<|begin_of_text|>", "<|eot_id|>", "<|custom|>"],
                   {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>"}}),
        "llama2": (train_llama2(), ["<s>", "</s>"],
                   {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                    "add_bos_token": True, "add_eos_token": False}),
    }
    for name, (tok, specials, config) in small.items():
        d = os.path.join(DATA, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"), pretty=True)
        write_json(os.path.join(d, "tokenizer_config.json"), config, indent=2)
        g = {"tokenizer": name, "vocab_size": tok.get_vocab_size(),
             "corpus": goldens_for(tok, corpus(specials))}
        if config.get("chat_template"):
            g["chat"] = chat_goldens(tok, config["chat_template"],
                                     {"bos_token": config["bos_token"],
                                      "eos_token": config["eos_token"]})
        write_json(os.path.join(d, "goldens.json"), g, indent=1)
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(g['corpus'])} corpus entries")

    if not os.path.exists(gguf_path):
        print(f"warning: {gguf_path} not found (scripts/fetch-model.sh); SmolLM2 goldens kept",
              file=sys.stderr)
        return
    tok, template, special = rebuild_smollm2(gguf_path)
    os.makedirs(os.path.dirname(SMOLLM2_JSON), exist_ok=True)
    tok.save(SMOLLM2_JSON)
    g = {"tokenizer": "SmolLM2-135M-Instruct", "vocab_size": tok.get_vocab_size(),
         "chat_template": template,
         "corpus": goldens_for(tok, corpus(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])),
         "chat": chat_goldens(tok, template, special)}
    write_json(os.path.join(DATA, "smollm2_goldens.json"), g, indent=1)
    print(f"SmolLM2: vocab {tok.get_vocab_size()} -> {SMOLLM2_JSON}")


if __name__ == "__main__":
    main()
