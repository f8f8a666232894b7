"""estimate(model, cluster, plan): step time as a sum of named terms, MFU and peak memory.

    step = m * (compute + recompute + exposed TP/CP/EP + host wait) + bubble
           + PP send/recv + exposed DP + optimizer

The pipeline bubble of 1F1B is (pp-1) micro-batch slots and of interleaved 1F1B (pp-1)/vpp
(Narayanan et al. 2021, arXiv:2104.04473 Sec. 2.2). Gradient reduction overlaps the backward
pass of the last micro-batch and the weight all-gather the forward pass of the first one
(Megatron-Core overlap_grad_reduce / overlap_param_gather); ZeRO-3 gathers overlap the
micro-batch they serve. `estimate_batch` scores many plans in one numpy pass; `estimate`
wraps it for one plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_models.comm_terms import (
    cp_comm_per_layer_s,
    dp_comm_s,
    ep_comm_per_layer_s,
    ep_passes,
    pp_comm_s,
    tp_comm_per_layer_s,
    tp_passes,
)
from cost_models.compute import (
    host_bound_time_s,
    host_issue_s,
    layer_times,
    logits_time_s,
    memory_bound_time_s,
    mtp_projection_time_s,
    selective_recompute_s,
)
from cost_models.flops import model_flops_per_token
from cost_models.memory import memory_breakdown, stage_param_counts
from cost_models.pipeline import inner_and_last_layers, last_stage_extra
from cost_models.placement import group_ranks_per_node
from cost_models.plan_arrays import PRECISION_CODES, PlanArrays, from_plans
from cost_models.specs import ClusterSpec, Estimate, ModelSpec, Plan

# Adam step: read and write the fp32 weight, m and v (24 B), read the fp32 gradient (4 B),
# write the 16-bit weight (2 B), plus one gradient read for the norm/clipping (4 B).
OPTIMIZER_STEP_BYTES_PER_PARAM = 34
# With bf16 states (memory.BF16_OPTIMIZER_BYTES): read and write the bf16 weight, its 16-bit
# remainder, m and v (16 B) and read the gradient twice (8 B).
BF16_OPTIMIZER_STEP_BYTES_PER_PARAM = 24
# ASSUMPTION: a ring collective runs one CTA per NCCL channel; at 16-32 channels on a
# 108-132-SM GPU it holds ~15% of the SMs, and compute overlapped with it slows by that much
# (NCCL docs, NCCL_MIN/MAX_NCHANNELS; the interference is why Megatron-LM and TE cap the
# channels of overlapped collectives).
NCCL_SM_FRACTION = 0.15

TIME_TERMS = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "host_wait",
              "pp_bubble", "pp_comm", "dp_comm", "optimizer")


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchEstimate:
    step_time_s: np.ndarray
    breakdown_s: dict[str, np.ndarray]
    mfu: np.ndarray
    tokens_per_s: np.ndarray
    model_tflops_per_gpu: np.ndarray
    peak_memory_bytes: np.ndarray
    memory_bytes: dict[str, np.ndarray]


LAYER_TERMS = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "host_wait")


def _per_microbatch(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays, k: dict):
    """Seconds per micro-batch on the slowest stage, by term: the fullest inner stage or the
    last one (fewer layers when the split is uneven, plus the logits and any multi-token-
    prediction depths), whichever is slower. Layers are dense and MoE in proportion."""
    mix = ((False, model.num_dense_layers), (True, model.num_moe_layers))
    needed = {moe for moe, count in mix if count} | ({model.is_moe} if model.mtp_layers else set())
    kinds = {moe: _layer_terms(model, cluster, plans, k, moe) for moe in sorted(needed)}
    per_layer = {name: 0.0 for name in LAYER_TERMS}
    for moe, count in mix:
        if count:
            for name in LAYER_TERMS:
                per_layer[name] = per_layer[name] + count / model.num_layers * kinds[moe][name]
    head = _last_stage_head_s(model, cluster, plans, kinds.get(model.is_moe))
    inner, last = inner_and_last_layers(model.num_layers, plans.pp,
                                        last_stage_extra(model.num_layers, plans.pp,
                                                         plans.vpp, model.mtp_layers))
    layer_s = sum(per_layer.values())
    on_last = last * layer_s + sum(head.values()) >= inner * layer_s
    layers = np.where(on_last, last, inner)
    return {name: layers * value + np.where(on_last, head.get(name, 0.0), 0.0)
            for name, value in per_layer.items()}


def _last_stage_head_s(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays,
                       mtp_layer: dict | None):
    """Seconds per micro-batch, by term, the last stage adds to its layers: the output head,
    and per multi-token-prediction depth its projection, one layer of the model's kind
    (`mtp_layer`, its terms) and the head again."""
    logits = logits_time_s(model, cluster, plans)
    head = {"compute": logits}
    if model.mtp_layers == 0:
        return head
    for name, value in mtp_layer.items():
        head[name] = head.get(name, 0.0) + model.mtp_layers * value
    proj_s = mtp_projection_time_s(model, cluster, plans)
    head["compute"] = head["compute"] + model.mtp_layers * (logits + proj_s)
    return head


def _layer_terms(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays, k: dict,
                 moe: bool) -> dict[str, np.ndarray]:
    """Seconds per micro-batch of one dense or MoE layer, by term."""
    t = layer_times(model, cluster, plans, moe)
    selective = selective_recompute_s(model, cluster, plans, moe, t.attention_s)
    whole_moe = selective_recompute_s(model, cluster, plans, moe, t.attention_s,
                                      t.moe_block_s) if moe else selective
    cp_fwd, cp_bwd = cp_comm_per_layer_s(model, plans, k["cp"], cluster)
    terms = {"compute": t.forward_s + t.backward_s,
             "recompute": np.choose(plans.recompute, [0.0, selective, t.forward_s, whole_moe]),
             "tp_comm": tp_comm_per_layer_s(model, plans, k["tp"], cluster, moe),
             "cp_comm": (hidden_comm_cost_s(cp_fwd, t.attention_s)
                         + hidden_comm_cost_s(cp_bwd, t.attention_backward_s)),
             "ep_comm": ep_comm_per_layer_s(model, plans, k["ep"], cluster) if moe else 0.0}
    # The GPU waits on the host for issuing the layer's operators, most where the two take
    # about as long (small work per layer and micro-batch; compute.host_bound_time_s).
    gpu_s = sum(terms.values())
    terms["host_wait"] = host_bound_time_s(host_issue_s(cluster, plans, moe), gpu_s) - gpu_s
    return terms


def hidden_comm_cost_s(comm_s, window_s) -> np.ndarray:
    """Seconds a collective adds when it runs behind `window_s` of compute: the part that
    does not fit, plus the compute slowed by the SMs NCCL occupies meanwhile."""
    hidden = np.minimum(comm_s, window_s)
    return np.maximum(comm_s - window_s, 0.0) + NCCL_SM_FRACTION * hidden


def intra_node_comm_s(plans: PlanArrays, k: dict, mb: dict) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds per micro-batch of the TP and EP collectives that stay
    inside a node (NVLink): data-parallel traffic crosses the network and runs on the NICs
    meanwhile. One of each collective's passes (comm_terms.tp_passes / ep_passes) is in the
    forward pass; the others, a recomputed forward included, run inside the backward pass."""
    tp = np.where(k["tp"] >= plans.tp, mb["tp_comm"], 0.0)
    ep = np.where(k["ep"] >= plans.ep, mb["ep_comm"], 0.0)
    forward = tp / tp_passes(plans) + ep / ep_passes(plans)
    return forward, tp + ep - forward


def _dp_exposed_s(model, cluster, plans, k, mb: dict) -> np.ndarray:
    """Recomputation runs inside the backward pass, so it widens the backward window (and,
    under ZeRO-3, the micro-batch's window that its own re-gather needs); so do the
    intra-node collectives of each pass (`intra_node_comm_s`)."""
    grad_s, weight_s = dp_comm_s(model, plans, k, cluster)
    intra_forward, intra_backward = intra_node_comm_s(plans, k, mb)
    backward_window = mb["compute"] * 2.0 / 3.0 + mb["recompute"] + intra_backward
    forward_window = mb["compute"] / 3.0 + intra_forward
    overlapped = (hidden_comm_cost_s(grad_s, backward_window)
                  + hidden_comm_cost_s(weight_s, forward_window))
    zero3 = plans.num_microbatches * hidden_comm_cost_s(grad_s + weight_s,
                                                        forward_window + backward_window)
    return np.where(plans.zero == 3, zero3, overlapped)


def _optimizer_s(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays) -> np.ndarray:
    dense, experts = stage_param_counts(model, plans)
    edp = np.maximum(plans.tp * plans.cp * plans.dp // plans.ep, 1)
    local = np.where(plans.zero >= 1, dense / (plans.dp * plans.cp) + experts / edp,
                     dense + experts)
    step_bytes = np.where(plans.bf16_optimizer, BF16_OPTIMIZER_STEP_BYTES_PER_PARAM,
                          OPTIMIZER_STEP_BYTES_PER_PARAM)
    return memory_bound_time_s(local * step_bytes, cluster.gpu)


def estimate_batch(model: ModelSpec, cluster: ClusterSpec, plans: PlanArrays) -> BatchEstimate:
    k = group_ranks_per_node(plans, cluster.gpus_per_node)
    mb = _per_microbatch(model, cluster, plans, k)
    m = plans.num_microbatches
    mb_total = sum(mb.values())
    terms = {name: m * value for name, value in mb.items()}
    terms["pp_bubble"] = (plans.pp - 1) / plans.vpp * mb_total
    terms["pp_comm"] = pp_comm_s(model, plans, k["pp"], cluster)
    terms["dp_comm"] = _dp_exposed_s(model, cluster, plans, k, mb)
    terms["optimizer"] = _optimizer_s(model, cluster, plans)
    terms = {name: np.broadcast_to(np.asarray(terms[name], float), plans.tp.shape)
             for name in TIME_TERMS}
    step = sum(terms.values())
    tokens = plans.global_batch_size * model.seq_len
    flops = model_flops_per_token(model) * tokens
    peaks = np.array([cluster.gpu.dense_peak_flops(p) or np.nan
                      for p in PRECISION_CODES])[plans.precision]
    gpus = plans.num_gpus
    memory = memory_breakdown(model, plans)
    return BatchEstimate(step_time_s=step, breakdown_s=terms,
                         mfu=flops / (step * gpus * peaks), tokens_per_s=tokens / step,
                         model_tflops_per_gpu=flops / step / gpus / 1e12,
                         peak_memory_bytes=sum(memory.values()), memory_bytes=memory)


def infeasible_reason(memory: dict[str, float], capacity_bytes: float) -> str | None:
    total = sum(memory.values())
    if total <= capacity_bytes:
        return None
    name, largest = max(memory.items(), key=lambda kv: kv[1])
    return (f"peak memory {total / 1e9:.1f} GB exceeds the GPU's {capacity_bytes / 1e9:.1f} GB "
            f"by {(total - capacity_bytes) / 1e9:.1f} GB (largest term: {name} "
            f"{largest / 1e9:.1f} GB)")


def estimate(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> Estimate:
    """Predict one plan; an infeasible plan still gets its times and says what does not fit."""
    cluster.gpu.peak_flops(plan.precision)  # raises a clear SpecError if unsupported
    b = estimate_batch(model, cluster, from_plans([plan]))
    memory = {name: float(v[0]) for name, v in b.memory_bytes.items()}
    tokens = plan.global_batch_size * model.seq_len
    return Estimate(
        step_time_s=float(b.step_time_s[0]),
        breakdown_s={name: float(v[0]) for name, v in b.breakdown_s.items()},
        model_flops_per_step=model_flops_per_token(model) * tokens,
        model_tflops_per_gpu=float(b.model_tflops_per_gpu[0]), mfu=float(b.mfu[0]),
        tokens_per_s=float(b.tokens_per_s[0]), peak_memory_bytes=float(b.peak_memory_bytes[0]),
        memory_breakdown_bytes=memory, memory_capacity_bytes=float(cluster.gpu.memory_bytes),
        infeasible_reason=infeasible_reason(memory, cluster.gpu.memory_bytes))

