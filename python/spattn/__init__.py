"""spattn: the reference CPU library of sparse attention.

Few fast kernels (dense flash-style, block-sparse, token-sparse, merge of states) and many mask
estimators, one module per method under :mod:`spattn.methods`, behind a registry. All arrays are
numpy; q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D/Dv); causal masks are bottom-right aligned.
:func:`evaluate` measures methods on a workload; :mod:`spattn.training` fits learned estimators.

>>> import spattn
>>> w = spattn.synthetic.structured_qkv(N=1024)
>>> out = spattn.attention(w.q, w.k, w.v, causal=True)
>>> mask = spattn.methods.get("streaming").estimate(w.q, w.k, causal=True)
>>> spattn.metrics.recall(w.q, w.k, mask, causal=True).shape
(1, 8)
"""

from . import _core, integrations, linear, methods, metrics, models, state, synthetic, training
from .cache import KVCache
from .evaluate import Record, evaluate
from .kernels import (BlockPlan, attention, block_sparse_attention, cluster_block_attention,
                      dense_attention_backward, merge_states,
                      permuted_block_attention, plan, row_block_sparse_attention, sparse_attention,
                      token_sparse_attention, vertical_slash_attention, window_attention)
from .layer_plan import LayerPlan
from .linear import sse_attention
from .masks import (BlockMask, ClusteredMask, PermutedBlockMask, RowBlockIndices, TokenIndices, VerticalSlashMask,
                    WindowMask)
from .neighborhood import gna_tile_stats, na1d, na2d, na3d, na_mask, na_work
from .selection import gaussian_topk, normal_quantile, statistical_topk
from .state import MethodState, Schedule

__version__ = "0.1.0"


def build_info() -> dict:
    """How this spattn was built and what it runs on.

    Returns a dict with ``version``; ``simd``, the instruction set of the kernels chosen at load
    (``"avx512"``, ``"avx2"`` or ``"generic"``; the environment variable
    ``SPATTN_SIMD=avx512|avx2|generic``, set before import, overrides it); ``simd_available``,
    the levels this CPU and build support, best first; ``simd_choice``, why that level;
    ``openmp_threads``; ``compiler``; ``native`` (built with ``SPATTN_NATIVE=ON``).
    """
    return {"version": __version__, **_core.build_info()}


def num_threads() -> int:
    """Threads the core uses (OpenMP; set OMP_NUM_THREADS before importing to change it)."""
    return int(_core.max_threads())


__all__ = [
    "attention", "dense_attention_backward", "block_sparse_attention", "token_sparse_attention", "window_attention", "vertical_slash_attention",
    "permuted_block_attention", "cluster_block_attention", "row_block_sparse_attention", "sparse_attention",
    "merge_states", "plan", "BlockPlan",
    "na1d", "na2d", "na3d", "na_mask", "gna_tile_stats", "na_work", "sse_attention",
    "BlockMask", "TokenIndices", "RowBlockIndices", "VerticalSlashMask", "WindowMask", "PermutedBlockMask",
    "ClusteredMask", "KVCache",
    "LayerPlan", "MethodState", "Schedule", "statistical_topk", "gaussian_topk", "normal_quantile",
    "methods", "metrics", "models", "integrations", "synthetic", "training", "linear", "evaluate", "state",
    "Record",
    "num_threads", "build_info", "__version__",
]
