"""Type stubs of the compiled core (spattn._core); use the spattn package API instead.

Arrays are numpy; float arguments are converted to C-contiguous float32 by the package first.
``scale=None`` means 1/sqrt(D). Shapes and ranges are checked in C++ (ValueError naming the
argument). tests_py/test_core_stubs.py keeps this file equal to ``dir(_core)``.
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

Pair = Tuple[np.ndarray, np.ndarray]

# ---------------------------------------------------------------------------- parameter classes
class _Params:
    """What every bound parameter struct offers (stub-only base; the C++ classes share no base)."""
    def __init__(self, **params: Any) -> None: ...
    def validate(self) -> None: ...
    def to_dict(self) -> Dict[str, Any]: ...
    @staticmethod
    def field_names() -> List[str]: ...

class InfLLMv2Params(_Params):
    kernel_size: int
    kernel_stride: int
    block_size: int
    init_blocks: int
    window_size: int
    topk: int
    dense_len: int

class NOSAParams(_Params):
    kernel_size: int
    kernel_stride: int
    block_size: int
    init_blocks: int
    window_size: int
    topk: int
    select_blocks: int
    dense_len: int

class NSAParams(_Params):
    kernel_size: int
    kernel_stride: int
    block_size: int
    topk: int
    init_blocks: int
    local_blocks: int
    window_size: int
    window_inclusive: bool
    first_head_only: bool

class PowerAttentionParams(_Params):
    block_size: int
    window_blocks: int

class RadialParams(_Params):
    frames: int
    video_tokens: int
    decay_factor: float
    wan: bool
    block_size: int

class StreamingParams(_Params):
    block_size: int
    sink_tokens: int
    local_tokens: int

class OracleParams(_Params):
    block_size: int
    gamma: float

class FlexPrefillParams(_Params):
    gamma: float
    tau: float
    min_budget: int
    max_budget: Optional[int]
    block_size: int
    gqa_interleave: bool

class SeerParams(_Params):
    threshold: float
    nz_ratio: Optional[float]
    topk: Optional[int]
    last_block_dense: bool
    seed: int

class SeaParams(_Params):
    k: int
    compressed_width: int
    nb_features: Optional[int]
    seed: int

class MInferenceBlockSparseParams(_Params):
    top_k: int
    block_size: int

class XAttentionParams(_Params):
    stride: int
    threshold: Union[float, List[float]]
    block_size: int
    keep_sink: bool
    keep_recent: bool

class SaleParams(_Params):
    thresholds: Union[float, List[float]]
    block_k_size: int
    local_window: int
    block_seg_size: int
    quant_mode: int
    dense_len: int

class MInferenceVerticalSlashParams(_Params):
    vertical_size: Union[int, List[int]]
    slash_size: Union[int, List[int]]
    last_q: int
    forced_vertical: int
    forced_slash: int

class MInferenceAShapeParams(_Params):
    n_init: int
    n_local: int

class PbsAttnParams(_Params):
    block_size: int
    segment_size: int
    threshold: Union[float, List[float]]
    force_select_first_block: bool

class Svg2Params(_Params):
    num_q_centroids: int
    num_k_centroids: int
    top_p_kmeans: float
    min_kc_ratio: float
    kmeans_iter_init: int
    kmeans_iter_step: int
    seed: int
class RoutingParams(_Params):
    window_size: int
    num_clusters: int
    kmeans_init_iters: int
    shared_qk: bool
    seed: int
    ema_decay: float
    commitment: float

class ProxyAttnParams(_Params):
    block_size: int
    gamma: float

class AnchorAttentionParams(_Params):
    block_size: int
    step: int
    theta: float
    official_candidates: bool

class DhsaParams(_Params):
    block_size: int
    chunk_size: int
    token_budget: int
    local_tokens: int
    global_tokens: int
    instruction_tokens: int
    length_norm: bool

class HipParams(_Params):
    mask_k: int
    block_size_q: int
    block_size_k: int
    scale_up: int
    reduce_stride: int
    sliding_window_size: int
    num_sink: Optional[int]
    dense_queries_exp: Optional[int]
    estimator_lower_resolution: int

class QuestParams(_Params):
    page_size: int
    token_budget: int
    eval_selection: bool
    dense_layers: int
    statistical_topk: bool

class DoubleSparseParams(_Params):
    heavy_const: int
    group_factor: int
    label_bits: int
    dense_layers: int
    statistical_topk: bool

class SeerAttentionRParams(_Params):
    token_budget: int
    threshold: Optional[float]
    dense_layers: int
    seed: int

class TokenSelectParams(_Params):
    n_init: int
    n_local: int
    top_k: int
    kernel_size: int
    gqa_interleave: bool
    dense_layers: int
    statistical_topk: bool

class TidalDecodeParams(_Params):
    top_k: int
    sparse_layer_start: int
    correction_layer: int
    statistical_topk: bool

# ---------------------------------------------------------------------------- plans
class BlockPlan:
    B: int
    H: int
    num_q_blocks: int
    num_kv_blocks: int
    block_q: int
    block_k: int
    q_len: int
    kv_len: int
    causal: bool
    @property
    def nnz(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def kv_blocks(self, full: bool) -> Pair: ...

def compile_plan(blocks: np.ndarray, block_q: int, block_k: int, q_len: int, kv_len: int, B: int, Hq: int,
                 causal: bool) -> BlockPlan: ...

# ---------------------------------------------------------------------------- kernels
def check_shapes(q: np.ndarray, k: np.ndarray, v: Optional[np.ndarray], scale: Optional[float]) -> None: ...
def dense_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: Optional[float],
                    key_bias: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                    rel_bias: Optional[np.ndarray] = None) -> Pair: ...
def dense_attention_backward(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, lse: np.ndarray,
                             do: np.ndarray, causal: bool, scale: Optional[float],
                             key_bias: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                             rel_bias: Optional[np.ndarray] = None
                             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray],
                                        Optional[np.ndarray], Optional[np.ndarray]]: ...
def dense_attention_half(q: np.ndarray, k: np.ndarray, v: np.ndarray, bf16: bool, causal: bool,
                         scale: Optional[float]) -> Pair: ...
def block_sparse_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, plan: BlockPlan, causal: bool,
                           scale: Optional[float], key_bias: Optional[np.ndarray] = None,
                           bias: Optional[np.ndarray] = None, rel_bias: Optional[np.ndarray] = None) -> Pair: ...
def block_sparse_attention_mask(q: np.ndarray, k: np.ndarray, v: np.ndarray, blocks: np.ndarray, block_q: int,
                                block_k: int, q_len: int, kv_len: int, causal: bool, scale: Optional[float],
                                key_bias: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                                rel_bias: Optional[np.ndarray] = None) -> Pair: ...
def token_sparse_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, indices: np.ndarray, group_size: int,
                           kv_len: int, causal: bool, scale: Optional[float], key_bias: Optional[np.ndarray] = None,
                           bias: Optional[np.ndarray] = None, rel_bias: Optional[np.ndarray] = None,
                           activation: str = "softmax") -> Pair: ...
def row_block_sparse_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, blocks: np.ndarray, block_k: int,
                               kv_len: int, causal: bool, scale: Optional[float],
                               key_bias: Optional[np.ndarray] = None) -> Pair: ...
def window_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, sinks: int, left: int, right: int, causal: bool,
                     scale: Optional[float]) -> Pair: ...
def window_lse(q: np.ndarray, k: np.ndarray, sinks: int, left: int, right: int, causal: bool,
               scale: Optional[float]) -> np.ndarray: ...
def neighborhood_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, extent: List[int], kernel_size: List[int],
                           dilation: List[int], stride: List[int], is_causal: List[bool],
                           scale: Optional[float]) -> Pair: ...
def neighborhood_token_indices(extent: List[int], kernel_size: List[int], dilation: List[int], stride: List[int],
                               is_causal: List[bool]) -> np.ndarray: ...
def sse_attention(q1: np.ndarray, k1: np.ndarray, v: np.ndarray, g1: np.ndarray, q2: np.ndarray, k2: np.ndarray,
                  g2: np.ndarray, router: np.ndarray, top_k: int, scale: float, emulq: bool, emulk: bool,
                  state: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]: ...
def sse_route(router: np.ndarray, top_k: int) -> Tuple[np.ndarray, np.ndarray]: ...
def neighborhood_work(extent: List[int], kernel_size: List[int], dilation: List[int], stride: List[int],
                      is_causal: List[bool], group: int) -> Dict[str, Any]: ...
def vertical_slash_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, vertical: np.ndarray, slash: np.ndarray,
                             block: int, causal: bool, scale: Optional[float]) -> Pair: ...
def vertical_slash_lse(q: np.ndarray, k: np.ndarray, vertical: np.ndarray, slash: np.ndarray, block: int,
                       scale: Optional[float]) -> np.ndarray: ...
def vertical_slash_pairs(vertical: np.ndarray, slash: np.ndarray, block: int, len: int) -> np.ndarray: ...
def vertical_slash_token_indices(vertical: np.ndarray, slash: np.ndarray, block: int, len: int) -> np.ndarray: ...
def permuted_block_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, perm: np.ndarray, blocks: np.ndarray,
                             block: int, causal: bool, scale: Optional[float]) -> Pair: ...
def permuted_block_lse(q: np.ndarray, k: np.ndarray, perm: np.ndarray, blocks: np.ndarray, block: int,
                       scale: Optional[float]) -> np.ndarray: ...
def permuted_block_pairs(perm: np.ndarray, blocks: np.ndarray, block: int) -> np.ndarray: ...
def permuted_block_token_indices(perm: np.ndarray, blocks: np.ndarray, block: int) -> np.ndarray: ...
def cluster_block_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_labels: np.ndarray, k_labels: np.ndarray,
                            map: np.ndarray, causal: bool, scale: Optional[float]) -> Pair: ...
def cluster_block_lse(q: np.ndarray, k: np.ndarray, q_labels: np.ndarray, k_labels: np.ndarray, map: np.ndarray,
                      causal: bool, scale: Optional[float]) -> np.ndarray: ...
def cluster_block_pairs(q_labels: np.ndarray, k_labels: np.ndarray, map: np.ndarray, causal: bool) -> np.ndarray: ...
def cluster_block_token_indices(q_labels: np.ndarray, k_labels: np.ndarray, map: np.ndarray,
                                causal: bool) -> np.ndarray: ...
def dense_attention_prefix(q: np.ndarray, k: np.ndarray, v: np.ndarray, kv_len: int, causal: bool,
                           scale: Optional[float]) -> Pair: ...
def token_sparse_attention_prefix(q: np.ndarray, k: np.ndarray, v: np.ndarray, kv_len: int, indices: np.ndarray,
                                  group_size: int, causal: bool, scale: Optional[float]) -> Pair: ...
def merge_states(out_a: np.ndarray, lse_a: np.ndarray, out_b: np.ndarray, lse_b: np.ndarray) -> Pair: ...
def max_threads() -> int: ...
def build_info() -> Dict[str, Any]: ...

# ---------------------------------------------------------------------------- exact statistics
def block_attention_map(q: np.ndarray, k: np.ndarray, block_q: int, block_k: int, causal: bool,
                        scale: Optional[float], pool: str) -> Pair: ...
def token_attention_mass(q: np.ndarray, k: np.ndarray, indices: np.ndarray, group_size: int, kv_len: int,
                         causal: bool, scale: Optional[float]) -> Pair: ...
def compressed_attention_targets(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                                 width: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...

# ---------------------------------------------------------------------------- estimators
def estimate_infllmv2(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                      params: InfLLMv2Params) -> np.ndarray: ...
def estimate_infllmv2_pooled(q: np.ndarray, k1: np.ndarray, C1: int, k2: np.ndarray, C2: int, kv_len: int,
                             scale: Optional[float], params: InfLLMv2Params) -> np.ndarray: ...
def mean_pooled_keys(k: np.ndarray, kernel: int, stride: int) -> np.ndarray: ...
def estimate_nosa(q: np.ndarray, k: np.ndarray, cis: np.ndarray, causal: bool, scale: Optional[float],
                  params: NOSAParams) -> np.ndarray: ...
def estimate_nosa_pooled(q: np.ndarray, k1: np.ndarray, C1: int, cis: np.ndarray, kv_len: int,
                         scale: Optional[float], params: NOSAParams) -> np.ndarray: ...
def nsa_compressed_attention(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, C: int, kv_len: int,
                             scale: Optional[float],
                             params: NSAParams) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def estimate_powerattention(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                            params: PowerAttentionParams) -> np.ndarray: ...
def estimate_radial(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                    params: RadialParams) -> np.ndarray: ...
def estimate_streaming(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                       params: StreamingParams) -> np.ndarray: ...
def estimate_oracle_topk(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                         params: OracleParams) -> np.ndarray: ...
def estimate_minference_block_sparse(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                                     params: MInferenceBlockSparseParams) -> np.ndarray: ...
def estimate_xattention(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                        params: XAttentionParams) -> np.ndarray: ...
def estimate_sale(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                  params: SaleParams) -> np.ndarray: ...
def sale_estimate_ms(q: np.ndarray, k: np.ndarray, params: SaleParams, int4: bool, repeats: int = ...) -> float: ...
def estimate_minference_vertical_slash(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                                       params: MInferenceVerticalSlashParams) -> Pair: ...
def estimate_pbs_attn(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                      params: PbsAttnParams) -> Tuple[np.ndarray, np.ndarray, bool]: ...
def estimate_svg2(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float], params: Svg2Params,
                  q_centroids: Optional[np.ndarray] = None, k_centroids: Optional[np.ndarray] = None,
                  warm: bool = False) -> Dict[str, np.ndarray]: ...
def route_routing(q: np.ndarray, k: np.ndarray, centroids: np.ndarray, causal: bool,
                  params: RoutingParams) -> Pair: ...
def routing_kmeans_step(x: np.ndarray, means: np.ndarray, normalize: bool) -> Pair: ...
def routing_token_indices(q_idx: np.ndarray, k_idx: np.ndarray, q_len: int, kv_len: int,
                          causal: bool) -> np.ndarray: ...
def routing_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_idx: np.ndarray, k_idx: np.ndarray,
                      mem_key: Optional[np.ndarray], mem_value: Optional[np.ndarray], shared_qk: bool,
                      causal: bool, scale: Optional[float]) -> np.ndarray: ...
def estimate_proxyattn(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                       params: ProxyAttnParams) -> Pair: ...
def estimate_anchor_attention(q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float],
                              params: AnchorAttentionParams
                              ) -> Tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]: ...
def estimate_dhsa(q: np.ndarray, k: np.ndarray, causal: bool, params: DhsaParams,
                  boundaries: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]: ...
def estimate_hip(q: np.ndarray, k: np.ndarray, causal: bool,
                 params: HipParams, prefix_rows: bool = ...) -> Tuple[np.ndarray, int, np.ndarray, int]: ...
def estimate_flexprefill(q: np.ndarray, k: np.ndarray, causal: bool,
                         params: FlexPrefillParams) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def seer_gate_scores(q: np.ndarray, k: np.ndarray, wq: Optional[np.ndarray], wk: np.ndarray, q_pool: List[str],
                     k_pool: List[str], hidden: int, rope_theta: float, block_size: int,
                     inv_freq: Optional[np.ndarray] = None) -> np.ndarray: ...
def seer_select(scores: np.ndarray, n: int, block_size: int, params: SeerParams) -> np.ndarray: ...
def seer_ground_truth(q: np.ndarray, k: np.ndarray, block_size: int, scale: Optional[float]) -> np.ndarray: ...
def sea_estimate(q: np.ndarray, k: np.ndarray, features: np.ndarray, causal: bool, scale: Optional[float],
                 params: SeaParams) -> np.ndarray: ...
def sea_select(est: np.ndarray, Nk: int, causal: bool, params: SeaParams, speed_path: bool = ...) -> np.ndarray: ...
def quest_page_scores(q: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, kv_len: int, page_size: int) -> np.ndarray: ...
def estimate_quest(q: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, kv_len: int,
                   params: QuestParams) -> np.ndarray: ...
def estimate_doublesparse(q_label: np.ndarray, labels: np.ndarray, kv_len: int,
                          params: DoubleSparseParams) -> np.ndarray: ...
def estimate_tokenselect(q: np.ndarray, k: np.ndarray, kv_len: int, params: TokenSelectParams) -> np.ndarray: ...
def estimate_tidaldecode(q: np.ndarray, k: np.ndarray, kv_len: int, params: TidalDecodeParams) -> np.ndarray: ...
def normal_quantile(p: float) -> float: ...
def statistical_topk(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]: ...
def seer_r_select(probs: np.ndarray, q_heads: int, block_size: int, kv_len: int,
                  params: SeerAttentionRParams) -> np.ndarray: ...
