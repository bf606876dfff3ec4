// Token-sparse and block-sparse decode timing straight from C++ (thread scaling of split-KV):
// B=1, Hq=8, Hkv=2, D=128, Nq=1, Nk keys, K selected keys per head (token-sparse: K sorted random
// positions; block-sparse: K/64 random 64-key blocks). Best of 5 runs. Build like dense_threads.cpp
// (replace its source file by this one), then e.g.
//   for t in 1 2 4 8 16; do OMP_NUM_THREADS=$t ./sparse_decode_threads 131072 8192; done
// Add -DSPATTN_NO_SPLIT_KV to time without split-KV.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "spattn/kernels.hpp"
#include "spattn/masks.hpp"

template <class F>
double best_of(const F& f) {
  double best = 1e9;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int main(int argc, char** argv) {
  const int Nk = argc > 1 ? atoi(argv[1]) : 131072, K = argc > 2 ? atoi(argv[2]) : 8192, D = 128, Hq = 8, Hkv = 2;
  spattn::AttnShape s; s.B = 1; s.Hq = Hq; s.Hkv = Hkv; s.Nq = 1; s.Nk = Nk; s.D = D; s.Dv = D;
  std::vector<float> q(size_t(Hq) * D), k(size_t(Hkv) * Nk * D), v(k.size()), o(q.size()), l(Hq);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  for (auto* x : {&q, &k, &v}) for (auto& e : *x) e = nd(g);
  spattn::AttnArgs a;
  a.q = q.data(); a.k = k.data(); a.v = v.data(); a.shape = s; a.causal = true; a.out = o.data(); a.lse = l.data();
  // token-sparse: K sorted distinct positions per head
  std::vector<int32_t> idx(size_t(Hq) * K);
  std::vector<int> all(Nk);
  for (int j = 0; j < Nk; ++j) all[j] = j;
  for (int h = 0; h < Hq; ++h) {
    std::shuffle(all.begin(), all.end(), g);
    std::sort(all.begin(), all.begin() + K);
    std::copy_n(all.begin(), K, idx.begin() + size_t(h) * K);
  }
  const spattn::TokenIndicesView iv{idx.data(), 1, Hq, 1, K, 1};
  const double tt = best_of([&] { spattn::token_sparse_attention(a, iv); });
  // block-sparse: K/64 random blocks per head
  spattn::BlockMask m(1, Hq, 1, Nk, 64, 64);
  const int nkb = spattn::ceil_div(Nk, 64);
  std::vector<int> blocks(nkb);
  for (int b = 0; b < nkb; ++b) blocks[b] = b;
  for (int h = 0; h < Hq; ++h) {
    std::shuffle(blocks.begin(), blocks.end(), g);
    for (int c = 0; c < K / 64; ++c) m.row(0, h, 0)[blocks[c]] = 1;
  }
  const double tb = best_of([&] { spattn::block_sparse_attention(a, m.view()); });
  const double bytes = 2.0 * Hq * K * D * 4;  // K and V rows read per head
  printf("threads=%d Nk=%d K=%d token-sparse %.3f ms (%.1f GB/s) block-sparse %.3f ms (%.1f GB/s)\n",
         omp_get_max_threads(), Nk, K, tt * 1e3, bytes / tt / 1e9, tb * 1e3, bytes / tb / 1e9);
}
