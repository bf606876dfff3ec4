"""One-off: writes routing_official.npz from the reference Routing Transformer code
(lucidrains/routing-transformer 1.6.1 = 3f6c461, routing_transformer/routing_transformer.py),
run on CPU in float32. Not a test; tests_py/test_routing.py reads the fixture only.

    pip install --no-deps --target /tmp/ref_rt routing_transformer==1.6.1 einops \
        local-attention==1.4.3 product-key-memory==0.1.10 mixture-of-experts
    PYTHONPATH=/tmp/ref_rt python tests_py/data/make_routing_official.py

Cases: KmeansAttention.eval() with fixed unit-norm centroids (kmeans.means set, initted) and, where
the reference has them, memory key/values (random, as its learned parameters would be);
kmeans_iter x 10 from given tokens (the init); one training EMA update (Kmeans.forward with
update_means=True, then Kmeans.update).
"""

import os

import numpy as np
import torch
from routing_transformer.routing_transformer import Kmeans, KmeansAttention, kmeans_iter

torch.manual_seed(0)
rng = np.random.default_rng(7)
out = {}

# name: (B, H, Nq, Nk, D, C, W, causal, num_mem_kv, shared_qk)
CASES = {
    "noncausal": (2, 2, 37, 37, 16, 3, 8, False, 0, False),
    "noncausal_mem": (1, 3, 45, 45, 24, 4, 10, False, 2, False),
    "causal_mem1": (2, 3, 45, 45, 24, 4, 10, True, 0, False),  # the reference forces 1 memory kv
    "causal_mem2": (1, 2, 53, 53, 16, 5, 12, True, 2, False),
    "shared_causal": (1, 2, 41, 41, 16, 4, 9, True, 0, True),
    "shared_noncausal": (2, 2, 29, 29, 16, 3, 7, False, 0, True),
    "cross_noncausal": (1, 2, 23, 41, 16, 3, 8, False, 0, False),
    "window_above_n": (1, 2, 7, 7, 16, 2, 10, True, 1, False),
}

for name, (B, H, Nq, Nk, D, C, W, causal, mem, shared) in CASES.items():
    attn = KmeansAttention(C, W, H, D, causal=causal, num_mem_kv=mem, shared_qk=shared).eval()
    mu = rng.standard_normal((H, C, D)).astype(np.float32)
    mu /= np.linalg.norm(mu, axis=-1, keepdims=True)
    with torch.no_grad():
        attn.kmeans.means.copy_(torch.from_numpy(mu))
        attn.kmeans.initted.fill_(True)
    q = rng.standard_normal((B, H, Nq, D)).astype(np.float32)
    k = q.copy() if shared else rng.standard_normal((B, H, Nk, D)).astype(np.float32)
    v = rng.standard_normal((B, H, Nk, D)).astype(np.float32)
    with torch.no_grad():
        o, _ = attn(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v))
    out[f"{name}/q"], out[f"{name}/k"], out[f"{name}/v"] = q, k, v
    out[f"{name}/centroids"] = mu
    out[f"{name}/mem_key"] = attn.mem_key.detach().numpy().copy()
    out[f"{name}/mem_value"] = attn.mem_value.detach().numpy().copy()
    out[f"{name}/config"] = np.array([W, int(causal), int(shared)])
    out[f"{name}/out"] = o.numpy()

# the initialisation: kmeans_iter x 10 on raw tokens from given initial tokens
x = rng.standard_normal((2, 3, 50, 16)).astype(np.float32)
x[:, :, :10] *= 3.0  # unequal norms: raw-token Lloyd differs from the spherical one
idx = rng.permutation(100)[:6]
means = x.transpose(1, 0, 2, 3).reshape(3, -1, 16)[:, idx]
m = torch.from_numpy(means.copy())
for _ in range(10):
    m = kmeans_iter(torch.from_numpy(x), m)
out["init/x"], out["init/indices"], out["init/means"] = x, idx, m.numpy()

# one training update: Kmeans.forward(update_means=True) then update() (EMA 0.999)
km = Kmeans(3, 16, 6).train()
with torch.no_grad():
    km.means.copy_(m)
    km.initted.fill_(True)
    _, loss = km(torch.from_numpy(x), update_means=True)
    km.update()
out["ema/means"], out["ema/loss"] = km.means.numpy().copy(), np.array(float(loss))

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "routing_official.npz")
np.savez_compressed(path, **out)
print("wrote", path, sum(a.nbytes for a in out.values()), "bytes")
