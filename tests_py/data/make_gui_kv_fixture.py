"""One-off: the fixture gui_kv_official.npz from the official GUI-KV code on CPU torch.

Runs ``GUIKVCluster.update_kv`` of SalesforceAIResearch/GUI-KV, gui_kv/gui_kv_utils.py
(snapshot b301d41), float32, on small seeded inputs (q, k, v, hidden states and screenshot spans),
and stores the official ``kept_indices`` (top-(cap - w) per query head, before the window is
appended); the inputs are regenerated from gui_kv_cases.py. The official file is not part of spattn: pass its path (it imports
torch and transformers.cache_utils)::

    git --git-dir /path/to/GUI-KV/.git show HEAD:gui_kv/gui_kv_utils.py > /tmp/gui_kv_utils.py
    python tests_py/data/make_gui_kv_fixture.py /tmp/gui_kv_utils.py

Capacity as the eval scripts: ``cap = int(L * p / 100)``, ``window = min(8, cap - 2)``, alpha 2,
temperature 3.5; GQA through the official repeat_kv (num_key_value_groups = Hq / Hkv).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gui_kv_cases import CASES, make_inputs  # noqa: E402


def main(path: str) -> None:
    spec = importlib.util.spec_from_file_location("gui_kv_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {}
    for name in CASES:
        q, k, v, h, spans, pct = make_inputs(name)
        Hq, Hkv, L = q.shape[1], k.shape[1], q.shape[2]
        cap = int(L * pct / 100)
        w = min(8, cap - 2)
        cl = mod.GUIKVCluster(window_size=w, max_capacity_prompt=cap, alpha=2.0, temperature=3.5,
                              vision_start_idx=None if spans is None else [s[0] for s in spans],
                              vision_end_idx=None if spans is None else [s[1] for s in spans])
        cl.update_kv(torch.from_numpy(k), torch.from_numpy(q), torch.from_numpy(v), None, Hq // Hkv,
                     None if spans is None else torch.from_numpy(h))
        out[f"{name}/kept"] = cl.kept_indices.numpy().astype(np.int32)
    np.savez_compressed(Path(__file__).with_name("gui_kv_official.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
