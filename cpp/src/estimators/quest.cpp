// Quest page scoring and selection (see the header for the official behaviour it follows).
//
// The score reads one Kmin / Kmax row per page: U = q+ . Kmax + q- . Kmin, two decode products of
// the SIMD layer over the page rows (decode_scores).
#include "spattn/estimators/quest.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "spattn/selection.hpp"

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

void quest_page_scores(const float* q, const AttnShape& s, const QuestPagesView& pages, int page_size, float* U) {
  // max(q_d Kmax_d, q_d Kmin_d) is q_d Kmax_d when q_d >= 0 and q_d Kmin_d otherwise (Kmax >= Kmin), so
  // U = q+ . Kmax + q- . Kmin with q+ = max(q, 0), q- = min(q, 0): two decode products over the pages.
  AttnShape ps = s;
  ps.Nk = num_pages(s.Nk, page_size);
  ps.kv_capacity = pages.page_capacity;
  const size_t nq = size_t(s.B) * s.Hq * s.D;
  std::vector<float> qpos(nq), qneg(nq);
  for (size_t i = 0; i < nq; ++i) {
    qpos[i] = q[i] > 0.f ? q[i] : 0.f;
    qneg[i] = q[i] < 0.f ? q[i] : (std::isnan(q[i]) ? q[i] : 0.f);
  }
  const size_t nu = size_t(s.B) * s.Hq * size_t(ps.Nk);
  std::vector<float> lower(nu);
  decode_scores(qpos.data(), pages.kmax, ps, 1.f, U);
  decode_scores(qneg.data(), pages.kmin, ps, 1.f, lower.data());
  for (size_t i = 0; i < nu; ++i) U[i] += lower[i];
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
  int width = bud.dense ? N : std::min(N, (bud.pages + (bud.force_last ? 1 : 0)) * P);
  *K = width;
  const long long heads = (long long)s.B * s.Hq;
  std::vector<int32_t> out(size_t(heads) * width, -1);
  if (width == 0) return out;
  std::vector<float> U;
  if (!bud.dense) {
    U.resize(size_t(heads) * np);
    quest_page_scores(q, s, pages, P, U.data());
  }
  const int candidates = bud.force_last ? np - 1 : np;
  std::vector<std::vector<int>> chosen(static_cast<size_t>(bud.dense ? 0 : heads));
  if (!bud.dense) {
#pragma omp parallel for schedule(static)
    for (long long bh = 0; bh < heads; ++bh) {
      std::vector<int> pick = select_top(U.data() + size_t(bh) * np, candidates, bud.pages, p.statistical_topk);
      if (bud.force_last) pick.push_back(np - 1);
      chosen[size_t(bh)] = std::move(pick);
    }
    if (p.statistical_topk) {  // a variable number of pages per head: the widest sets the width
      int w = 0;
      for (const auto& pick : chosen) {
        int t = 0;
        for (int pg : pick) t += std::min(N, (pg + 1) * P) - pg * P;
        w = std::max(w, t);
      }
      width = w;
      *K = width;
      out.assign(size_t(heads) * width, -1);
    }
  }
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < heads; ++bh) {
    int32_t* row = out.data() + size_t(bh) * width;
    if (bud.dense) {
      std::iota(row, row + N, 0);
      continue;
    }
    int c = 0;
    for (int pg : chosen[size_t(bh)])
      for (int j = pg * P; j < std::min(N, (pg + 1) * P); ++j) row[c++] = j;
  }
  return out;
}

}  // namespace spattn
