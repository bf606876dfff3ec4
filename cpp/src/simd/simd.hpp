// The SIMD layer: the few hot loops of the tile engine, compiled once per instruction set
// (simd/avx512.cpp, simd/avx2.cpp with their own compiler flags, simd/generic.cpp at the
// baseline) and chosen once at load by CPU detection (the FAISS / hnswlib route). The
// environment variable SPATTN_SIMD=avx512|avx2|generic overrides the choice (a level the CPU
// lacks falls back to the best one it has). Nothing else in spattn needs an ISA flag, so the
// default build runs on any x86-64 CPU.
//
// ODR note: the ISA files define everything in anonymous namespaces and use no std:: templates,
// so no inline function compiled with AVX-512 flags can be picked by the linker for baseline code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spattn::simd {

enum class Level : int { Generic = 0, AVX2 = 1, AVX512 = 2 };

struct Kernels {
  Level level;
  // S (rows x cols, row stride lds) = Q (rows x d, row stride d) Kt, with Kt (d x cols) stored with
  // row stride ldkt and readable up to a multiple of 16 columns.
  void (*qk)(const float* Q, int rows, int d, const float* Kt, int ldkt, int cols, float* S, int lds);
  // S (rows x cols, row stride lds) = Q (rows x d, row stride d) K^T with K (cols x d) row-major
  // (row stride ldk): the product of work items of a few query rows (decode), memory-bound.
  void (*qk_rowmajor)(const float* Q, int rows, int d, const float* K, int ldk, int cols, float* S, int lds);
  // O (rows x dv, row stride dv) += P (rows x cols, row stride ldp) V (cols x dv, row stride ldv).
  void (*pv)(const float* P, int rows, int ldp, const float* V, long ldv, int cols, int dv, float* O);
  // x[i] = exp(x[i] - shift) for i < n (NaN propagates, exp(-inf) = 0); returns the sum.
  float (*exp_shift_sum)(float* x, int n, float shift);
  // Largest of x[0..n) (n >= 1); NaN if any is NaN.
  float (*max)(const float* x, int n);
  // The online-softmax update of a tile's rows (simd/online_softmax.inl): visible prefix ncols[r]
  // of each row of S (row stride cols), running max m and sum l, accumulator rows (stride dv).
  void (*online_softmax)(float* S, int rows, int cols, const int* ncols, float* m, float* l, float* acc, int dv);
  // dst[i] = float(src[i]) for i < n, src holding IEEE fp16 (bf16 = false) or bfloat16 bits
  // (exact): half-precision K/V tiles are widened as they are read.
  void (*half_to_float)(const uint16_t* src, long n, float* dst, bool bf16);
};

// The kernels chosen at load (CPU detection, SPATTN_SIMD override).
const Kernels& kernels();

// Levels this CPU supports, best first; and the names used by SPATTN_SIMD and build_info.
std::vector<Level> available();
const char* name(Level level);

// What the first call of kernels() decided, for build_info: e.g. "avx2 (SPATTN_SIMD=avx512: not
// supported by this CPU)".
std::string choice_note();

// Per-ISA tables (defined in the ISA files; null pointers when the compiler cannot build them).
const Kernels* avx512_kernels();
const Kernels* avx2_kernels();
const Kernels* generic_kernels();

}  // namespace spattn::simd
