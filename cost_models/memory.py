"""Peak memory per GPU, in bytes, for many plans at once.

Terms (each one function): model states (weights, gradients, optimizer) under each sharding
stage; activations of the in-flight micro-batches on the first pipeline stage (Korthikanti
et al. 2022, arXiv:2205.05198, Sec. 4) with flash attention keeping no score matrix; the
logits of the last stage; a documented allowance for the allocator and framework buffers.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cost_models.params import (
    attention_replicated_params,
    attention_sharded_params,
    dense_mlp_params,
    embedding_params,
    expert_params,
    mlp_matrices,
    mtp_module_params,
)
from cost_models.pipeline import stage_layers
from cost_models.plan_arrays import FULL_RECOMPUTE, PRECISION_CODES, PlanArrays, routed_copies
from cost_models.specs import ModelSpec, Precision

# Mixed-precision Adam, bytes per parameter (Megatron-LM docs/distrib_optimizer.md table:
# "bf16 param, fp32 grads: 18, distributed 6 + 12/d"): 16-bit weight 2, fp32 gradient 4,
# fp32 main weight + Adam m + v 12.
WEIGHT_BYTES = 2
GRAD_BYTES = 4
OPTIMIZER_BYTES = 12
# The same table's "fp16 param, fp16 grads: 20, distributed 4 + 16/d": fp16 runs, and bf16
# runs with --grad-reduce-in-bf16, keep the gradient in 16 bits (2) and the optimizer adds an
# fp32 main gradient to its state (16).
HALF_GRAD_BYTES = 2
HALF_GRAD_OPTIMIZER_BYTES = 16
# Megatron-Core's precision-aware optimizer with bf16 moments (OptimizerConfig
# exp_avg_dtype / exp_avg_sq_dtype = bf16, store_param_remainders True, the default for bf16
# weights and an fp32 main weight): the fp32 main weight is the bf16 weight plus a 16-bit
# remainder (2), m 2, v 2. The optimizer reads the gradient buffer in place, in whatever
# precision it was reduced, so no fp32 main-gradient copy is added.
BF16_OPTIMIZER_BYTES = 6
ACT_BYTES = 2  # 16-bit activations (fp8 runs keep activations in bf16 too)
LOGIT_BYTES = 4  # fp32 logits for the cross-entropy (Megatron casts them)
# ASSUMPTION: CUDA context, NCCL buffers and framework workspaces ~2 GiB per GPU, and the
# PyTorch caching allocator loses ~5% of the dynamic memory to fragmentation (PyTorch "CUDA
# memory management" notes; Megatron users report 2-4 GB of overhead beyond the estimate).
FRAMEWORK_BYTES = 2 * 2**30
FRAGMENTATION_FRACTION = 0.05


def model_state_bytes_per_param(zero, shard, half_grads=False, bf16_optimizer=False
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight, gradient, optimizer) bytes per parameter when sharded over `shard` ranks.
    `half_grads`: 16-bit gradients under DDP or the distributed optimizer (ZeRO-2/3 and FSDP
    keep the sharded fp32 gradient either way). `bf16_optimizer`: bf16 Adam states
    (BF16_OPTIMIZER_BYTES) instead of fp32 ones."""
    half = np.asarray(half_grads) & (np.asarray(zero) <= 1)
    weight = np.where(zero >= 3, WEIGHT_BYTES / shard, WEIGHT_BYTES)
    grad = np.where(zero >= 2, GRAD_BYTES / shard, np.where(half, HALF_GRAD_BYTES, GRAD_BYTES))
    state = np.where(bf16_optimizer, BF16_OPTIMIZER_BYTES,
                     np.where(half, HALF_GRAD_OPTIMIZER_BYTES, OPTIMIZER_BYTES))
    optim = np.where(zero >= 1, state / shard, state)
    return weight, grad, optim


def stage_param_counts(model: ModelSpec, plans: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """(dense, expert) parameters on one GPU of the first stage: its layers and the input
    embedding; without pipelining the one stage also holds an untied output layer (found by
    the whole-step benchmark on an H100, results/gpu/README.md) and the multi-token-
    prediction depths, which otherwise sit on the last stage."""
    layers = stage_layers(model.num_layers, plans.pp)
    moe_share = model.num_moe_layers / model.num_layers
    dense_layer, _ = layer_params_on_gpu(model, plans, moe=False)
    moe_layer, moe_experts = layer_params_on_gpu(model, plans, moe=True)
    dense = layers * ((1 - moe_share) * dense_layer + moe_share * moe_layer)
    tables = np.where(plans.pp == 1, 1.0, 1.0 if model.tied_embeddings else 0.5)
    dense = dense + embedding_params(model) * tables / plans.tp
    experts = layers * moe_share * moe_experts
    mtp = np.where(plans.pp == 1, model.mtp_layers, 0)
    mtp_dense, mtp_experts = layer_params_on_gpu(model, plans, moe=model.is_moe)
    projection, norms = mtp_module_params(model)
    mtp_dense = mtp_dense + projection / plans.tp + norms
    return dense + mtp * mtp_dense, experts + mtp * mtp_experts


def layer_params_on_gpu(model: ModelSpec, plans: PlanArrays, moe: bool):
    """(dense, expert) parameters of one layer on one GPU: attention and norms split by TP
    (MLA's down-projections whole on every rank); the MLP split by TP, or in an MoE layer
    the shared expert split by TP and num_experts/ep routed experts."""
    h = model.hidden_size
    mats = mlp_matrices(model.mlp)
    ffn = mats * h * model.moe_shared_ffn_hidden_size if moe else dense_mlp_params(model)
    dense = ((attention_sharded_params(model) + 2 * h + ffn) / plans.tp
             + attention_replicated_params(model))
    experts = model.num_experts * expert_params(model) / plans.ep if moe else 0.0
    return dense, experts


def model_state_bytes(model: ModelSpec, plans: PlanArrays) -> dict[str, np.ndarray]:
    dense, experts = stage_param_counts(model, plans)
    dense_shard = plans.dp * plans.cp
    expert_shard = np.maximum(plans.tp * plans.cp * plans.dp // plans.ep, 1)
    fp16 = plans.precision == PRECISION_CODES.index(Precision.FP16)
    half_grads = fp16 | plans.grad_reduce_in_bf16
    out = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0}
    for count, shard in ((dense, dense_shard), (experts, expert_shard)):
        per_param_bytes = model_state_bytes_per_param(plans.zero, shard, half_grads,
                                                      plans.bf16_optimizer)
        for name, per_param in zip(out, per_param_bytes):
            out[name] = out[name] + count * per_param
    return out


def layer_activation_bytes_per_token(model: ModelSpec, plans: PlanArrays, moe: bool):
    """Bytes one token leaves on one GPU per layer, Korthikanti et al. 2022 Sec. 4.1.

    Their 34*s*b*h (GPT, 4h FFN) splits into 10h replicated across TP ranks (two norm inputs
    4h, QKV and MLP inputs 4h, two dropout masks 2h at 1 byte) and 24h sharded by TP
    (Q, K, V, attention output 8h; MLP activation input and output 16h). Flash attention
    stores no score matrix (their 5as^2b term is gone). Sequence parallelism shards the
    replicated part too. Full recomputation keeps only each layer's 2h input. Selective
    recomputation with flash attention recomputes the norms and, in MoE layers, the expert
    activation (Megatron-Core `--recompute-modules layernorm moe_act`): the two norm outputs
    (4h) and the expert activation outputs (f per routed copy) are not kept. Recomputing the
    whole MoE block (`--recompute-modules layernorm moe`) keeps none of its activations:
    in MoE layers the norm outputs and every routed copy's tensors go; dense layers
    recompute as selective.
    """
    h = model.hidden_size
    mats = mlp_matrices(model.mlp)
    replicated = 10.0 * h
    # Q, K, V and the attention output, split by heads; MLA's latents on every rank
    attn = ACT_BYTES * (model.q_dim + model.k_dim + model.v_dim + model.o_dim)
    latents = ACT_BYTES * model.mla_latent_dim
    # on the busiest expert rank
    copies = routed_copies(model, plans) if moe else 1
    f = model.moe_ffn_hidden_size if moe else model.ffn_hidden_size
    act_out = ACT_BYTES * copies * f
    mlp = ACT_BYTES * copies * (mats - 1) * f + act_out
    if moe:  # each routed copy's expert input, and the router logits
        mlp = mlp + ACT_BYTES * (copies * h + model.num_experts)
    # TP ranks split attention heads and FFN columns; with expert-TP 1 they split the tokens
    # of an MoE layer instead (sequence parallel), which divides the same bytes by tp.
    tp_div = np.where(plans.sequence_parallel, plans.tp, 1)
    full = (replicated / tp_div + latents + (attn + mlp) / plans.tp
            + score_bytes_per_token(model, plans))
    modules = np.where(plans.flash_attention,
                       ACT_BYTES * 2 * h / tp_div + (act_out / plans.tp if moe else 0.0), 0.0)
    kept_input = ACT_BYTES * h / tp_div
    block = ACT_BYTES * 2 * h / tp_div + mlp / plans.tp if moe else modules
    block = np.where(plans.flash_attention, block, modules)
    return np.choose(plans.recompute, [full, full - modules, kept_input, full - block])


def score_bytes_per_token(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    """Unfused attention stores softmax output, dropout mask and output: 5*a*s bytes per
    token (Korthikanti et al. 2022 Eq. 1, the 5as^2b term), sharded by TP; selective
    recompute drops it, flash attention never stores it."""
    stored = (~plans.flash_attention) & (plans.recompute == 0)
    return np.where(stored, 5.0 * model.num_heads * model.seq_len / plans.tp, 0.0)


def inflight_layers(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    """Layers' worth of micro-batch activations the first stage holds at its peak.

    1F1B keeps min(pp, m) micro-batches of a stage's layers. Interleaved 1F1B (Megatron-LM
    schedules.py warm-up) keeps 2(pp-1) + (vpp-1)pp + 1 chunks of 1/vpp of them.
    """
    m = plans.num_microbatches
    chunks = np.where(plans.vpp > 1, 2 * (plans.pp - 1) + (plans.vpp - 1) * plans.pp + 1,
                      plans.pp)
    chunks = np.minimum(chunks, m * plans.vpp)
    return chunks * stage_layers(model.num_layers, plans.pp) / plans.vpp


def activation_bytes(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    moe_share = model.num_moe_layers / model.num_layers
    per_token = ((1 - moe_share) * layer_activation_bytes_per_token(model, plans, False)
                 + moe_share * layer_activation_bytes_per_token(model, plans, True))
    stored = inflight_layers(model, plans) * tokens * per_token
    # Full recomputation rebuilds one layer at a time: one layer's full activations on top.
    working = np.where(plans.recompute == FULL_RECOMPUTE, tokens * _no_recompute(model, plans),
                       0.0)
    return stored + working


def _no_recompute(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    plain = replace(plans, recompute=np.zeros_like(plans.recompute))
    return layer_activation_bytes_per_token(model, plain, model.is_moe)


def logits_bytes(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    """fp32 logits and their gradient on the last stage, one micro-batch."""
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    return 2 * LOGIT_BYTES * tokens * model.vocab_size / plans.tp


def memory_breakdown(model: ModelSpec, plans: PlanArrays) -> dict[str, np.ndarray]:
    """Per-GPU bytes by term; the peak is their sum (first stage; logits if pp == 1)."""
    terms = model_state_bytes(model, plans)
    terms["activations"] = activation_bytes(model, plans)
    terms["logits"] = np.where(plans.pp == 1, logits_bytes(model, plans), 0.0)
    dynamic = sum(terms.values())
    terms["allocator_and_buffers"] = FRAMEWORK_BYTES + FRAGMENTATION_FRACTION * dynamic
    return {k: np.broadcast_to(np.asarray(v, dtype=float), plans.tp.shape) for k, v in
            terms.items()}
