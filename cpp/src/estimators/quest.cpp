// Quest page scoring and selection (see the header for the official behaviour it follows).
//
// The score is not a Q.K^T over keys: it reads one Kmin / Kmax row per page (num_pages x D per
// query head), so it is a plain loop here rather than a tile-engine pass.
#include "spattn/estimators/quest.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

namespace spattn {

void QuestParams::validate() const {
  require_min("quest", "page_size", page_size, 1);
  require_min("quest", "token_budget", token_budget, 1);
  require_min("quest", "dense_layers", dense_layers, 0);
  if (!eval_selection && token_budget < page_size)
    param_error("quest", "token_budget",
                ("be >= page_size (" + std::to_string(page_size) +
                 ") for the kernel selection, whose page budget token_budget // page_size keeps at least the last page")
                    .c_str(),
                token_budget);
}

namespace {

int num_pages(int kv_len, int page_size) { return kv_len <= 0 ? 0 : (kv_len - 1) / page_size + 1; }

// Ranking key: NaN above every number (torch.topk's order).
double rank_value(double u) { return std::isnan(u) ? std::numeric_limits<double>::infinity() : u; }

}  // namespace

QuestBudget quest_budget(int kv_len, const QuestParams& p) {
  const int np = num_pages(kv_len, p.page_size);
  QuestBudget b;
  if (p.eval_selection) {
    const int budget = std::min(kv_len, p.token_budget);
    b.pages = std::min(std::max(3, budget / p.page_size), np);
    return b;
  }
  const int budget = std::min(p.token_budget / p.page_size, np);
  if (np <= budget) {
    b.dense = true;
    b.pages = np;
    return b;
  }
  b.force_last = true;
  b.pages = budget - 1;
  return b;
}

void quest_page_scores(const float* q, const AttnShape& s, const QuestPagesView& pages, int page_size, double* U) {
  const int np = num_pages(s.Nk, page_size);
  const int D = s.D, G = s.group();
  const long long heads = (long long)s.B * s.Hq;
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < heads; ++bh) {
    const int b = int(bh / s.Hq), h = int(bh % s.Hq), hk = h / G;
    const float* qr = q + s.q_index(b, h, 0);
    const size_t base = (size_t(b) * s.Hkv + hk) * size_t(pages.page_capacity) * D;
    for (int p = 0; p < np; ++p) {
      const float* mx = pages.kmax + base + size_t(p) * D;
      const float* mn = pages.kmin + base + size_t(p) * D;
      double u = 0.0;
      for (int d = 0; d < D; ++d) {
        const double qd = qr[d];
        u += std::max(qd * double(mx[d]), qd * double(mn[d]));  // exact products: float x float fits a double
      }
      U[size_t(bh) * np + p] = u;
    }
  }
}

std::vector<int32_t> estimate_quest(const float* q, const AttnShape& s, const QuestPagesView& pages,
                                    const QuestParams& p, int* K) {
  s.validate();
  p.validate();
  if (s.Nq != 1) throw std::invalid_argument("quest: decode selection needs Nq == 1, got Nq=" + std::to_string(s.Nq));
  const int P = p.page_size, N = s.Nk, np = num_pages(N, P);
  if (pages.page_capacity < np)
    throw std::invalid_argument("quest: page metadata holds " + std::to_string(pages.page_capacity) +
                                " pages, kv_len=" + std::to_string(N) + " needs " + std::to_string(np));
  const QuestBudget bud = quest_budget(N, p);
  const int width = bud.dense ? N : std::min(N, (bud.pages + (bud.force_last ? 1 : 0)) * P);
  *K = width;
  const long long heads = (long long)s.B * s.Hq;
  std::vector<int32_t> out(size_t(heads) * width, -1);
  if (width == 0) return out;
  std::vector<double> U;
  if (!bud.dense) {
    U.resize(size_t(heads) * np);
    quest_page_scores(q, s, pages, P, U.data());
  }
  const int candidates = bud.force_last ? np - 1 : np;
#pragma omp parallel
  {
    std::vector<int> order(static_cast<size_t>(np));
    std::vector<char> keep(static_cast<size_t>(np));
#pragma omp for schedule(static)
    for (long long bh = 0; bh < heads; ++bh) {
      int32_t* row = out.data() + size_t(bh) * width;
      if (bud.dense) {
        std::iota(row, row + N, 0);
        continue;
      }
      const double* u = U.data() + size_t(bh) * np;
      std::fill(keep.begin(), keep.end(), 0);
      order.resize(size_t(candidates));
      std::iota(order.begin(), order.end(), 0);
      const int take = std::min(bud.pages, candidates);
      std::partial_sort(order.begin(), order.begin() + take, order.end(), [u](int x, int y) {
        const double a = rank_value(u[x]), b = rank_value(u[y]);
        return a > b || (a == b && x < y);  // descending, ties to the lower page
      });
      for (int t = 0; t < take; ++t) keep[size_t(order[size_t(t)])] = 1;
      if (bud.force_last) keep[size_t(np - 1)] = 1;
      int c = 0;
      for (int pg = 0; pg < np; ++pg) {
        if (!keep[size_t(pg)]) continue;
        for (int j = pg * P; j < std::min(N, (pg + 1) * P); ++j) row[c++] = j;
      }
    }
  }
  return out;
}

}  // namespace spattn
