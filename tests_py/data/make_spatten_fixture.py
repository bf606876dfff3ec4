"""One-off: the fixture spatten_official.npz from the released SpAtten LLM code on CPU torch.

Runs ``SpAttenKVCache.apply_token_pruning`` of mit-han-lab/spatten-llm,
spatten_llm/kv_cache_token_pruning.py (snapshot a0f1388), on a one-layer cache (B = 1, MHA, as
the code assumes) whose key channel 0 holds the token position, with seeded per-head scores
(``attn_score_all``: [B, H, q, kv] logits), and stores the positions left in the pruned cache per
head. The official file is not part of spattn: pass its path (it imports only torch)::

    git --git-dir /path/to/spatten-llm/.git show HEAD:spatten_llm/kv_cache_token_pruning.py > /tmp/spatten_kv.py
    python tests_py/data/make_spatten_fixture.py /tmp/spatten_kv.py
"""

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from spatten_cases import CASES, make_scores  # noqa: E402


def main(path: str) -> None:
    spec = importlib.util.spec_from_file_location("spatten_kv", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {}
    for name, (n, H, start, imp, rec, coming) in CASES.items():
        scores = make_scores(name)  # (1, H, q, n)
        k = torch.zeros(1, H, n, 4)
        k[..., 0] = torch.arange(n, dtype=torch.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            cache = mod.SpAttenKVCache(start_size=start, recent_size=rec, important_size=imp)
        pruned = cache.apply_token_pruning([(k, k.clone())], coming, [torch.from_numpy(scores)])
        out[f"{name}/kept"] = pruned[0][0][0, :, :, 0].numpy().astype(np.int32)  # (H, K)
    np.savez_compressed(Path(__file__).with_name("spatten_official.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
