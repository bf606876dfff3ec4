// The tile of the spattn tile engine (flash-attention style, Dao et al. 2022): stacked query rows
// with their running softmax state, keys as segments of one tile, and the two things a tile can
// do after `tile_scores` (S = Q_tile K_tile^T, the only Q.K^T product of the library):
//  - OnlineSoftmax: mask, update running max and sum, rescale the accumulator, O += P V_tile;
//  - ProbabilitySweep: with the final row log-sum-exp known (a first OnlineSoftmax pass without
//    values), hand the exact probabilities p = exp(s - lse) of the visible keys to a reducer
//    (block pooling, token masses, compressed targets, vertical/slash sums).
// The work-item loop and the key sources (dense span, compiled plan, gathered tokens) that feed
// tiles through these steps live in engine.hpp.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../simd/simd.hpp"
#include "spattn/masks.hpp"
#include "spattn/tensor.hpp"

namespace spattn::detail {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using CMap = Eigen::Map<const RowMat, Eigen::Unaligned, Stride>;
using MMap = Eigen::Map<RowMat, Eigen::Unaligned, Stride>;

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
  const simd::Kernels& simd = simd::kernels();  // the tile products, exp and max of this CPU
  int max_rows = 0, d = 0, dv = 0, bk = 0;
  AlignedFloats q, s, acc, m, l;
  std::vector<int> qlim;  // largest visible key position of each row (causal)
  std::vector<int> qlo;   // smallest visible key position of each row (window kernels; OnlineSoftmax::lower)
  std::vector<int> pos;   // key position of each column of the current tile (ProbabilitySweep)
  std::vector<int> ncols; // visible keys of each row in the current tile (OnlineSoftmax)
  std::vector<int> nfirst; // keys hidden below qlo at the start of the current tile (OnlineSoftmax::lower)
  std::vector<int> qpos;  // own (query index) position of each row (set by load_queries / load_query_rows)
  std::vector<int> qhead; // query head of each row (logit biases)
  int qbatch = 0;         // batch of the item's rows
  const LogitBias* bias = nullptr;  // the call's additive logit biases (run_tiles sets it), or null
  const AttnShape* shape = nullptr; // the call's shape, when bias is set

  TileScratch(int max_rows_, int d_, int dv_, int bk_)
      : max_rows(max_rows_), d(d_), dv(dv_), bk(bk_),
        q(size_t(max_rows_) * d_), s(size_t(max_rows_) * bk_), acc(size_t(max_rows_) * dv_),
        m(max_rows_), l(max_rows_), qlim(max_rows_), qlo(max_rows_), pos(bk_), ncols(max_rows_),
        nfirst(max_rows_), qpos(max_rows_), qhead(max_rows_) {}

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
    for (int i = i0; i < i1; ++i) {
      qlim[r0 + i - i0] = i + off;
      qpos[r0 + i - i0] = i;
      qhead[r0 + i - i0] = h;
    }
    qbatch = b;
  }

  // Copy the rows idx[0 .. n) of query head h (gathered, any order), times `scale`, to stacked
  // rows 0 .. n - 1, with their causal limits and own positions (qpos).
  void load_query_rows(const AttnArgs& a, int b, int h, const int32_t* idx, int n, float scale) {
    const AttnShape& sh = a.shape;
    const int off = sh.causal_offset();
    for (int r = 0; r < n; ++r) {
      const float* src = a.q + sh.q_index(b, h, idx[r]);
      float* dst = q.data() + size_t(r) * d;
      for (int p = 0; p < d; ++p) dst[p] = src[p] * scale;
      qlim[r] = idx[r] + off;
      qpos[r] = idx[r];
      qhead[r] = h;
    }
    qbatch = b;
  }
};

// Row stride of a transposed key buffer holding n keys: a multiple of 16 floats (whole
// vectors may be read past the last key) plus 16, since a power-of-two stride aliases in L1.
inline int transposed_stride(int n) { return (n + 15) / 16 * 16 + 16; }

// K transposed once per call, per (batch, kv head), in tiles of kKeyTile keys: tile t holds
// K[t*T .. t*T+T)^T as a (D x ld) block. Tile products then read K^T in place, with a short
// stride that stays friendly to caches and TLB (a full-length K^T row stride does not), and no
// kernel packs K per tile (that cost a quarter of the work when a block-sparse work item has
// only 64 query rows). Same size as K: O(N) memory.
struct TransposedK {
  static constexpr int T = kKeyTile;
  AlignedFloats data;
  int ld = transposed_stride(T), D = 0, Hkv = 0, ntiles = 0;
  size_t head_size = 0;
  const float* k = nullptr;  // the row-major K, used when not transposed
  int rows = 0;  // rows per kv head in k (AttnShape::kv_rows)

  bool transposed() const { return !data.empty(); }

  // enabled = false: keep K row-major (work items of few query rows); column() is then unused.
  TransposedK(const AttnArgs& a, bool enabled) : D(a.shape.D), Hkv(a.shape.Hkv), k(a.k), rows(a.shape.kv_rows()) {
    const AttnShape& s = a.shape;
    if (!enabled) return;
    ntiles = ceil_div(std::max(s.Nk, 1), T);
    head_size = size_t(ntiles) * D * ld;
    data.assign(size_t(s.B) * s.Hkv * head_size, 0.f);
#pragma omp parallel for schedule(static)
    for (long long u = 0; u < (long long)s.B * s.Hkv * ntiles; ++u) {
      const int ti = int(u % ntiles), bh = int(u / ntiles);
      const float* src = a.k + size_t(bh) * s.kv_rows() * D;
      float* dst = data.data() + size_t(bh) * head_size + size_t(ti) * D * ld;
      const int j0 = ti * T, j1 = std::min(s.Nk, j0 + T);
      for (int j = j0; j < j1; ++j)
        for (int p = 0; p < D; ++p) dst[size_t(p) * ld + (j - j0)] = src[size_t(j) * D + p];
    }
  }
  // Column j of kv head (b, hk): pointer into its tile (row stride ld); readable to the tile end.
  const float* column(int b, int hk, int j) const {
    return data.data() + (size_t(b) * Hkv + hk) * head_size + size_t(j / T) * D * ld + (j % T);
  }
};

// A run of keys inside one tile: K^T columns `kt` (row stride ldkt, readable up to a multiple
// of 16 columns) or, when kt is null, K rows `k` (stride ldkt); V rows `v` (stride ldv); `len`
// keys at positions k0 + c, or pos[c] when pos is set. Segments of one tile ascend in position.
// Row-major K serves work items of a few query rows (decode), where transposing K would cost
// more than the product itself.
struct KeySegment {
  const float* kt;
  int ldkt;
  const float* k;
  const float* v;
  long ldv;
  int len;
  int k0;
  const int* pos;
};

// Keys [j, j + len) of kv head (b, hk), inside one K^T tile when K is transposed.
inline KeySegment key_segment(const TransposedK& kt, int b, int hk, int j, int len, const float* v_head, int dv) {
  const float* v = v_head ? v_head + size_t(j) * dv : nullptr;
  if (kt.transposed()) return {kt.column(b, hk, j), kt.ld, nullptr, v, dv, len, j, nullptr};
  return {nullptr, kt.D, kt.k + ((size_t(b) * kt.Hkv + hk) * kt.rows + j) * kt.D, v, dv, len, j, nullptr};
}

// Keys of the segments visible to a row whose causal limit is `lim`: positions ascend across
// the segments, so the visible keys are a prefix of the tile.
inline int visible_prefix(const KeySegment* seg, int nseg, int lim) {
  int n = 0;
  for (int g = 0; g < nseg; ++g) {
    const KeySegment& sg = seg[g];
    int vis;
    if (sg.pos == nullptr) vis = std::clamp(lim - sg.k0 + 1, 0, sg.len);
    else vis = int(std::upper_bound(sg.pos, sg.pos + sg.len, lim) - sg.pos);
    n += vis;
    if (vis < sg.len) break;
  }
  return n;
}

// Keys of the segments below `lo` (hidden from a row whose lowest visible key is lo): a prefix
// of the tile, positions ascending.
inline int hidden_prefix(const KeySegment* seg, int nseg, int lo) {
  int n = 0;
  for (int g = 0; g < nseg; ++g) {
    const KeySegment& sg = seg[g];
    int hid;
    if (sg.pos == nullptr) hid = int(std::clamp<long long>((long long)lo - sg.k0, 0, sg.len));
    else hid = int(std::lower_bound(sg.pos, sg.pos + sg.len, lo) - sg.pos);
    n += hid;
    if (hid < sg.len) break;
  }
  return n;
}

// Total keys of a tile made of `nseg` segments.
inline int tile_columns(const KeySegment* seg, int nseg) {
  int cols = 0;
  for (int g = 0; g < nseg; ++g) cols += seg[g].len;
  return cols;
}

// S (rows x cols, row stride cols) = Q_tile K_tile^T for the `nseg` segments of one tile (at most
// t.bk keys in all); Q is pre-scaled. The only Q.K^T product in spattn: the SIMD layer's kernels
// (AVX-512, AVX2 or portable, chosen at load), the register-blocked micro-kernel on transposed K
// or, for work items of a few rows (decode), dot products on row-major K.
inline void tile_scores(TileScratch& t, int rows, const KeySegment* seg, int nseg, int cols) {
  float* S = t.s.data();
  for (int g = 0, n0 = 0; g < nseg; n0 += seg[g].len, ++g) {
    if (seg[g].kt == nullptr) {
      t.simd.qk_rowmajor(t.q.data(), rows, t.d, seg[g].k, seg[g].ldkt, seg[g].len, S + n0, cols);
      continue;
    }
    t.simd.qk(t.q.data(), rows, t.d, seg[g].kt, seg[g].ldkt, seg[g].len, S + n0, cols);
  }
}

// S[r][c] (row stride lds) += the biases of `lb` (spattn::LogitBias) for the query of row r (batch
// b, head heads[r], query index qpos[r]) and key position pos[c]; shared by the forward tile step
// and the dense backward.
inline void bias_tile(const LogitBias& lb, const AttnShape& sh, int b, const int* heads, const int* qpos, int rows,
                      const int* pos, int cols, float* S0, int lds) {
  const int G = sh.group(), off = sh.causal_offset();
  for (int r = 0; r < rows; ++r) {
    float* S = S0 + size_t(r) * lds;
    const int h = heads[r];
    if (lb.key != nullptr) {
      const int kh = lb.key_heads == sh.Hq ? h : h / G;
      const float* kb = lb.key + (size_t(b) * lb.key_heads + kh) * sh.Nk;
      for (int c = 0; c < cols; ++c) S[c] += kb[pos[c]];
    }
    if (lb.pair != nullptr) {
      const float* pb = lb.pair + (size_t(lb.pair_heads == 1 ? 0 : h) * sh.Nq + qpos[r]) * sh.Nk;
      for (int c = 0; c < cols; ++c) S[c] += pb[pos[c]];
    }
    if (lb.rel != nullptr) {
      const int R = lb.rel_radius, p = qpos[r] + off;
      const float* rb = lb.rel + size_t(lb.rel_heads == 1 ? 0 : h) * (2 * R + 1) + R;
      for (int c = 0; c < cols; ++c) S[c] += rb[std::clamp(pos[c] - p, -R, R)];
    }
  }
}

// Output step of attention: the online-softmax update of the running max, sum and accumulator
// with the tile's keys. When `masked`, keys past a row's causal limit qlim[r] are hidden from it.
// When `lower` (window kernels), keys below a row's lowest visible position qlo[r] are hidden too:
// their logits become -inf before the update (exp gives exactly 0) and a row with no key left in
// the tile skips it.
// When `hide` is set (row-block kernel), hide[r * nseg + g] != 0 hides segment g from row r: its
// logits become -inf too, and value rows of such segments that are not finite are multiplied only
// into the rows that see them.
// When the call has logit biases (t.bias, spattn::LogitBias: per key, per (query, key) pair,
// relative position), they are added to the scaled logits of the tile before anything else.
// When `self_logit` (Routing Transformer's shared-QK rule), the logit of the key at a row's own
// position qpos[r] is replaced by `self_value` (after scaling, before the softmax; the key stays
// visible).
struct OnlineSoftmax {
  bool lower = false;
  const uint8_t* hide = nullptr;
  bool relu2 = false;  // P = relu(S)^2 over the visible keys, no softmax (l sums P, m unused)
  bool self_logit = false;
  float self_value = 0.f;

  void operator()(TileScratch& t, int rows, const KeySegment* seg, int nseg, bool masked) const {
    const int cols = tile_columns(seg, nseg);
    if (cols == 0) return;
    tile_scores(t, rows, seg, nseg, cols);
    float* S = t.s.data();
    if (t.bias != nullptr) add_logit_bias(t, rows, seg, nseg, cols);
    if (self_logit) set_self_logits(t, rows, seg, nseg, cols, self_value);
    for (int r = 0; r < rows; ++r) t.ncols[r] = masked ? visible_prefix(seg, nseg, t.qlim[r]) : cols;
    if (hide != nullptr) hide_segments(t, rows, seg, nseg, cols);
    bool low = false;
    if (lower) {
      for (int r = 0; r < rows; ++r) {
        int f = hidden_prefix(seg, nseg, t.qlo[r]);
        if (f >= t.ncols[r]) t.ncols[r] = f = 0;
        t.nfirst[r] = f;
        if (f > 0) {
          std::fill(S + size_t(r) * cols, S + size_t(r) * cols + f, kNegInf);
          low = true;
        }
      }
    }
    if (relu2) {
      relu2_weights(t, rows, cols, low);
    } else {
      t.simd.online_softmax(S, rows, cols, t.ncols.data(), t.m.data(), t.l.data(), t.acc.data(), t.dv);
    }
    if (t.dv == 0) return;
    for (int g = 0, n0 = 0; g < nseg; n0 += seg[g].len, ++g) {
      if (hide != nullptr && !segment_values_finite_or_seen(t, rows, seg[g], g, nseg)) {
        pv_seeing_rows(t, rows, cols, seg[g], n0, g, nseg);
        continue;
      }
      if (low && !hidden_values_finite(t, rows, seg[g], n0, true)) {
        pv_window_rows(t, rows, cols, seg[g], n0);
        continue;
      }
      if (masked && !hidden_values_finite(t, rows, seg[g], n0, false)) {
        pv_visible_only(t, rows, cols, seg[g], n0);
        continue;
      }
      t.simd.pv(S + n0, rows, cols, seg[g].v, seg[g].ldv, seg[g].len, t.dv, t.acc.data());
    }
  }

  // ReLU^2 weights in place: P = relu(S)^2 on each row's visible keys [nfirst, ncols), 0 elsewhere;
  // the row sums go to l (the output is the unnormalised sum P V).
  static void relu2_weights(TileScratch& t, int rows, int cols, bool low) {
    for (int r = 0; r < rows; ++r) {
      float* S = t.s.data() + size_t(r) * cols;
      const int f = low ? t.nfirst[r] : 0, e = t.ncols[r];
      float sum = 0.f;
      for (int c = 0; c < cols; ++c) {
        const float x = (c >= f && c < e) ? std::max(S[c], 0.f) : 0.f;
        S[c] = x * x;
        sum += S[c];
      }
      t.l[r] += sum;
    }
  }

  // S[r][c] += the call's biases for row r (batch t.qbatch, head t.qhead[r], query t.qpos[r]) and
  // the key position of column c.
  static void add_logit_bias(TileScratch& t, int rows, const KeySegment* seg, int nseg, int cols) {
    int* pos = t.pos.data();
    for (int g = 0, n0 = 0; g < nseg; n0 += seg[g].len, ++g)
      for (int c = 0; c < seg[g].len; ++c) pos[n0 + c] = seg[g].pos ? seg[g].pos[c] : seg[g].k0 + c;
    bias_tile(*t.bias, *t.shape, t.qbatch, t.qhead.data(), t.qpos.data(), rows, pos, cols, t.s.data(), cols);
  }

  // Logits of the segments hidden from a row become -inf; a row left without a visible key in the
  // tile skips it (ncols = 0), as its running max may still be -inf.
  void hide_segments(TileScratch& t, int rows, const KeySegment* seg, int nseg, int cols) const {
    float* S = t.s.data();
    for (int r = 0; r < rows; ++r) {
      const uint8_t* hr = hide + size_t(r) * nseg;
      bool seen = false;
      for (int g = 0, n0 = 0; g < nseg && n0 < t.ncols[r]; n0 += seg[g].len, ++g) {
        const int e = std::min(n0 + seg[g].len, t.ncols[r]);
        if (hr[g]) std::fill(S + size_t(r) * cols + n0, S + size_t(r) * cols + e, kNegInf);
        else seen = true;
      }
      if (!seen) t.ncols[r] = 0;
    }
  }

  // True when no row hides segment g or its value rows are all finite.
  bool segment_values_finite_or_seen(const TileScratch& t, int rows, const KeySegment& sg, int g, int nseg) const {
    bool hidden = false;
    for (int r = 0; r < rows && !hidden; ++r) hidden = hide[size_t(r) * nseg + g] != 0;
    if (!hidden) return true;
    for (int j = 0; j < sg.len; ++j)
      for (int c = 0; c < t.dv; ++c)
        if (!std::isfinite(sg.v[size_t(j) * sg.ldv + c])) return false;
    return true;
  }

  // O += P V row by row, for the rows that see segment g, over their visible keys of it.
  void pv_seeing_rows(TileScratch& t, int rows, int cols, const KeySegment& sg, int n0, int g, int nseg) const {
    const float* S = t.s.data();
    for (int r = 0; r < rows; ++r) {
      const int vis = std::clamp(t.ncols[r] - n0, 0, sg.len);
      if (hide[size_t(r) * nseg + g] || vis == 0) continue;
      t.simd.pv(S + size_t(r) * cols + n0, 1, cols, sg.v, sg.ldv, vis, t.dv, t.acc.data() + size_t(r) * t.dv);
    }
  }

  // S[r][c] = value for the column c whose key position equals qpos[r] (positions ascend).
  static void set_self_logits(TileScratch& t, int rows, const KeySegment* seg, int nseg, int cols, float value) {
    for (int r = 0; r < rows; ++r) {
      const int p = t.qpos[r];
      for (int g = 0, n0 = 0; g < nseg; n0 += seg[g].len, ++g) {
        const KeySegment& sg = seg[g];
        int c = -1;
        if (sg.pos == nullptr) {
          if (p >= sg.k0 && p < sg.k0 + sg.len) c = p - sg.k0;
        } else {
          const int* it = std::lower_bound(sg.pos, sg.pos + sg.len, p);
          if (it != sg.pos + sg.len && *it == p) c = int(it - sg.pos);
        }
        if (c >= 0) t.s[size_t(r) * cols + n0 + c] = value;
      }
    }
  }

  // Keys of the segment hidden from some row get P = 0, and 0 * NaN (or inf) in their value rows
  // would leak NaN into rows that cannot see them. True when those value rows are all finite
  // (the usual case: one scan of a few rows per masked tile). `low`: rows also hide their first
  // nfirst[r] keys.
  static bool hidden_values_finite(const TileScratch& t, int rows, const KeySegment& sg, int n0, bool low) {
    int lo = sg.len, hi = 0;
    for (int r = 0; r < rows; ++r) {
      lo = std::min(lo, std::clamp(t.ncols[r] - n0, 0, sg.len));
      if (low) hi = std::max(hi, std::clamp(t.nfirst[r] - n0, 0, sg.len));
    }
    const auto finite_rows = [&](int j0, int j1) {
      for (int j = j0; j < j1; ++j)
        for (int c = 0; c < t.dv; ++c)
          if (!std::isfinite(sg.v[size_t(j) * sg.ldv + c])) return false;
      return true;
    };
    return finite_rows(lo, sg.len) && finite_rows(0, std::min(hi, lo));
  }

  // O += P V over each row's visible keys only: blocks of 6 rows share their common visible
  // prefix, the rest row by row.
  static void pv_visible_only(TileScratch& t, int rows, int cols, const KeySegment& sg, int n0) {
    const float* S = t.s.data();
    for (int r0 = 0; r0 < rows; r0 += 6) {
      const int nr = std::min(6, rows - r0);
      int lo = sg.len;
      for (int r = r0; r < r0 + nr; ++r) lo = std::min(lo, std::clamp(t.ncols[r] - n0, 0, sg.len));
      if (lo > 0) t.simd.pv(S + size_t(r0) * cols + n0, nr, cols, sg.v, sg.ldv, lo, t.dv, t.acc.data() + size_t(r0) * t.dv);
      for (int r = r0; r < r0 + nr; ++r) {
        const int vis = std::clamp(t.ncols[r] - n0, 0, sg.len);
        if (vis > lo)
          t.simd.pv(S + size_t(r) * cols + n0 + lo, 1, cols, sg.v + size_t(lo) * sg.ldv, sg.ldv, vis - lo, t.dv,
                    t.acc.data() + size_t(r) * t.dv);
      }
    }
  }

  // O += P V row by row over the keys [nfirst[r], ncols[r]) each row sees (window tiles whose
  // hidden value rows are not finite; rare).
  static void pv_window_rows(TileScratch& t, int rows, int cols, const KeySegment& sg, int n0) {
    const float* S = t.s.data();
    for (int r = 0; r < rows; ++r) {
      const int f = std::clamp(t.nfirst[r] - n0, 0, sg.len), e = std::clamp(t.ncols[r] - n0, 0, sg.len);
      if (e > f)
        t.simd.pv(S + size_t(r) * cols + n0 + f, 1, cols, sg.v + size_t(f) * sg.ldv, sg.ldv, e - f, t.dv,
                  t.acc.data() + size_t(r) * t.dv);
    }
  }
};

// Output step of the exact statistics passes: given the final log-sum-exp of every stacked row
// (`row_lse[r]`, -inf for rows that see no key), computes p = exp(s - lse) over each row's
// visible keys and calls reducer(r, p, pos, n) with the key positions of those n columns
// (ascending). Rows with lse = -inf are skipped.
template <class Reducer>
struct ProbabilitySweep {
  const float* row_lse;
  Reducer& reduce;
  void operator()(TileScratch& t, int rows, const KeySegment* seg, int nseg, bool masked) const {
    const int cols = tile_columns(seg, nseg);
    if (cols == 0) return;
    tile_scores(t, rows, seg, nseg, cols);
    for (int g = 0, n0 = 0; g < nseg; n0 += seg[g].len, ++g)
      for (int c = 0; c < seg[g].len; ++c) t.pos[n0 + c] = seg[g].pos ? seg[g].pos[c] : seg[g].k0 + c;
    for (int r = 0; r < rows; ++r) {
      const float l = row_lse[r];
      if (l == kNegInf) continue;
      const int ncols = masked ? visible_prefix(seg, nseg, t.qlim[r]) : cols;
      if (ncols == 0) continue;
      float* p = t.s.data() + size_t(r) * cols;
      t.simd.exp_shift_sum(p, ncols, l);
      reduce(r, p, t.pos.data(), ncols);
    }
  }
};

// Whether work items of `rows` stacked query rows read K transposed (micro-kernel) or row-major.
inline bool use_transposed_k(int rows) { return rows >= 32; }

// Feed contiguous keys [j0, j1) of kv head (b, hk) through the tile update, one K^T tile at a
// time. `causal`: rows carry limits; tiles whose last key is <= min_lim need no mask.
template <class Step = OnlineSoftmax>
inline void run_key_span(TileScratch& t, int rows, const TransposedK& kt, int b, int hk, const float* v_head,
                         int dv, int j0, int j1, bool causal, int min_lim, const Step& step = Step{}) {
  for (int j = j0; j < j1;) {
    const int cols = std::min({TransposedK::T - j % TransposedK::T, j1 - j, t.bk});
    const KeySegment seg = key_segment(kt, b, hk, j, cols, v_head, dv);
    step(t, rows, &seg, 1, causal && (j + cols - 1 > min_lim));
    j += cols;
  }
}

// Per-thread buffers for key tiles stored in half precision.
struct HalfTile {
  AlignedFloats k, v;
};

// Keys [j0, j1) of kv head (b, hk) of half-precision K/V (a.kv != F32): each tile's K and V rows
// are widened to float into the thread's buffers (exact), then run through `step` as a row-major
// segment. Reads 2 bytes per element from memory instead of 4; used by work items of few rows
// (decode), whose products read K row-major.
template <class Step = OnlineSoftmax>
inline void run_key_span_half(TileScratch& t, int rows, const AttnArgs& a, int b, int hk, int j0, int j1, bool causal,
                              int min_lim, HalfTile& buf, const Step& step = Step{}) {
  const AttnShape& s = a.shape;
  const bool bf16 = a.kv == KVStorage::BF16;
  const auto& kern = simd::kernels();
  if (buf.k.size() < size_t(t.bk) * s.D) buf.k.assign(size_t(t.bk) * s.D, 0.f);
  if (s.Dv > 0 && buf.v.size() < size_t(t.bk) * s.Dv) buf.v.assign(size_t(t.bk) * s.Dv, 0.f);
  const uint16_t* kh = a.k_half + s.k_index(b, hk, 0);
  const uint16_t* vh = s.Dv > 0 && a.v_half != nullptr ? a.v_half + s.v_index(b, hk, 0) : nullptr;
  for (int j = j0; j < j1;) {
    const int cols = std::min({TransposedK::T - j % TransposedK::T, j1 - j, t.bk});  // run_key_span's tiles
    kern.half_to_float(kh + size_t(j) * s.D, long(cols) * s.D, buf.k.data(), bf16);
    if (vh != nullptr) kern.half_to_float(vh + size_t(j) * s.Dv, long(cols) * s.Dv, buf.v.data(), bf16);
    const KeySegment seg{nullptr, s.D, buf.k.data(), vh != nullptr ? buf.v.data() : nullptr, s.Dv, cols, j, nullptr};
    step(t, rows, &seg, 1, causal && (j + cols - 1 > min_lim));
    j += cols;
  }
}

// Write stacked row r as output row (b, h, i): out = acc / l, lse = m + log l; empty rows
// give out = 0 and lse = -inf.
inline void store_row(const TileScratch& t, int r, const AttnArgs& a, int b, int h, int i) {
  const AttnShape& sh = a.shape;
  if (a.relu2) {  // unnormalised: out = acc, lse = log of the total weight
    if (a.out != nullptr && sh.Dv > 0)
      std::copy_n(t.acc.data() + size_t(r) * t.dv, sh.Dv, a.out + sh.out_index(b, h, i));
    if (a.lse != nullptr) a.lse[sh.row_index(b, h, i)] = t.l[r] == 0.f ? kNegInf : std::log(t.l[r]);
    return;
  }
  const bool empty = t.l[r] == 0.f;  // NaN inputs propagate (NaN out), as in torch; only true emptiness gives 0
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
