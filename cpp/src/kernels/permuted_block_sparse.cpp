// Block-sparse attention over permuted keys (PBS-Attn, Wang et al., "Sparser Block-Sparse Attention
// via Token Permutation", 2025; official xinghaow99/pbs-attn runs a permuted FlashAttention in
// Triton with the causal rule on original positions). Each work item (batch, query head, query
// block) collects the original positions of the keys in its selected permuted blocks: keys of
// blocks that lie wholly before the block's first query (the earlier segments, in PBS) run
// unmasked in any order; the rest are dropped past the block's last query, sorted, and run with
// the per-element causal rule. Keys are gathered tile by tile into the thread's buffer (K^T for
// the micro-kernel): no permuted copy of K/V and no per-block index lists are stored.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

void PermutedBlocksView::check_against(const AttnShape& s) const {
  const auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  if (block < 1) fail("permuted blocks: block must be >= 1, got " + std::to_string(block));
  if (s.Nq != s.Nk || s.Nk != len)
    fail("permuted blocks were made for Nq = Nk = " + std::to_string(len) + ", got Nq=" + std::to_string(s.Nq) +
         ", Nk=" + std::to_string(s.Nk));
  if (B != s.B || H != s.Hq)
    fail("permuted blocks have (B, H) = (" + std::to_string(B) + ", " + std::to_string(H) + "), q has (" +
         std::to_string(s.B) + ", " + std::to_string(s.Hq) + ")");
  if (nb != ceil_div(len, block))
    fail("permuted blocks: the block map must have ceil(len / block) = " + std::to_string(ceil_div(len, block)) +
         " rows and columns, got " + std::to_string(nb));
  std::vector<uint8_t> seen(static_cast<size_t>(len));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::fill(seen.begin(), seen.end(), 0);
      const int32_t* p = perm_row(b, h);
      for (int i = 0; i < len; ++i) {
        if (p[i] < 0 || p[i] >= len || seen[size_t(p[i])])
          fail("perm must be a permutation of 0 .. len-1 in every (b, h) row (b=" + std::to_string(b) + ", h=" +
               std::to_string(h) + ")");
        seen[size_t(p[i])] = 1;
      }
    }
}

namespace {

// Keys of query block [i0, i1) of (b, h): fully visible ones (every position < i0) in `open`,
// the others that some row sees (position < i1), sorted, in `masked`.
void block_keys(const PermutedBlocksView& pb, int b, int h, int qb, int i0, int i1, std::vector<int32_t>& open,
                std::vector<int32_t>& masked) {
  open.clear();
  masked.clear();
  const int32_t* perm = pb.perm_row(b, h);
  const uint8_t* row = pb.block_row(b, h, qb);
  for (int kb = 0; kb < pb.nb; ++kb) {
    if (!row[kb]) continue;
    const int p0 = kb * pb.block, p1 = std::min(pb.len, p0 + pb.block);
    int mx = -1;
    for (int p = p0; p < p1; ++p) mx = std::max(mx, int(perm[p]));
    if (mx < i0) {
      open.insert(open.end(), perm + p0, perm + p1);
      continue;
    }
    for (int p = p0; p < p1; ++p)
      if (perm[p] < i1) masked.push_back(perm[p]);
  }
  std::sort(masked.begin(), masked.end());
}

struct PermutedVariant {
  const AttnArgs& a;
  const PermutedBlocksView& pb;
  struct Local {
    detail::GatheredKeys gk;
    std::vector<int32_t> open, masked;
  };

  long long items() const { return (long long)a.shape.B * a.shape.Hq * pb.nb; }
  detail::WorkItem item(long long it) const {
    detail::WorkItem w;
    const int g = pb.nb - 1 - int(it % pb.nb);  // latest blocks (most keys) first
    w.h0 = int((it / pb.nb) % a.shape.Hq);
    w.b = int(it / ((long long)pb.nb * a.shape.Hq));
    w.hk = w.h0 / a.shape.group();
    w.i0 = g * pb.block;
    w.i1 = std::min(a.shape.Nq, w.i0 + pb.block);
    return w;
  }
  Local local() const {
    return {detail::GatheredKeys(detail::kKeyTile, a.shape.D, a.shape.Dv, std::min(pb.block, a.shape.Nq)), {}, {}};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const AttnShape& s = a.shape;
    block_keys(pb, w.b, w.h0, w.i0 / pb.block, w.i0, w.i1, l.open, l.masked);
    const float* kh = a.k + s.k_index(w.b, w.hk, 0);
    const float* vh = detail::value_head(a, w);
    const detail::OnlineSoftmax step{};
    for (const auto* list : {&l.open, &l.masked}) {
      const bool masked = list == &l.masked;
      for (size_t c = 0; c < list->size(); c += size_t(t.bk)) {
        const int n = int(std::min(list->size() - c, size_t(t.bk)));
        const int got = l.gk.gather(list->data() + c, n, kh, vh, s.D, s.Dv);
        l.gk.run(t, w.rows(), got, s.Dv, masked, step);
      }
    }
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const { detail::store_item(t, a, w); }
};

}  // namespace

void permuted_block_attention(const AttnArgs& a, const PermutedBlocksView& pb) {
  const AttnShape& s = a.shape;
  s.validate();
  if (!a.causal) throw std::invalid_argument("permuted_block_attention: defined for causal attention (as PBS-Attn)");
  if (a.kv != KVStorage::F32) throw std::invalid_argument("permuted_block_attention: K/V must be float32");
  pb.check_against(s);
  if (s.Nq == 0) return;
  const PermutedVariant var{a, pb};
  detail::run_tiles(a, var, std::min(pb.block, s.Nq), s.Dv);
}

std::vector<double> permuted_block_pairs(const PermutedBlocksView& pb) {
  std::vector<double> pairs(size_t(pb.B) * pb.H, 0.0);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < (long long)pb.B * pb.H; ++bh) {
    const int b = int(bh / pb.H), h = int(bh % pb.H);
    const int32_t* perm = pb.perm_row(b, h);
    double total = 0.0;
    for (int qb = 0; qb < pb.nb; ++qb) {
      const int i0 = qb * pb.block, i1 = std::min(pb.len, i0 + pb.block);
      const uint8_t* row = pb.block_row(b, h, qb);
      for (int kb = 0; kb < pb.nb; ++kb) {
        if (!row[kb]) continue;
        for (int p = kb * pb.block; p < std::min(pb.len, (kb + 1) * pb.block); ++p)
          total += std::max(0, i1 - std::max(i0, int(perm[p])));  // rows i in [max(i0, pos), i1)
      }
    }
    pairs[size_t(bh)] = total;
  }
  return pairs;
}

std::vector<int32_t> permuted_block_token_indices(const PermutedBlocksView& pb, int* kmax) {
  const long long rows = (long long)pb.B * pb.H * pb.nb;
  std::vector<std::vector<int32_t>> keys(static_cast<size_t>(rows));
#pragma omp parallel
  {
    std::vector<int32_t> open, masked;
#pragma omp for schedule(dynamic, 16)
    for (long long r = 0; r < rows; ++r) {
      const int qb = int(r % pb.nb), h = int((r / pb.nb) % pb.H), b = int(r / ((long long)pb.nb * pb.H));
      const int i0 = qb * pb.block, i1 = std::min(pb.len, i0 + pb.block);
      block_keys(pb, b, h, qb, i0, i1, open, masked);
      std::vector<int32_t>& k = keys[size_t(r)];
      k = open;
      k.insert(k.end(), masked.begin(), masked.end());
      std::sort(k.begin(), k.end());
    }
  }
  size_t K = 0;
  for (const auto& k : keys) K = std::max(K, k.size());
  *kmax = int(K);
  std::vector<int32_t> idx(size_t(rows) * K, -1);
  for (long long r = 0; r < rows; ++r) std::copy(keys[size_t(r)].begin(), keys[size_t(r)].end(), idx.begin() + size_t(r) * K);
  return idx;
}

}  // namespace spattn
