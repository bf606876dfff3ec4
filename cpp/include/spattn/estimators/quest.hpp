// Quest (Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference",
// ICML 2024), following mit-han-lab/Quest (HEAD 01c1623): the page score of
// kernels/include/decode/decode_attn.cuh `compute_max_possible` and the two official selections,
//
// kernel path (quest/utils/controller.py `InferenceController`, quest/models/QuestAttention.py):
//   page_budget = token_budget / page_size (floor), budget = min(page_budget, num_pages);
//   num_pages <= budget: every token (no estimate); otherwise the last page (the one holding the
//   newest token, possibly partial) is always kept and the top (budget - 1) of the other pages by
//   the score are added;
// eval path (evaluation/quest_attention.py `forward` + `local_heavy_hitter_mask`, behind the
//   paper's accuracy tables): budget' = min(kv_len, token_budget), the top
//   min(max(3, budget' / page_size), num_pages) pages among all pages, nothing forced.
//
// Pages are aligned at position 0: page p holds tokens [p P, min((p + 1) P, kv_len)). The page
// metadata Kmin / Kmax (per batch, kv head, page: the element-wise min / max of the page's keys)
// is kept by the decode cache (python/spattn/cache.py); the score of page p for a query q is the
// upper bound of q.k over the page, U[p] = sum_d max(q_d Kmax[p][d], q_d Kmin[p][d]) (unscaled,
// as the official kernel; the eval path's sign trick gives the same value).
//
// One selection per query head (no sharing inside a GQA group, as both official paths: the eval
// path repeats K per query head, the kernel path has Hq == Hkv); query head h reads kv head
// h / (Hq / Hkv). Deviations: ties in the top-k go to the lower page index (torch.topk / RAFT
// select_k leave them unspecified); scores in float32 (the official code in the model
// dtype, fp16); a NaN score ranks above every number (as torch.topk); the kernel path with a single
// page runs dense instead of asserting (it requires two pages).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct QuestParams {
  int page_size = 16;
  int token_budget = 512;
  bool eval_selection = false;
  int dense_layers = 2;
  bool statistical_topk = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("page_size", &QuestParams::page_size,
      "Tokens per page P (>= 1); a required argument of the official code, 16 in every official script.");
    v("token_budget", &QuestParams::token_budget,
      "Tokens attended per query head (>= 1; >= page_size for the kernel selection): 512, the official "
      "quest_init default (the eval scripts pass 512 to 4096).");
    v("eval_selection", &QuestParams::eval_selection,
      "Select as the official accuracy path (evaluation/quest_attention.py: top max(3, budget // P) pages "
      "among all, nothing forced) instead of the kernel path (last page forced, top budget // P - 1 of the "
      "others, dense while the cache holds no more pages than the budget).");
    v("dense_layers", &QuestParams::dense_layers,
      "Layers 0 .. dense_layers - 1 run dense (official: 2, both paths); read by the decode call over a "
      "KV cache.");
    v("statistical_topk", &QuestParams::statistical_topk,
      "Pick pages by the statistical top-k threshold (mean + std Phi^-1(1 - budget / candidates) of the page "
      "scores, Spark Transformer; a variable number of pages per head) instead of the exact top-k. Not official.");
  }
};

// Layer metadata of a decode cache: Kmin / Kmax (B, Hkv, page_capacity, D) float32, pages
// [0, ceil(kv_len / page_size)) filled.
struct QuestPagesView {
  const float* kmin = nullptr;
  const float* kmax = nullptr;
  int page_capacity = 0;
};

// How many pages a decode step attends: `pages` selected by score among the candidates, plus the
// forced last page (kernel path), or every page (`dense`).
struct QuestBudget {
  int pages = 0;
  bool force_last = false;
  bool dense = false;
};
QuestBudget quest_budget(int kv_len, const QuestParams& p);

// Page scores U (B, Hq, num_pages) of the queries q (B, Hq, 1, D) (shape: Nq = 1, Nk = kv_len).
void quest_page_scores(const float* q, const AttnShape& s, const QuestPagesView& pages, int page_size, float* U);

// Selected key positions per query head, (B, Hq, 1, K) ascending and -1 padded, K written to *K.
std::vector<int32_t> estimate_quest(const float* q, const AttnShape& s, const QuestPagesView& pages,
                                    const QuestParams& p, int* K);

}  // namespace spattn
