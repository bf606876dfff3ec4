// Neighbourhood attention (NATTEN's na1d / na2d / na3d with kernel size, dilation, stride (GNA)
// and per-axis causality; rule in spattn/neighborhood.hpp) on the tile engine.
//
// The axes are padded to three at the front ((N) -> (1, 1, N), (X, Y) -> (1, X, Y)). A work item
// is a run of consecutive queries of one dilation group: part of one row along the last axis,
// or a few whole rows when that axis is short. Its keys are the rows (x0, x1) of the union of its
// queries' windows along the leading axes; each such row contributes one contiguous run along
// the last axis, read in place (K^T tiles or K rows), through the OnlineSoftmax step with lower
// and upper limits per query row (the query's own last-axis window inside that row, or nothing
// when the row lies outside its leading-axis window). No Nq x Nk buffer, no gathered keys.
//
// Dilation > 1 on some axis: the tokens of q, k, v are first copied into dilation-group order
// (each group a contiguous sub-grid of extents na_group_length), attention runs with dilation 1
// per group, and out / lse are copied back (NATTEN's token permutation; O(N) extra memory).
// Work-item sizes follow a count of the keys each query tile reads (query_runs, run_neighborhood),
// not a measurement: no benchmark of this kernel has been run yet.
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

// Query runs [i0, i1) of the work items of one (batch, kv head): rows along the last axis cut
// into about equal chunks of at least `chunk` and at most `bq` queries where both fit; when the
// last axis is shorter than 32, whole rows of one x0 slice are grouped, up to 64 queries.
struct Task {
  int i0, i1;
};

std::vector<Task> query_runs(const std::vector<Group>& gs, int bq, int chunk) {
  std::vector<Task> out;
  for (const Group& g : gs) {
    const int m2 = g.m[2], rows = g.m[0] * g.m[1];
    if (m2 >= 32 || rows == 1) {
      const int chunks = std::max({1, ceil_div(m2, bq), m2 / chunk});
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < chunks; ++c)
          out.push_back({g.offset + r * m2 + int((long long)m2 * c / chunks),
                         g.offset + r * m2 + int((long long)m2 * (c + 1) / chunks)});
    } else {
      const int per = std::max(1, std::min(64 / m2, g.m[1]));
      for (int x0 = 0; x0 < g.m[0]; ++x0)
        for (int x1 = 0; x1 < g.m[1]; x1 += per) {
          const int base = g.offset + x0 * g.m[1] * m2;
          out.push_back({base + x1 * m2, base + std::min(g.m[1], x1 + per) * m2});
        }
    }
  }
  return out;
}

struct NeighborhoodVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  const Padded& p;
  const std::vector<Group>& gs;
  const std::vector<Task>& tasks;
  int max_n;
  // Per-thread windows of the item's queries: start and end along each of the three axes.
  struct Local {
    std::vector<int> w;
  };

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * (long long)tasks.size(); }
  detail::WorkItem item(long long it) const {
    const long long T = (long long)tasks.size();
    detail::WorkItem w;
    const Task& tk = tasks[size_t(it % T)];
    w.hk = int((it / T) % a.shape.Hkv);
    w.b = int(it / (T * a.shape.Hkv));
    w.stack = a.shape.group();
    w.h0 = w.hk * w.stack;
    w.i0 = tk.i0;
    w.i1 = tk.i1;
    return w;
  }
  Local local() const { return {std::vector<int>(static_cast<size_t>(6) * max_n)}; }

  const Group& group_of(int i) const {
    const auto it = std::upper_bound(gs.begin(), gs.end(), i, [](int x, const Group& g) { return x < g.offset; });
    return *(it - 1);
  }

  // Keys [j0, j1) through the online softmax, one K^T tile (or bk keys) at a time; a tile hides
  // keys below a row's qlo when it starts below the highest qlo, above a row's qlim when it ends
  // past the lowest qlim.
  void span(detail::TileScratch& t, const detail::WorkItem& wi, int j0, int j1, int min_hi, int max_lo) const {
    const float* vh = detail::value_head(a, wi);
    for (int j = j0; j < j1;) {
      const int cols = std::min({detail::TransposedK::T - j % detail::TransposedK::T, j1 - j, t.bk});
      const detail::KeySegment seg = detail::key_segment(kt, wi.b, wi.hk, j, cols, vh, a.shape.Dv);
      const detail::OnlineSoftmax step{j < max_lo};
      step(t, wi.rows(), &seg, 1, j + cols - 1 > min_hi);
      j += cols;
    }
  }

  void keys(detail::TileScratch& t, const detail::WorkItem& wi, Local& loc) const {
    const Group& g = group_of(wi.i0);
    const int n = wi.n(), m1 = g.m[1], m2 = g.m[2];
    int* lo[3] = {loc.w.data(), loc.w.data() + n, loc.w.data() + 2 * n};
    int* hi[3] = {loc.w.data() + 3 * n, loc.w.data() + 4 * n, loc.w.data() + 5 * n};
    std::array<int, 3> ulo{INT_MAX, INT_MAX, INT_MAX}, uhi{INT_MIN, INT_MIN, INT_MIN};
    for (int r = 0; r < n; ++r) {
      const int l = wi.i0 + r - g.offset;
      const int u[3] = {l / (m1 * m2), (l / m2) % m1, l % m2};
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
        const int base = g.offset + (x0 * m1 + x1) * m2;
        int run0 = INT_MAX, run1 = INT_MIN, min_hi = INT_MAX, max_lo = INT_MIN;
        for (int r = 0; r < n; ++r) {
          const bool in = lo[0][r] <= x0 && x0 < hi[0][r] && lo[1][r] <= x1 && x1 < hi[1][r];
          const int qlo = in ? base + lo[2][r] : INT_MAX, qhi = in ? base + hi[2][r] - 1 : -1;
          for (int s = 0; s < wi.stack; ++s) {
            t.qlo[s * n + r] = qlo;
            t.qlim[s * n + r] = qhi;
          }
          min_hi = std::min(min_hi, qhi);
          max_lo = std::max(max_lo, qlo);
          if (in) {
            run0 = std::min(run0, lo[2][r]);
            run1 = std::max(run1, hi[2][r]);
          }
        }
        if (run1 > run0) span(t, wi, base + run0, base + run1, min_hi, max_lo);
      }
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& wi, Local&) const { detail::store_item(t, a, wi); }
};

void run_neighborhood(const AttnArgs& a, const Padded& p, const std::vector<Group>& gs) {
  const AttnShape& s = a.shape;
  const int G = s.group();
  const int bq = std::max(16, detail::kRowsTarget / std::max(1, G));
  // A chunk of c queries reads c + K - 1 keys per run, of which each query uses K (K along the
  // last axis): chunks of about max(32, K) queries read at most about twice the keys used when
  // K >= 32, and smaller kernels keep the 32 stacked rows the micro-kernel path wants (chosen by
  // this count, not by measurement).
  const int chunk = std::min(bq, std::max(32, p.k[2]));
  const std::vector<Task> tasks = query_runs(gs, bq, chunk);
  int max_n = 1;
  for (const Task& tk : tasks) max_n = std::max(max_n, tk.i1 - tk.i0);
  const int rows = G * max_n;
  const detail::TransposedK kt(a, detail::use_transposed_k(rows));
  const NeighborhoodVariant var{a, kt, p, gs, tasks, max_n};
  detail::run_tiles(a, var, rows, s.Dv);
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
  if (!p.dilated()) {
    run_neighborhood(a, p, gs);
    return;
  }
  const std::vector<int> perm = group_order(p, gs);
  const size_t rows_q = size_t(s.B) * s.Hq * N, rows_k = size_t(s.B) * s.Hkv * N;
  std::vector<float> q(rows_q * s.D), k(rows_k * s.D), v(rows_k * s.Dv), out(rows_q * s.Dv), lse(rows_q);
  permute_rows(a.q, q.data(), perm, s.B, s.Hq, s.D, true);
  permute_rows(a.k, k.data(), perm, s.B, s.Hkv, s.D, true);
  if (a.v != nullptr) permute_rows(a.v, v.data(), perm, s.B, s.Hkv, s.Dv, true);
  AttnArgs ap = a;
  ap.q = q.data();
  ap.k = k.data();
  ap.v = a.v != nullptr ? v.data() : nullptr;
  ap.out = a.out != nullptr ? out.data() : nullptr;
  ap.lse = lse.data();
  run_neighborhood(ap, p, gs);
  if (a.out != nullptr) permute_rows(out.data(), a.out, perm, s.B, s.Hq, s.Dv, false);
  if (a.lse != nullptr) permute_rows(lse.data(), a.lse, perm, s.B, s.Hq, 1, false);
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

}  // namespace spattn
