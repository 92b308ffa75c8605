// Invariant checks shared by the kernel implementations.
#pragma once

#include <cstdio>
#include <cstdlib>

// Broken caller invariants are programming errors, not runtime conditions: the engine validates
// everything that comes from outside before it reaches a kernel.
#define PDSERVE_KERNEL_CHECK(cond)                                                             \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "%s:%d: kernel invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)
