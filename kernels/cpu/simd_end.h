// Closes the region that kernels/cpu/simd.h opened: code after this compiles for the baseline.
#if PDSERVE_SIMD_LEVEL >= 3
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif
