#!/usr/bin/env python3
"""External reference for SmolLM2-135M-Instruct greedy token ids, recorded with llama.cpp.

Run through scripts/llama-cpp-reference.sh, which sets up .venv-ref (llama-cpp-python, gguf,
numpy) and fetches the model. Two steps:

1. F32 conversion. llama.cpp multiplies Q4_1/Q8_0 weights in a quantized domain (it quantizes the
   activations to Q8 for the dot products), and so does pdserve by default; with
   --dequantize-weights pdserve expands every weight to f32 at load and multiplies in f32, which
   is what this reference checks (tests/e2e/text_test.cc). So llama.cpp runs on an F32 GGUF made
   from the same file: every tensor
   dequantized with gguf.quants.dequantize (the reference numpy implementation of ggml's
   dequantization), names, shapes and order unchanged, every metadata key copied with
   general.file_type set to 0 (ALL_F32). The result is checked tensor by tensor against the source.

2. Reference. llama.cpp (through llama_cpp.Llama) tokenizes each prompt with its own tokenizer
   (add_bos=False, as the GGUF's add_bos_token=false says; special=True so ChatML markers map to
   their special ids), evaluates it in one batch and generates greedily: at each step the token is
   the argmax of the raw logits of the last position (no temperature, top-k/p, repeat penalty or
   any other sampler; ties go to the lowest id, as numpy.argmax does), until 32 tokens or the eos
   token (id 2, <|im_end|>), which is included in greedy_ids when generated.

   The output, tests/data/smollm2_llama_cpp_reference.json, holds per case the exact prompt text,
   prompt_ids, greedy_ids, stop_reason, the top-5 logits of the first generated token and, for
   every step, the gap between the best and the second-best logit (a mismatch against pdserve at a
   step with a tiny gap is float-rounding noise, one at a large gap is a bug).

As a sanity check of the conversion, the original Q4_1 file is run on the first prompt too; both
texts are printed (the Q4_1 ids are not recorded: they are not the reference).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import time

import numpy as np

MAX_NEW_TOKENS = 32
N_CTX = 512
N_BATCH = 512
N_THREADS = 2
TOP_K_LOGITS = 5

RAW_PROMPTS = [
    ("raw_capital_of_france", "The capital of France is"),
    ("raw_fibonacci", "def fibonacci(n):"),
    ("raw_once_upon_a_time", "Once upon a time, there was a little"),
]
CHAT_PROMPTS = [
    ("chat_capital_of_france", "What is the capital of France?"),
    ("chat_haiku_sea", "Write a haiku about the sea."),
    ("chat_three_colors", "List three colors."),
]
# What the GGUF's chat template renders for one user message with add_generation_prompt: the
# rendering through the template itself is checked against this.
CHATML_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CONVERSION_DESCRIPTION = (
    "Every tensor of the Q4_1 source GGUF (210 Q4_1, 1 Q8_0 token_embd.weight, 61 F32) "
    "dequantized to float32 with gguf.quants.dequantize (gguf PyPI package), written with "
    "gguf.GGUFWriter in the same order with the same names and shapes; all metadata keys copied "
    "unchanged except general.file_type = 0 (ALL_F32). Checked: same tensor count, names, "
    "shapes; every F32 tensor bit-equal to the dequantized source."
)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# F32 conversion
# ---------------------------------------------------------------------------------------------

def numpy_shape(t) -> tuple[int, ...]:
    # GGUF lists dims innermost first (ne0, ne1, ...); numpy wants them outermost first.
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def dequantized(t) -> np.ndarray:
    import gguf
    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(numpy_shape(t))
    return arr


def convert_to_f32(src: str, dst: str) -> None:
    import gguf
    reader = gguf.GGUFReader(src, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = dst + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    writer.data_alignment = reader.alignment
    for field in reader.fields.values():
        # GGUF.* are virtual (header) fields; general.architecture is written by GGUFWriter.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor(t.name, dequantized(t))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    verify_f32(src, tmp)
    os.replace(tmp, dst)


def spot_check_block(t, values: np.ndarray) -> None:
    """Decodes the first block of a Q4_1 / Q8_0 tensor by hand (ggml's block layouts) and
    compares it with gguf.quants.dequantize, so the conversion does not rest on one decoder."""
    import gguf
    raw = np.asarray(t.data).reshape(-1)
    if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
        # block_q4_1: f16 d, f16 m, 16 bytes of nibbles; x[j] = d*lo(qs[j]) + m, x[j+16] = d*hi + m
        d, m = raw[0:4].view(np.float16).astype(np.float32)
        qs = raw[4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4]).astype(np.float32)
        want = d * q + m
    elif t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        # block_q8_0: f16 d, 32 int8; x[j] = d*qs[j]
        d = raw[0:2].view(np.float16).astype(np.float32)[0]
        want = d * raw[2:34].view(np.int8).astype(np.float32)
    else:
        return
    got = values.reshape(-1)[:32]
    if not np.allclose(want, got, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max()))):
        raise SystemExit(f"{t.name}: first block decodes to {got[:4]}..., by hand {want[:4]}...")


def verify_f32(src: str, f32: str) -> None:
    import gguf
    a = gguf.GGUFReader(src, "r")
    b = gguf.GGUFReader(f32, "r")
    if len(a.tensors) != len(b.tensors):
        raise SystemExit(f"F32 file has {len(b.tensors)} tensors, source has {len(a.tensors)}")
    for ta, tb in zip(a.tensors, b.tensors):
        if ta.name != tb.name or ta.shape.tolist() != tb.shape.tolist():
            raise SystemExit(f"tensor mismatch: {ta.name} {ta.shape} vs {tb.name} {tb.shape}")
        if tb.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SystemExit(f"{tb.name} is {tb.tensor_type.name} in the F32 file")
        want = dequantized(ta)
        spot_check_block(ta, want)
        got = np.asarray(tb.data, dtype=np.float32).reshape(numpy_shape(tb))
        if not np.array_equal(want.view(np.uint32), got.view(np.uint32)):
            raise SystemExit(f"{tb.name}: F32 data differs from the dequantized source")
    skip = ("GGUF.", gguf.Keys.General.FILE_TYPE)
    fa = {k: (f.types, f.contents()) for k, f in a.fields.items() if not k.startswith(skip)}
    fb = {k: (f.types, f.contents()) for k, f in b.fields.items() if not k.startswith(skip)}
    if fa != fb:
        diff = sorted(set(fa) ^ set(fb)) or [k for k in fa if fa[k] != fb.get(k)]
        raise SystemExit(f"metadata differs between source and F32 file: {diff}")
    if b.fields[gguf.Keys.General.FILE_TYPE].contents() != 0:
        raise SystemExit("general.file_type is not 0 in the F32 file")
    print(f"F32 file checked: {len(b.tensors)} tensors (source {len(a.tensors)}), "
          f"{len(fb) + 1} metadata keys, data bit-equal to the dequantized source", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Reference generation
# ---------------------------------------------------------------------------------------------

def render_chat(template: str, user: str) -> str:
    import jinja2
    import jinja2.sandbox
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader())
    text = env.from_string(template).render(
        messages=[{"role": "user", "content": user}], add_generation_prompt=True)
    expected = (f"<|im_start|>system\n{CHATML_DEFAULT_SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    if text != expected:
        raise SystemExit(f"chat template rendered {text!r}, expected {expected!r}")
    return text


def load(path: str):
    import llama_cpp
    # f32 K/V cache (llama.cpp's default is f16) and no flash attention, so that attention runs
    # in f32 like pdserve's.
    return llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=N_THREADS, n_batch=N_BATCH,
                           logits_all=False, verbose=False, flash_attn=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def last_logits(llm) -> np.ndarray:
    """A copy of the raw logits of the last evaluated position. With logits_all=False,
    llama-cpp-python 0.3.x no longer copies them into llm.scores, so they are read from the
    context (llama_get_logits_ith(ctx, -1)) directly."""
    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32, copy=True)


def greedy(llm, prompt_ids: list[int], eos: int) -> dict:
    """Pure argmax decoding over the raw logits of the last position."""
    llm.reset()
    llm.eval(prompt_ids)
    ids: list[int] = []
    margins: list[float] = []
    first_top: list[list] = []
    stop = "max_tokens"
    for step in range(MAX_NEW_TOKENS):
        logits = last_logits(llm)
        order = np.argsort(-logits, kind="stable")
        tok = int(np.argmax(logits))
        assert tok == int(order[0])
        margins.append(round(float(logits[order[0]] - logits[order[1]]), 5))
        if step == 0:
            first_top = [[int(i), float(logits[i])] for i in order[:TOP_K_LOGITS]]
        ids.append(tok)
        if tok == eos:
            stop = "eos"
            break
        if step + 1 < MAX_NEW_TOKENS:
            llm.eval([tok])
    return {"greedy_ids": ids, "stop_reason": stop, "first_token_top5": first_top,
            "step_margins": margins}


def detok(llm, ids: list[int]) -> str:
    return llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


def llama_cpp_commit() -> str:
    """The vendored llama.cpp commit, as far as the installed package tells it."""
    import llama_cpp
    found = []
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    for lib in sorted(glob.glob(os.path.join(libdir, "libggml-base*.so*")) +
                      glob.glob(os.path.join(libdir, "libggml.so*"))):
        try:
            fn = ctypes.CDLL(lib).ggml_commit
            fn.restype = ctypes.c_char_p
            found.append("ggml_commit()=" + fn().decode())
            break
        except (OSError, AttributeError):
            pass
    for cfg in glob.glob(os.path.join(libdir, "cmake", "llama", "llama-config.cmake")):
        with open(cfg) as f:
            m = re.search(r"set\(LLAMA_BUILD_COMMIT\s+([^)\s]+)\)", f.read())
        if m:
            found.append("LLAMA_BUILD_COMMIT=" + m.group(1))
    return "; ".join(found) or "unknown"


def compact_json(obj, indent: int = 0) -> str:
    """json with objects indented but lists of scalars (ids, logits) kept on one line."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {compact_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        items = [pad + "  " + compact_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def run_reference(source: str, f32: str, out: str) -> None:
    import llama_cpp
    llm = load(f32)
    eos = llm.token_eos()
    if eos != 2 or llm.n_vocab() != 49152:
        raise SystemExit(f"unexpected model: eos={eos} n_vocab={llm.n_vocab()}")
    template = llm.metadata["tokenizer.chat_template"]
    prompts = [(n, t, "raw") for n, t in RAW_PROMPTS] + \
              [(n, render_chat(template, u), "chat") for n, u in CHAT_PROMPTS]

    cases = []
    for name, text, kind in prompts:
        prompt_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        t0 = time.time()
        g = greedy(llm, prompt_ids, eos)
        case = {"name": name, "kind": kind, "text": text, "prompt_ids": prompt_ids}
        case.update(g)
        case["output_text"] = detok(llm, g["greedy_ids"])
        cases.append(case)
        print(f"[{name}] {len(prompt_ids)} prompt ids, {len(g['greedy_ids'])} generated "
              f"({g['stop_reason']}, {time.time() - t0:.1f}s), min step margin "
              f"{min(g['step_margins']):.4f}\n  {case['output_text']!r}")

    # Determinism: the first case again must give the same ids.
    again = greedy(llm, cases[0]["prompt_ids"], eos)["greedy_ids"]
    if again != cases[0]["greedy_ids"]:
        raise SystemExit("llama.cpp greedy run is not reproducible on the first case")

    # Sanity: the original Q4_1 file should write similar text (quantized-domain matmuls).
    q = load(source)
    qg = greedy(q, cases[0]["prompt_ids"], eos)["greedy_ids"]
    same = next((i for i, (x, y) in enumerate(zip(qg, cases[0]["greedy_ids"])) if x != y),
                min(len(qg), len(cases[0]["greedy_ids"])))
    print(f"\nsanity, first prompt {cases[0]['text']!r}:\n"
          f"  F32 : {cases[0]['output_text']!r}\n"
          f"  Q4_1: {detok(q, qg)!r}\n"
          f"  the first {same} generated ids agree")
    del q

    doc = {
        "description": "Greedy (pure argmax) token ids of SmolLM2-135M-Instruct computed by "
                       "llama.cpp on an F32 GGUF dequantized from pdserve's default Q4_1 model; "
                       "an external reference for pdserve's f32 engine. Made by "
                       "scripts/llama-cpp-reference.sh.",
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_commit": llama_cpp_commit(),
        "llama_cpp_commit_note": "llama-cpp-python 0.3.36's changelog: vendored "
                                 "ggml-org/llama.cpp@0c1e57098 ('-dirty': built from the sdist)"
                                 if llama_cpp.__version__ == "0.3.36" else "",
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "gguf_python_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "source_model": os.path.basename(source),
        "source_model_sha256": sha256_of(source),
        "f32_model": os.path.basename(f32),
        "f32_model_sha256": sha256_of(f32),
        "f32_conversion": CONVERSION_DESCRIPTION,
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "n_threads": N_THREADS,
        "kv_cache_type": "f32 (type_k = type_v = GGML_TYPE_F32; llama.cpp's default is f16)",
        "flash_attn": False,
        "tokenization": "llm.tokenize(text.encode(), add_bos=False, special=True) (llama.cpp's "
                        "tokenizer; the GGUF's add_bos_token is false)",
        "chat_rendering": "the GGUF's tokenizer.chat_template (ChatML, SmolLM default system "
                          "message) rendered with jinja2 for one user message and "
                          "add_generation_prompt=true",
        "decoding": f"greedy: argmax of the raw last-position logits (ties to the lowest id), "
                    f"no sampler, up to {MAX_NEW_TOKENS} new tokens, stop at eos id {eos} "
                    f"(<|im_end|>), which is then included in greedy_ids",
        "fields": "step_margins[i] = best minus second-best logit at generated step i; "
                  "first_token_top5 = [id, logit] of the 5 best first tokens; output_text = "
                  "llm.detokenize(greedy_ids) (for reading only)",
        "eos_token_id": eos,
        "max_new_tokens": MAX_NEW_TOKENS,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(compact_json(doc) + "\n")
    print(f"\nwrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="the Q4_1 GGUF (pdserve's default model)")
    ap.add_argument("--f32", required=True, help="the F32 GGUF: made from --source if missing")
    ap.add_argument("--out", required=True, help="the reference JSON to write")
    args = ap.parse_args()
    if not os.path.exists(args.f32):
        t0 = time.time()
        print(f"writing the F32 GGUF {args.f32}", file=sys.stderr)
        convert_to_f32(args.source, args.f32)
        print(f"  done in {time.time() - t0:.0f}s", file=sys.stderr)
    else:
        verify_f32(args.source, args.f32)
    run_reference(args.source, args.f32, args.out)


if __name__ == "__main__":
    main()
