// Register-blocked AVX-512 micro-kernels for the two tile products of the online-softmax update
// (PERF.md, "GEMM inside the tile"): S = Q K^T against a K tile packed transposed once per tile,
// and O += P V reading V rows in place. 6 rows x 64 columns per block (24 accumulators), the
// last 16-lane vector of a block masked. Eigen's small-GEMM path repacks both operands on every
// call, which left the dense kernel near 140 GFLOP/s; these keep the operands in registers.
// Built only when the compiler targets AVX-512 (SPATTN_NATIVE on such a machine); otherwise
// tile.hpp uses Eigen.
#pragma once

#if defined(__AVX512F__)
#define SPATTN_HAVE_MICROKERNEL 1
#include <immintrin.h>

#include <algorithm>

namespace spattn::detail::mk {

constexpr int kRows = 6;
constexpr int kVecs = 4;  // 64 floats

inline __mmask16 lane_mask(int lanes) { return lanes >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << lanes) - 1u); }

// S[r, c] = sum_p Q[r, p] * Kt[p, c] for R rows and NV vectors of columns.
template <int R, int NV>
inline void qk_block(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, __mmask16 last) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int p = 0; p < d; ++p) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(Kt + size_t(p) * ldkt + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(Q[size_t(r) * ldq + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) _mm512_storeu_ps(S + size_t(r) * lds + 16 * v, acc[r][v]);
    _mm512_mask_storeu_ps(S + size_t(r) * lds + 16 * (NV - 1), last, acc[r][NV - 1]);
  }
}

// O[r, c] += sum_j P[r, j] * V[j, c] for R rows and NV vectors of value columns.
template <int R, int NV>
inline void pv_block(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo, __mmask16 last) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) acc[r][v] = _mm512_loadu_ps(O + size_t(r) * ldo + 16 * v);
    acc[r][NV - 1] = _mm512_maskz_loadu_ps(last, O + size_t(r) * ldo + 16 * (NV - 1));
  }
  for (int j = 0; j < cols; ++j) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v + 1 < NV; ++v) b[v] = _mm512_loadu_ps(V + size_t(j) * ldv + 16 * v);
    b[NV - 1] = _mm512_maskz_loadu_ps(last, V + size_t(j) * ldv + 16 * (NV - 1));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(P[size_t(r) * ldp + j]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) _mm512_storeu_ps(O + size_t(r) * ldo + 16 * v, acc[r][v]);
    _mm512_mask_storeu_ps(O + size_t(r) * ldo + 16 * (NV - 1), last, acc[r][NV - 1]);
  }
}

template <template <int, int> class Fn, typename... Args>
inline void dispatch(int R, int NV, Args... args) {
#define SPATTN_MK_CASE(r)                          \
  case r:                                          \
    switch (NV) {                                  \
      case 1: Fn<r, 1>::run(args...); return;      \
      case 2: Fn<r, 2>::run(args...); return;      \
      case 3: Fn<r, 3>::run(args...); return;      \
      default: Fn<r, 4>::run(args...); return;     \
    }
  switch (R) {
    SPATTN_MK_CASE(1)
    SPATTN_MK_CASE(2)
    SPATTN_MK_CASE(3)
    SPATTN_MK_CASE(4)
    SPATTN_MK_CASE(5)
    default:
      switch (NV) {
        case 1: Fn<6, 1>::run(args...); return;
        case 2: Fn<6, 2>::run(args...); return;
        case 3: Fn<6, 3>::run(args...); return;
        default: Fn<6, 4>::run(args...); return;
      }
  }
#undef SPATTN_MK_CASE
}

template <int R, int NV>
struct QK {
  static void run(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, __mmask16 m) {
    qk_block<R, NV>(Q, ldq, Kt, ldkt, d, S, lds, m);
  }
};
template <int R, int NV>
struct PV {
  static void run(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo, __mmask16 m) {
    pv_block<R, NV>(P, ldp, V, ldv, cols, O, ldo, m);
  }
};

// S (rows x cols, stride lds) = Q (rows x d) K^T from the packed Kt.
inline void gemm_qk(const float* Q, int rows, int d, const float* Kt, int ldkt, int cols, float* S, int lds) {
  for (int c0 = 0; c0 < cols; c0 += 16 * kVecs) {
    const int width = std::min(16 * kVecs, cols - c0);
    const int nv = (width + 15) / 16;
    const __mmask16 m = lane_mask(width - 16 * (nv - 1));
    for (int r0 = 0; r0 < rows; r0 += kRows)
      dispatch<QK>(std::min(kRows, rows - r0), nv, Q + size_t(r0) * d, d, Kt + c0, ldkt, d,
                   S + size_t(r0) * lds + c0, lds, m);
  }
}

// O (rows x dv, stride dv) += P (rows x cols, stride ldp) V (cols x dv, stride ldv).
// V is consumed in chunks of kChunk rows so a 64-column V panel chunk (16 KiB) stays in L1
// while every row block passes over it; without chunking the whole panel is re-read from L2
// by each row block and the product runs at half speed inside the attention tile.
constexpr int kChunk = 64;
inline void gemm_pv(const float* P, int rows, int ldp, const float* V, long ldv, int cols, int dv, float* O) {
  for (int c0 = 0; c0 < dv; c0 += 16 * kVecs) {
    const int width = std::min(16 * kVecs, dv - c0);
    const int nv = (width + 15) / 16;
    const __mmask16 m = lane_mask(width - 16 * (nv - 1));
    for (int j0 = 0; j0 < cols; j0 += kChunk) {
      const int n = std::min(kChunk, cols - j0);
      for (int r0 = 0; r0 < rows; r0 += kRows)
        dispatch<PV>(std::min(kRows, rows - r0), nv, P + size_t(r0) * ldp + j0, ldp, V + size_t(j0) * ldv + c0,
                     ldv, n, O + size_t(r0) * dv + c0, dv, m);
    }
  }
}

}  // namespace spattn::detail::mk
#endif
