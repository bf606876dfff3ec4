// AVX2 + FMA kernels of the SIMD layer (compiled with -mavx2 -mfma; see simd.hpp): the same
// register-blocked tile products as the AVX-512 file on 8-lane vectors, 6 rows x 16 columns per
// block (12 accumulators + 2 operands + 1 broadcast of the 16 ymm registers), the last vector of
// a block masked, V consumed in L1-sized chunks; plus a vectorised exp (Cephes polynomial) and max.
#include "simd.hpp"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstring>

namespace spattn::simd {

namespace {

inline int imin(int a, int b) { return a < b ? a : b; }

#ifndef SPATTN_AVX2_QK_ROWS
#define SPATTN_AVX2_QK_ROWS 6
#define SPATTN_AVX2_QK_VECS 2
#define SPATTN_AVX2_PV_ROWS 6
#define SPATTN_AVX2_PV_VECS 2
#endif
constexpr int kQkRows = SPATTN_AVX2_QK_ROWS, kQkVecs = SPATTN_AVX2_QK_VECS;
constexpr int kPvRows = SPATTN_AVX2_PV_ROWS, kPvVecs = SPATTN_AVX2_PV_VECS;

// Lanes [0, lanes) active.
inline __m256i lane_mask(int lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// S[r, c] = sum_p Q[r, p] * Kt[p, c] for R rows and NV vectors of columns (the last masked).
// Pointers advance by increments (no index products in the loop), so GCC keeps the 12
// accumulators of the 6 x 16 block in registers.
template <int R, int NV>
inline void qk_block(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, int last_lanes) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  const float* kp = Kt;
  const float* qp = Q;
  for (int p = 0; p < d; ++p, kp += ldkt, ++qp) {
    __m256 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(kp + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(qp + long(r) * ldq);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  const __m256i last = lane_mask(last_lanes);  // built after the loop: no register held during it
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) _mm256_storeu_ps(S + long(r) * lds + 8 * v, acc[r][v]);
    _mm256_maskstore_ps(S + long(r) * lds + 8 * (NV - 1), last, acc[r][NV - 1]);
  }
}

// O[r, c] += sum_j P[r, j] * V[j, c] for R rows and NV vectors of value columns. The last vector
// is masked only when the value width is not a multiple of 8 (`last_lanes` < 8): a mask register
// held through the loop would push the 12 accumulators out of the 16 ymm registers.
template <int R, int NV, bool Masked>
inline void pv_block_impl(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo,
                          int last_lanes) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) acc[r][v] = _mm256_loadu_ps(O + long(r) * ldo + 8 * v);
    acc[r][NV - 1] = Masked ? _mm256_maskload_ps(O + long(r) * ldo + 8 * (NV - 1), lane_mask(last_lanes))
                            : _mm256_loadu_ps(O + long(r) * ldo + 8 * (NV - 1));
  }
  const float* vp = V;
  const float* pp = P;
  for (int j = 0; j < cols; ++j, vp += ldv, ++pp) {
    __m256 b[NV];
    for (int v = 0; v + 1 < NV; ++v) b[v] = _mm256_loadu_ps(vp + 8 * v);
    b[NV - 1] = Masked ? _mm256_maskload_ps(vp + 8 * (NV - 1), lane_mask(last_lanes)) : _mm256_loadu_ps(vp + 8 * (NV - 1));
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(pp + long(r) * ldp);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  const __m256i last = lane_mask(last_lanes);
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v + 1 < NV; ++v) _mm256_storeu_ps(O + long(r) * ldo + 8 * v, acc[r][v]);
    _mm256_maskstore_ps(O + long(r) * ldo + 8 * (NV - 1), last, acc[r][NV - 1]);
  }
}

template <int R, int NV>
inline void pv_block(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo, int last_lanes) {
  if (last_lanes == 8) pv_block_impl<R, NV, false>(P, ldp, V, ldv, cols, O, ldo, 8);
  else pv_block_impl<R, NV, true>(P, ldp, V, ldv, cols, O, ldo, last_lanes);
}

template <template <int, int> class Fn, typename... Args>
inline void dispatch(int R, int NV, Args... args) {
#define SPATTN_AVX2_CASE(r)                      \
  case r:                                        \
    switch (NV) {                                \
      case 1: Fn<r, 1>::run(args...); return;    \
      case 2: Fn<r, 2>::run(args...); return;    \
      case 3: Fn<r, 3>::run(args...); return;    \
      default: Fn<r, 4>::run(args...); return;   \
    }
  switch (R) {
    SPATTN_AVX2_CASE(1)
    SPATTN_AVX2_CASE(2)
    SPATTN_AVX2_CASE(3)
    SPATTN_AVX2_CASE(4)
    SPATTN_AVX2_CASE(5)
    default:
      switch (NV) {
        case 1: Fn<6, 1>::run(args...); return;
        case 2: Fn<6, 2>::run(args...); return;
        case 3: Fn<6, 3>::run(args...); return;
        default: Fn<6, 4>::run(args...); return;
      }
  }
#undef SPATTN_AVX2_CASE
}

// The full 6 x 16 blocks with the 12 accumulators as named variables: GCC keeps an array of
// vectors on the stack here (a store per FMA), which halves the throughput.
#define SPATTN_ACC6x2(X) X(0) X(1) X(2) X(3) X(4) X(5)

inline void qk_6x2(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, int last_lanes) {
#define DECL(r) __m256 a##r##0 = _mm256_setzero_ps(), a##r##1 = _mm256_setzero_ps();
  SPATTN_ACC6x2(DECL)
#undef DECL
  const float* kp = Kt;
  const float* qp = Q;
  for (int p = 0; p < d; ++p, kp += ldkt, ++qp) {
    const __m256 b0 = _mm256_loadu_ps(kp), b1 = _mm256_loadu_ps(kp + 8);
#define STEP(r)                                                  \
  {                                                              \
    const __m256 x = _mm256_broadcast_ss(qp + long(r) * ldq);   \
    a##r##0 = _mm256_fmadd_ps(x, b0, a##r##0);                   \
    a##r##1 = _mm256_fmadd_ps(x, b1, a##r##1);                   \
  }
    SPATTN_ACC6x2(STEP)
#undef STEP
  }
  const __m256i last = lane_mask(last_lanes);
#define STORE(r)                                                 \
  _mm256_storeu_ps(S + long(r) * lds, a##r##0);                  \
  _mm256_maskstore_ps(S + long(r) * lds + 8, last, a##r##1);
  SPATTN_ACC6x2(STORE)
#undef STORE
}

inline void pv_6x2_full(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo) {
#define DECL(r) __m256 a##r##0 = _mm256_loadu_ps(O + long(r) * ldo), a##r##1 = _mm256_loadu_ps(O + long(r) * ldo + 8);
  SPATTN_ACC6x2(DECL)
#undef DECL
  const float* vp = V;
  const float* pp = P;
  for (int j = 0; j < cols; ++j, vp += ldv, ++pp) {
    const __m256 b0 = _mm256_loadu_ps(vp), b1 = _mm256_loadu_ps(vp + 8);
#define STEP(r)                                                  \
  {                                                              \
    const __m256 x = _mm256_broadcast_ss(pp + long(r) * ldp);   \
    a##r##0 = _mm256_fmadd_ps(x, b0, a##r##0);                   \
    a##r##1 = _mm256_fmadd_ps(x, b1, a##r##1);                   \
  }
    SPATTN_ACC6x2(STEP)
#undef STEP
  }
#define STORE(r)                                                 \
  _mm256_storeu_ps(O + long(r) * ldo, a##r##0);                  \
  _mm256_storeu_ps(O + long(r) * ldo + 8, a##r##1);
  SPATTN_ACC6x2(STORE)
#undef STORE
}

template <int R, int NV>
struct QK {
  static void run(const float* Q, int ldq, const float* Kt, int ldkt, int d, float* S, int lds, int m) {
    qk_block<R, NV>(Q, ldq, Kt, ldkt, d, S, lds, m);
  }
};
template <int R, int NV>
struct PV {
  static void run(const float* P, int ldp, const float* V, long ldv, int cols, float* O, int ldo, int m) {
    pv_block<R, NV>(P, ldp, V, ldv, cols, O, ldo, m);
  }
};

void gemm_qk(const float* Q, int rows, int d, const float* Kt, int ldkt, int cols, float* S, int lds) {
  for (int c0 = 0; c0 < cols; c0 += 8 * kQkVecs) {
    const int width = imin(8 * kQkVecs, cols - c0);
    const int nv = (width + 7) / 8;
    const int m = width - 8 * (nv - 1);
    for (int r0 = 0; r0 < rows; r0 += kQkRows) {
      if (kQkRows == 6 && kQkVecs == 2 && rows - r0 >= 6 && nv == 2)
        qk_6x2(Q + long(r0) * d, d, Kt + c0, ldkt, d, S + long(r0) * lds + c0, lds, m);
      else
        dispatch<QK>(imin(kQkRows, rows - r0), nv, Q + long(r0) * d, d, Kt + c0, ldkt, d, S + long(r0) * lds + c0, lds, m);
    }
  }
}

// V consumed in chunks of kChunk rows so a V panel chunk stays in L1 while every row block
// passes over it.
constexpr int kChunk = 64;
void gemm_pv(const float* P, int rows, int ldp, const float* V, long ldv, int cols, int dv, float* O) {
  for (int c0 = 0; c0 < dv; c0 += 8 * kPvVecs) {
    const int width = imin(8 * kPvVecs, dv - c0);
    const int nv = (width + 7) / 8;
    const int m = width - 8 * (nv - 1);
    for (int j0 = 0; j0 < cols; j0 += kChunk) {
      const int n = imin(kChunk, cols - j0);
      for (int r0 = 0; r0 < rows; r0 += kPvRows) {
        if (kPvRows == 6 && kPvVecs == 2 && rows - r0 >= 6 && nv == 2 && m == 8)
          pv_6x2_full(P + long(r0) * ldp + j0, ldp, V + long(j0) * ldv + c0, ldv, n, O + long(r0) * dv + c0, dv);
        else
          dispatch<PV>(imin(kPvRows, rows - r0), nv, P + long(r0) * ldp + j0, ldp, V + long(j0) * ldv + c0, ldv, n,
                       O + long(r0) * dv + c0, dv, m);
      }
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

// Row-major K (decode): each key row is read once per group of 4 query rows, dot products by
// FMAs over 8-lane chunks and one horizontal sum per (row, key).
void gemm_qk_rowmajor(const float* Q, int rows, int d, const float* K, int ldk, int cols, float* S, int lds) {
  const int full = d / 8, rest = d % 8;
  const __m256i tail = lane_mask(rest);
  for (int c = 0; c < cols; ++c) {
    const float* kr = K + long(c) * ldk;
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const int nr = imin(4, rows - r0);
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
             acc3 = _mm256_setzero_ps();
      const float* q0 = Q + long(r0) * d;
      for (int v = 0; v < full; ++v) {
        const __m256 kv = _mm256_loadu_ps(kr + 8 * v);
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 8 * v), kv, acc0);
        if (nr > 1) acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d + 8 * v), kv, acc1);
        if (nr > 2) acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 2 * d + 8 * v), kv, acc2);
        if (nr > 3) acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 3 * d + 8 * v), kv, acc3);
      }
      if (rest) {
        const __m256 kv = _mm256_maskload_ps(kr + 8 * full, tail);
        acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(q0 + 8 * full, tail), kv, acc0);
        if (nr > 1) acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(q0 + d + 8 * full, tail), kv, acc1);
        if (nr > 2) acc2 = _mm256_fmadd_ps(_mm256_maskload_ps(q0 + 2 * d + 8 * full, tail), kv, acc2);
        if (nr > 3) acc3 = _mm256_fmadd_ps(_mm256_maskload_ps(q0 + 3 * d + 8 * full, tail), kv, acc3);
      }
      float* s = S + long(r0) * lds + c;
      s[0] = hsum(acc0);
      if (nr > 1) s[lds] = hsum(acc1);
      if (nr > 2) s[2 * long(lds)] = hsum(acc2);
      if (nr > 3) s[3 * long(lds)] = hsum(acc3);
    }
  }
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

void scale_row(float* x, int n, float alpha) {
  const __m256 a = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(a, _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] *= alpha;
}

#include "online_softmax.inl"
#include "half.inl"

void half_to_float(const uint16_t* src, long n, float* dst, bool bf16) {
  long i = 0;
  if (bf16) {
    for (; i + 8 <= n; i += 8) {
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  half_to_float_scalar(src + i, n - i, dst + i, bf16);
}

// int4 x int4 products held in int8 (simd.hpp, qk_i4), K packed in groups of 4 dims (8 columns
// x 4 dims per 32-byte vector): the queries come biased, q + 8 in [0, 15] (unsigned), so
// vpmaddubsw takes them against the signed k without saturating (|pair| <= 2 * 15 * 8), vpmaddwd sums the pairs into
// int32 column lanes, and 8 * sum(k) is subtracted at the end. 4 rows x 16 columns per block.
template <int R>
inline void qk_i4_rows(const uint8_t* Q, int nr, int dq, const int8_t* Kp, int ldk, int j0, bool two, __m256i ks0,
                       __m256i ks1, int rem, int32_t* S, int lds) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  const int rows = R > 0 ? R : nr;
  __m256i acc0[4], acc1[4];
  for (int r = 0; r < 4; ++r) acc0[r] = acc1[r] = _mm256_setzero_si256();
  for (int g = 0; g < dq / 4; ++g) {
    const int8_t* kg = Kp + (static_cast<long>(g) * ldk + j0) * 4;
    const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kg));
    const __m256i k1 = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kg + 32)) : _mm256_setzero_si256();
    for (int r = 0; r < rows; ++r) {
      int32_t w;
      std::memcpy(&w, Q + static_cast<long>(r) * dq + 4 * g, 4);
      const __m256i u = _mm256_set1_epi32(w);
      acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, k0), ones16));
      if (two) acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, k1), ones16));
    }
  }
  for (int r = 0; r < rows; ++r) {
    alignas(32) int32_t tmp[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), _mm256_sub_epi32(acc0[r], ks0));
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), _mm256_sub_epi32(acc1[r], ks1));
    std::memcpy(S + static_cast<long>(r) * lds + j0, tmp, sizeof(int32_t) * static_cast<size_t>(rem < 16 ? rem : 16));
  }
}

void qk_i4(const uint8_t* Q, int rows, int dq, const int8_t* Kp, int ldk, int cols, int32_t* S, int lds) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int j0 = 0; j0 < cols; j0 += 16) {
    const int rem = cols - j0;
    const bool two = rem > 8;
    __m256i ks0 = _mm256_setzero_si256(), ks1 = _mm256_setzero_si256();
    for (int g = 0; g < dq / 4; ++g) {
      const int8_t* kg = Kp + (static_cast<long>(g) * ldk + j0) * 4;
      ks0 = _mm256_add_epi32(ks0, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kg))), ones16));
      if (two)
        ks1 = _mm256_add_epi32(ks1, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kg + 32))), ones16));
    }
    ks0 = _mm256_slli_epi32(ks0, 3);
    ks1 = _mm256_slli_epi32(ks1, 3);
    int i = 0;
    for (; i + 4 <= rows; i += 4)
      qk_i4_rows<4>(Q + static_cast<long>(i) * dq, 4, dq, Kp, ldk, j0, two, ks0, ks1, rem, S + static_cast<long>(i) * lds, lds);
    if (i < rows)
      qk_i4_rows<0>(Q + static_cast<long>(i) * dq, rows - i, dq, Kp, ldk, j0, two, ks0, ks1, rem,
                    S + static_cast<long>(i) * lds, lds);
  }
}

const Kernels kTable{Level::AVX2, &gemm_qk, &gemm_qk_rowmajor, &gemm_pv, &exp_shift_sum, &max_of, &online_softmax,
                     &half_to_float, &qk_i4};

}  // namespace

const Kernels* avx2_kernels() { return &kTable; }

}  // namespace spattn::simd

#else  // the compiler cannot target AVX2

namespace spattn::simd {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace spattn::simd

#endif
