// SALE estimator (see the header for the official behaviour it follows and the deviations).
//
// Per (batch, kv head) the keys are smoothed and quantised once; per query head the queries are
// smoothed and quantised, then each 64-query block runs the exact pass over its local and sink
// blocks (float tile product of q against the smoothed keys), sets the threshold T_i, and scans its segment
// blocks with the int4 tile product (simd::Kernels::qk_i4). Memory: O(N D) per head plus one
// 64 x (local + sink) score tile per thread; never an Nq x Nk buffer.
#include "spattn/estimators/sale.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "../simd/simd.hpp"

namespace spattn {

namespace {

constexpr int kBlockQ = 64;

int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Round to nearest, ties to even (as rint / CUDA's __half2int_rn) without a libm call, so the scan
// loop vectorises: below 2^22 in magnitude, adding and subtracting 1.5 * 2^23 rounds exactly.
inline float round_even(float x) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  return std::fabs(x) < 4194304.f ? (x + kMagic) - kMagic : std::nearbyint(x);
}

// Which key blocks of query block m are exact (sink, local) and which are scanned (segments).
struct Partition {
  int n_max = 0;        // key blocks up to the diagonal
  int seg_end = 1;      // segment blocks are [1, seg_end)
  int local_begin = 0;  // local blocks are [local_begin, n_max); block 0 is always exact too
};

Partition partition(int m, int n, const SaleParams& p, float tau) {
  const int bk = p.block_k_size, bps = p.block_seg_size / bk, n_local_min = p.local_window / bk;
  Partition r;
  r.n_max = std::min(ceil_div(n, bk), ceil_div((m + 1) * kBlockQ, bk));
  const int n_wo_sink = r.n_max - 1;
  int n_segs = ceil_div(n_wo_sink, bps);
  const int rem = n_wo_sink - n_segs * bps;
  int n_local;
  if (tau < 1e-5f) {
    n_segs = 0;
    n_local = n_wo_sink;
  } else if (rem >= n_local_min) {
    n_local = rem;
  } else {
    const int sup = ceil_div(n_local_min - rem, bps);
    n_local = bps * sup + rem;
    n_segs -= sup;
  }
  r.seg_end = 1 + bps * std::max(n_segs, 0);
  r.local_begin = std::max(0, r.n_max - n_local);
  return r;
}

// One head's smoothed and quantised rows: x - mean (float), int4 values (one per int8, rows of dq
// bytes, zero padded), the dequantisation scale per row, and (keys) the rows' 7 / max factor.
struct Quantised {
  std::vector<float> smooth;
  std::vector<int8_t> q;    // rows of dq bytes
  std::vector<uint8_t> qu;  // queries: q + 8, the biased operand of simd::Kernels::qk_i4
  std::vector<float> scale;  // sq / sk per row
  std::vector<float> inv;    // 7 / group max per row (the official q_scale / k_scale)
  std::vector<float> mean;
  std::vector<int8_t> packed;  // keys: per key block, the qk_i4 layout (groups of 4 dims, ldk columns)
};

// The keys of each block of bk in the packed layout of simd::Kernels::qk_i4: block b starts at
// b * block_bytes, key j of it dims 4g..4g+3 at (g * ldk + j) * 4.
void pack_keys(Quantised& k, int n, int dq, int bk) {
  const int ldk = (bk + 15) / 16 * 16;
  const size_t block_bytes = static_cast<size_t>(dq) * ldk;
  k.packed.assign(static_cast<size_t>(ceil_div(n, bk)) * block_bytes, 0);
  for (int j = 0; j < n; ++j) {
    int8_t* blk = k.packed.data() + static_cast<size_t>(j / bk) * block_bytes;
    const int jj = j % bk;
    for (int c = 0; c < dq; ++c) blk[(static_cast<size_t>(c / 4) * ldk + jj) * 4 + c % 4] = k.q[static_cast<size_t>(j) * dq + c];
  }
}

// Group id of row t for the scale groups of the official quantisers (quant_mode 3): queries
// (t / 16, t % 8), keys (t / bk, ((t % bk) / 2) % 4); quant_mode 2: one group per row.
Quantised quantise(const float* x, int n, int d, int dq, int mode, bool is_key, int bk) {
  Quantised r;
  r.mean.assign(static_cast<size_t>(d), 0.f);
  {
    std::vector<double> acc(static_cast<size_t>(d), 0.0);
    for (int t = 0; t < n; ++t)
      for (int c = 0; c < d; ++c) acc[c] += x[static_cast<size_t>(t) * d + c];
    for (int c = 0; c < d; ++c) r.mean[c] = n > 0 ? static_cast<float>(acc[c] / n) : 0.f;
  }
  r.smooth.resize(static_cast<size_t>(n) * d);
  std::vector<float> rowmax(static_cast<size_t>(n), 0.f);
  for (int t = 0; t < n; ++t) {
    float mx = 0.f;
    for (int c = 0; c < d; ++c) {
      const float v = x[static_cast<size_t>(t) * d + c] - r.mean[c];
      r.smooth[static_cast<size_t>(t) * d + c] = v;
      mx = std::max(mx, std::fabs(v));
    }
    rowmax[t] = mx;
  }
  // group max
  std::vector<float> gmax(static_cast<size_t>(n), 0.f);
  if (mode == 2) {
    gmax = rowmax;
  } else if (!is_key) {
    for (int base = 0; base < n; base += 16)
      for (int j = 0; j < 8; ++j) {
        float mx = 0.f;
        for (int t = base + j; t < std::min(n, base + 16); t += 8) mx = std::max(mx, rowmax[t]);
        for (int t = base + j; t < std::min(n, base + 16); t += 8) gmax[t] = mx;
      }
  } else {
    for (int base = 0; base < n; base += bk)
      for (int g = 0; g < 4; ++g) {
        float mx = 0.f;
        for (int t = base; t < std::min(n, base + bk); ++t)
          if (((t - base) / 2) % 4 == g) mx = std::max(mx, rowmax[t]);
        for (int t = base; t < std::min(n, base + bk); ++t)
          if (((t - base) / 2) % 4 == g) gmax[t] = mx;
      }
  }
  r.q.assign(static_cast<size_t>(n) * dq, 0);
  r.scale.resize(static_cast<size_t>(n));
  r.inv.resize(static_cast<size_t>(n));
  for (int t = 0; t < n; ++t) {
    const float mx = gmax[t];
    if (!(mx > 0.f)) {  // an all-zero group: the official 7 / 0 gives no usable value; zeros here
      r.scale[t] = 0.f;
      r.inv[t] = 0.f;
      continue;
    }
    const float inv = 7.f / mx;
    r.inv[t] = inv;
    // official: sq stores q_max / 7 (mode 3) or 1 / q_scale (mode 2); sk stores 1 / k_scale
    r.scale[t] = (!is_key && mode == 3) ? mx / 7.f : 1.f / inv;
    for (int c = 0; c < d; ++c) {
      const float v = std::nearbyint(r.smooth[static_cast<size_t>(t) * d + c] * inv);
      r.q[static_cast<size_t>(t) * dq + c] = static_cast<int8_t>(std::max(-8.f, std::min(7.f, v)));
    }
  }
  if (!is_key) {
    r.qu.resize(r.q.size());
    for (size_t i = 0; i < r.q.size(); ++i) r.qu[i] = static_cast<uint8_t>(r.q[i] + 8);
  }
  return r;
}

void check(const AttnArgs& a, const SaleParams& p) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (!a.causal) throw std::invalid_argument("sale: causal attention only (causal=True), got causal=False");
  if (s.Nq != s.Nk)
    throw std::invalid_argument("sale: defined for Nq == Nk (prefill), got Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  if (p.thresholds.size() != 1 && p.thresholds.size() != static_cast<size_t>(s.Hq))
    throw std::invalid_argument("sale: thresholds must hold 1 value or one per query head (" + std::to_string(s.Hq) +
                                "), got " + std::to_string(p.thresholds.size()));
  if (a.k == nullptr) throw std::invalid_argument("sale: needs float32 keys");
}

// Per (b, kv head) key data and per (b, q head) query data shared by the estimator and the bench.
struct Prepared {
  std::vector<Quantised> keys;  // B * Hkv
  int dq = 4;
};

Prepared prepare_keys(const AttnArgs& a, const SaleParams& p) {
  const AttnShape& s = a.shape;
  Prepared r;
  r.dq = round_up(std::max(s.D, 1), 4);
  r.keys.resize(static_cast<size_t>(s.B) * s.Hkv);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < static_cast<long long>(s.B) * s.Hkv; ++bh) {
    const int b = static_cast<int>(bh / s.Hkv), hk = static_cast<int>(bh % s.Hkv);
    r.keys[bh] = quantise(a.k + s.k_index(b, hk, 0), s.Nk, s.D, r.dq, p.quant_mode, true, p.block_k_size);
    pack_keys(r.keys[bh], s.Nk, r.dq, p.block_k_size);
  }
  return r;
}

// qmk per key for one query head: mean(q) . k_smooth (float tile product), in quant_mode 3 times
// the key's 7 / max (the official qmk_sk).
std::vector<float> qmk_row(const Quantised& qh, const Quantised& kh, int n, int d, int mode) {
  std::vector<float> out(static_cast<size_t>(n), 0.f);
  if (n > 0) simd::kernels().qk_rowmajor(qh.mean.data(), 1, d, kh.smooth.data(), d, n, out.data(), n);
  if (mode == 3)
    for (int j = 0; j < n; ++j) out[j] *= kh.inv[j];  // float32 (the official multiplies in fp16)
  return out;
}

}  // namespace

void SaleParams::validate() const {
  if (thresholds.empty()) param_error("sale", "thresholds", "hold at least one value", "[]");
  for (float t : thresholds)
    if (!(t >= 0.f && t <= 1.f)) param_error("sale", "thresholds", "be in [0, 1]", t);
  require_min("sale", "block_k_size", block_k_size, 16);
  require_min("sale", "local_window", local_window, 1);
  require_min("sale", "block_seg_size", block_seg_size, 128);
  require_min("sale", "quant_mode", quant_mode, 2);
  if (block_k_size > 64 || block_k_size % 16 != 0)
    param_error("sale", "block_k_size", "be 16, 32, 48 or 64", block_k_size);
  if (local_window != 128) param_error("sale", "local_window", "be 128 (asserted by the official code)", local_window);
  if (block_seg_size < 128 || block_seg_size % 128 != 0 || block_seg_size % block_k_size != 0)
    param_error("sale", "block_seg_size", "be a positive multiple of 128 and of block_k_size", block_seg_size);
  if (quant_mode != 2 && quant_mode != 3) param_error("sale", "quant_mode", "be 2 or 3", quant_mode);
  require_min("sale", "dense_len", dense_len, 0);
}

BlockMask estimate_sale(const AttnArgs& a, const SaleParams& p) {
  check(a, p);
  const AttnShape& s = a.shape;
  const int bk = p.block_k_size, N = s.Nq, D = s.D;
  BlockMask mask(s.B, s.Hq, s.Nq, s.Nk, kBlockQ, bk);
  if (N == 0) return mask;
  const int nqb = mask.nqb, nkb = mask.nkb;
  if (N <= p.dense_len) {  // official: SDPA below 1025 tokens
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h)
        for (int m = 0; m < nqb; ++m) {
          uint8_t* row = mask.row(b, h, m);
          const int n_max = std::min(nkb, ceil_div((m + 1) * kBlockQ, bk));
          std::fill(row, row + n_max, uint8_t(1));
        }
    return mask;
  }
  const Prepared prep = prepare_keys(a, p);
  const int dq = prep.dq, ldk = round_up(bk, 16);
  const size_t block_bytes = static_cast<size_t>(dq) * ldk;
  const float scale = a.effective_scale();
  const simd::Kernels& kern = simd::kernels();

#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < static_cast<long long>(s.B) * s.Hq; ++bh) {
    const int b = static_cast<int>(bh / s.Hq), h = static_cast<int>(bh % s.Hq), hk = h / s.group();
    const float tau = p.thresholds.size() == 1 ? p.thresholds[0] : p.thresholds[h];
    const Quantised& kh = prep.keys[static_cast<size_t>(b) * s.Hkv + hk];
    const Quantised qh = quantise(a.q + s.q_index(b, h, 0), N, D, dq, p.quant_mode, false, bk);
    const std::vector<float> qmk = qmk_row(qh, kh, N, D, p.quant_mode);
    std::vector<float> S, T(kBlockQ), Sx(static_cast<size_t>(kBlockQ) * bk);
    std::vector<float> M(kBlockQ);
    std::vector<double> L(kBlockQ);
    std::vector<int32_t> Si(static_cast<size_t>(kBlockQ) * bk);
    for (int m = 0; m < nqb; ++m) {
      uint8_t* row = mask.row(b, h, m);
      const Partition part = partition(m, N, p, tau);
      row[0] = 1;
      for (int j = part.local_begin; j < part.n_max; ++j) row[j] = 1;
      if (part.seg_end <= 1) continue;
      const int r0 = m * kBlockQ, rows = std::min(kBlockQ, N - r0);
      // exact pass: sink block (when not local) and local blocks, causal, on the smoothed keys
      const int sink_cols = part.local_begin > 0 ? std::min(bk, N) : 0;
      const int l0 = part.local_begin * bk, l1 = std::min(N, part.n_max * bk);
      const int ncols = sink_cols + (l1 - l0);
      S.resize(static_cast<size_t>(rows) * ncols);
      const float* qrows = a.q + s.q_index(b, h, r0);  // the official exact pass: q against smoothed k
      if (sink_cols > 0) kern.qk_rowmajor(qrows, rows, D, kh.smooth.data(), D, sink_cols, S.data(), ncols);
      kern.qk_rowmajor(qrows, rows, D, kh.smooth.data() + static_cast<size_t>(l0) * D, D, l1 - l0,
                       S.data() + sink_cols, ncols);
      for (int i = 0; i < rows; ++i) {
        const int qi = r0 + i;
        const float* srow = S.data() + static_cast<size_t>(i) * ncols;
        auto key_of = [&](int c) { return c < sink_cols ? c : l0 + (c - sink_cols); };
        float mx = -std::numeric_limits<float>::infinity();
        for (int c = 0; c < ncols; ++c)
          if (key_of(c) <= qi) mx = std::max(mx, srow[c]);
        double l = 0.0;
        for (int c = 0; c < ncols; ++c)
          if (key_of(c) <= qi) l += std::exp(static_cast<double>(scale) * (srow[c] - mx));
        M[i] = mx;
        L[i] = l;
        T[i] = static_cast<float>(mx + std::log(l * tau) / scale);
      }
      // the segment scan: int4 tile product, one key block at a time
      const uint8_t* qq = qh.qu.data() + static_cast<size_t>(r0) * dq;
      const int bps = p.block_seg_size / bk;
      for (int j = 1; j < part.seg_end; ++j) {
        if (p.quant_mode == 2 && j > 1 && (j - 1) % bps == 0) {
          // per-token mode compares against the live softmax state (is_big_block reads row_max and
          // row_sum): fold in the previous segment's selected blocks, computed exactly
          for (int jb = j - bps; jb < j; ++jb) {
            if (!row[jb]) continue;
            kern.qk_rowmajor(a.q + s.q_index(b, h, r0), rows, D, kh.smooth.data() + static_cast<size_t>(jb) * bk * D, D,
                             bk, Sx.data(), bk);
            for (int i = 0; i < rows; ++i) {
              const float* sx = Sx.data() + static_cast<size_t>(i) * bk;
              const float mn = std::max(M[i], kern.max(sx, bk));
              double l = L[i] * std::exp(static_cast<double>(scale) * (M[i] - mn));
              for (int c = 0; c < bk; ++c) l += std::exp(static_cast<double>(scale) * (sx[c] - mn));
              M[i] = mn;
              L[i] = l;
            }
          }
          for (int i = 0; i < rows; ++i) T[i] = static_cast<float>(M[i] + std::log(L[i] * tau) / scale);
        }
        const int c0 = j * bk;
        kern.qk_i4(qq, rows, dq, kh.packed.data() + static_cast<size_t>(j) * block_bytes, ldk, bk, Si.data(), bk);
        const float* qmk_b = qmk.data() + c0;
        const float* sk_b = kh.scale.data() + c0;
        bool big = false;
        for (int i = 0; i < rows && !big; ++i) {
          const float sq = qh.scale[r0 + i], rsq = sq > 0.f ? 1.f / sq : 0.f, t = T[i];
          const int32_t* si = Si.data() + static_cast<size_t>(i) * bk;
          int hit = 0;
          if (p.quant_mode == 3) {
            for (int c = 0; c < bk; ++c)
              hit |= (static_cast<float>(si[c]) + round_even(qmk_b[c] * rsq)) * (sq * sk_b[c]) > t;
          } else {
            for (int c = 0; c < bk; ++c) hit |= sk_b[c] * sq * static_cast<float>(si[c]) + qmk_b[c] > t;
          }
          big = hit != 0;
        }
        if (big) row[j] = 1;
      }
    }
  }
  return mask;
}

double sale_estimate_ms(const AttnArgs& a, const SaleParams& p, bool int4, int repeats) {
  check(a, p);
  const AttnShape& s = a.shape;
  const int bk = p.block_k_size, N = s.Nq, D = s.D;
  if (N == 0 || repeats < 1) return 0.0;
  const Prepared prep = prepare_keys(a, p);
  const int dq = prep.dq, nqb = ceil_div(N, kBlockQ), ldk_i = round_up(bk, 16);
  const size_t block_bytes = static_cast<size_t>(dq) * ldk_i;
  const simd::Kernels& kern = simd::kernels();
  std::vector<Quantised> qs(static_cast<size_t>(s.B) * s.Hq);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h)
      qs[static_cast<size_t>(b) * s.Hq + h] = quantise(a.q + s.q_index(b, h, 0), N, D, dq, p.quant_mode, false, bk);
  // float path: keys stored transposed per block (the tile engine's K tile layout), 16-col padded
  const int ldkt = round_up(bk, 16);
  std::vector<std::vector<float>> kt(prep.keys.size());
  if (!int4)
    for (size_t t = 0; t < prep.keys.size(); ++t) {
      const int nkb = ceil_div(N, bk);
      kt[t].assign(static_cast<size_t>(nkb) * D * ldkt, 0.f);
      for (int j = 0; j < N; ++j)
        for (int c = 0; c < D; ++c)
          kt[t][(static_cast<size_t>(j / bk) * D + c) * ldkt + j % bk] = prep.keys[t].smooth[static_cast<size_t>(j) * D + c];
    }
  double sink = 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int rep = 0; rep < repeats; ++rep) {
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : sink)
    for (long long bh = 0; bh < static_cast<long long>(s.B) * s.Hq; ++bh) {
      const int b = static_cast<int>(bh / s.Hq), h = static_cast<int>(bh % s.Hq), hk = h / s.group();
      const float tau = p.thresholds.size() == 1 ? p.thresholds[0] : p.thresholds[h];
      const Quantised& qh = qs[bh];
      const size_t kidx = static_cast<size_t>(b) * s.Hkv + hk;
      std::vector<int32_t> Si(static_cast<size_t>(kBlockQ) * bk);
      std::vector<float> Sf(static_cast<size_t>(kBlockQ) * bk);
      for (int m = 0; m < nqb; ++m) {
        const Partition part = partition(m, N, p, tau);
        const int r0 = m * kBlockQ, rows = std::min(kBlockQ, N - r0);
        for (int j = 1; j < part.seg_end; ++j) {
          float acc = 0.f;
          if (int4) {
            kern.qk_i4(qh.qu.data() + static_cast<size_t>(r0) * dq, rows, dq,
                       prep.keys[kidx].packed.data() + static_cast<size_t>(j) * block_bytes, ldk_i, bk, Si.data(), bk);
            acc = static_cast<float>(Si[0]);
          } else {
            kern.qk(a.q + s.q_index(b, h, r0), rows, D,
                    kt[kidx].data() + static_cast<size_t>(j) * D * ldkt, ldkt, bk, Sf.data(), bk);
            acc = Sf[0];
          }
          sink += acc;
        }
      }
    }
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  volatile double keep = sink;
  (void)keep;
  return ms / repeats;
}

}  // namespace spattn
