// AVX-512 kernels of the SIMD layer (compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl
// -mfma; see simd.hpp). Register-blocked micro-kernels for the two tile products (PERF.md, "GEMM
// inside the tile"): S = Q K^T against a K tile stored transposed, and O += P V reading V rows in
// place, 6 rows x 64 columns per block (24 accumulators), the last 16-lane vector masked. Eigen's
// small-GEMM path repacks both operands on every call, which left the dense kernel near
// 140 GFLOP/s; these keep the operands in registers. Plus a vectorised exp (Cephes polynomial,
// scalef) and max for the softmax.
#include "simd.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && defined(__FMA__)
#include <immintrin.h>

#include <cstring>

namespace spattn::simd {

namespace {

inline int imin(int a, int b) { return a < b ? a : b; }

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
    const int width = imin(16 * kVecs, cols - c0);
    const int nv = (width + 15) / 16;
    const __mmask16 m = lane_mask(width - 16 * (nv - 1));
    for (int r0 = 0; r0 < rows; r0 += kRows)
      dispatch<QK>(imin(kRows, rows - r0), nv, Q + size_t(r0) * d, d, Kt + c0, ldkt, d,
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
    const int width = imin(16 * kVecs, dv - c0);
    const int nv = (width + 15) / 16;
    const __mmask16 m = lane_mask(width - 16 * (nv - 1));
    for (int j0 = 0; j0 < cols; j0 += kChunk) {
      const int n = imin(kChunk, cols - j0);
      for (int r0 = 0; r0 < rows; r0 += kRows)
        dispatch<PV>(imin(kRows, rows - r0), nv, P + size_t(r0) * ldp + j0, ldp, V + size_t(j0) * ldv + c0,
                     ldv, n, O + size_t(r0) * dv + c0, dv, m);
    }
  }
}


// Row-major K (decode): each key row is read once per group of 4 query rows, dot products by
// FMAs over 16-lane chunks and one horizontal sum per (row, key).
void gemm_qk_rowmajor(const float* Q, int rows, int d, const float* K, int ldk, int cols, float* S, int lds) {
  const __mmask16 tail = lane_mask(d % 16 == 0 ? 16 : d % 16);
  const int full = (d - 1) / 16;  // full vectors before the (possibly partial) last one
  for (int c = 0; c < cols; ++c) {
    const float* kr = K + long(c) * ldk;
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const int nr = imin(4, rows - r0);
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
             acc3 = _mm512_setzero_ps();
      const float* q0 = Q + long(r0) * d;
      for (int v = 0; v <= full; ++v) {
        const __mmask16 m = v < full ? __mmask16(0xFFFF) : tail;
        const __m512 kv = _mm512_maskz_loadu_ps(m, kr + 16 * v);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + 16 * v), kv, acc0);
        if (nr > 1) acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + d + 16 * v), kv, acc1);
        if (nr > 2) acc2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + 2 * d + 16 * v), kv, acc2);
        if (nr > 3) acc3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + 3 * d + 16 * v), kv, acc3);
      }
      float* s = S + long(r0) * lds + c;
      s[0] = _mm512_reduce_add_ps(acc0);
      if (nr > 1) s[lds] = _mm512_reduce_add_ps(acc1);
      if (nr > 2) s[2 * long(lds)] = _mm512_reduce_add_ps(acc2);
      if (nr > 3) s[3 * long(lds)] = _mm512_reduce_add_ps(acc3);
    }
  }
}

// exp(x) for the softmax: Cephes expf polynomial on r = x - n ln2, scaled by 2^n with scalef.
// x < -87.34 (where expf leaves the normal range) gives 0, x > 88 gives +inf, NaN stays NaN.
inline __m512 exp_ps(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.336544750553f), hi = _mm512_set1_ps(88.0f);
  __m512 xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));  // NaN in x passes through (second operand)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  xc = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  xc = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), xc);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, xc, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, xc, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, xc, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, xc, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, xc, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(xc, xc), _mm512_add_ps(xc, _mm512_set1_ps(1.f)));
  y = _mm512_scalef_ps(y, n);
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), y, _mm512_setzero_ps());
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), y, _mm512_set1_ps(__builtin_inff()));
}

float exp_shift_sum(float* x, int n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (i < n) {
    const __mmask16 m = lane_mask(n - i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    _mm512_mask_storeu_ps(x + i, m, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(acc);
}

float max_of(const float* x, int n) {
  __m512 acc = _mm512_set1_ps(-__builtin_inff());
  __mmask16 nan = 0;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    acc = _mm512_max_ps(acc, v);
  }
  if (i < n) {
    const __mmask16 m = lane_mask(n - i);
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()), m, x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    acc = _mm512_max_ps(acc, v);
  }
  return nan ? __builtin_nanf("") : _mm512_reduce_max_ps(acc);
}

void scale_row(float* x, int n, float alpha) {
  const __m512 a = _mm512_set1_ps(alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(a, _mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = lane_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, x + i)));
  }
}

#include "online_softmax.inl"
#include "half.inl"

void half_to_float(const uint16_t* src, long n, float* dst, bool bf16) {
  long i = 0;
  if (bf16) {
    for (; i + 16 <= n; i += 16) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
  } else {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  half_to_float_scalar(src + i, n - i, dst + i, bf16);
}

// int4 x int4 products held in int8 (simd.hpp, qk_i4), the VNNI GEMM layout: K packed in groups of
// 4 dims, so one 64-byte vector holds 4 dims of 16 columns and one vpdpbusd adds 4-dim dot
// products into 16 column lanes: no horizontal sums. q + 8 is unsigned (1..15 for q in [-7, 7])
// and k signed, the operand types of vpdpbusd and vpmaddubsw (no saturation: |pair| <= 2 * 15 * 8);
// 8 * sum(k) is subtracted at the end. 4 rows x 32 columns per block (8 accumulators).
// STEP(acc, u, k) adds the 4-byte dot products of u and k to the int32 lanes.
#define SPATTN_DEFINE_QK_I4(NAME, ATTR, STEP)                                                             \
  template <int R>                                                                                      \
  ATTR inline void NAME##_rows(const uint8_t* Q, int nr, int dq, const int8_t* Kp, int ldk, int j0, bool two, \
                               __m512i ks0, __m512i ks1, __mmask16 m0, __mmask16 m1, int32_t* S, int lds) { \
    const int rows = R > 0 ? R : nr;                                                                    \
    __m512i acc0[4], acc1[4];                                                                           \
    for (int r = 0; r < 4; ++r) acc0[r] = acc1[r] = _mm512_setzero_si512();                              \
    for (int g = 0; g < dq / 4; ++g) {                                                                  \
      const int8_t* kg = Kp + (static_cast<long>(g) * ldk + j0) * 4;                                    \
      const __m512i k0 = _mm512_loadu_si512(kg);                                                        \
      const __m512i k1 = two ? _mm512_loadu_si512(kg + 64) : _mm512_setzero_si512();                    \
      for (int r = 0; r < rows; ++r) {                                                                  \
        int32_t w;                                                                                      \
        std::memcpy(&w, Q + static_cast<long>(r) * dq + 4 * g, 4);                                      \
        const __m512i u = _mm512_set1_epi32(w);                                                         \
        acc0[r] = STEP(acc0[r], u, k0);                                                                 \
        if (two) acc1[r] = STEP(acc1[r], u, k1);                                                        \
      }                                                                                                 \
    }                                                                                                   \
    for (int r = 0; r < rows; ++r) {                                                                    \
      _mm512_mask_storeu_epi32(S + static_cast<long>(r) * lds + j0, m0, _mm512_sub_epi32(acc0[r], ks0)); \
      if (two) _mm512_mask_storeu_epi32(S + static_cast<long>(r) * lds + j0 + 16, m1, _mm512_sub_epi32(acc1[r], ks1)); \
    }                                                                                                   \
  }                                                                                                     \
  ATTR void NAME(const uint8_t* Q, int rows, int dq, const int8_t* Kp, int ldk, int cols, int32_t* S, int lds) { \
    const __m512i ones8 = _mm512_set1_epi8(1);                                                          \
    for (int j0 = 0; j0 < cols; j0 += 32) {                                                             \
      const int rem = cols - j0;                                                                        \
      const bool two = rem > 16;                                                                        \
      const __mmask16 m0 = rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);                  \
      const __mmask16 m1 = rem >= 32 ? __mmask16(0xFFFF) : two ? __mmask16((1u << (rem - 16)) - 1) : __mmask16(0); \
      __m512i ks0 = _mm512_setzero_si512(), ks1 = _mm512_setzero_si512();                               \
      for (int g = 0; g < dq / 4; ++g) {                                                                \
        const int8_t* kg = Kp + (static_cast<long>(g) * ldk + j0) * 4;                                  \
        ks0 = STEP(ks0, ones8, _mm512_loadu_si512(kg));                                                 \
        if (two) ks1 = STEP(ks1, ones8, _mm512_loadu_si512(kg + 64));                                   \
      }                                                                                                 \
      ks0 = _mm512_slli_epi32(ks0, 3);                                                                  \
      ks1 = _mm512_slli_epi32(ks1, 3);                                                                  \
      int i = 0;                                                                                        \
      for (; i + 4 <= rows; i += 4)                                                                     \
        NAME##_rows<4>(Q + static_cast<long>(i) * dq, 4, dq, Kp, ldk, j0, two, ks0, ks1, m0, m1,        \
                       S + static_cast<long>(i) * lds, lds);                                            \
      if (i < rows)                                                                                     \
        NAME##_rows<0>(Q + static_cast<long>(i) * dq, rows - i, dq, Kp, ldk, j0, two, ks0, ks1, m0, m1, \
                       S + static_cast<long>(i) * lds, lds);                                            \
    }                                                                                                   \
  }

#define SPATTN_STEP_MADD(acc, u, k) \
  _mm512_add_epi32((acc), _mm512_madd_epi16(_mm512_maddubs_epi16((u), (k)), _mm512_set1_epi16(1)))

SPATTN_DEFINE_QK_I4(qk_i4, , SPATTN_STEP_MADD)

#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9)
#define SPATTN_HAVE_VNNI_TARGET 1
#define SPATTN_STEP_VNNI(acc, u, k) _mm512_dpbusd_epi32((acc), (u), (k))
// Compiled for AVX-512 VNNI by attribute only: called only when the CPU reports avx512vnni.
SPATTN_DEFINE_QK_I4(qk_i4_vnni, __attribute__((target("avx512vnni"))), SPATTN_STEP_VNNI)
#endif

const Kernels kTable{Level::AVX512, &gemm_qk, &gemm_qk_rowmajor, &gemm_pv, &exp_shift_sum, &max_of, &online_softmax,
                     &half_to_float, &qk_i4};
#ifdef SPATTN_HAVE_VNNI_TARGET
const Kernels kTableVnni{Level::AVX512, &gemm_qk, &gemm_qk_rowmajor, &gemm_pv, &exp_shift_sum, &max_of, &online_softmax,
                         &half_to_float, &qk_i4_vnni};
#endif

bool cpu_vnni() {
#ifdef SPATTN_HAVE_VNNI_TARGET
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

}  // namespace

bool avx512_vnni() {
  static const bool v = cpu_vnni();
  return v;
}

const Kernels* avx512_kernels() {
#ifdef SPATTN_HAVE_VNNI_TARGET
  if (avx512_vnni()) return &kTableVnni;
#endif
  return &kTable;
}

QkI4 avx512_qk_i4_madd() { return &qk_i4; }


}  // namespace spattn::simd

#else  // the compiler cannot target AVX-512

namespace spattn::simd {
const Kernels* avx512_kernels() { return nullptr; }
bool avx512_vnni() { return false; }
QkI4 avx512_qk_i4_madd() { return nullptr; }
}  // namespace spattn::simd

#endif
