"""One-off: run the OFFICIAL pure-torch SVG2 functions (svg-project/Sparse-VideoGen 5ce7b01,
svg/kmeans_utils.py) on CPU and store inputs + outputs for tests_py/test_svg2.py.

The module's CUDA-only imports (flashinfer, cuvs, triton) are not importable here, so the needed
functions are taken from the file's source (ast) and run unchanged; the two Triton helpers that
_euclid_iter calls are replaced by the torch code the file keeps beside them (the commented-out
dist_sq / argmin lines of _euclid_iter, and a torch index_add of the centroid sums).

Run (torch CPU, not needed by the tests) from a folder holding the official svg/kmeans_utils.py as
kmeans_utils.py:  python make_svg2_official.py tests_py/data/svg2_official.npz
Written with torch 2.13.0+cpu. Cases: a (Hq=2, N=257, D=64, Cq=16, Ck=40, top_p 0.9, ratio 0.1,
50 iterations), a_warm (a's returned centroids, perturbed inputs, 2 iterations: the official
kmeans_step), b (H=3, N=130, D=128, Cq=9, Ck=25, top_p 0.5, ratio 0.3), c (H=1, N=77, D=80, Cq=5,
Ck=77, top_p 0.95, ratio 0, 3 iterations: stops at max_iters for q)."""
import ast, sys
import numpy as np
import torch
import torch.nn.functional as F

src = open("kmeans_utils.py").read()
tree = ast.parse(src)
want = {"batch_kmeans_Euclid", "_euclid_iter", "identify_dynamic_map", "weighted_softmax", "permute_tensor_by_labels",
        "apply_inverse_permutation", "dynamic_block_sparse_fwd_torch", "density_calculation"}
ns = {"torch": torch, "F": F, "time_logging_decorator": lambda name: (lambda f: f)}


def euclid_assign_torch(x, centroids, x_sq):  # the commented-out torch lines of _euclid_iter
    cent_sq = (centroids ** 2).sum(dim=-1)
    cross = torch.einsum('bnd,bkd->bnk', x, centroids)
    dist_sq = (x_sq[:, :, None] + cent_sq[:, None, :] - 2.0 * cross).clamp_min_(0.0)
    return dist_sq.argmin(dim=-1)


def centroid_update_torch(x, cluster_ids, old_centroids):  # triton_centroid_update_sorted_euclid's math
    B, N, D = x.shape
    K = old_centroids.shape[1]
    sums = torch.zeros((B, K, D), dtype=torch.float32)
    cnts = torch.zeros((B, K), dtype=torch.int32)
    for b in range(B):
        sums[b].index_add_(0, cluster_ids[b], x[b].float())
        cnts[b] = torch.bincount(cluster_ids[b], minlength=K).to(torch.int32)
    centroids = sums / cnts.to(torch.float32).unsqueeze(-1).clamp(min=1.0)
    centroids = torch.where((cnts == 0).unsqueeze(-1), old_centroids.to(torch.float32), centroids)
    return centroids.to(x.dtype), cnts


ns["euclid_assign_triton"] = euclid_assign_torch
ns["triton_centroid_update_sorted_euclid"] = centroid_update_torch
for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name in want:
        node.decorator_list = []
        exec(compile(ast.Module([node], []), "kmeans_utils.py", "exec"), ns)
ns["_euclid_iter_compiled"] = ns["_euclid_iter"]

out = {}


def run_case(tag, B, H, N, D, Cq, Ck, top_p, ratio, iters, seed, init=None, qkv=None):
    g = torch.Generator().manual_seed(seed)
    if qkv is None:
        # clustered-ish inputs so that k-means has structure
        base_q = torch.randn(B, H, 6, D, generator=g) * 2
        base_k = torch.randn(B, H, 6, D, generator=g) * 2
        q = base_q[:, :, torch.randint(0, 6, (N,), generator=g)] + torch.randn(B, H, N, D, generator=g)
        k = base_k[:, :, torch.randint(0, 6, (N,), generator=g)] + torch.randn(B, H, N, D, generator=g)
        v = torch.randn(B, H, N, D, generator=g)
    else:
        q, k, v = qkv
    if init is None:
        # distinct tokens (the official init picks with replacement; a duplicated centroid ties with its twin and
        # the official argmin then breaks the tie by float rounding of the GEMM, which no other code reproduces)
        pick = lambda C: torch.stack([torch.randperm(N, generator=g)[:C] for _ in range(B * H)])
        qi = torch.gather(q.view(B * H, N, D), 1, pick(Cq)[..., None].expand(-1, -1, D))
        ki = torch.gather(k.view(B * H, N, D), 1, pick(Ck)[..., None].expand(-1, -1, D))
    else:
        qi, ki = init
    ql, qc, qs, qit = ns["batch_kmeans_Euclid"](q.view(B * H, N, D), n_clusters=Cq, max_iters=iters, init_centroids=qi.clone())
    kl, kc, ks, kit = ns["batch_kmeans_Euclid"](k.view(B * H, N, D), n_clusters=Ck, max_iters=iters, init_centroids=ki.clone())
    qs = qs.view(B, H, Cq)
    ks = ks.view(B, H, Ck)
    dmap = ns["identify_dynamic_map"](qc.view(B, H, Cq, D), kc.view(B, H, Ck, D), qs, ks, top_p, ratio)
    qp, qidx = ns["permute_tensor_by_labels"](q, ql.view(B, H, N), dim=2)
    kp, _ = ns["permute_tensor_by_labels"](k, kl.view(B, H, N), dim=2)
    vp, _ = ns["permute_tensor_by_labels"](v, kl.view(B, H, N), dim=2)
    o = ns["dynamic_block_sparse_fwd_torch"](qp, kp, vp, dmap, qs, ks)
    o = ns["apply_inverse_permutation"](o, qidx, dim=2)
    dens = ns["density_calculation"](dmap, qs, ks)
    arrays = dict(q=q, k=k, v=v, q_init=qi.view(B, H, Cq, D), k_init=ki.view(B, H, Ck, D), q_labels=ql.view(B, H, N),
                  k_labels=kl.view(B, H, N), q_centroids=qc.view(B, H, Cq, D), k_centroids=kc.view(B, H, Ck, D),
                  q_sizes=qs, k_sizes=ks, q_iters=torch.tensor(qit), k_iters=torch.tensor(kit), map=dmap, out=o,
                  density=dens, params=torch.tensor([Cq, Ck, top_p, ratio, iters], dtype=torch.float64))
    for name, a in arrays.items():
        out[f"{tag}/{name}"] = a.numpy()
    print(tag, "iters", qit, kit, "density", dens.flatten().tolist())
    return q, k, v, qc, kc


torch.manual_seed(0)
q, k, v, qc, kc = run_case("a", 1, 2, 257, 64, 16, 40, 0.9, 0.10, 50, 1)
# warm start: the next call (perturbed inputs) from the returned centroids, kmeans_iter_step = 2
g = torch.Generator().manual_seed(7)
q2 = q + 0.3 * torch.randn(q.shape, generator=g)
k2 = k + 0.3 * torch.randn(k.shape, generator=g)
run_case("a_warm", 1, 2, 257, 64, 16, 40, 0.9, 0.10, 2, 2, init=(qc, kc), qkv=(q2, k2, v))
run_case("b", 1, 3, 130, 128, 9, 25, 0.5, 0.3, 50, 3)
run_case("c", 1, 1, 77, 80, 5, 77, 0.95, 0.0, 3, 4)
np.savez_compressed(sys.argv[1], **out)
