// MInference vertical-slash: the index conversion against hand-traced cases of the official
// csrc/vertical_slash_index.cu kernel, the kernel against the naive double loop over the keys the
// conversion gives (query i sees j <= i in a slash range or a vertical column), and the estimator
// against a double transcription of the official vertical_and_slash_kernel.
#include <algorithm>
#include <array>
#include <limits>
#include <numeric>

#include "spattn/estimators/minference_vertical_slash.hpp"
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::KeyRun;
using spattn::testing::Problem;

namespace {

std::vector<KeyRun> runs_of(std::vector<int32_t> v, std::vector<int32_t> s, int start) {
  std::vector<KeyRun> r;
  spattn::vertical_slash_runs(v.data(), int(v.size()), s.data(), int(s.size()), start, 64, r);
  return r;
}

bool same(const std::vector<KeyRun>& a, const std::vector<std::array<int, 3>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].start != b[i][0] || a[i].end != b[i][1] || int(a[i].column) != b[i][2]) return false;
  return true;
}

}  // namespace

TEST(VerticalSlashRuns, HandTracedOfficialConversion) {
  // Block [256, 320): offsets 300 (skipped: >= end? no, 300 < 320) ... traced by hand:
  // o=300 -> e = max(320-300, 64) = 64 -> range [0, 64); verticals 5 (inside), 70 (>= 64):
  // next o=100 -> e = 220 > 64 + 64: save [0,64), range [156, 220); 70 < 156 -> column 70;
  // 200 inside; 400 >= 220: next o=0 -> e = 320 > 284: save [156,220), range [256,320);
  // 400 >= 320 and no offset left: save [256,320); 400 dropped.
  EXPECT_TRUE(same(runs_of({5, 70, 200, 400}, {300, 100, 0}, 256),
                   {{0, 64, 0}, {70, 71, 1}, {156, 220, 0}, {256, 320, 0}}));
  // Offsets >= end are skipped; consecutive offsets extend the range by whole blocks of 64.
  // block [0, 64): o=500 skipped; o=30 -> e = 64 -> [0,64); o=1 -> e = 64 (not > 64): nothing.
  EXPECT_TRUE(same(runs_of({}, {500, 30, 1}, 0), {{0, 64, 0}}));
  // block [128,192): o=100 -> e=92 -> [28,92); o=40 -> e=152 > 92 but <= 156: extend to [28,156);
  // o=0 -> e=192 > 156, <= 220: extend to [28,220) (past the block end: the kernel masks it).
  EXPECT_TRUE(same(runs_of({3, 27, 28}, {100, 40, 0}, 128), {{3, 4, 1}, {27, 28, 1}, {28, 220, 0}}));
  // No offset below the block end: no range, the verticals before the block are columns.
  EXPECT_TRUE(same(runs_of({1, 2, 90}, {300, 200}, 64), {{1, 2, 1}, {2, 3, 1}}));
}

TEST(VerticalSlash, KernelMatchesNaiveOverConvertedKeys) {
  for (int L : {1, 50, 64, 65, 300, 517}) {
    for (int D : {64, 80, 128}) {
      Problem p(1, 4, 2, L, L, D, D, true, unsigned(L + D));
      // Per head: verticals every 7th key from 3, offsets: a band near the diagonal + a few far.
      const int H = 4, NV = 20, NS = 12;
      std::vector<int32_t> v(size_t(H) * NV, -1), s(size_t(H) * NS, -1);
      for (int h = 0; h < H; ++h) {
        int n = 0;
        for (int j = 3 + h; j < L && n < NV - h; j += 7) v[size_t(h) * NV + n++] = j;
        std::vector<int> offs;
        for (int o : {0, 1, 2, 5, 9, 64, 65, 130, 200, 333, 480})
          if (o < L && int(offs.size()) < NS - h) offs.push_back(o);
        std::sort(offs.rbegin(), offs.rend());
        std::copy(offs.begin(), offs.end(), s.begin() + size_t(h) * NS);
      }
      const spattn::VerticalSlashView vs{v.data(), s.data(), 1, H, NV, NS, 64, L};
      spattn::vertical_slash_attention(p.args(), vs);
      std::vector<std::vector<uint8_t>> allowed(H * ((L + 63) / 64), std::vector<uint8_t>(size_t(L) + 200, 0));
      for (int h = 0; h < H; ++h)
        for (int g = 0; g * 64 < L; ++g) {
          int nv = 0, ns = 0;
          while (nv < NV && v[size_t(h) * NV + nv] >= 0) ++nv;
          while (ns < NS && s[size_t(h) * NS + ns] >= 0) ++ns;
          std::vector<KeyRun> r;
          spattn::vertical_slash_runs(v.data() + size_t(h) * NV, nv, s.data() + size_t(h) * NS, ns, g * 64, 64, r);
          for (const KeyRun& k : r)
            for (int j = k.start; j < k.end; ++j) allowed[size_t(h) * ((L + 63) / 64) + g][size_t(j)] = 1;
        }
      p.expect_matches_reference(
          [&](int, int h, int i, int j) { return allowed[size_t(h) * ((L + 63) / 64) + i / 64][size_t(j)] != 0; });
    }
  }
}

TEST(VerticalSlash, EstimatorMatchesOfficialTranscription) {
  const int L = 300, D = 64, H = 2;
  Problem p(1, H, 1, L, L, D, D, true, 21);
  spattn::MInferenceVerticalSlashParams prm;
  prm.vertical_size = {40};
  prm.slash_size = {60, 120};
  const auto ix = spattn::estimate_minference_vertical_slash(p.args(), prm);
  for (int h = 0; h < H; ++h) {
    // official: last 64 queries, causal inside the last 64 columns, softmax, sums.
    std::vector<double> vert(L, 0.0), slash(L, 0.0);  // slash indexed by offset
    for (int r = 0; r < 64; ++r) {
      const auto pr = spattn::reference::probabilities(p.args(), 0, h, L - 64 + r);
      for (int j = 0; j < L; ++j) {
        vert[size_t(j)] += pr[size_t(j)];
        if (j <= L - 64 + r) slash[size_t(L - 64 + r - j)] += pr[size_t(j)];
      }
    }
    const double inf = std::numeric_limits<double>::infinity();
    for (int j = 0; j < 30; ++j) vert[size_t(j)] = inf;
    for (int o = 0; o < 100; ++o) slash[size_t(o)] = inf;
    const auto top = [](const std::vector<double>& x, int k) {
      std::vector<int> idx(x.size());
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return x[size_t(a)] > x[size_t(b)]; });
      idx.resize(size_t(k));
      return idx;
    };
    std::vector<int> ev = top(vert, 40), es = top(slash, h == 0 ? 60 : 120);
    std::sort(ev.begin(), ev.end());
    std::sort(es.rbegin(), es.rend());
    for (int c = 0; c < 40; ++c) EXPECT_EQ(ix.vertical[size_t(h) * ix.NV + c], ev[size_t(c)]) << "h " << h << " c " << c;
    for (int c = 0; c < int(es.size()); ++c) EXPECT_EQ(ix.slash[size_t(h) * ix.NS + c], es[size_t(c)]) << "h " << h;
    if (h == 0) EXPECT_EQ(ix.slash[size_t(h) * ix.NS + 60], -1);  // padded: head 0 keeps 60 of NS = 120
  }
}

TEST(VerticalSlash, RejectsWhatTheOfficialCodeCannotRun) {
  Problem p(1, 2, 1, 100, 120, 64, 64, true, 3);
  spattn::MInferenceVerticalSlashParams prm;
  EXPECT_THROW(spattn::estimate_minference_vertical_slash(p.args(), prm), std::invalid_argument);  // Nq != Nk
  Problem n(1, 2, 1, 100, 100, 64, 64, false, 3);
  EXPECT_THROW(spattn::estimate_minference_vertical_slash(n.args(), prm), std::invalid_argument);  // non-causal
  prm.vertical_size = {10, 20, 30};
  Problem c(1, 2, 1, 100, 100, 64, 64, true, 3);
  EXPECT_THROW(spattn::estimate_minference_vertical_slash(c.args(), prm), std::invalid_argument);  // 3 sizes, 2 heads
  std::vector<int32_t> v{5, 4}, s{0};  // verticals not ascending
  const spattn::VerticalSlashView bad{v.data(), s.data(), 1, 1, 2, 1, 64, 100};
  EXPECT_THROW(spattn::vertical_slash_attention(c.args(), bad), std::invalid_argument);
}
