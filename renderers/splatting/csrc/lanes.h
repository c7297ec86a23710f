// Vector lanes of the CPU splatting kernels (GCC vector extensions): 8 floats with AVX (the build
// adds -mavx2 -mfma where the CPU has them, `renderers.cpp`), else 4. Masks are vi: -1 true, 0 false.
#pragma once

#include <cstdint>

#ifdef __AVX__
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
