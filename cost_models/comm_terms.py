"""Communication of one training step, per parallel axis, for many plans at once.

Every collective's time comes from `comm.collective_time_s` with the group's size and its
ranks per node (`placement`). Bytes are counted here, once per axis:
- TP (Shoeybi et al. 2019, arXiv:1909.08053 Sec. 3): per dense layer 2 all-reduces forward and
  2 backward of the layer's activations; with sequence parallelism each becomes a
  reduce-scatter + all-gather pair of the same volume (Korthikanti et al. 2022 Sec. 4.2.2).
  An MoE layer keeps the attention pair only (expert-TP 1). Full recompute repeats forward.
- CP (ring attention, Liu et al. 2023, arXiv:2310.01889; Megatron-Core context parallel):
  each rank passes its K/V chunk around the ring, cp-1 hops forward, and K/V plus their
  gradients backward; it overlaps the attention core of the same layer.
- EP: dispatch + combine per MoE layer, forward and backward, of each token's hidden state to
  its top-k experts. Node-deduplicated dispatch (DeepEP; DeepSeek-V3 report arXiv:2412.19437
  Sec. 3.2.2; Megatron-Core's flex dispatcher) sends a token once to each remote node that
  hosts one of its experts and forwards it over NVLink there: with uniform routing over
  `nodes` nodes a token reaches nodes*(1-(1-1/nodes)^k) of them.
- PP (Narayanan et al. 2021 Sec. 2.2, 4.1): each micro-batch's activation forward and its
  gradient backward cross every stage boundary; a TP rank sends only its 1/tp slice (their
  scatter/gather optimization; the all-gather after it runs on NVLink and is ignored).
- DP: gradient all-reduce (ZeRO 0), or reduce-scatter of gradients + all-gather of weights
  (distributed optimizer / ZeRO 1-2), or per-micro-batch weight all-gathers forward and
  backward plus a gradient reduce-scatter (ZeRO-3; Rajbhandari et al. 2020, arXiv:1910.02054).
  ZeRO-3 gathers and reduces a layer at a time (PyTorch FSDP docs: each wrapped unit's
  parameters are all-gathered before its forward and backward; Megatron-FSDP and DeepSpeed
  fetch per layer or finer), so each layer's collective pays its own latency: at 1,024
  ranks a ring all-gather's (n-1) steps cost milliseconds per layer.
  Two implementations differ (plan.zero3_impl):
  - "fsdp" (Megatron-FSDP, PyTorch FSDP): a transformer layer is the sharding unit and a
    recomputed layer runs inside that unit's backward, after its weights were gathered for
    it: two gathers per micro-batch with any recompute. Its collectives are NCCL's over the
    group, priced like any DP collective (the node's NICs pooled).
  - "deepspeed" (ZeRO-3's per-module fetch hooks): a module's weights are released after its
    forward and the checkpointed forward re-enters the fetch hooks, so full recompute gathers
    every weight three times per micro-batch (MoE-block recompute: the experts' weights).
    Its collectives are rail-bound: each GPU moves its share through its own NIC
    (groups_per_node = gpus_per_node), not the node's pooled NICs. This is what published
    DeepSpeed runs show: Narayanan et al. 2021 Table 2 (ZeRO-3 with full recompute, 8x HDR
    DGX A100) moved 4 x 2 bytes x parameters per GPU per step (three gathers and the
    gradient reduce-scatter) at 21-23 GB/s -- 84-92% of one 25 GB/s NIC, an order below
    pooled-NIC NCCL rings.
"""

from __future__ import annotations

import numpy as np

from bench.records import Collective
from cost_models.comm import collective_time_s
from cost_models.memory import ACT_BYTES, WEIGHT_BYTES, stage_param_counts
from cost_models.pipeline import stage_layers
from cost_models.plan_arrays import (
    FULL_RECOMPUTE,
    MOE_RECOMPUTE,
    PlanArrays,
    busiest_rank_load,
)
from cost_models.specs import ClusterSpec, ModelSpec, Precision

AR, AG, RS = Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.REDUCE_SCATTER
A2A, P2P = Collective.ALL_TO_ALL, Collective.SEND_RECV


def grad_bytes_per_param(plans: PlanArrays) -> np.ndarray:
    """Megatron-LM reduces bf16 runs' gradients in fp32 (arguments.py forces
    accumulate_allreduce_grads_in_fp32 for bf16) unless --grad-reduce-in-bf16, and fp16
    runs' in fp16. ZeRO-3/FSDP reduce in the 16-bit parameter dtype (PyTorch FSDP
    MixedPrecision.reduce_dtype and DeepSpeed ZeRO-3 communication_data_type default to it)."""
    fp16 = plans.precision == list(Precision).index(Precision.FP16)
    return np.where(fp16 | (plans.zero == 3) | plans.grad_reduce_in_bf16, 2.0, 4.0)


def tp_passes(plans: PlanArrays) -> np.ndarray:
    """Times a layer's TP collectives run per micro-batch: forward, backward, and the
    forward again under full recomputation."""
    return np.where(plans.recompute == FULL_RECOMPUTE, 3.0, 2.0)


def ep_passes(plans: PlanArrays) -> np.ndarray:
    """Times an MoE layer's dispatch + combine run per micro-batch: forward, backward, and
    again when the layer or its MoE block is recomputed."""
    redone = (plans.recompute == FULL_RECOMPUTE) | (plans.recompute == MOE_RECOMPUTE)
    return np.where(redone, 3.0, 2.0)


FP8_BYTES = 1


def tp_gather_fraction(plans: PlanArrays) -> np.ndarray:
    """Bytes of a sequence-parallel TP all-gather over those of the 16-bit activations it
    replaces. FP8 runs gather GEMM inputs already cast to FP8, in Transformer Engine 1.x and
    2.x alike: `_LayerNormLinear.forward` writes the normalized input as FP8 (uint8) before
    `gather_along_first_dim`, and `TransformerEngineBaseModule.grad_output_preprocess`
    casts the output gradient to FP8 before gathering it ("FP8 case with gather").
    Reduce-scatters sum, so they stay 16-bit; without sequence parallelism the all-reduce
    does too."""
    fp8 = plans.precision == list(Precision).index(Precision.FP8)
    return np.where(fp8, FP8_BYTES / ACT_BYTES, 1.0)


def tp_pair_time_s(size_bytes, plans: PlanArrays, k, cluster: ClusterSpec) -> np.ndarray:
    """One TP all-reduce, or its reduce-scatter + all-gather pair under sequence parallel
    (`size_bytes` of 16-bit activations)."""
    ar = collective_time_s(AR, size_bytes, plans.tp, k, cluster)
    gather_bytes = size_bytes * tp_gather_fraction(plans)
    pair = (collective_time_s(RS, size_bytes, plans.tp, k, cluster)
            + collective_time_s(AG, gather_bytes, plans.tp, k, cluster))
    return np.where(plans.sequence_parallel, pair, ar)


def tp_comm_per_layer_s(model: ModelSpec, plans: PlanArrays, k, cluster: ClusterSpec,
                        moe: bool) -> np.ndarray:
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    size = tokens * model.hidden_size * ACT_BYTES
    per_pass = 1.0 if moe else 2.0
    return per_pass * tp_passes(plans) * tp_pair_time_s(size, plans, k, cluster)


def cp_comm_per_layer_s(model: ModelSpec, plans: PlanArrays, k, cluster: ClusterSpec):
    """(forward, backward) ring time of one layer."""
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    kv_bytes = tokens * (model.k_dim + model.v_dim) / plans.tp * ACT_BYTES
    hop = collective_time_s(P2P, kv_bytes, np.minimum(plans.cp, 2), k, cluster)
    hops = np.maximum(plans.cp - 1, 0)
    return hops * hop, 2 * hops * hop


def remote_copies_per_token(model: ModelSpec, nodes) -> np.ndarray:
    """Expected remote nodes a token is sent to under node-deduplicated dispatch, with the
    experts laid out in order over the EP group's `nodes` nodes.

    Uniform routing: another node holds 1/nodes of the experts and all top-k choices miss it
    with probability (1 - 1/nodes)^k. Group-limited routing (DeepSeek-V3, arXiv:2412.19437
    Sec. 2.1.2, node-limited routing; Megatron-Core moe_router_num_groups/group_topk): a token
    picks g of the G expert groups, then its top-k experts inside them. With nodes <= G a node
    holds G/nodes whole groups and is missed when none of them is picked, with probability
    C(G - G/nodes, g) / C(G, g); with nodes > G a group spans nodes/G nodes, and a node is hit
    when its group is picked (g/G) and one of the k experts, spread over the g*nodes/G nodes
    of the picked groups, lands on it.
    """
    nodes = np.maximum(np.asarray(nodes, dtype=float), 1.0)
    k = model.moe_topk
    uniform = 1.0 - (1.0 - 1.0 / nodes) ** k
    groups, picked = model.moe_router_groups, model.moe_router_group_topk
    if groups == 0:
        return (nodes - 1.0) * uniform
    per_node = groups / nodes
    missed = np.ones_like(nodes)
    for i in range(picked):
        missed = missed * np.clip((groups - per_node - i) / (groups - i), 0.0, 1.0)
    spread = picked / groups * (1.0 - (1.0 - groups / (picked * nodes)) ** k)
    hit = np.where(nodes <= groups, 1.0 - missed, spread)
    return (nodes - 1.0) * hit


def ep_comm_per_layer_s(model: ModelSpec, plans: PlanArrays, k, cluster: ClusterSpec):
    """Dispatch + combine of one MoE layer (forward and backward; again when the layer or
    its MoE block is recomputed).

    The all-to-all is sized so that its inter-node bytes are the deduplicated ones: a rank's
    nccl-tests a2a size S sends S*(n-k)/n off-node, so S = remote bytes * n / (n - k).
    It ends when the busiest expert rank has received (dispatch) and returned (combine)
    its tokens: Plan.moe_load_factor times the mean.
    """
    tokens = plans.micro_batch_size * model.seq_len / plans.cp / plans.tp
    token_bytes = model.hidden_size * ACT_BYTES
    n, kk = plans.ep.astype(float), np.minimum(k, plans.ep).astype(float)
    nodes = np.ceil(n / kk)
    remote = tokens * remote_copies_per_token(model, nodes) * token_bytes
    local = tokens * model.moe_topk * token_bytes
    size = np.where(nodes > 1, remote * n / np.maximum(n - kk, 1.0), local)
    busiest = size * busiest_rank_load(model, plans)
    return 2.0 * ep_passes(plans) * collective_time_s(A2A, busiest, plans.ep, k, cluster)


def pp_comm_s(model: ModelSpec, plans: PlanArrays, k, cluster: ClusterSpec) -> np.ndarray:
    """Send/recv on the critical path of one step: 2 (m*vpp + pp - 1) transfers."""
    tokens = plans.micro_batch_size * model.seq_len / plans.cp
    size = tokens * model.hidden_size * ACT_BYTES / plans.tp
    one = collective_time_s(P2P, size, 2, k, cluster)
    transfers = 2.0 * (plans.num_microbatches * plans.vpp + plans.pp - 1)
    return np.where(plans.pp > 1, transfers * one, 0.0)


def zero3_gathers_per_microbatch(plans: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """(dense, expert) weight gathers per micro-batch under ZeRO-3: two, and a third for a
    recomputed forward under DeepSpeed (the experts' also under MoE-block recompute)."""
    full = plans.recompute == FULL_RECOMPUTE
    moe = full | (plans.recompute == MOE_RECOMPUTE)
    ds = plans.zero3_deepspeed
    return np.where(ds & full, 3.0, 2.0), np.where(ds & moe, 3.0, 2.0)


def dp_comm_s(model: ModelSpec, plans: PlanArrays, k: dict, cluster: ClusterSpec):
    """(gradient-side, weight-side) seconds per step; ZeRO-3 is per micro-batch x m."""
    dense, experts = stage_param_counts(model, plans)
    edp = np.maximum(plans.tp * plans.cp * plans.dp // plans.ep, 1)
    k_edp = np.minimum(np.maximum(cluster.gpus_per_node // plans.ep, 1), edp)
    gathers = zero3_gathers_per_microbatch(plans)
    layers = stage_layers(model.num_layers, plans.pp)
    moe_layers = layers * model.num_moe_layers / model.num_layers
    dense_s = _dp_group_s(dense, plans.dp * plans.cp, k["dp_cp"], gathers[0], layers, plans,
                          cluster)
    expert_s = _dp_group_s(experts, edp, k_edp, gathers[1], moe_layers, plans, cluster)
    return dense_s[0] + expert_s[0], dense_s[1] + expert_s[1]


def _dp_group_s(count, n, kk, zero3_gathers, units, plans: PlanArrays, cluster: ClusterSpec):
    """(gradient-side, weight-side) seconds of one data-parallel group holding `count`
    parameters over `n` ranks, `kk` per node, in `units` layers."""
    grad_b = grad_bytes_per_param(plans)
    zero3 = plans.zero == 3
    # Groups sharing a node's NICs: every GPU's own (DeepSpeed ZeRO-3, rail-bound) or the
    # default.
    shared = np.where(zero3 & plans.zero3_deepspeed, float(cluster.gpus_per_node),
                      cluster.gpus_per_node / np.maximum(kk, 1))
    # ZeRO-3 gathers and reduces one layer at a time (the FSDP unit; DeepSpeed's modules
    # are finer still): a collective per layer, each with its own latency.
    calls = np.where(zero3, np.maximum(units, 1.0), 1.0)
    ar = collective_time_s(AR, count * grad_b, n, kk, cluster)
    rs = calls * collective_time_s(RS, count * grad_b / calls, n, kk, cluster,
                                   groups_per_node=shared)
    ag = calls * collective_time_s(AG, count * WEIGHT_BYTES / calls, n, kk, cluster,
                                   groups_per_node=shared)
    held = np.asarray(count) > 0  # a dense model has no expert group to reduce over
    grad_s = held * np.where(plans.zero == 0, ar, rs)
    weight_s = held * np.where(plans.zero == 0, 0.0, np.where(zero3, zero3_gathers * ag, ag))
    return grad_s, weight_s
