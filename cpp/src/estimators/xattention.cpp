// XAttention estimator (see the header for the official behaviour it follows).
//
// The antidiagonal score is a Q.K^T of reshaped rows: query row i is the concatenation of
// q[i S + S-1], ..., q[i S] (reversed inside its stride group) and key row j of k[j S], ...,
// k[j S + S-1], so their dot product is the sum of one antidiagonal of the S x S tile. These
// rows (S D wide, zero past the end) go through the exact block-map statistics pass
// (block_attention_map, statistics/block_map.cpp) with scale / S and blocks of block_size / S
// reshaped rows: that pass is exactly the official softmax_fuse_block_sum (row softmax over the
// visible reshaped keys, then sums over block tiles) and never holds an Nq x Nk buffer.
//
// Deviations: float32 throughout (the official Triton path stores W in the input dtype, bf16 in
// its runs); a user-given scale replaces 1/sqrt(D) (the official code always uses 1/sqrt(D));
// ties in the descending sort go to the lower block index (torch.sort leaves them unspecified:
// ties only occur among equal values, which get the same decision). The official float32 torch
// path hides earlier chunks when the length is an exact multiple of the chunk (`[..., -0:]`);
// this follows the Triton path, which does not.
#include "spattn/estimators/xattention.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string>

#include "spattn/selection.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

// The double a Python float literal gives: the official threshold is a Python float (0.9), ours
// a float32; taking its shortest decimal form makes tau * total the same float64 product.
double decimal_double(float x) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), x);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

// rows (B, H, n_rows, S * D) of x (B, H, n, D): row i holds x[i S + perm(t)] for t = 0..S-1,
// perm(t) = S-1-t when `reverse` (queries) else t (keys); zero past n.
std::vector<float> strided_rows(const float* x, int B, int H, int n, int D, int S, int n_rows, bool reverse) {
  std::vector<float> out(size_t(B) * H * n_rows * S * D, 0.f);
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < (long long)B * H; ++bh)
    for (int i = 0; i < n_rows; ++i)
      for (int t = 0; t < S; ++t) {
        const long long src = (long long)i * S + (reverse ? S - 1 - t : t);
        if (src >= n) continue;
        std::copy_n(x + (size_t(bh) * n + size_t(src)) * D, D, out.data() + ((size_t(bh) * n_rows + i) * S + t) * D);
      }
  return out;
}

}  // namespace

void XAttentionParams::validate() const {
  require_min("xattention", "stride", stride, 1);
  require_min("xattention", "block_size", block_size, 1);
  if (2048 % block_size != 0) param_error("xattention", "block_size", "divide 2048 (the smallest chunk)", block_size);
  if (block_size % stride != 0)
    param_error("xattention", "stride", ("divide block_size (" + std::to_string(block_size) + ")").c_str(), stride);
  if (threshold.empty()) param_error("xattention", "threshold", "hold at least one value", "[]");
  for (float t : threshold) require_unit_interval("xattention", "threshold", t);
}

int xattention_chunk_size(int kv_len) {
  long long p = 1;
  while (p < kv_len) p <<= 1;  // 1 << bit_length(kv_len - 1)
  const long long c = std::max(std::min(std::max(2048LL, p), (128LL * 1024 * 2048) / p), 2048LL);
  return int(c);
}

BlockMask estimate_xattention(const AttnArgs& a, const XAttentionParams& p) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  const int bs = p.block_size, S = p.stride;
  if (p.threshold.size() != 1 && p.threshold.size() != size_t(s.Hq))
    throw std::invalid_argument("xattention: threshold must hold 1 value or one per query head (" +
                                std::to_string(s.Hq) + "), got " + std::to_string(p.threshold.size()));
  if (s.Nq > s.Nk || (s.Nk - s.Nq) % bs != 0)
    throw std::invalid_argument("xattention: defined for Nq == Nk, or Nq < Nk with Nk - Nq a multiple of block_size (" +
                                std::to_string(bs) + "); got Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  BlockMask mask(s.B, s.Hq, s.Nq, s.Nk, bs, bs);
  if (s.Nq == 0) return mask;

  const int C = xattention_chunk_size(s.Nk);
  const int rb = bs / S;                        // reshaped rows per block
  const int row0 = (s.Nk - s.Nq) / bs;          // global block row of the first query block
  const int first_chunk_rows = C / bs;          // block rows using the first-chunk rule
  const long long nk_pad = (static_cast<long long>(s.Nk) + C - 1) / C * C;  // keys padded to the chunk
  const int nq_r = ceil_div(s.Nq, S);
  // Causal rows never see a padded key; non-causal rows see the zero keys up to the chunk multiple.
  const int nk_r = a.causal ? ceil_div(s.Nk, S) : int(nk_pad / S);
  const int nqb = mask.nqb, nkb = mask.nkb, nkw = ceil_div(nk_r, rb);

  std::vector<float> W(size_t(s.B) * s.Hq * nqb * nkw);
  {
    const std::vector<float> qr = strided_rows(a.q, s.B, s.Hq, s.Nq, s.D, S, nq_r, true);
    const std::vector<float> kr = strided_rows(a.k, s.B, s.Hkv, s.Nk, s.D, S, nk_r, false);
    AttnArgs r;
    r.q = qr.data();
    r.k = kr.data();
    r.shape = AttnShape{s.B, s.Hq, s.Hkv, nq_r, nk_r, S * s.D, 0};
    r.scale = a.effective_scale() / float(S);
    r.causal = a.causal;  // bottom-right on reshaped rows: j <= i + (Nk - Nq) / S
    block_attention_map(r, rb, rb, BlockPool::Sum, W.data());
  }

  std::vector<double> tau(p.threshold.size());
  for (size_t i = 0; i < tau.size(); ++i) tau[i] = decimal_double(p.threshold[i]);

#pragma omp parallel for schedule(dynamic, 16)
  for (long long t = 0; t < (long long)s.B * s.Hq * nqb; ++t) {
    const int r = int(t % nqb), h = int(t / nqb % s.Hq), b = int(t / nqb / s.Hq);
    const float* w = W.data() + size_t(t) * nkw;
    uint8_t* row = mask.row(b, h, r);
    double total = 0.0;
    for (int c = 0; c < nkw; ++c) total += w[c];
    const double required = total * tau[tau.size() == 1 ? 0 : h];
    const int R = r + row0;  // global block row; its diagonal block column is R
    // Forced columns (official causal): {0, diagonal}; in the first chunk the chunk's identity block
    // is written over columns [0, chunk), clearing column 0 for every row but the first, so only
    // the diagonal is forced there. Non-causal: none.
    std::vector<int> forced;
    if (a.causal) forced = R < first_chunk_rows ? std::vector<int>{R} : std::vector<int>{0, R};
    double F = 0.0;
    for (int c : forced) F += w[c];
    std::vector<int> others;
    std::vector<float> vals;
    const int last = a.causal ? R : nkw - 1;  // causal: later columns hold zeros and are cleared
    for (int c = 0; c <= last; ++c)
      if (std::find(forced.begin(), forced.end(), c) == forced.end()) {
        others.push_back(c);
        vals.push_back(w[c]);
      }
    const std::vector<int> order = order_descending(vals.data(), int(vals.size()));
    // find_blocks_chunked: positions in order (forced first, then others by mass), position p kept
    // iff cum[p] < required, cum = cumsum([0] + sorted[:-1]) with sorted = [0, F, others...] when
    // causal and [others...] when not. With one forced column this credits the diagonal one step
    // late: the top other block is always kept.
    for (int c : forced) row[c] = 1;
    double cum = 0.0;
    const int nf = int(forced.size());
    for (int pos = 0; pos < nf + int(order.size()); ++pos) {
      if (pos > 0) {
        const int prev = pos - 1;  // sorted[prev]
        double add;
        if (a.causal)
          add = prev == 0 ? 0.0 : prev == 1 ? F : (prev - 2 < int(order.size()) ? vals[order[prev - 2]] : 0.0);
        else
          add = vals[order[prev]];
        cum += add;
      }
      if (pos < nf) continue;
      const int c = others[order[pos - nf]];
      if (cum < required && c < nkb) row[c] = 1;
    }
    // Unselected slots are written onto column 0, so it is always set (when every slot is selected,
    // column 0 is one of them).
    row[0] = 1;
  }

  // Post-processing as xattn_estimate: keep_sink sets the first query-block row (every column),
  // keep_recent the diagonal blocks.
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h) {
      if (p.keep_sink) std::fill(mask.row(b, h, 0), mask.row(b, h, 0) + nkb, 1);
      if (p.keep_recent)
        for (int r = 0; r < nqb; ++r)
          if (r + row0 < nkb) mask.row(b, h, r)[r + row0] = 1;
    }
  return mask;
}

}  // namespace spattn
