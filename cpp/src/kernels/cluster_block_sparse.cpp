// Variable-size block attention over clusters (SVG2: Yang et al., "Sparse VideoGen2: Accelerate
// Video Generation with Sparse Attention via Semantic-Aware Permutation", arXiv 2505.18875, 2025;
// official svg-project/Sparse-VideoGen runs a flashinfer fork with variable block sizes on
// q, k, v permuted so that every cluster is contiguous, `dynamic_block_sparse_fwd_torch` being its
// pure-torch twin). The cluster order of the queries and keys comes from a stable counting sort of
// the labels (positions ascending inside a cluster); Q, K and V are copied once in that order (O(N)
// memory, as the official permutation), so a query cluster's rows and a key cluster's keys are
// contiguous. A work item (b, query head, up to 128 rows of one query cluster) reads the spans of
// its selected key clusters in place as segments of tiles, and its output rows are scattered back
// to their original positions. Causal (a spattn extension): keys every row of the item sees are
// such spans, run unmasked; the others are gathered by position and masked per element.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

void ClusteredView::check_labels() const {
  const auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  if (B < 1 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || Nq < 0 || Nk < 0 || Cq < 0 || Ck < 0)
    fail("clustered pattern: invalid sizes B=" + std::to_string(B) + ", Hq=" + std::to_string(Hq) + ", Hkv=" +
         std::to_string(Hkv) + ", Nq=" + std::to_string(Nq) + ", Nk=" + std::to_string(Nk));
  if ((Nq > 0 && Cq < 1) || (Nk > 0 && Ck < 1))
    fail("clustered pattern: at least one query / key cluster is needed, got Cq=" + std::to_string(Cq) +
         ", Ck=" + std::to_string(Ck));
  for (size_t i = 0, n = size_t(B) * Hq * Nq; i < n; ++i)
    if (q_labels[i] < 0 || q_labels[i] >= Cq)
      fail("q_labels must lie in [0, Cq=" + std::to_string(Cq) + "), got " + std::to_string(q_labels[i]));
  for (size_t i = 0, n = size_t(B) * Hkv * Nk; i < n; ++i)
    if (k_labels[i] < 0 || k_labels[i] >= Ck)
      fail("k_labels must lie in [0, Ck=" + std::to_string(Ck) + "), got " + std::to_string(k_labels[i]));
}

void ClusteredView::check_against(const AttnShape& s) const {
  if (B != s.B || Hq != s.Hq || Hkv != s.Hkv || Nq != s.Nq || Nk != s.Nk)
    throw std::invalid_argument(
        "clustered pattern was made for (B, Hq, Hkv, Nq, Nk) = (" + std::to_string(B) + ", " + std::to_string(Hq) +
        ", " + std::to_string(Hkv) + ", " + std::to_string(Nq) + ", " + std::to_string(Nk) + "), got (" +
        std::to_string(s.B) + ", " + std::to_string(s.Hq) + ", " + std::to_string(s.Hkv) + ", " +
        std::to_string(s.Nq) + ", " + std::to_string(s.Nk) + ")");
  check_labels();
}

namespace {

constexpr int kClusterRows = 128;  // query rows per work item

// Cluster order of every label row: off (rows, C + 1) start offsets, ord (rows, N) positions, stable.
struct ClusterOrder {
  int C = 0, N = 0;
  std::vector<int32_t> off, ord;
  ClusterOrder(const int32_t* labels, long long rows, int N_, int C_) : C(C_), N(N_) {
    off.assign(size_t(rows) * (C + 1), 0);
    ord.resize(size_t(rows) * N);
#pragma omp parallel for schedule(static)
    for (long long r = 0; r < rows; ++r) {
      const int32_t* lab = labels + size_t(r) * N;
      int32_t* o = off.data() + size_t(r) * (C + 1);
      for (int i = 0; i < N; ++i) ++o[lab[i] + 1];
      for (int c = 0; c < C; ++c) o[c + 1] += o[c];
      std::vector<int32_t> fill(o, o + C);
      int32_t* dst = ord.data() + size_t(r) * N;
      for (int i = 0; i < N; ++i) dst[fill[size_t(lab[i])]++] = i;
    }
  }
  const int32_t* offsets(long long r) const { return off.data() + size_t(r) * (C + 1); }
  const int32_t* order(long long r) const { return ord.data() + size_t(r) * N; }
};

// The keys of query cluster `ci` of (b, h) that rows with causal limits in [lo, hi] may see: the
// ones every row sees (position <= lo, or all when not causal) as spans [begin, end) of the
// cluster order (contiguous in the cluster-ordered K / V) in `open`, the others (position in
// (lo, hi]) sorted by position in `masked`.
void cluster_keys(const ClusteredView& cv, const ClusterOrder& ko, int b, int h, int ci, bool causal, int lo, int hi,
                  std::vector<int32_t>& open, std::vector<int32_t>& masked) {
  open.clear();
  masked.clear();
  const long long kr = (long long)b * cv.Hkv + h / (cv.Hq / cv.Hkv);
  const int32_t* off = ko.offsets(kr);
  const int32_t* ord = ko.order(kr);
  const uint8_t* row = cv.map_row(b, h, ci);
  for (int j = 0; j < cv.Ck; ++j) {
    if (!row[j] || off[j] == off[j + 1]) continue;
    if (!causal) {
      open.insert(open.end(), {off[j], off[j + 1]});
      continue;
    }
    const int32_t* p0 = ord + off[j];
    const int32_t* p1 = ord + off[j + 1];
    const int32_t* p = std::upper_bound(p0, p1, lo);  // ascending inside the cluster
    if (p > p0) open.insert(open.end(), {off[j], off[j] + int32_t(p - p0)});
    for (; p < p1 && *p <= hi; ++p) masked.push_back(*p);
  }
  std::sort(masked.begin(), masked.end());
}

struct Item {
  int b, h, ci, p0, p1;  // rows [p0, p1) of the cluster order of (b, h), all in query cluster ci
};

struct ClusterVariant {
  const AttnArgs& a;   // the caller's arguments (original q, k, v, out, lse)
  const AttnArgs& ac;  // q, k, v in cluster order
  const detail::TransposedK& kt;  // of ac.k
  const ClusteredView& cv;
  const ClusterOrder& qo;
  const ClusterOrder& ko;
  const std::vector<Item>& list;
  struct Local {
    detail::GatheredKeys gk;
    std::vector<int32_t> open, masked;
  };

  long long items() const { return (long long)list.size(); }
  detail::WorkItem item(long long it) const {
    const Item& x = list[size_t(it)];
    detail::WorkItem w;
    w.b = x.b;
    w.h0 = x.h;
    w.hk = x.h / a.shape.group();
    w.i0 = x.p0;  // rows of the cluster-ordered Q
    w.i1 = x.p1;
    w.part = int(it);  // the item, for keys() / finish()
    return w;
  }
  Local local() const {
    return {detail::GatheredKeys(detail::kKeyTile, a.shape.D, a.shape.Dv, std::min(kClusterRows, a.shape.Nq)), {}, {}};
  }
  const int32_t* positions(const detail::WorkItem& w) const {
    return qo.order((long long)w.b * cv.Hq + w.h0) + w.i0;
  }
  // Keys every row sees are read in place from the cluster-ordered K / V (a selected cluster is a
  // contiguous span there); the keys only some rows see (causal) are gathered by position and
  // masked per element.
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const AttnShape& s = a.shape;
    const Item& x = list[size_t(w.part)];
    const int32_t* pos = positions(w);
    const int off = s.causal_offset();
    int lo = s.Nk, hi = -1;
    for (int r = 0; r < w.n(); ++r) {  // causal limits of the original positions
      t.qlim[r] = pos[r] + off;
      lo = std::min(lo, t.qlim[r]);
      hi = std::max(hi, t.qlim[r]);
    }
    cluster_keys(cv, ko, x.b, x.h, x.ci, a.causal, lo, hi, l.open, l.masked);
    const detail::OnlineSoftmax step{};
    detail::SpanTiler<detail::OnlineSoftmax> tiler(step);
    const float* vcs = detail::value_head(ac, w);
    for (size_t i = 0; i < l.open.size(); i += 2)
      tiler.add(t, w.rows(), kt, w.b, w.hk, vcs, s.Dv, l.open[i], l.open[i + 1], false);
    tiler.flush(t, w.rows());
    const float* kh = a.k + s.k_index(w.b, w.hk, 0);
    const float* vh = detail::value_head(a, w);
    for (size_t c = 0; c < l.masked.size(); c += size_t(t.bk)) {
      const int n = int(std::min(l.masked.size() - c, size_t(t.bk)));
      const int got = l.gk.gather(l.masked.data() + c, n, kh, vh, s.D, s.Dv);
      l.gk.run(t, w.rows(), got, s.Dv, true, step);
    }
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    const int32_t* pos = positions(w);
    for (int r = 0; r < w.n(); ++r) detail::store_row(t, r, a, w.b, w.h0, pos[r]);
  }
};

}  // namespace

void cluster_block_attention(const AttnArgs& a, const ClusteredView& cv) {
  const AttnShape& s = a.shape;
  s.validate();
  if (a.kv != KVStorage::F32) throw std::invalid_argument("cluster_block_attention: K/V must be float32");
  cv.check_against(s);
  if (s.Nq == 0) return;
  const ClusterOrder qo(cv.q_labels, (long long)s.B * s.Hq, s.Nq, cv.Cq);
  const ClusterOrder ko(cv.k_labels, (long long)s.B * s.Hkv, s.Nk, cv.Ck);
  // Q in cluster order (same layout as q), and the work items: chunks of each query cluster.
  std::vector<float> qc(size_t(s.B) * s.Hq * s.Nq * s.D);
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < (long long)s.B * s.Hq; ++bh) {
    const int32_t* ord = qo.order(bh);
    const float* src = a.q + size_t(bh) * s.Nq * s.D;
    float* dst = qc.data() + size_t(bh) * s.Nq * s.D;
    for (int p = 0; p < s.Nq; ++p) std::copy_n(src + size_t(ord[p]) * s.D, s.D, dst + size_t(p) * s.D);
  }
  std::vector<Item> list;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h) {
      const int32_t* off = qo.offsets((long long)b * s.Hq + h);
      for (int ci = 0; ci < cv.Cq; ++ci)
        for (int p = off[ci]; p < off[ci + 1]; p += kClusterRows)
          list.push_back({b, h, ci, p, std::min(off[ci + 1], p + kClusterRows)});
    }
  // K and V in cluster order (one O(N) copy): a selected key cluster is a span read in place.
  std::vector<float> kc(size_t(s.B) * s.Hkv * s.Nk * s.D), vc(size_t(s.B) * s.Hkv * s.Nk * s.Dv);
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < (long long)s.B * s.Hkv; ++bh) {
    const int32_t* ord = ko.order(bh);
    const int b = int(bh / s.Hkv), hk = int(bh % s.Hkv);
    const float* ks = a.k + s.k_index(b, hk, 0);
    const float* vs = s.Dv > 0 ? a.v + s.v_index(b, hk, 0) : nullptr;
    for (int p = 0; p < s.Nk; ++p) {
      std::copy_n(ks + size_t(ord[p]) * s.D, s.D, kc.data() + (size_t(bh) * s.Nk + p) * s.D);
      if (vs) std::copy_n(vs + size_t(ord[p]) * s.Dv, s.Dv, vc.data() + (size_t(bh) * s.Nk + p) * s.Dv);
    }
  }
  AttnArgs ac = a;
  ac.q = qc.data();
  ac.k = kc.data();
  ac.v = s.Dv > 0 ? vc.data() : nullptr;
  ac.shape.kv_capacity = 0;  // kc / vc hold Nk rows per kv head
  const int rows = std::min(kClusterRows, s.Nq);
  const detail::TransposedK kt(ac, detail::use_transposed_k(rows));
  const ClusterVariant var{a, ac, kt, cv, qo, ko, list};
  detail::run_tiles(ac, var, rows, s.Dv);
}

std::vector<double> cluster_block_pairs(const ClusteredView& cv, bool causal) {
  cv.check_labels();
  const ClusterOrder qo(cv.q_labels, (long long)cv.B * cv.Hq, cv.Nq, cv.Cq);
  const ClusterOrder ko(cv.k_labels, (long long)cv.B * cv.Hkv, cv.Nk, cv.Ck);
  std::vector<double> pairs(size_t(cv.B) * cv.Hq, 0.0);
  const int off = cv.Nk - cv.Nq;
#pragma omp parallel
  {
    std::vector<int32_t> open, masked;
#pragma omp for schedule(dynamic, 1)
    for (long long bh = 0; bh < (long long)cv.B * cv.Hq; ++bh) {
      const int b = int(bh / cv.Hq), h = int(bh % cv.Hq);
      const int32_t* qoff = qo.offsets(bh);
      const int32_t* qord = qo.order(bh);
      double total = 0.0;
      for (int ci = 0; ci < cv.Cq; ++ci) {
        if (qoff[ci] == qoff[ci + 1]) continue;
        if (!causal) {  // |Q_i| * sum of the selected |K_j| (the official density_calculation)
          const int32_t* koff = ko.offsets((long long)b * cv.Hkv + h / (cv.Hq / cv.Hkv));
          const uint8_t* row = cv.map_row(b, h, ci);
          double keys = 0.0;
          for (int j = 0; j < cv.Ck; ++j)
            if (row[j]) keys += koff[j + 1] - koff[j];
          total += keys * (qoff[ci + 1] - qoff[ci]);
          continue;
        }
        const int hi = qord[qoff[ci + 1] - 1] + off;  // positions ascend inside a cluster
        cluster_keys(cv, ko, b, h, ci, true, -1, hi, open, masked);
        for (int p = qoff[ci]; p < qoff[ci + 1]; ++p)  // keys at positions <= the row's limit
          total += double(std::upper_bound(masked.begin(), masked.end(), qord[p] + off) - masked.begin());
      }
      pairs[size_t(bh)] = total;
    }
  }
  return pairs;
}

std::vector<int32_t> cluster_block_token_indices(const ClusteredView& cv, bool causal, int* kmax) {
  cv.check_labels();
  const ClusterOrder ko(cv.k_labels, (long long)cv.B * cv.Hkv, cv.Nk, cv.Ck);
  const long long rows = (long long)cv.B * cv.Hq * cv.Nq;
  std::vector<std::vector<int32_t>> keys(static_cast<size_t>(rows));
  const int off = cv.Nk - cv.Nq;
#pragma omp parallel
  {
    std::vector<int32_t> open, masked;
#pragma omp for schedule(dynamic, 16)
    for (long long r = 0; r < rows; ++r) {
      const int i = int(r % cv.Nq), h = int((r / cv.Nq) % cv.Hq), b = int(r / ((long long)cv.Nq * cv.Hq));
      const int ci = cv.q_row(b, h)[i];
      cluster_keys(cv, ko, b, h, ci, causal, -1, causal ? i + off : cv.Nk, open, masked);
      std::vector<int32_t>& k = keys[size_t(r)];
      k = masked;
      const int32_t* ord = ko.order((long long)b * cv.Hkv + h / (cv.Hq / cv.Hkv));
      for (size_t s2 = 0; s2 < open.size(); s2 += 2) k.insert(k.end(), ord + open[s2], ord + open[s2 + 1]);
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
