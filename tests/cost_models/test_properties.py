"""Properties every prediction must have, over many valid plans."""

from dataclasses import replace

import numpy as np
import pytest

from cost_models.analytical import estimate_batch
from cost_models.catalog import model_preset
from cost_models.catalog_clusters import cluster_preset
from cost_models.specs import LinkTier, Precision
from tuner.space import Space, inner_candidates, layouts

CASES = [("llama3-70b", "dgx-h100", 256, (128, 256)),
         ("gpt3-175b", "dgx-a100-80gb", 512, (512, 1024)),
         ("qwen3-235b-a22b", "dgx-h100", 256, (512, 1024))]


def _plans(model_name, cluster_name, gpus, gbs):
    model, cluster = model_preset(model_name), cluster_preset(cluster_name)
    space = Space(model=model, cluster=cluster, num_gpus=gpus, global_batch_range=gbs,
                  precision=Precision.BF16)
    for layout in layouts(space)[:12]:
        plans = inner_candidates(space, layout)
        if len(plans):
            yield model, cluster, plans


def _faster_fabric(cluster, factor):
    tiers = tuple(replace(t, bandwidth_bytes_per_s=t.bandwidth_bytes_per_s * factor)
                  for t in cluster.tiers)
    return replace(cluster, tiers=tiers)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_more_bandwidth_is_never_slower(case):
    improved = False
    for model, cluster, plans in _plans(*case):
        slow = estimate_batch(model, cluster, plans).step_time_s
        fast = estimate_batch(model, _faster_fabric(cluster, 2.0), plans).step_time_s
        assert np.all(fast <= slow * (1 + 1e-12))
        improved |= bool(np.any(fast < slow))
    assert improved


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_larger_micro_batch_never_less_activation_memory(case):
    for model, cluster, plans in _plans(*case):
        memory = estimate_batch(model, cluster, plans).memory_bytes["activations"]
        key = np.stack([plans.vpp, plans.global_batch_size, plans.sequence_parallel,
                        plans.recompute, plans.zero, plans.order], axis=1)
        for row in np.unique(key, axis=0):
            same = np.all(key == row, axis=1)
            mbs, mem = plans.micro_batch_size[same], memory[same]
            order = np.argsort(mbs)
            assert np.all(np.diff(mem[order]) >= -1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_more_recompute_never_more_memory(case):
    for model, cluster, plans in _plans(*case):
        peak = estimate_batch(model, cluster, plans).peak_memory_bytes
        key = np.stack([plans.vpp, plans.global_batch_size, plans.micro_batch_size,
                        plans.sequence_parallel, plans.zero, plans.order], axis=1)
        for row in np.unique(key, axis=0):
            same = np.all(key == row, axis=1)
            by_mode = {int(r): p for r, p in zip(plans.recompute[same], peak[same])}
            if {0, 1, 2} <= set(by_mode):
                assert by_mode[0] >= by_mode[1] >= by_mode[2]
            if {1, 3} <= set(by_mode):  # recomputing the MoE block keeps less
                assert by_mode[1] > by_mode[3]


def test_moe_block_recompute_trades_time_for_memory():
    """Long-context Qwen3-235B (ModelZoo: TP4 PP8 VPP4 EP8, 16K tokens): Megatron-Core's
    `layernorm, moe` recompute fits the 80 GB GPU where `layernorm, moe_act` does not, and
    costs the MoE block's forward and one more dispatch/combine."""
    from cost_models.analytical import estimate
    from cost_models.specs import Plan

    model = replace(model_preset("qwen3-235b-a22b"), seq_len=16384)
    cluster = cluster_preset("dgx-h100")
    plan = Plan(tp=4, pp=8, vpp=4, dp=8, ep=8, global_batch_size=256, sequence_parallel=True,
                recompute="selective", zero=1)
    act, block = estimate(model, cluster, plan), estimate(model, cluster,
                                                         replace(plan, recompute="moe"))
    assert not act.feasible and block.feasible
    assert block.memory_breakdown_bytes["activations"] < act.memory_breakdown_bytes[
        "activations"] / 2
    assert block.breakdown_s["recompute"] > 5 * act.breakdown_s["recompute"]
    assert block.breakdown_s["ep_comm"] == pytest.approx(1.5 * act.breakdown_s["ep_comm"])
    assert block.breakdown_s["tp_comm"] == pytest.approx(act.breakdown_s["tp_comm"])


def test_more_recompute_costs_time():
    model, cluster, plans = next(_plans(*CASES[0]))
    est = estimate_batch(model, cluster, plans)
    assert np.all(est.breakdown_s["recompute"][plans.recompute == 0] == 0)
    assert np.all(est.breakdown_s["recompute"][plans.recompute == 2] > 0)


def test_breakdown_adds_up_to_step_time():
    for model, cluster, plans in _plans(*CASES[2]):
        est = estimate_batch(model, cluster, plans)
        total = sum(est.breakdown_s.values())
        np.testing.assert_allclose(total, est.step_time_s, rtol=1e-12)
        assert np.all(est.mfu > 0) and np.all(est.mfu < 1)


def test_tier_with_no_bandwidth_is_rejected():
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s"):
        LinkTier(name="x", domain_gpus=8, latency_s=1e-6, bandwidth_bytes_per_s=0)


def test_an_infeasible_plan_says_which_term_does_not_fit_and_by_how_much():
    from cost_models.analytical import estimate
    from cost_models.specs import Plan

    model, cluster = model_preset("llama3-405b"), cluster_preset("dgx-h100")
    est = estimate(model, cluster, Plan(tp=8, dp=1, global_batch_size=8, zero=1))
    assert not est.feasible
    over_gb = (est.peak_memory_bytes - cluster.gpu.memory_bytes) / 1e9
    assert f"by {over_gb:.1f} GB" in est.infeasible_reason
    assert "largest term: optimizer" in est.infeasible_reason
    fits = estimate(model_preset("llama3-8b"), cluster,
                    Plan(tp=1, dp=8, global_batch_size=8, zero=1, recompute="full"))
    assert fits.feasible and fits.infeasible_reason is None


def test_uneven_split_waits_for_the_slower_of_a_full_stage_and_the_last():
    """Llama 3 405B on 16 stages (Dubey et al. 2024: one layer fewer on the first and last
    stage): 126 layers + embedding + loss = 16 x 8 slots, so 8-way interleaving runs, and a
    step costs a full stage's 8 layers, not 8 layers plus the logits (the 128-layer model)."""
    from cost_models.analytical import estimate
    from cost_models.compute import logits_time_s
    from cost_models.pipeline import inner_and_last_layers, interleaving
    from cost_models.plan_arrays import from_plans
    from cost_models.specs import Plan
    from tuner.megatron import check_megatron

    model, cluster = model_preset("llama3-405b"), cluster_preset("dgx-h100")
    plan = Plan(tp=8, pp=16, vpp=8, dp=128, global_batch_size=2048, sequence_parallel=True,
                recompute="selective", zero=1)
    assert interleaving(model.num_layers, 16, 8) == "embedding_and_loss"
    check_megatron(model, plan)
    inner, last = inner_and_last_layers(model.num_layers, np.array([16]))
    assert (int(inner[0]), int(last[0])) == (8, 7)
    short = estimate(model, cluster, plan).breakdown_s["compute"]
    full = estimate(replace(model, num_layers=128), cluster, plan).breakdown_s["compute"]
    logits = float(logits_time_s(model, cluster, from_plans([plan]))[0])
    assert full - short == pytest.approx(plan.num_microbatches * logits, rel=1e-6)


def test_last_stage_makes_room_for_multi_token_prediction():
    """An MTP depth is one more layer slot on the last stage: 61 layers + 1 over 16 stages
    split 3 / 4 x 14 / 2 + MTP (without MTP: 2 / 4 x 14 / 3; Megatron-LM
    --decoder-first/last-pipeline-num-layers). Where no such split exists (64 + 1 over 16)
    or with interleaving, the last stage carries the depth on top of an even split."""
    from cost_models.pipeline import inner_and_last_layers, last_stage_extra, pipeline_split

    assert pipeline_split(61, 16, 1) == (3, 4, 2) and pipeline_split(61, 16) == (2, 4, 3)
    assert pipeline_split(64, 16, 1) is None
    extra = last_stage_extra(61, np.array([16, 16, 1]), np.array([1, 2, 1]), 1)
    assert list(extra) == [1, 0, 0]
    assert int(last_stage_extra(64, 16, 1, 1)) == 0
    inner, last = inner_and_last_layers(61, np.array([16, 16]), np.array([1, 0]))
    assert list(inner) == [4, 4] and list(last) == [2, 3]


def test_gpu_waits_on_the_host_most_when_a_layer_call_is_short():
    """A Qwen3 MoE layer of one 4K sequence at TP 4 runs for less GPU time than the host takes
    to issue its operators (332 x 25.9 us = 8.6 ms with a fused attention core): every layer
    call takes at least that long and most of it is the wait. Sixteen times the tokens per
    layer call leave the host a small share (compute.host_bound_time_s)."""
    from cost_models.compute import HOST_OPS_PER_LAYER, HOST_S_PER_OP
    from cost_models.plan_arrays import from_plans
    from cost_models.specs import Plan

    model, cluster = model_preset("qwen3-235b-a22b"), cluster_preset("dgx-h100")
    short = Plan(tp=4, pp=8, vpp=4, dp=8, ep=8, micro_batch_size=1, global_batch_size=2048,
                 sequence_parallel=True, recompute="none", zero=1, precision="bf16")
    long = replace(short, micro_batch_size=16)
    est = estimate_batch(model, cluster, from_plans([short, long]))
    wait = est.breakdown_s["host_wait"]
    layer_s = sum(est.breakdown_s[t] for t in ("compute", "recompute", "tp_comm", "cp_comm",
                                                "ep_comm", "host_wait"))
    issue_s = HOST_OPS_PER_LAYER[(True, True)][0] * HOST_S_PER_OP
    layer_calls = 2048 // 8 * 12  # micro-batches x layers of the fullest stage
    assert layer_s[0] >= layer_calls * issue_s * 0.999
    assert wait[0] / layer_s[0] > 0.3 and 0 < wait[1] / layer_s[1] < 0.02
