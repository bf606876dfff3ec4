// Neighbourhood attention (NATTEN's na1d / na2d / na3d with kernel size, dilation, stride (GNA)
// and per-axis causality; rule in spattn/neighborhood.hpp) on the tile engine.
//
// The axes are padded to three at the front ((N) -> (1, 1, N), (X, Y) -> (1, X, Y)). A work item
// is a box of queries of one dilation group (a chunk of the axis in 1D; about 64 queries in 2D /
// 3D, shaped so that the keys it reads per query are few: box_shape), its rows stacked over the
// query heads of a GQA group. Its keys are the rows (x0, x1) of the union of its queries' windows
// along the leading axes; each such row gives one contiguous run along the last axis, read in
// place (K^T tiles or K rows) as a segment of a tile of up to bk keys (several short runs share
// a tile). Per tile, each query hides the keys outside its own window (its last-axis interval in
// the key rows its leading-axis window holds) as -inf logits before the online-softmax update.
// No Nq x Nk buffer, no gathered keys.
//
// Copies (O(N) memory): q is read in box order and out / lse written back from it when the boxes
// are not already the token order (2D / 3D); with dilation > 1 on some axis k and v are copied
// into dilation-group order (each group a contiguous sub-grid of extents na_group_length, as
// NATTEN's token permutation does) and attention runs with dilation 1 inside each group.
// Box sizes follow a count of the keys each box reads (box_shape), not a measurement: no
// benchmark of this kernel has been run yet.
#include "spattn/neighborhood.hpp"

#include <algorithm>
#include <climits>
#include <string>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

const char* kAxisNames[3] = {"0", "1", "2"};

std::string axis_msg(const char* arg, int axis, int value) {
  return std::string(arg) + "[" + kAxisNames[axis] + "]=" + std::to_string(value);
}

}  // namespace

void NeighborhoodSpec::validate() const {
  if (rank < 1 || rank > 3) throw std::invalid_argument("rank must be 1, 2 or 3, got " + std::to_string(rank));
  for (int i = 0; i < rank; ++i) {
    const std::string ax = " along axis " + std::to_string(i);
    if (extent[i] < 1)
      throw std::invalid_argument("extent must be >= 1 along every axis, got " + axis_msg("extent", i, extent[i]));
    if (kernel[i] < 1)
      throw std::invalid_argument("kernel_size must be >= 1, got " + axis_msg("kernel_size", i, kernel[i]));
    if (dilation[i] < 1)
      throw std::invalid_argument("dilation must be >= 1, got " + axis_msg("dilation", i, dilation[i]));
    if (stride[i] < 1 || stride[i] > kernel[i])
      throw std::invalid_argument("stride must lie in [1, kernel_size=" + std::to_string(kernel[i]) + "]" + ax +
                                  ", got " + axis_msg("stride", i, stride[i]));
    if (kernel[i] > extent[i])
      throw std::invalid_argument("kernel_size must be <= the extent " + std::to_string(extent[i]) + ax + ", got " +
                                  axis_msg("kernel_size", i, kernel[i]));
    if ((long long)kernel[i] * dilation[i] > extent[i])
      throw std::invalid_argument("kernel_size * dilation must be <= the extent " + std::to_string(extent[i]) + ax +
                                  ", got " + axis_msg("kernel_size", i, kernel[i]) + " * " +
                                  axis_msg("dilation", i, dilation[i]) + " = " +
                                  std::to_string((long long)kernel[i] * dilation[i]));
  }
  if (tokens() > INT_MAX)
    throw std::invalid_argument("the product of the extents must be <= 2**31 - 1, got " + std::to_string(tokens()));
}

long long NeighborhoodSpec::tokens() const {
  long long n = 1;
  for (int i = 0; i < rank; ++i) n *= extent[i];
  return n;
}

int na_group_length(int n, int dilation, int group) { return n / dilation + (group < n % dilation ? 1 : 0); }

NaRange na_window(int u, int n_group, int kernel, int stride, bool causal) {
  if (causal) {
    const int leader = std::min((u / stride) * stride + stride - 1, n_group - 1);
    return {std::max(leader - kernel + 1, 0), std::min(u + 1, n_group)};
  }
  const int leader = std::min((u / stride) * stride + stride / 2, n_group - 1);
  const int start = std::clamp(leader - kernel / 2, 0, n_group - kernel);
  return {start, start + kernel};
}

namespace {

// The spec on three axes, padded at the front with axes of extent 1.
struct Padded {
  std::array<int, 3> n{1, 1, 1}, k{1, 1, 1}, d{1, 1, 1}, s{1, 1, 1};
  std::array<bool, 3> c{false, false, false};
  explicit Padded(const NeighborhoodSpec& sp) {
    const int shift = 3 - sp.rank;
    for (int i = 0; i < sp.rank; ++i) {
      n[shift + i] = sp.extent[i];
      k[shift + i] = sp.kernel[i];
      d[shift + i] = sp.dilation[i];
      s[shift + i] = sp.stride[i];
      c[shift + i] = sp.causal[i];
    }
  }
  bool dilated() const { return d[0] > 1 || d[1] > 1 || d[2] > 1; }
  NaRange window(int axis, int u, int m) const { return na_window(u, m, k[axis], s[axis], c[axis]); }
};

// One dilation group (g0, g1, g2): a sub-grid of extents m stored contiguously from `offset` in
// the (permuted) token order.
struct Group {
  int offset;
  std::array<int, 3> m, g;
};

std::vector<Group> dilation_groups(const Padded& p) {
  std::vector<Group> out;
  int offset = 0;
  for (int g0 = 0; g0 < p.d[0]; ++g0)
    for (int g1 = 0; g1 < p.d[1]; ++g1)
      for (int g2 = 0; g2 < p.d[2]; ++g2) {
        Group g{offset, {na_group_length(p.n[0], p.d[0], g0), na_group_length(p.n[1], p.d[1], g1),
                         na_group_length(p.n[2], p.d[2], g2)}, {g0, g1, g2}};
        offset += g.m[0] * g.m[1] * g.m[2];
        out.push_back(g);
      }
  return out;
}

// perm[new] = old token index: the tokens of each dilation group in row-major order of (u0, u1, u2).
std::vector<int> group_order(const Padded& p, const std::vector<Group>& gs) {
  std::vector<int> perm;
  perm.reserve(static_cast<size_t>(p.n[0]) * p.n[1] * p.n[2]);
  for (const Group& g : gs)
    for (int u0 = 0; u0 < g.m[0]; ++u0)
      for (int u1 = 0; u1 < g.m[1]; ++u1)
        for (int u2 = 0; u2 < g.m[2]; ++u2)
          perm.push_back(((g.g[0] + p.d[0] * u0) * p.n[1] + g.g[1] + p.d[1] * u1) * p.n[2] + g.g[2] + p.d[2] * u2);
  return perm;
}

// dst row (b, h, i) = src row (b, h, perm[i]) (forward) or dst row (b, h, perm[i]) = src row
// (b, h, i) (back), rows of `width` floats, `heads` heads, N tokens.
void permute_rows(const float* src, float* dst, const std::vector<int>& perm, int B, int heads, int width,
                  bool forward) {
  const long long N = (long long)perm.size();
  if (width == 0) return;
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < (long long)B * heads; ++bh) {
    const float* s = src + size_t(bh) * N * width;
    float* d = dst + size_t(bh) * N * width;
    for (long long i = 0; i < N; ++i) {
      const size_t from = size_t(forward ? perm[size_t(i)] : i), to = size_t(forward ? i : perm[size_t(i)]);
      std::copy_n(s + from * width, width, d + to * width);
    }
  }
}

// The queries of one work item: a box of a dilation group's sub-grid (origin a, sizes b), rows
// [i0, i0 + b0 b1 b2) of the query order (box after box, row-major inside a box).
struct Box {
  int group, i0;
  std::array<int, 3> a, b;
  int size() const { return b[0] * b[1] * b[2]; }
};

// Box sizes for a group. One axis (N): chunks of about max(32, K) queries, at most bq: a chunk of
// c queries reads c + K - 1 keys, each query using K. Two or three axes: about `rows` queries,
// grown by doubling the axis whose key reads per query, (t + K - 1) / t, are the largest, since a
// box of sizes t reads prod(t + K - 1) keys. Chosen by these counts, not by measurement.
// A box extent along an axis with stride s > 1 (GNA): queries of one stride group share their
// window, so a box that holds whole stride groups, or a part of one, reads no key that none of
// its queries sees for that reason. The extent t becomes a multiple of s (the nearest, >= s) when
// t >= s; else the largest divisor of s not above t when it keeps at least half of t, and else
// one whole stride group (s, when s <= 4 t: a 7x7x7 or 13x13 group is one box rather than boxes
// of one query); boxes then start at multiples of it.
int stride_aligned(int t, int s, int m) {
  if (s <= 1 || t >= m) return t;
  if (t >= s) return std::min(m, std::max(s, (t + s / 2) / s * s));
  int d = t;
  while (s % d != 0) --d;
  if (2 * d >= t) return d;
  return s <= 4 * t ? std::min(s, m) : t;
}

std::array<int, 3> box_shape(const Padded& p, const Group& g, int bq) {
  std::array<int, 3> t{1, 1, 1};
  if (g.m[0] == 1 && g.m[1] == 1) {
    const int m = g.m[2], chunk = std::min(bq, std::max(32, p.k[2]));
    const int chunks = std::max({1, ceil_div(m, bq), m / chunk});
    t[2] = stride_aligned(ceil_div(m, chunks), p.s[2], m);
    return t;
  }
  const int rows = std::min(bq, 64);
  while (t[0] * t[1] * t[2] < rows) {
    int best = -1;
    double waste = 0.0;
    for (int ax = 2; ax >= 0; --ax) {
      if (t[ax] >= g.m[ax]) continue;
      const double w = double(t[ax] + p.k[ax] - 1) / t[ax];
      if (best < 0 || w > waste) best = ax, waste = w;
    }
    if (best < 0) break;
    t[best] = std::min(2 * t[best], g.m[best]);
  }
  for (int ax = 0; ax < 3; ++ax) t[ax] = stride_aligned(t[ax], p.s[ax], g.m[ax]);
  return t;
}

// The boxes of every group, in query order, and that order: order[new] = old token index.
void query_boxes(const Padded& p, const std::vector<Group>& gs, int bq, std::vector<Box>& boxes,
                 std::vector<int>& order) {
  order.clear();
  for (int gi = 0; gi < int(gs.size()); ++gi) {
    const Group& g = gs[gi];
    const std::array<int, 3> t = box_shape(p, g, bq);
    std::array<int, 3> nb;
    for (int ax = 0; ax < 3; ++ax) nb[ax] = ceil_div(g.m[ax], t[ax]);
    // Balanced boxes, or boxes of exactly t along an axis with stride > 1 (aligned to its groups).
    const auto edge = [&](int ax, int i) {
      return p.s[ax] > 1 ? std::min(g.m[ax], i * t[ax]) : int((long long)g.m[ax] * i / nb[ax]);
    };
    for (int c0 = 0; c0 < nb[0]; ++c0)
      for (int c1 = 0; c1 < nb[1]; ++c1)
        for (int c2 = 0; c2 < nb[2]; ++c2) {
          Box bx{gi, int(order.size()), {edge(0, c0), edge(1, c1), edge(2, c2)}, {}};
          bx.b = {edge(0, c0 + 1) - bx.a[0], edge(1, c1 + 1) - bx.a[1], edge(2, c2 + 1) - bx.a[2]};
          for (int u0 = bx.a[0]; u0 < bx.a[0] + bx.b[0]; ++u0)
            for (int u1 = bx.a[1]; u1 < bx.a[1] + bx.b[1]; ++u1)
              for (int u2 = bx.a[2]; u2 < bx.a[2] + bx.b[2]; ++u2)
                order.push_back(((g.g[0] + p.d[0] * u0) * p.n[1] + g.g[1] + p.d[1] * u1) * p.n[2] + g.g[2] +
                                p.d[2] * u2);
          boxes.push_back(bx);
        }
  }
}

// The windows of a box's queries (lo / hi per axis, one entry per query in box order) and, for
// each key row (x0, x1) of their union along the two leading axes, the run [run0, run1) along
// the last axis that some query of the box sees: f(x0, x1, run0, run1). The kernel reads exactly
// these runs; neighborhood_work counts them.
template <class F>
void box_key_runs(const Padded& p, const Group& g, const Box& bx, int* const lo[3], int* const hi[3], F&& f) {
  const int n = bx.size();
  std::array<int, 3> ulo{INT_MAX, INT_MAX, INT_MAX}, uhi{INT_MIN, INT_MIN, INT_MIN};
  for (int r = 0; r < n; ++r) {
    const int u[3] = {bx.a[0] + r / (bx.b[1] * bx.b[2]), bx.a[1] + (r / bx.b[2]) % bx.b[1], bx.a[2] + r % bx.b[2]};
    for (int ax = 0; ax < 3; ++ax) {
      const NaRange w = p.window(ax, u[ax], g.m[ax]);
      lo[ax][r] = w.start;
      hi[ax][r] = w.end;
      ulo[ax] = std::min(ulo[ax], w.start);
      uhi[ax] = std::max(uhi[ax], w.end);
    }
  }
  for (int x0 = ulo[0]; x0 < uhi[0]; ++x0)
    for (int x1 = ulo[1]; x1 < uhi[1]; ++x1) {
      int run0 = INT_MAX, run1 = INT_MIN;
      for (int r = 0; r < n; ++r)
        if (lo[0][r] <= x0 && x0 < hi[0][r] && lo[1][r] <= x1 && x1 < hi[1][r]) {
          run0 = std::min(run0, lo[2][r]);
          run1 = std::max(run1, hi[2][r]);
        }
      if (run1 > run0) f(x0, x1, run0, run1);
    }
}

struct NeighborhoodVariant {
  const AttnArgs& a;  // q, out, lse in query order; k, v in dilation-group order
  const detail::TransposedK& kt;
  const Padded& p;
  const std::vector<Group>& gs;
  const std::vector<Box>& boxes;
  int max_n;

  // Per-thread scratch: each query's window (start, end) along the three axes; the segments of
  // the tile being filled with, per segment, its key row (x0, x1) and its first last-axis index;
  // per query row of a tile its visible column intervals (begin, end, segment).
  struct SegInfo {
    int x0, x1, c0;
  };
  struct Local {
    std::vector<int> w;
    std::vector<detail::KeySegment> segs;
    std::vector<SegInfo> info;
    std::vector<int> iv, iv_start;
  };

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * (long long)boxes.size(); }
  detail::WorkItem item(long long it) const {
    const long long T = (long long)boxes.size();
    detail::WorkItem w;
    const Box& bx = boxes[size_t(it % T)];
    w.hk = int((it / T) % a.shape.Hkv);
    w.b = int(it / (T * a.shape.Hkv));
    w.stack = a.shape.group();
    w.h0 = w.hk * w.stack;
    w.i0 = bx.i0;
    w.i1 = bx.i0 + bx.size();
    return w;
  }
  Local local() const {
    Local l;
    l.w.resize(static_cast<size_t>(6) * max_n);
    l.iv_start.resize(static_cast<size_t>(max_n) + 1);
    return l;
  }

  const Box& box_of(int i0) const {
    const auto it = std::upper_bound(boxes.begin(), boxes.end(), i0, [](int x, const Box& b) { return x < b.i0; });
    return *(it - 1);
  }

  // Run the tile of the collected segments (cols keys): scores, each query row's keys outside its
  // window set to -inf (rows with none visible skip the tile), online softmax, O += P V.
  void flush(detail::TileScratch& t, const detail::WorkItem& wi, Local& loc, int cols) const {
    const int n = wi.n(), rows = wi.rows(), nseg = int(loc.segs.size());
    if (cols == 0) return;
    detail::tile_scores(t, rows, loc.segs.data(), nseg, cols);
    const int* lo[3] = {loc.w.data(), loc.w.data() + n, loc.w.data() + 2 * n};
    const int* hi[3] = {loc.w.data() + 3 * n, loc.w.data() + 4 * n, loc.w.data() + 5 * n};
    loc.iv.clear();
    for (int r = 0; r < n; ++r) {
      loc.iv_start[r] = int(loc.iv.size());
      for (int g = 0, n0 = 0; g < nseg; n0 += loc.segs[g].len, ++g) {
        const SegInfo& si = loc.info[g];
        if (si.x0 < lo[0][r] || si.x0 >= hi[0][r] || si.x1 < lo[1][r] || si.x1 >= hi[1][r]) continue;
        const int len = loc.segs[g].len;
        const int b = std::clamp(lo[2][r] - si.c0, 0, len), e = std::clamp(hi[2][r] - si.c0, 0, len);
        if (e > b) loc.iv.insert(loc.iv.end(), {n0 + b, n0 + e, g});
      }
    }
    loc.iv_start[n] = int(loc.iv.size());
    float* S = t.s.data();
    for (int s = 0; s < wi.stack; ++s)
      for (int r = 0; r < n; ++r) {
        float* row = S + size_t(s * n + r) * cols;
        int pos = 0;
        for (int k = loc.iv_start[r]; k < loc.iv_start[r + 1]; k += 3) {
          std::fill(row + pos, row + loc.iv[k], detail::kNegInf);
          pos = loc.iv[k + 1];
        }
        t.ncols[s * n + r] = pos;  // entries past the last visible one are zeroed by online_softmax
      }
    t.simd.online_softmax(S, rows, cols, t.ncols.data(), t.m.data(), t.l.data(), t.acc.data(), t.dv);
    if (t.dv == 0) return;
    bool finite = true;
    for (int g = 0; g < nseg && finite; ++g)
      for (int j = 0; j < loc.segs[g].len && finite; ++j)
        for (int c = 0; c < t.dv; ++c)
          if (!std::isfinite(loc.segs[g].v[size_t(j) * loc.segs[g].ldv + c])) {
            finite = false;
            break;
          }
    if (finite) {  // hidden keys have P = 0 exactly
      for (int g = 0, n0 = 0; g < nseg; n0 += loc.segs[g].len, ++g)
        t.simd.pv(S + n0, rows, cols, loc.segs[g].v, loc.segs[g].ldv, loc.segs[g].len, t.dv, t.acc.data());
      return;
    }
    // A non-finite value row: 0 * inf would leak NaN into rows that cannot see it, so each row
    // reads only its visible intervals.
    for (int s = 0; s < wi.stack; ++s)
      for (int r = 0; r < n; ++r) {
        const int sr = s * n + r;
        for (int k = loc.iv_start[r]; k < loc.iv_start[r + 1]; k += 3) {
          const detail::KeySegment& sg = loc.segs[loc.iv[k + 2]];
          int n0 = 0;
          for (int g = 0; g < loc.iv[k + 2]; ++g) n0 += loc.segs[g].len;
          t.simd.pv(S + size_t(sr) * cols + loc.iv[k], 1, cols, sg.v + size_t(loc.iv[k] - n0) * sg.ldv, sg.ldv,
                    loc.iv[k + 1] - loc.iv[k], t.dv, t.acc.data() + size_t(sr) * t.dv);
        }
      }
  }

  void keys(detail::TileScratch& t, const detail::WorkItem& wi, Local& loc) const {
    const Box& bx = box_of(wi.i0);
    const Group& g = gs[bx.group];
    const int n = wi.n(), m1 = g.m[1], m2 = g.m[2];
    int* lo[3] = {loc.w.data(), loc.w.data() + n, loc.w.data() + 2 * n};
    int* hi[3] = {loc.w.data() + 3 * n, loc.w.data() + 4 * n, loc.w.data() + 5 * n};
    // Key rows (x0, x1) of the union of the windows; in each, the run along the last axis that
    // some query sees, read in place and packed into tiles of up to bk keys.
    const float* vh = detail::value_head(a, wi);
    loc.segs.clear();
    loc.info.clear();
    int cols = 0;
    box_key_runs(p, g, bx, lo, hi, [&](int x0, int x1, int run0, int run1) {
      const int base = g.offset + (x0 * m1 + x1) * m2;
      for (int c = run0; c < run1;) {
        const int j = base + c;
        const int take = std::min({detail::TransposedK::T - j % detail::TransposedK::T, run1 - c, t.bk - cols});
        loc.segs.push_back(detail::key_segment(kt, wi.b, wi.hk, j, take, vh, a.shape.Dv));
        loc.info.push_back({x0, x1, c});
        cols += take;
        c += take;
        if (cols == t.bk) {
          flush(t, wi, loc, cols);
          loc.segs.clear();
          loc.info.clear();
          cols = 0;
        }
      }
    });
    flush(t, wi, loc, cols);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& wi, Local&) const { detail::store_item(t, a, wi); }
};

}  // namespace

void neighborhood_attention(const AttnArgs& a, const NeighborhoodSpec& spec) {
  const AttnShape& s = a.shape;
  s.validate();
  spec.validate();
  if (a.kv != KVStorage::F32) throw std::invalid_argument("neighborhood_attention: K/V must be float32");
  if (a.causal)
    throw std::invalid_argument("neighborhood_attention: causality is per axis (spec.causal); args.causal must be false");
  const long long N = spec.tokens();
  if (s.Nq != N || s.Nk != N || s.kv_rows() != s.Nk)
    throw std::invalid_argument("neighborhood_attention: Nq and Nk must equal the product of the extents " +
                                std::to_string(N) + ", got Nq=" + std::to_string(s.Nq) + ", Nk=" +
                                std::to_string(s.Nk));
  const Padded p(spec);
  const std::vector<Group> gs = dilation_groups(p);
  const int G = s.group();
  std::vector<Box> boxes;
  std::vector<int> qorder;
  query_boxes(p, gs, std::max(16, detail::kRowsTarget / std::max(1, G)), boxes, qorder);
  int max_n = 1;
  for (const Box& bx : boxes) max_n = std::max(max_n, bx.size());
  bool q_moved = false;
  for (size_t i = 0; i < qorder.size() && !q_moved; ++i) q_moved = qorder[i] != int(i);

  const size_t rows_q = size_t(s.B) * s.Hq * N, rows_k = size_t(s.B) * s.Hkv * N;
  AttnArgs ap = a;
  std::vector<float> q, k, v, out, lse;
  if (q_moved) {
    q.resize(rows_q * s.D);
    out.resize(a.out != nullptr ? rows_q * s.Dv : 0);
    lse.resize(rows_q);
    permute_rows(a.q, q.data(), qorder, s.B, s.Hq, s.D, true);
    ap.q = q.data();
    ap.out = a.out != nullptr ? out.data() : nullptr;
    ap.lse = lse.data();
  }
  if (p.dilated()) {
    const std::vector<int> korder = group_order(p, gs);
    k.resize(rows_k * s.D);
    permute_rows(a.k, k.data(), korder, s.B, s.Hkv, s.D, true);
    ap.k = k.data();
    if (a.v != nullptr) {
      v.resize(rows_k * s.Dv);
      permute_rows(a.v, v.data(), korder, s.B, s.Hkv, s.Dv, true);
      ap.v = v.data();
    }
  }
  const int rows = G * max_n;
  const detail::TransposedK kt(ap, detail::use_transposed_k(rows));
  const NeighborhoodVariant var{ap, kt, p, gs, boxes, max_n};
  detail::run_tiles(ap, var, rows, s.Dv);
  if (q_moved) {
    if (a.out != nullptr) permute_rows(out.data(), a.out, qorder, s.B, s.Hq, s.Dv, false);
    if (a.lse != nullptr) permute_rows(lse.data(), a.lse, qorder, s.B, s.Hq, 1, false);
  }
}

std::vector<int32_t> neighborhood_token_indices(const NeighborhoodSpec& spec, int* kmax) {
  spec.validate();
  const Padded p(spec);
  const int N = int(spec.tokens());
  // Window of token i along each axis, in original coordinates: positions g + d * u, u in [start, end).
  const auto windows = [&](int i, std::array<NaRange, 3>& w, std::array<int, 3>& g) {
    const int c[3] = {i / (p.n[1] * p.n[2]), (i / p.n[2]) % p.n[1], i % p.n[2]};
    for (int ax = 0; ax < 3; ++ax) {
      g[ax] = c[ax] % p.d[ax];
      w[ax] = p.window(ax, c[ax] / p.d[ax], na_group_length(p.n[ax], p.d[ax], g[ax]));
    }
  };
  int K = 0;
  for (int i = 0; i < N; ++i) {
    std::array<NaRange, 3> w;
    std::array<int, 3> g;
    windows(i, w, g);
    K = std::max(K, (w[0].end - w[0].start) * (w[1].end - w[1].start) * (w[2].end - w[2].start));
  }
  std::vector<int32_t> idx(static_cast<size_t>(N) * K, -1);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    std::array<NaRange, 3> w;
    std::array<int, 3> g;
    windows(i, w, g);
    int32_t* row = idx.data() + size_t(i) * K;
    int c = 0;
    for (int u0 = w[0].start; u0 < w[0].end; ++u0)
      for (int u1 = w[1].start; u1 < w[1].end; ++u1)
        for (int u2 = w[2].start; u2 < w[2].end; ++u2)
          row[c++] = ((g[0] + p.d[0] * u0) * p.n[1] + g[1] + p.d[1] * u1) * p.n[2] + g[2] + p.d[2] * u2;
  }
  *kmax = K;
  return idx;
}


NeighborhoodWork neighborhood_work(const NeighborhoodSpec& spec, int group) {
  spec.validate();
  if (group < 1) throw std::invalid_argument("group must be >= 1, got " + std::to_string(group));
  const Padded p(spec);
  const std::vector<Group> gs = dilation_groups(p);
  std::vector<Box> boxes;
  std::vector<int> qorder;
  query_boxes(p, gs, std::max(16, detail::kRowsTarget / group), boxes, qorder);
  NeighborhoodWork w;
  w.boxes = (long long)boxes.size();
  std::vector<int> buf;
  for (const Box& bx : boxes) {
    const int n = bx.size();
    buf.assign(static_cast<size_t>(6) * n, 0);
    int* lo[3] = {buf.data(), buf.data() + n, buf.data() + 2 * n};
    int* hi[3] = {buf.data() + 3 * n, buf.data() + 4 * n, buf.data() + 5 * n};
    long long keys = 0;
    box_key_runs(p, gs[bx.group], bx, lo, hi, [&](int, int, int r0, int r1) { keys += r1 - r0; });
    w.computed_pairs += (long long)n * keys;
    for (int r = 0; r < n; ++r)
      w.visible_pairs += (long long)(hi[0][r] - lo[0][r]) * (hi[1][r] - lo[1][r]) * (hi[2][r] - lo[2][r]);
    w.max_box = std::max(w.max_box, n);
  }
  const std::array<int, 3> t = box_shape(p, gs[0], std::max(16, detail::kRowsTarget / group));
  for (int i = 0; i < spec.rank; ++i) w.box_shape.push_back(t[size_t(3 - spec.rank + i)]);
  return w;
}

}  // namespace spattn
