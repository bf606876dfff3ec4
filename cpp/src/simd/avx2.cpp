// AVX2 + FMA kernels of the SIMD layer (compiled with -mavx2 -mfma; see simd.hpp): the same
// register-blocked tile products as the AVX-512 file on 8-lane vectors, 6 rows x 16 columns per
// block (12 accumulators + 2 operands + 1 broadcast of the 16 ymm registers), the last vector of
// a block masked, V consumed in L1-sized chunks; plus a vectorised exp (Cephes polynomial) and max.
#include "simd.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace spattn::simd {

namespace {

inline int imin(int a, int b) { return a < b ? a : b; }

constexpr int kRows = 6;
constexpr int kVecs = 2;  // 16 floats

// Lanes [0, lanes) active.
inline __m256i lane_mask(int lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// S[r, c] = sum_p Q[r, p] * Kt[p, c] for R rows and NV vectors of columns (the last masked).
template <int R, int NV>
inline void qk_block(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, __m256i last) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int p = 0; p < d; ++p) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(Kt + long(p) * ldkt + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(Q + long(r) * ldq + p);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) _mm256_storeu_ps(S + long(r) * lds + 8 * v, acc[r][v]);
    _mm256_maskstore_ps(S + long(r) * lds + 8 * (NV - 1), last, acc[r][NV - 1]);
  }
}

// O[r, c] += sum_j P[r, j] * V[j, c] for R rows and NV vectors of value columns (the last masked).
template <int R, int NV>
inline void pv_block(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo, __m256i last) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) acc[r][v] = _mm256_loadu_ps(O + long(r) * ldo + 8 * v);
    acc[r][NV - 1] = _mm256_maskload_ps(O + long(r) * ldo + 8 * (NV - 1), last);
  }
  for (int j = 0; j < cols; ++j) {
    __m256 b[NV];
    for (int v = 0; v + 1 < NV; ++v) b[v] = _mm256_loadu_ps(V + long(j) * ldv + 8 * v);
    b[NV - 1] = _mm256_maskload_ps(V + long(j) * ldv + 8 * (NV - 1), last);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(P + long(r) * ldp + j);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) _mm256_storeu_ps(O + long(r) * ldo + 8 * v, acc[r][v]);
    _mm256_maskstore_ps(O + long(r) * ldo + 8 * (NV - 1), last, acc[r][NV - 1]);
  }
}

template <template <int, int> class Fn, typename... Args>
inline void dispatch(int R, int NV, Args... args) {
  switch (R * 4 + NV) {
    case 1 * 4 + 1: Fn<1, 1>::run(args...); return;
    case 1 * 4 + 2: Fn<1, 2>::run(args...); return;
    case 2 * 4 + 1: Fn<2, 1>::run(args...); return;
    case 2 * 4 + 2: Fn<2, 2>::run(args...); return;
    case 3 * 4 + 1: Fn<3, 1>::run(args...); return;
    case 3 * 4 + 2: Fn<3, 2>::run(args...); return;
    case 4 * 4 + 1: Fn<4, 1>::run(args...); return;
    case 4 * 4 + 2: Fn<4, 2>::run(args...); return;
    case 5 * 4 + 1: Fn<5, 1>::run(args...); return;
    case 5 * 4 + 2: Fn<5, 2>::run(args...); return;
    case 6 * 4 + 1: Fn<6, 1>::run(args...); return;
    default: Fn<6, 2>::run(args...); return;
  }
}

template <int R, int NV>
struct QK {
  static void run(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, __m256i m) {
    qk_block<R, NV>(Q, ldq, Kt, ldkt, d, S, lds, m);
  }
};
template <int R, int NV>
struct PV {
  static void run(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo, __m256i m) {
    pv_block<R, NV>(P, ldp, V, ldv, cols, O, ldo, m);
  }
};

void gemm_qk(const float* Q, int rows, int d, const float* Kt, int ldkt, int cols, float* S, int lds) {
  for (int c0 = 0; c0 < cols; c0 += 8 * kVecs) {
    const int width = imin(8 * kVecs, cols - c0);
    const int nv = (width + 7) / 8;
    const __m256i m = lane_mask(width - 8 * (nv - 1));
    for (int r0 = 0; r0 < rows; r0 += kRows)
      dispatch<QK>(imin(kRows, rows - r0), nv, Q + long(r0) * d, d, Kt + c0, ldkt, d, S + long(r0) * lds + c0, lds, m);
  }
}

// V consumed in chunks of kChunk rows so a 16-column V panel chunk stays in L1 while every row
// block passes over it.
constexpr int kChunk = 64;
void gemm_pv(const float* P, int rows, int ldp, const float* V, long ldv, int cols, int dv, float* O) {
  for (int c0 = 0; c0 < dv; c0 += 8 * kVecs) {
    const int width = imin(8 * kVecs, dv - c0);
    const int nv = (width + 7) / 8;
    const __m256i m = lane_mask(width - 8 * (nv - 1));
    for (int j0 = 0; j0 < cols; j0 += kChunk) {
      const int n = imin(kChunk, cols - j0);
      for (int r0 = 0; r0 < rows; r0 += kRows)
        dispatch<PV>(imin(kRows, rows - r0), nv, P + long(r0) * ldp + j0, ldp, V + long(j0) * ldv + c0, ldv, n,
                     O + long(r0) * dv + c0, dv, m);
    }
  }
}

// exp(x): Cephes expf polynomial on r = x - n ln2, times 2^n built in the exponent bits.
// x < -87.34 gives 0, x > 88 gives +inf, NaN stays NaN.
inline __m256 exp_ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.336544750553f), hi = _mm256_set1_ps(88.0f);
  __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));  // NaN in x passes through (second operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  xc = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  xc = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), xc);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(xc, xc), _mm256_add_ps(xc, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float exp_shift_sum(float* x, int n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (i < n) {
    const __m256i m = lane_mask(n - i);
    const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), s)), _mm256_castsi256_ps(m));
    _mm256_maskstore_ps(x + i, m, e);
    acc = _mm256_add_ps(acc, e);
  }
  return hsum(acc);
}

float max_of(const float* x, int n) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  __m256 acc = ninf, nan = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    acc = _mm256_max_ps(acc, v);
  }
  if (i < n) {
    const __m256i m = lane_mask(n - i);
    const __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, m), _mm256_castsi256_ps(m));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    acc = _mm256_max_ps(acc, v);
  }
  return _mm256_movemask_ps(nan) ? __builtin_nanf("") : hmax(acc);
}

const Kernels kTable{Level::AVX2, &gemm_qk, &gemm_pv, &exp_shift_sum, &max_of};

}  // namespace

const Kernels* avx2_kernels() { return &kTable; }

}  // namespace spattn::simd

#else  // the compiler cannot target AVX2

namespace spattn::simd {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace spattn::simd

#endif
