// Unpacking quantized ggml blocks into groups of unsigned integer codes with one f32 scale d and
// one f32 offset m per group, so that element i of group g is d[g] * code[i] + m[g]: the form
// in which pdserve keeps quantized weights in memory, with ggml's value for every element.
//
// Block layouts (d, dmin and m are IEEE fp16, qh a little-endian u32 in Q5_0/Q5_1):
//   Q8_0  34 B: d, int8 q[32]                             code = q + 128, m = -128 d
//   Q4_0  18 B: d, qs[16]                                 code = nibble(i), m = -8 d
//   Q4_1  20 B: d, m, qs[16]                              code = nibble(i)
//   Q5_0  22 B: d, qh, qs[16]                             code = nibble(i) + 16 bit i of qh,
//                                                         m = -16 d
//   Q5_1  24 B: d, m, qh, qs[16]                          as Q5_0, with the block's m
//   Q4_K 144 B: d, dmin, scales[12], qs[128]              8 groups of 32: d = d sc, m = -dmin mn
//   Q5_K 176 B: d, dmin, scales[12], qh[32], qs[128]      as Q4_K, codes of 5 bits
//   Q6_K 210 B: ql[128], qh[64], int8 sc[16], d           16 groups of 16: d = d sc, m = -32 d sc
// where nibble(i) is the low 4 bits of qs[i] for i < 16 and the high 4 bits of qs[i - 16]
// otherwise (ggml's value: (code - 8) * d for Q4_0, d * code + m for Q4_1, and so on). The K
// formats' 6-bit (sc, mn) pairs and the bit positions of their codes are ggml's
// (get_scale_min_k4, dequantize_row_q4_K/q5_K/q6_K in ggml-quants.c); ggml_blocks.cc spells them
// out.
//
// Exactness: ggml computes the affine formats (Q4_1, Q5_1, Q4_K, Q5_K) as d * code + m (the K
// formats as d * code - dmin * mn, the same operation), and the symmetric ones (Q8_0, Q4_0, Q5_0,
// Q6_K) as (code - code_offset) * d. For the latter, d * code and m are exact in f32 (at most 24
// significant bits: an 11-bit fp16 d times an 8-bit code, or Q6_K's 18-bit d * sc times a 6-bit
// code), so d * code + m is ggml's value bit for bit too, with two exceptions that IEEE
// arithmetic forces and no choice of (d, m) avoids: where ggml's value is a zero, d * code + m is
// +0 where ggml may give -0 (a negative or zero d), and an infinite d gives NaN instead of +-inf.
// Neither matters to a dot product (and infinite scales do not occur in real files);
// DequantizeToF32 (gguf/dequantize.h) uses code_offset to reproduce ggml exactly.
//
// Stateless functions; safe to call from any thread.
#pragma once

#include <cstdint>
#include <optional>

#include "gguf/gguf_file.h"

namespace pdserve {

// The most elements and groups one block of a type below holds (a K super-block).
inline constexpr int kMaxGgmlBlockElements = 256;
inline constexpr int kMaxGgmlBlockGroups = 16;

// How a quantized ggml type unpacks: groups of `group_size` consecutive elements (32, or 16 for
// Q6_K), each with its own scale and offset; codes fit in `code_bits` bits (4 for
// Q4_0/Q4_1/Q4_K, 8 for every other: 5- and 6-bit codes are stored one per byte).
// `code_offset` is nonzero for the symmetric formats, whose value is (code - code_offset) * d
// and whose m is always -code_offset * d (Q8_0: 128, Q4_0: 8, Q5_0: 16, Q6_K: 32), so a kernel
// may use signed codes and skip m; it is 0 for the formats with a free offset m.
struct GgmlGroups {
  int group_size;
  int code_bits;
  int code_offset;
};

// nullopt for types this does not unpack (the float types and every quantized type other than
// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K).
std::optional<GgmlGroups> GgmlGroupsOf(GgmlType type);

// Unpacks ONE block of `type` (TraitsOf(type).block_bytes bytes at `block`, no alignment needed)
// into TraitsOf(type).block_size codes and block_size / group_size (d, m) pairs such that, for
// element i of group g = i / group_size, d[g] * codes[i] + m[g] computed in float as a multiply
// then an add (no FMA) is ggml's dequantized value (see "Exactness" above for the sign of zero).
// Every code is below 2^code_bits. Precondition: GgmlGroupsOf(type) has a value (aborts
// otherwise).
void UnpackGgmlBlock(GgmlType type, const uint8_t* block, uint8_t* codes, float* d, float* m);

}  // namespace pdserve
