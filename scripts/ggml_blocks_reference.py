#!/usr/bin/env python3
"""Reference decodes of quantized ggml blocks for pdserve's dequantization tests, computed with
gguf-py (PyPI `gguf`, llama.cpp's own Python package: gguf.quants.dequantize), an implementation
independent of pdserve's.

Writes tests/data/ggml_blocks_reference.json (committed): for each quantized type that pdserve
unpacks (gguf/ggml_blocks.h), BLOCKS random blocks and gguf-py's decode of each. A block is random
bytes except its fp16 scale fields (d, and m or dmin where the type has one), which are set to
finite values of magnitude 1e-3..1 (log-uniform); d is positive in block 0, negative in block 1
and of random sign after that. Blocks are hex strings of their bytes; values are the IEEE-754 f32
bits of each element as 8 hex digits ("%08x" of the uint32), separated by spaces, so the tests
compare bit for bit. The seed is fixed, so a rerun with the same gguf and numpy versions (recorded
in the JSON) gives the same file.

Usage:
  python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf numpy &&
  /tmp/v/bin/python scripts/ggml_blocks_reference.py
"""
import importlib.metadata
import json
import os

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "ggml_blocks_reference.json")
BLOCKS = 3
SEED = 20261207

# Byte offsets of each type's fp16 scale fields; the first is d.
SCALE_FIELDS = {
    "Q8_0": [0],
    "Q4_0": [0],
    "Q4_1": [0, 2],  # d, m
    "Q5_0": [0],
    "Q5_1": [0, 2],  # d, m
    "Q4_K": [0, 2],  # d, dmin
    "Q5_K": [0, 2],  # d, dmin
    "Q6_K": [208],  # d, after ql[128], qh[64], scales[16]
}


def random_half(rng, sign):
    magnitude = 10.0 ** rng.uniform(-3.0, 0.0)
    return np.float16(sign * magnitude)


def make_block(rng, name, block_bytes, index):
    block = rng.integers(0, 256, size=block_bytes, dtype=np.uint8)
    for k, offset in enumerate(SCALE_FIELDS[name]):
        if k == 0 and index < 2:
            sign = 1.0 if index == 0 else -1.0
        else:
            sign = rng.choice([1.0, -1.0])
        half = random_half(rng, sign)
        assert np.isfinite(half) and half != 0
        block[offset:offset + 2] = np.frombuffer(half.tobytes(), dtype=np.uint8)
    return block


def main():
    rng = np.random.default_rng(SEED)
    types = {}
    for name in SCALE_FIELDS:
        qtype = GGMLQuantizationType[name]
        block_size, block_bytes = GGML_QUANT_SIZES[qtype]
        blocks = []
        for index in range(BLOCKS):
            block = make_block(rng, name, block_bytes, index)
            values = dequantize(block, qtype).astype(np.float32, copy=False).reshape(-1)
            assert values.shape == (block_size,), (name, values.shape)
            blocks.append({
                "bytes": block.tobytes().hex(),
                "values": " ".join(f"{v:08x}" for v in values.view(np.uint32)),
            })
        types[name] = {"block_size": block_size, "block_bytes": block_bytes, "blocks": blocks}
    doc = {
        "generator": "scripts/ggml_blocks_reference.py",
        "gguf_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "seed": SEED,
        "types": types,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
