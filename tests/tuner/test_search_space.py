"""Invariants of the declared search space, for presets, GPU counts and pins drawn at random.

Every candidate the search can score must be a plan Megatron-Core would accept
(tp*pp*dp*cp == GPUs, heads and KV heads split evenly, layers split over pp*vpp -- evenly,
or unevenly without interleaving -- the global batch split evenly over micro-batches and dp,
ZeRO-2/3 only without PP, ep dividing the
experts and the tp*cp*dp ranks of a stage) and must honour every pin the user gave.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from search_cases import make_space, splits_over

from cost_models.plan_arrays import ORDERS, RECOMPUTE_CODES, to_plan
from cost_models.specs import Recompute, SpecError
from tuner.space import CP_MIN_SEQ_LEN, Knobs, check_space, inner_candidates, layouts

MODELS = ("llama3-8b", "llama3-70b", "gpt3-175b", "qwen3-235b-a22b", "mixtral-8x22b",
          "nemotron4-15b", "mt-nlg-530b", "500b")
GPU_COUNTS = (8, 24, 64, 96, 128, 256, 384, 1000, 1024, 4096)


def check_candidates(space) -> int:
    """Assert the invariants on every candidate of every layout (as arrays); return the count."""
    count = 0
    for layout in layouts(space):
        a = inner_candidates(space, layout)
        if len(a):
            check_arrays(space, a)
            for i in (0, len(a) // 2, len(a) - 1):  # Plan's own checks on a few
                p = to_plan(a, i)
                assert (p.tp, p.pp, p.cp, p.ep) == (layout.tp, layout.pp, layout.cp, layout.ep)
        count += len(a)
    return count


def check_arrays(space, a) -> None:
    m, n = space.model, space.num_gpus
    lo, hi = space.global_batch_range
    micro = a.global_batch_size // (a.micro_batch_size * a.dp)
    rules = {
        "tp*pp*dp*cp == gpus": a.tp * a.pp * a.dp * a.cp == n,
        "heads % tp": (m.num_heads % a.tp == 0) & (m.num_kv_heads % a.tp == 0),
        "tp within a node": a.tp <= space.cluster.gpus_per_node,
        "layers over pp*vpp": (m.num_layers % (a.pp * a.vpp) == 0) | (
            (a.pp > 1) & ((m.num_layers + 2) % (a.pp * a.vpp) == 0)) | (
            (a.vpp == 1) & np.array([splits_over(m.num_layers, int(p)) for p in a.pp],
                                    dtype=bool)),
        "gbs % (mbs*dp)": a.global_batch_size % (a.micro_batch_size * a.dp) == 0,
        "gbs in range": (a.global_batch_size >= lo) & (a.global_batch_size <= hi),
        "vpp needs pp > 1, micro % pp": (a.vpp == 1) | ((a.pp > 1) & (micro % a.pp == 0)),
        "zero 2/3 only with pp 1": (a.zero <= 1) | (a.pp == 1),
        "ep | experts": m.num_experts % a.ep == 0,
        "ep | tp*cp*dp": (a.tp * a.cp * a.dp) % a.ep == 0,
        "cp needs a long sequence": (a.cp == 1) | ((m.seq_len >= CP_MIN_SEQ_LEN)
                                                   & (m.seq_len % (2 * a.cp) == 0)),
        "sp needs tp > 1": ~a.sequence_parallel | (a.tp > 1),
    }
    k = space.knobs
    for name in ("tp", "pp", "cp", "ep", "vpp"):
        if getattr(k, name) is not None:
            rules[f"{name} pin"] = np.isin(getattr(a, name), getattr(k, name))
    rules["max_pp"] = a.pp <= (k.max_pp or n)
    rules["max_tp"] = a.tp <= (k.max_tp or n)
    rules["micro-batch pin"] = np.isin(a.micro_batch_size, k.micro_batch_size)
    rules["zero pin"] = np.isin(a.zero, k.zero)
    rules["sp pin"] = np.isin(a.sequence_parallel, k.sequence_parallel)
    rules["recompute pin"] = np.isin([RECOMPUTE_CODES[c] for c in a.recompute], k.recompute)
    rules["order pin"] = np.isin([ORDERS[c] for c in a.order], k.orders)
    broken = [name for name, ok in rules.items() if not np.all(ok)]
    assert not broken, f"{broken} violated in {space.model.name} on {n} GPUs"
    assert m.is_moe or np.all(a.ep == 1)


def subset(values):
    return st.one_of(st.none(), st.lists(st.sampled_from(values), min_size=1, max_size=3,
                                         unique=True).map(lambda v: tuple(sorted(v))))


@st.composite
def spaces(draw):
    model = draw(st.sampled_from(MODELS))
    knobs = Knobs(
        tp=draw(subset((1, 2, 4, 8))), pp=draw(subset((1, 2, 4, 8, 16))),
        cp=draw(subset((1, 2, 4))), vpp=draw(subset((1, 2, 3, 4))),
        ep=draw(subset((1, 2, 4, 8, 16, 32))) if model in ("qwen3-235b-a22b",
                                                           "mixtral-8x22b") else None,
        micro_batch_size=draw(subset((1, 2, 4))) or (1, 2),
        recompute=draw(subset(tuple(Recompute))) or tuple(Recompute),
        zero=draw(subset((0, 1, 2, 3))) or (1, 3),
        sequence_parallel=draw(subset((False, True))) or (False, True),
        max_pp=draw(st.none() | st.sampled_from((2, 8))),
        max_tp=draw(st.none() | st.sampled_from((2, 4))))
    gbs_lo = draw(st.integers(32, 2048))
    space = make_space(model, "dgx-h100", draw(st.sampled_from(GPU_COUNTS)),
                       (gbs_lo, gbs_lo + draw(st.integers(0, 512))),
                       seq_len=draw(st.sampled_from((None, 32768))))
    return replace(space, knobs=knobs)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces())
def test_every_candidate_is_valid_and_honours_the_pins(space):
    try:
        check_space(space)
    except SpecError:
        assert not any(len(inner_candidates(space, x)) for x in layouts(space))
        return
    check_candidates(space)


@pytest.mark.parametrize("model, gpus, seq_len, expect", [
    ("qwen3-235b-a22b", 256, None, "ep"),  # 128 experts: ep > 1 appears
    ("llama3-70b", 128, 32768, "cp"),  # long sequence: cp > 1 appears
    ("gpt3-175b", 1024, None, "vpp"),  # interleaving appears
])
def test_unpinned_spaces_use_every_kind_of_parallelism(model, gpus, seq_len, expect):
    space = make_space(model, "dgx-h100", gpus, (512, 1024), seq_len=seq_len)
    assert check_candidates(space) > 0
    values = {getattr(to_plan(a, i), expect) for x in layouts(space)
              for a in [inner_candidates(space, x)] for i in range(len(a))}
    assert max(values) > 1


def test_moe_block_recompute_is_offered_to_moe_models_only():
    moe_code = RECOMPUTE_CODES.index(Recompute.MOE)
    for model, expect in (("qwen3-235b-a22b", True), ("llama3-70b", False)):
        space = make_space(model, "dgx-h100", 256, (512, 512))
        codes = {int(c) for x in layouts(space)[:4] for c in inner_candidates(space, x).recompute}
        assert (moe_code in codes) is expect


def test_deepspeed_zero3_candidates_are_ones_deepspeed_runs():
    """--zero3-impl deepspeed: every ZeRO-3 candidate carries the implementation, and none
    recomputes the MoE block (a Megatron-Core module list DeepSpeed does not have)."""
    moe_code = RECOMPUTE_CODES.index(Recompute.MOE)
    space = make_space("qwen3-235b-a22b", "dgx-h100", 256, (512, 512), zero3_impl="deepspeed")
    arrays = [inner_candidates(space, x) for x in layouts(space)]
    zero3 = np.concatenate([a.recompute[a.zero == 3] for a in arrays])
    assert len(zero3) > 0 and moe_code not in set(zero3.tolist())
    assert all(a.zero3_deepspeed.all() for a in arrays if len(a))
    others = np.concatenate([a.recompute[a.zero != 3] for a in arrays])
    assert moe_code in set(others.tolist())


def test_dense_short_sequence_models_get_no_cp_or_ep():
    space = make_space("gpt3-175b", "dgx-h100", 1024, (1536, 1536))
    assert {(x.cp, x.ep) for x in layouts(space)} == {(1, 1)}


@pytest.mark.parametrize("model, gpus, knobs, words", [
    ("llama3-8b", 7, {"tp": (8,)}, "no tensor-parallel degree divides 7 GPUs"),
    ("llama3-8b", 64, {"ep": (8,)}, "expert parallelism needs experts"),
    ("llama3-8b", 64, {"recompute": (Recompute.MOE,)}, "recomputing the MoE block needs experts"),
    ("gpt3-175b", 7, {"pp": (2,)}, "no (tp, pp, cp, ep) layout fits 7 GPUs"),
    ("llama3-8b", 64, {"tp": (16,)}, "no tensor-parallel degree"),  # beyond one node
    ("llama3-8b", 64, {"tp": (8,), "pp": (3,)}, "no (tp, pp, cp, ep) layout"),
    ("llama3-8b", 64, {"pp": (2,), "zero": (2, 3)}, "no (tp, pp, cp, ep) layout"),
    ("llama3-8b", 64, {"pp": (1,), "vpp": (2,)}, "no (tp, pp, cp, ep) layout"),
    ("gpt3-175b", 64, {"cp": (2,)}, "no (tp, pp, cp, ep) layout"),  # seq 2048: no cp
    ("mt-nlg-530b", 5128, {"pp": (7,)}, "no (tp, pp, cp, ep) layout"),
])
def test_check_space_rejects_impossible_requests(model, gpus, knobs, words):
    space = make_space(model, "dgx-h100", gpus, (512, 1024), **knobs)
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_space(space)


@pytest.mark.parametrize("axes", [([1, 2], [3, 4, 5], [6]), ([1], [2], [3]),
                                  ([1, 2, 3], [], [4]), ([7, 8], [1, 2], [5, 6, 9], [0, 1])])
def test_product_columns_is_itertools_product(axes):
    import itertools

    from tuner.space import product_columns

    rows = list(zip(*[c.tolist() for c in product_columns(*axes)]))
    assert rows == list(itertools.product(*axes))
