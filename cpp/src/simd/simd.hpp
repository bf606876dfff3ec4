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
  // S (rows x cols, int32, row stride lds) = Q K^T, exact, for int4 values held one per byte:
  // Qu = q + 8 (q in [-8, 7], so Qu in [0, 15], unsigned), rows of dq bytes (row stride dq, dq a
  // multiple of 4); K signed int8 in [-8, 7], packed in groups of 4
  // dims, K[j][4g + t] at Kp[(g * ldk + j) * 4 + t], ldk a multiple of 16 and >= cols (the packed
  // columns up to the next multiple of 16 are read). The integer estimate of low-bit methods
  // (SALE); AVX-512 uses VNNI (vpdpbusd) when the CPU has it, else vpmaddubsw + vpmaddwd, AVX2
  // the latter on 256-bit vectors, generic a scalar loop.
  void (*qk_i4)(const uint8_t* Qu, int rows, int dq, const int8_t* Kp, int ldk, int cols, int32_t* S, int lds);
};

using QkI4 = void (*)(const uint8_t* Qu, int rows, int dq, const int8_t* Kp, int ldk, int cols, int32_t* S, int lds);

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

// Every int4 product variant this CPU can run, best first, with its name (e.g. "avx512-vnni",
// "avx512", "avx2", "generic"): the tests check each against a scalar loop, whatever the choice.
struct QkI4Variant {
  const char* name;
  QkI4 fn;
};
std::vector<QkI4Variant> qk_i4_variants();
// Whether this CPU and build have AVX-512 VNNI (the avx512 table then uses it for qk_i4).
bool avx512_vnni();
// The AVX-512 int4 product without VNNI (null when the build cannot target AVX-512).
QkI4 avx512_qk_i4_madd();

}  // namespace spattn::simd
