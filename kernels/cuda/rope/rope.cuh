// Rotary position embedding (RoPE) applied in place, one source for nvcc and for the SIMT
// emulator (simt/simt.h). x is [tokens][heads][head_dim] (q, or k with its own head count: the
// same launch with another `heads`); token t sits at positions[t]. The first rotary_dim values
// of each head rotate (partial rotary when rotary_dim < head_dim; the rest pass through): for each
// pair (a, b) and its frequency index i (0 <= i < rotary_dim / 2), with
// angle = fl32(positions[t] * inv_freq[i]), c = fl32(cos(angle) * attention_scale), likewise s:
//   a' = a * c - b * s
//   b' = b * c + a * s
// Pairs are (i, i + rotary_dim / 2) in the half-split layout (GPT-NeoX, Llama in HF) and
// (2i, 2i + 1) in the interleaved one (GPT-J, the rope part of DeepSeek's MLA). The angle is
// rounded to fp32 as transformers and the CPU backend compute it: at long positions that is up
// to half an ulp of the angle away from the exact one, but it is the rotation the checkpoints
// were trained and evaluated with, and the CUDA and CPU backends then agree.
// The inverse frequencies (plain, llama3- or YaRN-scaled) and the attention scale come from the
// host functions below, shared by the launcher's callers and the tests' reference. fp32 math
// whatever the storage type (float or __nv_bfloat16), a single rounding per output.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

enum class RopeLayout { kHalfSplit, kInterleaved };

// ---- Host: the inverse frequencies, computed in double and rounded once to float. ----

struct RopeFrequencies {
  std::vector<float> inv_freq;   // head_dim / 2 entries, the kernel's inv_freq.
  float attention_scale = 1.0f;  // Multiplies cos and sin (YaRN's mscale); 1 otherwise.
};

// theta^(-2i / head_dim), in double: the unscaled frequencies every scheme starts from.
inline std::vector<double> BaseInverseFrequencies(int head_dim, double theta) {
  std::vector<double> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = std::pow(theta, -2.0 * i / head_dim);
  }
  return inv_freq;
}

inline RopeFrequencies ToRopeFrequencies(const std::vector<double>& inv_freq,
                                         double attention_scale) {
  RopeFrequencies out;
  out.inv_freq.assign(inv_freq.begin(), inv_freq.end());
  out.attention_scale = static_cast<float>(attention_scale);
  return out;
}

inline RopeFrequencies DefaultRopeFrequencies(int head_dim, double theta) {
  return ToRopeFrequencies(BaseInverseFrequencies(head_dim, theta), 1.0);
}

// rope_scaling {"rope_type": "llama3", ...} (Llama 3.1+), as HF's _compute_llama3_parameters:
// wavelengths longer than original_max / low_freq_factor are divided by `factor`, shorter than
// original_max / high_freq_factor kept, and those between interpolated smoothly.
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192.0;
};

inline RopeFrequencies Llama3RopeFrequencies(int head_dim, double theta,
                                             const Llama3RopeScaling& scaling) {
  std::vector<double> inv_freq = BaseInverseFrequencies(head_dim, theta);
  const double low_freq_wavelen =
      scaling.original_max_position_embeddings / scaling.low_freq_factor;
  const double high_freq_wavelen =
      scaling.original_max_position_embeddings / scaling.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * M_PI / f;
    if (wavelen > low_freq_wavelen) {
      f /= scaling.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth =
          (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) /
          (scaling.high_freq_factor - scaling.low_freq_factor);
      f = (1.0 - smooth) * f / scaling.factor + smooth * f;
    }
  }
  return ToRopeFrequencies(inv_freq, 1.0);
}

// rope_scaling {"type": "yarn", ...} as HF's DeepSeek-V2/V3 DeepseekV2YarnRotaryEmbedding:
// dimensions that rotate more than beta_fast times over the original context keep their
// frequency (extrapolation), fewer than beta_slow times are divided by `factor`
// (interpolation), with a linear ramp between; cos and sin are multiplied by
// mscale(factor, mscale) / mscale(factor, mscale_all_dim), mscale(s, m) = 0.1 m ln(s) + 1 for
// s > 1. mscale_all_dim = 0 makes the divisor 1: HF's generic YaRN attention factor
// 0.1 ln(factor) + 1 when mscale = 1. (DeepSeek-V3 sets mscale = mscale_all_dim = 1: scale 1,
// the softmax scale carrying mscale^2 instead.)
struct YarnRopeScaling {
  double factor = 40.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double original_max_position_embeddings = 4096.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

inline double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

inline RopeFrequencies YarnRopeFrequencies(int head_dim, double theta,
                                           const YarnRopeScaling& scaling) {
  // The dimension index whose frequency makes `rotations` turns over the original context.
  const auto correction_dim = [&](double rotations) {
    return head_dim *
           std::log(scaling.original_max_position_embeddings / (rotations * 2.0 * M_PI)) /
           (2.0 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(scaling.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(scaling.beta_slow)), head_dim - 1.0);
  if (low == high) high += 0.001;  // As HF: no division by zero in the ramp.
  std::vector<double> inv_freq = BaseInverseFrequencies(head_dim, theta);
  for (int i = 0; i < head_dim / 2; ++i) {
    // extrapolation_weight is HF's inv_freq_mask: 1 keeps the frequency, 0 interpolates.
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double extrapolation_weight = 1.0 - ramp;
    inv_freq[i] = inv_freq[i] / scaling.factor * (1.0 - extrapolation_weight) +
                  inv_freq[i] * extrapolation_weight;
  }
  return ToRopeFrequencies(inv_freq, YarnMscale(scaling.factor, scaling.mscale) /
                                         YarnMscale(scaling.factor, scaling.mscale_all_dim));
}

// ---- Device. ----

// Grid-stride over tokens * heads * rotary_dim / 2 rotation pairs, one pair per iteration: every
// element is read and written by exactly one thread, so the in-place update needs no barrier.
template <typename T, RopeLayout kLayout>
__global__ void RopeKernel(T* __restrict__ x, const int* __restrict__ positions,
                           const float* __restrict__ inv_freq, int tokens, int heads, int head_dim,
                           int rotary_dim, float attention_scale) {
  const int half = rotary_dim / 2;
  const long long total = static_cast<long long>(tokens) * heads * half;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const long long head_row = idx / half;  // token * heads + head
    const int i = static_cast<int>(idx - head_row * half);
    const int token = static_cast<int>(head_row / heads);
    T* head_x = x + head_row * head_dim;
    // sinf/cosf, not the __sinf/__cosf intrinsics: full range reduction at large angles.
    const float angle = static_cast<float>(positions[token]) * inv_freq[i];
    const float c = cosf(angle) * attention_scale;
    const float s = sinf(angle) * attention_scale;
    const int ia = kLayout == RopeLayout::kHalfSplit ? i : 2 * i;
    const int ib = kLayout == RopeLayout::kHalfSplit ? i + half : 2 * i + 1;
    const float a = ToFloat(head_x[ia]);
    const float b = ToFloat(head_x[ib]);
    head_x[ia] = FromFloat<T>(a * c - b * s);
    head_x[ib] = FromFloat<T>(b * c + a * s);
  }
}

// Rotates the first rotary_dim values of each head of x [tokens][heads][head_dim] in place.
// positions: `tokens` entries; inv_freq: rotary_dim / 2 entries (RopeFrequencies::inv_freq of
// rotary_dim), all device pointers (host pointers in the emulator). rotary_dim even and at most
// head_dim; block_threads at most 1024; max_blocks caps the grid (the loop strides over the
// rest), <= 0 meaning one pair per thread.
template <typename T>
void LaunchRope(T* x, const int* positions, const float* inv_freq, int tokens, int heads,
                int head_dim, int rotary_dim, RopeLayout layout, float attention_scale,
                int block_threads, int max_blocks, cudaStream_t stream) {
  const long long total = static_cast<long long>(tokens) * heads * (rotary_dim / 2);
  if (total == 0) return;  // A zero-block grid is a launch error on a GPU.
  long long blocks = (total + block_threads - 1) / block_threads;
  if (max_blocks > 0 && blocks > max_blocks) blocks = max_blocks;
  if (blocks > 0x7fffffffLL) blocks = 0x7fffffffLL;
  // The layout is a template parameter so that the index arithmetic has no runtime branch.
  auto* kernel = layout == RopeLayout::kHalfSplit ? &RopeKernel<T, RopeLayout::kHalfSplit>
                                                  : &RopeKernel<T, RopeLayout::kInterleaved>;
  PDSERVE_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(block_threads), 0, stream)
  (x, positions, inv_freq, tokens, heads, head_dim, rotary_dim, attention_scale);
}

}  // namespace pdserve::cuda
