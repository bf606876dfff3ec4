// The one online-softmax tile update shared by every spattn kernel (flash-attention style,
// Dao et al. 2022): S = Q_tile K_tile^T (Q pre-scaled), mask, update running max and sum,
// rescale the accumulator, O += P V_tile. Kernels differ only in which query rows they stack
// and which key spans (contiguous or gathered) they feed through `tile_update`.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "microkernel.hpp"
#include "spattn/tensor.hpp"

namespace spattn::detail {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using CMap = Eigen::Map<const RowMat, Eigen::Unaligned, Stride>;
using MMap = Eigen::Map<RowMat, Eigen::Unaligned, Stride>;
using ArrMap = Eigen::Map<Eigen::ArrayXf>;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Key tile width used by the kernels; tuned with `python -m spattn bench` (see README).
// Key tile width and stacked query rows per work item, tuned on the 2-core Zen 4 machine with the
// AVX-512 micro-kernels (N = 8192/16384, D = 64/128): rows 256 with bk 128 or 256 within noise
// (~175 GFLOP/s at D = 128), bk 64 or rows 512 clearly slower.
constexpr int kKeyTile = 256;
constexpr int kRowsTarget = 256;

// Query rows stacked for one work item, their running softmax state and the tile scratch.
// Allocated once per thread per call, reused across work items.
// Buffers are 64-byte aligned: Eigen peels reductions by address, so equal alignment in every
// thread keeps results bitwise reproducible from run to run.
using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;

struct TileScratch {
  int max_rows = 0, d = 0, dv = 0, bk = 0;
  AlignedFloats q, s, acc, m, l;
  AlignedFloats kt;       // K tile packed transposed (d x bk rounded up to 16), micro-kernel path
  std::vector<int> qlim;  // largest visible key position of each row (causal)

  TileScratch(int max_rows_, int d_, int dv_, int bk_)
      : max_rows(max_rows_), d(d_), dv(dv_), bk(bk_),
        q(size_t(max_rows_) * d_), s(size_t(max_rows_) * bk_), acc(size_t(max_rows_) * dv_),
        m(max_rows_), l(max_rows_), kt(size_t(d_) * ((bk_ + 15) / 16 * 16 + 16)), qlim(max_rows_) {}

  void reset(int rows) {
    std::fill(m.begin(), m.begin() + rows, kNegInf);
    std::fill(l.begin(), l.begin() + rows, 0.f);
    std::fill(acc.begin(), acc.begin() + size_t(rows) * dv, 0.f);
  }

  // Copy rows [i0, i1) of query head h, times `scale`, to stacked row `r0` onwards and record
  // their causal limits.
  void load_queries(const AttnArgs& a, int b, int h, int i0, int i1, int r0, float scale) {
    const AttnShape& sh = a.shape;
    const float* src = a.q + sh.q_index(b, h, i0);
    float* dst = q.data() + size_t(r0) * d;
    const size_t n = size_t(i1 - i0) * d;
    for (size_t t = 0; t < n; ++t) dst[t] = src[t] * scale;
    const int off = sh.causal_offset();
    for (int i = i0; i < i1; ++i) qlim[r0 + i - i0] = i + off;
  }
};

// One tile: `cols` keys at rows of `k` (stride ldk) and `v` (stride ldv), positions
// k0 + c (kpos == nullptr) or kpos[c]. When `masked`, key c is hidden from row r if its
// position exceeds qlim[r].
inline void tile_update(TileScratch& t, int rows, const float* k, long ldk, const float* v,
                        long ldv, int cols, int k0, const int* kpos, bool masked) {
  float* S = t.s.data();
#ifdef SPATTN_HAVE_MICROKERNEL
  const int ldkt = (cols + 15) / 16 * 16 + 16;  // +16: a power-of-two stride aliases in L1
  mk::pack_kt(k, ldk, cols, t.d, t.kt.data(), ldkt);
  mk::gemm_qk(t.q.data(), rows, t.d, t.kt.data(), ldkt, cols, S, cols);
#else
  MMap Sm(S, rows, cols, Stride(cols));
  Sm.noalias() = CMap(t.q.data(), rows, t.d, Stride(t.d)) * CMap(k, cols, t.d, Stride(ldk)).transpose();
#endif
  for (int r = 0; r < rows; ++r) {
    float* srow = S + size_t(r) * cols;
    int ncols = cols;  // contiguous keys: visible prefix length
    if (masked) {
      const int lim = t.qlim[r];
      if (kpos == nullptr) {
        ncols = std::clamp(lim - k0 + 1, 0, cols);
      } else {
        for (int c = 0; c < cols; ++c)
          if (kpos[c] > lim) srow[c] = kNegInf;
      }
    }
    if (ncols < cols) std::fill(srow + ncols, srow + cols, 0.f);
    if (ncols == 0) continue;
    ArrMap srow_a(srow, ncols);
    const float mx = srow_a.maxCoeff();
    const float m_old = t.m[r];
    const float m_new = std::max(m_old, mx);
    if (m_new == kNegInf) {  // nothing visible yet in this row
      std::fill(srow, srow + ncols, 0.f);
      continue;
    }
    srow_a = (srow_a - m_new).exp();
    if (kpos != nullptr && masked) {  // exp(-inf) must be exactly 0
      const int lim = t.qlim[r];
      for (int c = 0; c < cols; ++c)
        if (kpos[c] > lim) srow[c] = 0.f;
    }
    const float alpha = std::exp(m_old - m_new);  // 0 when m_old = -inf
    t.l[r] = t.l[r] * alpha + srow_a.sum();
    t.m[r] = m_new;
    if (alpha != 1.f && t.dv > 0) {
      ArrMap acc_row(t.acc.data() + size_t(r) * t.dv, t.dv);
      acc_row *= alpha;
    }
  }
  if (t.dv > 0) {
#ifdef SPATTN_HAVE_MICROKERNEL
    mk::gemm_pv(S, rows, cols, v, ldv, cols, t.dv, t.acc.data());
#else
    MMap(t.acc.data(), rows, t.dv, Stride(t.dv)).noalias() +=
        CMap(S, rows, cols, Stride(cols)) * CMap(v, cols, t.dv, Stride(ldv));
#endif
  }
}

// Feed contiguous keys [j0, j1) of one kv head through the tile update, tile by tile.
// `causal`: rows carry limits; tiles whose last key is <= min_lim need no mask.
inline void run_key_span(TileScratch& t, int rows, const float* k_head, const float* v_head,
                         int d, int dv, int j0, int j1, bool causal, int min_lim) {
  for (int j = j0; j < j1; j += t.bk) {
    const int cols = std::min(t.bk, j1 - j);
    const bool masked = causal && (j + cols - 1 > min_lim);
    tile_update(t, rows, k_head + size_t(j) * d, d, v_head ? v_head + size_t(j) * dv : nullptr,
                dv, cols, j, nullptr, masked);
  }
}

// Write stacked row r as output row (b, h, i): out = acc / l, lse = m + log l; empty rows
// give out = 0 and lse = -inf.
inline void store_row(const TileScratch& t, int r, const AttnArgs& a, int b, int h, int i) {
  const AttnShape& sh = a.shape;
  const bool empty = !(t.l[r] > 0.f);
  if (a.out != nullptr && sh.Dv > 0) {
    float* o = a.out + sh.out_index(b, h, i);
    const float* acc = t.acc.data() + size_t(r) * t.dv;
    if (empty) {
      std::fill(o, o + sh.Dv, 0.f);
    } else {
      const float inv = 1.f / t.l[r];
      for (int c = 0; c < sh.Dv; ++c) o[c] = acc[c] * inv;
    }
  }
  if (a.lse != nullptr) a.lse[sh.row_index(b, h, i)] = empty ? kNegInf : t.m[r] + std::log(t.l[r]);
}

}  // namespace spattn::detail
