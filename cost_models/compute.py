"""Compute time of one micro-batch on one pipeline stage, for many plans at once.

Three kinds of work, each timed by its own bound:
- matrix products: the measured GEMM-efficiency curve (`gemm_curve`) at each product's shape
  on one TP rank, so thin shards and small micro-batches run slower than big products (FP8
  products `FP8_GEMM_SPEEDUP` faster; grouped expert products slower with few rows each);
- attention cores: flash attention at a measured share of peak (`ATTENTION_FRACTION`); the
  unfused kernels of pre-2023 Megatron-LM as batched products on the GEMM curve plus
  memory-bound passes over the stored score matrix;
- element-wise work (norms, residual adds, dropout, activations, rotary, cross-entropy):
  bytes moved / the HBM bandwidth memory-bound kernels reach (`MEMORY_BOUND_FRACTION`).
The constants are measured on an H100 (results/gpu/README.md, `cost_models.kernel_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_models.flops import (
    BACKWARD_FACTOR,
    FLASH_BACKWARD_FACTOR,
    attention_core_flops,
    attention_gemms,
    ffn_gemms,
    logits_gemm,
    mtp_projection_gemm,
)
from cost_models.gemm_curve import GemmCurve, curve_for, gemm_time_s
from cost_models.params import mlp_matrices
from cost_models.plan_arrays import (
    FULL_RECOMPUTE,
    PRECISION_CODES,
    PlanArrays,
    busiest_rank_load,
    routed_copies,
)
from cost_models.specs import ClusterSpec, ModelSpec, Precision

# Share of dense peak the flash-attention core reaches, forward and backward together.
# Measured on one H100 SXM (results/gpu/attention_h100.csv; `python -m cost_models.kernel_fit
# results/gpu`): cuDNN fused attention, as Transformer Engine runs it on Hopper, causal, head
# dim 128, 8-64 heads, 2k-8k tokens: time = 3.5 x forward FLOPs / (0.537 x peak) + 185 us
# fits fwd+bwd within 2.1% mean, 6.3% max. The fixed part is mostly the eager harness's
# launch cost and is left out. Consistent with Dao 2023 (arXiv:2307.08691, Fig. 4-6):
# FlashAttention-2 reaches 50-73% of A100 peak forward and ~63% backward.
ATTENTION_FRACTION = 0.537
# Measured on one H100 SXM (results/gpu/gemm_h100.csv, bench.gemm --precision bf16,fp8): FP8
# products with per-tensor scales (cuBLASLt through torch._scaled_mm, as Transformer Engine
# runs them on Hopper) take 1/1.76 of the BF16 time at the same shape (median over the
# 180 distinct tensor-parallel block shapes, quartiles 1.63-1.84; cost_models.kernel_fit).
# Attention and element-wise work stay in BF16; the casts are counted by
# fp8_cast_bytes_per_token.
FP8_GEMM_SPEEDUP = 1.76
# Memory-bound kernels reach this share of the datasheet HBM bandwidth: the median of copy,
# add, gelu and layer norm over 4096-16384 x 4096-16384 bf16 tensors on one H100 SXM
# (results/gpu/elementwise_h100.csv: 0.40-0.88, median 0.74).
MEMORY_BOUND_FRACTION = 0.74
# Grouped expert products (torch._grouped_mm, 4-64 experts of 128-2048 rows, Qwen3 expert
# shapes) on one H100 SXM (results/gpu/grouped_h100.csv): time = the GEMM curve's time of the
# summed work x (1 + (137.5 / rows per expert)^2); mean error 6.3%, max 13% (16% and 51%
# without the factor; `python -m cost_models.kernel_fit results/gpu`). 128 rows per expert
# run 2.2x slower than one big product, 512 rows 7%, 2048 rows 0.5%.
GROUPED_ROWS_HALF = 137.5
# Host seconds per PyTorch operator of an eager training step (Python, the dispatcher, the
# kernel launch), measured on megatron-core's own layers (results/gpu/megatron_*_layer_*.csv,
# `python -m bench.megatron_layer`; fitted by `python -m cost_models.kernel_fit results/gpu`,
# cost_models/host_fit.py): Qwen3 MoE and Llama 3 8B layers timed whole at 256-8192 tokens
# on one H100, on five machines of the same cloud type. Each machine's host seconds per
# operator: 16.8, 25.7, 25.9, 27.9 and 34.3 us (the host differs 2x between machines of one
# type); this is their median. (It was 20.5 us, from one machine's fastest
# layer of bench.layer, a plain-PyTorch GPT layer.)
HOST_S_PER_OP = 25.9e-6
# How host and GPU time of one layer call combine: (H^p + G^p)^(1/p) with this p, fitted to
# the same 55 measured layer calls (mean error 4.5%, max 20.4%; max(H, G), perfect overlap,
# gives 7.2% and 29.5%, the sum far more): where the two are close the GPU still waits, on
# the MoE dispatcher's host syncs and on runs of small kernels.
HOST_OVERLAP_NORM = 3.0
# Operators per layer call, (forward + backward, forward alone), by (MoE, fused attention core).
# Unfused (megatron-core 0.16.1's local spec, DotProductAttention), counted on the CPU
# (results/gpu/host_ops.csv, `python -m bench.host_ops`): a dense layer; an MoE layer's router,
# dispatcher (which waits on the host for the token counts) and attention block (363, 141)
# plus one expert's (32, 12), Transformer Engine's grouped GEMM running all local experts as
# one. Fused (a one-kernel attention core, as flash attention and Transformer Engine run):
# the operators the GPU runs counted (the `ops` slopes of results/gpu/megatron_*_layer_*.csv:
# 161 dense, 332 MoE with grouped experts), forward alone scaled by the CPU count's share
# (`host_ops.csv` *_fused rows: 82 / 197 dense, 140 / 355 MoE). ASSUMPTION: these stand for
# Transformer Engine's layers (fused kernels, fewer operators, more Python each).
# That MoE training is often host-bound is known (NVIDIA/TransformerEngine issue 2053: "many
# tiny PyTorch kernels"; Megatron-LM's --external-cuda-graph captures attention and the
# router to cut it); CUDA-graph-captured runs would wait less than this predicts.
HOST_OPS_PER_LAYER = {(False, False): (237, 95), (True, False): (363 + 32, 141 + 12),
                      (False, True): (161, 67), (True, True): (332, 131)}
ELEMENT_BYTES = 2
LOGIT_PASSES_BYTES = 16  # fp32 logits: write, softmax read+write, gradient write (4 x 4 B)


def memory_bound_time_s(size_bytes, gpu):
    """Seconds to stream `size_bytes` through HBM in memory-bound kernels."""
    return size_bytes / (gpu.hbm_bandwidth_bytes_per_s * MEMORY_BOUND_FRACTION)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerTimes:
    """Seconds per micro-batch for one layer on one GPU, forward only."""

    gemm_s: np.ndarray
    attention_s: np.ndarray  # forward attention core
    attention_backward_s: np.ndarray
    elementwise_s: np.ndarray
    # MoE layers: the MoE block's share of the above (router and expert products, expert
    # activation, token permutation), what recomputing the block redoes; 0 in dense layers
    moe_block_s: np.ndarray | float = 0.0

    @property
    def forward_s(self) -> np.ndarray:
        return self.gemm_s + self.attention_s + self.elementwise_s

    @property
    def backward_s(self) -> np.ndarray:
        return (BACKWARD_FACTOR * (self.gemm_s + self.elementwise_s)
                + self.attention_backward_s)


def _gemm_peak(cluster: ClusterSpec, plans: PlanArrays) -> np.ndarray:
    """Effective peak for products: FP8 runs use the BF16 curve sped up by FP8_GEMM_SPEEDUP."""
    fp16 = cluster.gpu.peak_fp16_flops
    bf16 = cluster.gpu.peak_bf16_flops
    return np.choose(plans.precision, [fp16, bf16, bf16 * FP8_GEMM_SPEEDUP])


def _vector_peak(cluster: ClusterSpec, plans: PlanArrays) -> np.ndarray:
    return np.choose(plans.precision, [cluster.gpu.peak_fp16_flops,
                                       cluster.gpu.peak_bf16_flops,
                                       cluster.gpu.peak_bf16_flops])


def elementwise_bytes_per_token(model: ModelSpec, plans: PlanArrays, moe: bool) -> np.ndarray:
    """Forward bytes moved by memory-bound kernels of one layer, per token, on one GPU.

    Per layer: two norms (read+write h each), two residual adds (read 2h, write h), two
    dropouts (read h, write h and a 1-byte mask): 15h elements, replicated on every TP rank
    unless sequence parallel shards them; rotary on q and k; the activation (gelu: read f,
    write f; gated: read 2f, write f) sharded by TP. MoE adds the token permutation
    (copy in and out of each of top-k experts).
    """
    h = model.hidden_size
    tp_div = np.where(plans.sequence_parallel, plans.tp, 1)
    rotary = 2 * rotary_width(model)
    fp8 = plans.precision == PRECISION_CODES.index(Precision.FP8)
    load = busiest_rank_load(model, plans)
    casts = np.where(fp8, fp8_cast_bytes_per_token(model, moe, load), 0.0)
    return (ELEMENT_BYTES * (15.0 * h / tp_div + rotary / plans.tp)
            + ffn_elementwise_bytes_per_token(model, plans, moe) + casts / plans.tp)


def rotary_width(model: ModelSpec) -> int:
    """Elements per token that RoPE rotates: queries and keys, or MLA's decoupled RoPE parts
    (one per query head and the key shared by all heads)."""
    if model.is_mla:
        return (model.num_heads + 1) * model.qk_rope_head_dim
    return model.q_dim + model.k_dim


def ffn_elementwise_bytes_per_token(model: ModelSpec, plans: PlanArrays, moe: bool):
    """The feed-forward block's share: the activation sharded by TP, and in MoE layers each
    routed copy's activation plus the token permutation (copy in and out, 4h), on the
    busiest expert rank."""
    if moe:
        act = routed_copies(model, plans) * (
            mlp_matrices(model.mlp) * model.moe_ffn_hidden_size + 4 * model.hidden_size)
    else:
        act = mlp_matrices(model.mlp) * model.ffn_hidden_size
    return ELEMENT_BYTES * act / plans.tp


def fp8_cast_bytes_per_token(model: ModelSpec, moe: bool, load=1.0):
    """Forward-pass bytes of FP8 quantization, per token and layer, before TP sharding.

    Transformer Engine casts each linear layer's input to FP8 (read 2 B, write 1 B, and a
    transposed 1 B copy for the weight gradient) and, in the backward pass, each output
    gradient the same way; the backward is counted by the x2 applied to element-wise work,
    so the forward figure here carries half of the output-gradient casts.
    """
    h = model.hidden_size
    copies = model.moe_topk * load if moe else 1
    f = model.moe_ffn_hidden_size if moe else model.ffn_hidden_size
    inputs = 2 * h + model.o_dim + copies * f  # qkv, proj, fc1, fc2 inputs
    qkv_out = model.q_dim + model.k_dim + model.v_dim
    grads = qkv_out + 2 * h + copies * (mlp_matrices(model.mlp) - 1) * f
    return 4.0 * (inputs + grads / 2.0)


def layer_times(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays,
                moe: bool) -> LayerTimes:
    curve = curve_for(cluster.gpu)
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    peak = _gemm_peak(cluster, plans)

    def products_s(gemms) -> np.ndarray:
        return sum(grouped_gemm_time_s(g, peak, curve) for g in gemms)

    attention = products_s(attention_gemms(model, tokens, plans.tp))
    load = busiest_rank_load(model, plans)
    ffn = products_s(ffn_gemms(model, tokens, plans.tp, plans.ep, moe, load))
    flash_fwd, flash_bwd = flash_attention_s(model, cluster, plans, tokens)
    unfused_fwd, unfused_bwd = unfused_attention_s(model, cluster, plans, tokens, curve)
    bytes_moved = tokens * elementwise_bytes_per_token(model, plans, moe)
    block = ffn + memory_bound_time_s(
        tokens * ffn_elementwise_bytes_per_token(model, plans, moe), cluster.gpu)
    return LayerTimes(
        gemm_s=attention + ffn,
        attention_s=np.where(plans.flash_attention, flash_fwd, unfused_fwd),
        attention_backward_s=np.where(plans.flash_attention, flash_bwd, unfused_bwd),
        elementwise_s=memory_bound_time_s(bytes_moved, cluster.gpu),
        moe_block_s=block if moe else 0.0)


def host_issue_s(cluster: ClusterSpec, plans: PlanArrays, moe: bool) -> np.ndarray:
    """Host seconds to issue one layer's forward and backward for one micro-batch, and the
    forward again under full recomputation (selective recomputation re-runs a few norms and
    activations, left out), at the cluster's measured seconds per operator if it has one."""
    unfused, fused = HOST_OPS_PER_LAYER[(moe, False)], HOST_OPS_PER_LAYER[(moe, True)]
    both = np.where(plans.flash_attention, fused[0], unfused[0])
    forward = np.where(plans.flash_attention, fused[1], unfused[1])
    per_op_s = HOST_S_PER_OP if cluster.host_s_per_op is None else cluster.host_s_per_op
    return per_op_s * (both + np.where(plans.recompute == FULL_RECOMPUTE, forward, 0))


def host_bound_time_s(host_s, gpu_s, norm: float = HOST_OVERLAP_NORM):
    """Seconds of a layer call that needs `host_s` on the host to issue and `gpu_s` on the
    GPU to run: (host^p + gpu^p)^(1/p), p = `norm` (inf: max, perfect overlap). Fitted to
    megatron-core's layers on one H100 (cost_models/host_fit.py; HOST_OVERLAP_NORM).
    Written as longer x (1 + (shorter / longer)^p)^(1/p): exactly the longer side where the
    other is 0, and the same formula for p = inf."""
    longer = np.maximum(np.asarray(host_s, dtype=float), gpu_s)
    shorter = np.minimum(np.asarray(host_s, dtype=float), gpu_s)
    ratio = np.divide(shorter, longer, out=np.zeros_like(longer), where=longer > 0)
    return longer * (1 + ratio ** norm) ** (1 / norm)


def grouped_gemm_time_s(g, peak, curve: GemmCurve,
                        rows_half: float = GROUPED_ROWS_HALF) -> np.ndarray:
    """`count` products of one shape run as one grouped kernel (Megatron-Core GroupedMLP):
    their work adds up, the fixed per-kernel time is paid once, and few rows per product
    slow the kernel down by grouped_rows_factor."""
    one = gemm_time_s(g.m, g.k, g.n, peak, curve)
    work = (one - curve.overhead_s) * g.count
    factor = np.where(np.asarray(g.count) > 1, grouped_rows_factor(g.m, rows_half), 1.0)
    return np.where(one > 0, work * factor + curve.overhead_s, 0.0)


def grouped_rows_factor(rows_per_product, rows_half: float = GROUPED_ROWS_HALF) -> np.ndarray:
    """Slow-down of a grouped kernel of few rows per product against one product of the same
    total work: 1 + (rows_half / rows)^2, fitted to measurements (GROUPED_ROWS_HALF)."""
    rows = np.maximum(np.asarray(rows_per_product, dtype=float), 1.0)
    return 1.0 + (rows_half / rows) ** 2


def selective_recompute_s(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays,
                          moe: bool, attention_s, moe_block_s=None) -> np.ndarray:
    """Forward work redone by selective recomputation, per layer and micro-batch.

    Unfused attention: Korthikanti et al. 2022's attention core (scores, softmax, dropout).
    Flash attention: the norms, and in MoE layers the expert activation (Megatron-Core
    `--recompute-modules layernorm moe_act`): their element-wise passes. Given the MoE
    block's forward time (`--recompute-modules layernorm moe`): the norms and that block."""
    whole_moe = moe and moe_block_s is not None
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    h = model.hidden_size
    tp_div = np.where(plans.sequence_parallel, plans.tp, 1)
    copies = routed_copies(model, plans) if moe else 1
    f = model.moe_ffn_hidden_size if moe else model.ffn_hidden_size
    act = copies * mlp_matrices(model.mlp) * f / plans.tp if moe and not whole_moe else 0.0
    passes = ELEMENT_BYTES * (4.0 * h / tp_div + act)
    modules = memory_bound_time_s(tokens * passes, cluster.gpu)
    if whole_moe:
        modules = modules + moe_block_s
    return np.where(plans.flash_attention, modules, attention_s)


def flash_attention_s(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays, tokens):
    """(forward, backward) seconds of the flash-attention core of one layer."""
    flops = attention_core_flops(model, tokens, model.seq_len, plans.tp)
    forward = flops / (_vector_peak(cluster, plans) * ATTENTION_FRACTION)
    return forward, FLASH_BACKWARD_FACTOR * forward


def unfused_attention_s(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays, tokens,
                        curve: GemmCurve):
    """(forward, backward) seconds of the unfused attention core (Megatron-LM before 2023).

    Scores Q K^T and values P V are batched products per head over the whole s x s matrix
    (no causal skipping); the fused scale-mask-softmax and the dropout pass over the stored
    scores: forward reads/writes 9 bytes per score (softmax 2+2, dropout 2+2 and a 1-byte
    mask), backward 11 (softmax gradient 2+2+2, dropout gradient 2+1+2).
    """
    s, d = model.seq_len, model.head_dim
    heads = plans.micro_batch_size * model.num_heads / plans.tp / plans.cp
    peak = _gemm_peak(cluster, plans)
    # One batched kernel each (baddbmm / bmm): stack the heads' rows into m.
    products = (gemm_time_s(heads * s, d, s, peak, curve)
                + gemm_time_s(heads * s, s, d, peak, curve))
    scores = memory_bound_time_s(heads * float(s) * s, cluster.gpu)
    return products + 9 * scores, BACKWARD_FACTOR * products + 11 * scores


def mtp_projection_time_s(model: ModelSpec, cluster: ClusterSpec,
                          plans: PlanArrays) -> np.ndarray:
    """A multi-token-prediction depth's 2h -> h projection, forward + backward."""
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    g = mtp_projection_gemm(model, tokens, plans.tp)
    return (1 + BACKWARD_FACTOR) * gemm_time_s(g.m, g.k, g.n, _gemm_peak(cluster, plans),
                                               curve_for(cluster.gpu))


def logits_time_s(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays) -> np.ndarray:
    """Output layer and cross-entropy of one micro-batch, forward + backward."""
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    g = logits_gemm(model, tokens, plans.tp)
    gemm = gemm_time_s(g.m, g.k, g.n, _gemm_peak(cluster, plans), curve_for(cluster.gpu))
    loss = tokens * model.vocab_size / plans.tp * LOGIT_PASSES_BYTES
    return (1 + BACKWARD_FACTOR) * gemm + memory_bound_time_s(loss, cluster.gpu)
