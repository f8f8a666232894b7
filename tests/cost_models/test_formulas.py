"""Formulas against hand-computed and published numbers."""

import numpy as np
import pytest

from bench.records import BUS_FACTOR, Collective
from cost_models.catalog import model_preset
from cost_models.catalog_clusters import cluster_preset
from cost_models.comm import collective_time_s
from cost_models.flops import model_flops_per_token
from cost_models.memory import layer_activation_bytes_per_token
from cost_models.plan_arrays import from_plans
from cost_models.specs import Plan, SpecError


def test_gpt3_model_flops_match_korthikanti_formula_with_causal_halving():
    # Korthikanti et al. 2022 Sec. 6: 72*l*h^2*(1 + s/(6h) + V/(12*h*l)) FLOPs per token,
    # counting the full score matrix; we count causal attention as half: s/(12h).
    m = model_preset("gpt3-175b")
    layers, h, s, v = m.num_layers, m.hidden_size, m.seq_len, m.vocab_size
    expected = 72 * layers * h**2 * (1 + s / (12 * h) + v / (12 * h * layers))
    assert model_flops_per_token(m) == pytest.approx(expected, rel=1e-12)


def test_llama_model_flops_match_dgxc_formula_with_causal_halving():
    # dgxc-benchmarking: 12*l*h^2*(1 + G/H + s/h) + 18*l*F*h + 6*V*h per token (full
    # attention); halving the causal score term gives s/(2h).
    m = model_preset("llama3-70b")
    layers, h, s, v = m.num_layers, m.hidden_size, m.seq_len, m.vocab_size
    f = m.ffn_hidden_size
    g, heads = m.num_kv_heads, m.num_heads
    expected = (12 * layers * h**2 * (1 + g / heads + s / (2 * h)) + 18 * layers * f * h
                + 6 * v * h)
    assert model_flops_per_token(m) == pytest.approx(expected, rel=1e-12)


def _act(model, **plan):
    arrays = from_plans([Plan(global_batch_size=plan.pop("gbs", 64), **plan)])
    return float(layer_activation_bytes_per_token(model, arrays, moe=False)[0])


@pytest.mark.parametrize("t", [1, 2, 8])
def test_activation_bytes_match_korthikanti_table2(t):
    # Korthikanti et al. 2022 Table 2, bytes per layer = s*b*h*(...); per token: h*(...).
    m = model_preset("gpt3-175b")
    h, a, s = m.hidden_size, m.num_heads, m.seq_len
    unfused = dict(flash_attention=False, tp=t, dp=1)
    assert _act(m, **unfused) == pytest.approx(h * (10 + 24 / t + 5 * a * s / (h * t)))
    if t > 1:
        assert _act(m, **unfused, sequence_parallel=True) == pytest.approx(
            h * (34 / t + 5 * a * s / (h * t)))
        assert _act(m, **unfused, sequence_parallel=True, recompute="selective") == \
            pytest.approx(h * 34 / t)
    assert _act(m, **unfused, recompute="full") == pytest.approx(2 * h)
    # Flash attention keeps no score matrix: the 34h part remains.
    assert _act(m, tp=t) == pytest.approx(h * (10 + 24 / t))


def test_ring_all_reduce_inside_a_node_is_alpha_beta():
    cluster = cluster_preset("dgx-h100")
    nvlink = cluster.tiers[0]
    size, n = 256 * 2**20, 8
    t = float(collective_time_s(Collective.ALL_REDUCE, size, n, n, cluster))
    steps = min(2 * (n - 1), 2 * (n - 1))  # one node: ring and tree chains agree
    expected = steps * nvlink.latency_s + size * BUS_FACTOR[Collective.ALL_REDUCE](n) / (
        nvlink.bandwidth_bytes_per_s)
    assert t == pytest.approx(expected, rel=1e-9)


def test_group_spanning_nodes_shares_the_node_network():
    cluster = cluster_preset("dgx-h100")
    size = 1 << 30
    # 8 DP groups side by side (1 rank per node) vs one group holding all 8 GPUs of a node.
    strided = float(collective_time_s(Collective.ALL_GATHER, size, 16, 1, cluster))
    packed = float(collective_time_s(Collective.ALL_GATHER, size, 128, 8, cluster))
    per_gpu = cluster.tiers[1].bandwidth_bytes_per_s
    assert strided == pytest.approx(size * 15 / 16 / per_gpu, rel=0.01)
    assert packed < strided


def test_send_recv_between_nodes_uses_one_gpu_share_of_the_network():
    cluster = cluster_preset("dgx-a100-80gb")
    size = 64 * 2**20
    t = float(collective_time_s(Collective.SEND_RECV, size, 2, 1, cluster))
    net = cluster.tiers[1]
    assert t == pytest.approx(net.latency_s + size / net.bandwidth_bytes_per_s, rel=1e-9)


def test_single_rank_group_costs_nothing():
    cluster = cluster_preset("dgx-h100")
    assert float(collective_time_s(Collective.ALL_REDUCE, 1e9, 1, 1, cluster)) == 0.0
    assert np.all(collective_time_s(Collective.ALL_TO_ALL, np.array([1e6, 1e9]), 1, 1,
                                    cluster) == 0)


def test_goodput_follows_young_and_matches_llama3_effective_time():
    import math

    from cost_models.goodput import goodput

    g = goodput(16384, 405e9)
    # Llama 3 (arXiv:2407.21783 Sec. 3.3.4): 419 unexpected interruptions in 54 days.
    assert g.job_mtbf_s == pytest.approx(54 * 24 * 3600 / 419)
    assert g.checkpoint_interval_s == pytest.approx(math.sqrt(2 * g.checkpoint_s * g.job_mtbf_s))
    assert 0.90 < g.goodput < 0.95  # they report "higher than 90% effective training time"
    assert goodput(512, 70e9).goodput > g.goodput  # fewer GPUs fail less often


@pytest.mark.parametrize("pp,tied,tables", [(1, False, 2), (1, True, 1), (4, False, 1),
                                            (4, True, 1)])
def test_stage_holds_the_embedding_tables_it_really_holds(pp, tied, tables):
    """pp = 1: the one stage holds the input embedding and an untied output layer; pp > 1:
    the first stage holds the input embedding only."""
    from dataclasses import replace

    from cost_models.memory import stage_param_counts

    model = replace(model_preset("llama3-8b"), tied_embeddings=tied)
    plans = from_plans([Plan(pp=pp, global_batch_size=8)])
    with_vocab, _ = stage_param_counts(model, plans)
    without, _ = stage_param_counts(replace(model, vocab_size=8), plans)
    table = model.hidden_size * (model.vocab_size - 8)
    assert float(with_vocab[0] - without[0]) == pytest.approx(tables * table)


@pytest.mark.parametrize("fp16, zero, d, expected", [
    (True, 0, 64, 20.0), (True, 1, 64, 4 + 16 / 64),  # fp16 param, fp16 grads
    (False, 0, 64, 18.0), (False, 1, 64, 6 + 12 / 64),  # bf16 param, fp32 grads
])
def test_model_state_bytes_follow_megatrons_distributed_optimizer_table(fp16, zero, d,
                                                                       expected):
    """Megatron-LM docs/distrib_optimizer.md: bytes per parameter by dtype and sharding."""
    from cost_models.memory import model_state_bytes_per_param

    weight, grad, optim = model_state_bytes_per_param(np.array(zero), d, np.array(fp16))
    assert float(weight + grad + optim) == pytest.approx(expected)


@pytest.mark.parametrize("bf16_grads, expected", [(False, 2 + 4 + 6 / 32),
                                                   (True, 2 + 2 + 6 / 32)])
def test_bf16_adam_states_are_six_bytes_per_parameter_sharded(bf16_grads, expected):
    """Precision-aware optimizer, bf16 moments, fp32 main weight as bf16 weight + 16-bit
    remainder: 2 + 2 + 2 bytes of state, sharded over the d = 32 data-parallel ranks; the
    gradient buffer stays as reduced (4 or 2 bytes), with no fp32 main-gradient copy."""
    from dataclasses import replace

    from cost_models.analytical import estimate

    model, cluster = model_preset("llama3-70b"), cluster_preset("dgx-h100")
    fp32 = Plan(tp=8, pp=4, dp=32, global_batch_size=256, sequence_parallel=True, zero=1,
                grad_reduce_in_bf16=bf16_grads)
    bf16 = replace(fp32, optimizer_dtype="bf16")
    a, b = estimate(model, cluster, fp32), estimate(model, cluster, bf16)
    per_param = b.memory_breakdown_bytes["weights"] / 2
    states = sum(b.memory_breakdown_bytes[k] for k in ("weights", "gradients", "optimizer"))
    assert states / per_param == pytest.approx(expected)
    assert b.memory_breakdown_bytes["optimizer"] < a.memory_breakdown_bytes["optimizer"]
    assert b.breakdown_s["optimizer"] == pytest.approx(a.breakdown_s["optimizer"] * 24 / 34)
    assert b.peak_memory_bytes < a.peak_memory_bytes


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer_dtype": "fp8", "zero": 1}, "must be one of fp32, bf16"),
    ({"optimizer_dtype": "bf16", "zero": 0}, "needs zero 1"),
    ({"optimizer_dtype": "bf16", "zero": 3}, "needs zero 1"),
    ({"optimizer_dtype": "bf16", "zero": 1, "precision": "fp16"}, "bf16 or fp8 training"),
])
def test_bf16_adam_states_need_the_distributed_optimizer_and_bf16(kwargs, message):
    with pytest.raises(SpecError, match=message):
        Plan(dp=2, global_batch_size=4, **kwargs)


def test_bf16_gradient_reduction_halves_the_gradient_bytes_and_traffic():
    """--grad-reduce-in-bf16: Megatron's "16-bit grads" row (4 + 16/d bytes per parameter
    with the distributed optimizer) and a reduce-scatter of 2-byte gradients."""
    from dataclasses import replace

    from cost_models.analytical import estimate
    from cost_models.comm_terms import grad_bytes_per_param

    model, cluster = model_preset("llama3-70b"), cluster_preset("dgx-h100")
    fp32 = Plan(tp=8, pp=4, dp=32, global_batch_size=256, sequence_parallel=True, zero=1)
    bf16 = replace(fp32, grad_reduce_in_bf16=True)
    a, b = estimate(model, cluster, fp32), estimate(model, cluster, bf16)
    per_param = b.memory_breakdown_bytes["weights"] / 2
    states = (b.memory_breakdown_bytes["gradients"] + b.memory_breakdown_bytes["optimizer"]
              + b.memory_breakdown_bytes["weights"]) / per_param
    assert states == pytest.approx(4 + 16 / 32)
    assert b.memory_breakdown_bytes["gradients"] == pytest.approx(
        a.memory_breakdown_bytes["gradients"] / 2)
    assert list(grad_bytes_per_param(from_plans([fp32, bf16]))) == [4.0, 2.0]
    with pytest.raises(Exception, match="needs bf16 or fp8"):
        Plan(dp=2, global_batch_size=4, precision="fp16", grad_reduce_in_bf16=True)


def test_zero3_gathers_and_links_follow_the_implementation():
    """comm_terms.dp_comm_s: DeepSpeed ZeRO-3 re-gathers every weight for a recomputed
    forward (3 gathers per micro-batch with full recompute) through each GPU's own NIC;
    FSDP gathers twice whatever the recompute, over the node's pooled NICs; both gather one
    layer at a time, a collective (and its latency) per layer."""
    from dataclasses import replace

    from cost_models.comm_terms import dp_comm_s
    from cost_models.memory import WEIGHT_BYTES, stage_param_counts
    from cost_models.placement import group_ranks_per_node
    from cost_models.specs import SpecError

    model, cluster = model_preset("gpt3-175b"), cluster_preset("dgx-a100-80gb")
    fsdp = Plan(dp=64, global_batch_size=64, zero=3, recompute="full")
    plans = [fsdp, replace(fsdp, zero3_impl="deepspeed"), replace(fsdp, recompute="none"),
             replace(fsdp, recompute="none", zero3_impl="deepspeed")]
    arrays = from_plans(plans)
    _, weight_s = dp_comm_s(model, arrays, group_ranks_per_node(arrays, 8), cluster)
    params, _ = stage_param_counts(model, arrays)
    ag = Collective.ALL_GATHER
    layer_bytes = params[0] * WEIGHT_BYTES / model.num_layers
    pooled = model.num_layers * collective_time_s(ag, layer_bytes, 64, 8, cluster)
    rail = model.num_layers * collective_time_s(ag, layer_bytes, 64, 8, cluster,
                                                groups_per_node=8)
    whole = collective_time_s(ag, params[0] * WEIGHT_BYTES, 64, 8, cluster)
    assert pooled - whole == pytest.approx((model.num_layers - 1) * 63 * cluster.tiers[1]
                                           .latency_s)  # the per-layer latencies
    assert list(weight_s) == pytest.approx([2 * pooled, 3 * rail, 2 * pooled, 2 * rail])
    assert rail > 4 * pooled  # 1 of 8 NICs per group
    with pytest.raises(SpecError, match="zero3_impl='zero' must be one of fsdp, deepspeed"):
        Plan(dp=2, global_batch_size=2, zero=3, zero3_impl="zero")


def test_mla_model_flops_are_six_per_weight_plus_attention_over_qk_and_v_widths():
    """DeepSeek-V3 (multi-head latent attention): every matrix weight a token passes through
    costs 6 FLOPs, and the causal attention core 3 x 2 x s/2 x (192 + 128) x heads."""
    from dataclasses import replace

    from cost_models.params import count_active_parameters

    m = replace(model_preset("deepseek-v3"), mtp_layers=0)
    norms = m.num_layers * (2 * m.hidden_size + m.q_lora_rank + m.kv_lora_rank) + m.hidden_size
    matrices = count_active_parameters(m) - m.vocab_size * m.hidden_size - norms
    core = 2 * m.seq_len / 2 * m.num_heads * (192 + 128) * m.num_layers
    assert model_flops_per_token(m) == pytest.approx(3 * (2 * matrices + core), rel=1e-12)


def test_group_limited_routing_reaches_fewer_nodes():
    """DeepSeek-V3 picks 4 of 8 expert groups per token. Groups laid out over 8 nodes: 4
    nodes are hit, 3.5 of them remote (uniform top-8: 7 x (1 - (7/8)^8) = 4.59). Over 2
    nodes of 4 groups each, the other node is missed only when all 4 picks are local:
    1/C(8,4). Over 16 nodes a group spans 2: 15 x 4/8 x (1 - (1 - 8/64)^8)."""
    from dataclasses import replace

    from cost_models.comm_terms import remote_copies_per_token
    from cost_models.specs import SpecError

    limited = model_preset("deepseek-v3")
    uniform = replace(limited, moe_router_groups=0, moe_router_group_topk=0)
    nodes = np.array([2.0, 8.0, 16.0])
    expected = [1 - 1 / 70, 3.5, 15 * 0.5 * (1 - (1 - 8 / 64) ** 8)]
    assert list(remote_copies_per_token(limited, nodes)) == pytest.approx(expected)
    assert remote_copies_per_token(uniform, 8.0) == pytest.approx(7 * (1 - (7 / 8) ** 8))
    with pytest.raises(SpecError, match="must be >= 2 and divide num_experts=256"):
        replace(limited, moe_router_groups=7)
    with pytest.raises(SpecError, match="groups must hold moe_topk=8 experts"):
        replace(limited, moe_router_groups=128, moe_router_group_topk=2)


def test_multi_token_prediction_adds_a_layer_a_projection_and_the_head():
    """DeepSeek-V3's depth-1 MTP (arXiv:2412.19437 Sec. 2.2): per token, 6 FLOPs per weight
    of its 2h x h projection, of one MoE layer's active weights and of the shared output
    head, plus one more causal attention core; its weights are 11.6B (the release's 14B adds
    its own copies of the embedding and the head)."""
    from dataclasses import replace

    from cost_models.analytical import estimate
    from cost_models.params import attention_params, expert_params, mtp_params

    m = model_preset("deepseek-v3")
    plain = replace(m, mtp_layers=0)
    h = m.hidden_size
    ffn = 3 * h * m.moe_shared_ffn_hidden_size
    moe_active = h * m.num_experts + m.moe_topk * expert_params(m) + ffn
    attention_matrices = attention_params(m) - m.q_lora_rank - m.kv_lora_rank  # no norms
    matrices = 2 * h * h + attention_matrices + moe_active + m.vocab_size * h
    core = 2 * m.seq_len / 2 * m.num_heads * (192 + 128)
    added = model_flops_per_token(m) - model_flops_per_token(plain)
    assert added == pytest.approx(3 * (2 * matrices + core), rel=1e-12)
    assert mtp_params(m) / 1e9 == pytest.approx(11.6, abs=0.05)
    cluster = cluster_preset("dgx-h100")
    for plan in (Plan(tp=8, pp=8, dp=16, ep=16, global_batch_size=512, zero=1),
                 Plan(tp=8, dp=128, ep=64, global_batch_size=512, zero=3)):
        with_mtp, without = estimate(m, cluster, plan), estimate(plain, cluster, plan)
        # with pipelining the split gives the last stage fewer layers for the MTP depth, so
        # the step may wait on a fuller inner stage instead
        slower = with_mtp.step_time_s > without.step_time_s
        assert slower if plan.pp == 1 else with_mtp.step_time_s >= without.step_time_s
        more_weights = with_mtp.memory_breakdown_bytes["weights"] > \
            without.memory_breakdown_bytes["weights"]
        assert more_weights == (plan.pp == 1)  # MTP lives on the last stage, not the first


def _zero3_window_case(ep: int):
    """Qwen3-235B at 4K on 256 H100 under Megatron-FSDP (the ModelZoo's TP2 EP8 plan), and
    the same with EP32, whose all-to-all leaves the node."""
    from dataclasses import replace

    from cost_models.analytical import estimate, hidden_comm_cost_s
    from cost_models.comm_terms import dp_comm_s
    from cost_models.placement import group_ranks_per_node

    model = replace(model_preset("qwen3-235b-a22b"), seq_len=4096)
    cluster = cluster_preset("dgx-h100")
    plan = Plan(tp=2, dp=128, ep=ep, micro_batch_size=4, global_batch_size=2048,
                sequence_parallel=True, recompute="full", zero=3)
    arrays = from_plans([plan])
    grad_s, weight_s = dp_comm_s(model, arrays, group_ranks_per_node(arrays, 8), cluster)
    est = estimate(model, cluster, plan)
    per_mb = {k: v / plan.num_microbatches for k, v in est.breakdown_s.items()}
    return est, per_mb, grad_s[0] + weight_s[0], plan.num_microbatches, hidden_comm_cost_s


def test_zero3_traffic_hides_behind_compute_and_intra_node_collectives_by_hand():
    # EP8 and TP2 stay inside a node: the NICs carry the FSDP traffic while they run
    est, mb, comm_s, m, hidden = _zero3_window_case(ep=8)
    window = mb["compute"] + mb["recompute"] + mb["tp_comm"] + mb["ep_comm"]
    assert est.breakdown_s["dp_comm"] == pytest.approx(m * hidden(comm_s, window), rel=1e-9)
    # EP32 crosses nodes: its all-to-all competes for the NICs, so it is no window
    est, mb, comm_s, m, hidden = _zero3_window_case(ep=32)
    window = mb["compute"] + mb["recompute"] + mb["tp_comm"]
    assert est.breakdown_s["dp_comm"] == pytest.approx(m * hidden(comm_s, window), rel=1e-9)


def test_fp8_tensor_parallel_gathers_move_one_byte_per_element():
    """Sequence-parallel TP per layer and pass: reduce-scatters of 16-bit activations, and
    all-gathers of the FP8 copies Transformer Engine gathers in FP8 runs (bf16: 16-bit);
    without sequence parallelism the all-reduce stays 16-bit."""
    from cost_models.comm_terms import tp_comm_per_layer_s

    model, cluster = model_preset("llama3-70b"), cluster_preset("dgx-h100")
    size_bytes = model.seq_len * model.hidden_size * 2  # micro-batch 1, 16-bit

    def per_layer_s(precision: str, sp: bool) -> float:
        plans = from_plans([Plan(tp=8, dp=1, global_batch_size=1, precision=precision,
                                 sequence_parallel=sp)])
        k = np.array([8])  # the whole TP group inside one node
        return float(tp_comm_per_layer_s(model, plans, k, cluster, moe=False)[0])

    def t(c, size):
        return float(collective_time_s(c, size, 8, 8, cluster))

    rs, ag, ar = Collective.REDUCE_SCATTER, Collective.ALL_GATHER, Collective.ALL_REDUCE
    # two pairs per layer (attention, MLP) in each of forward and backward
    assert per_layer_s("bf16", True) == pytest.approx(4 * (t(rs, size_bytes)
                                                           + t(ag, size_bytes)))
    assert per_layer_s("fp8", True) == pytest.approx(4 * (t(rs, size_bytes)
                                                          + t(ag, size_bytes / 2)))
    assert per_layer_s("fp8", False) == pytest.approx(per_layer_s("bf16", False))
    assert per_layer_s("fp8", False) == pytest.approx(4 * t(ar, size_bytes))
