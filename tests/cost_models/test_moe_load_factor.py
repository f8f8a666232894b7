"""Plan.moe_load_factor: the busiest expert rank's tokens over the mean (dropless routing)."""

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from cost_models.analytical import estimate
from cost_models.catalog import model_preset
from cost_models.catalog_clusters import cluster_preset
from cost_models.comm_terms import ep_comm_per_layer_s
from cost_models.flops import expert_gemms
from cost_models.load_factor import analyse_pair
from cost_models.plan_arrays import from_plans
from cost_models.specs import Plan, SpecError
from cost_models.validate import Row, parse_rows, read_rows, row_candidates

DEV = "cost_models/data/published_runs_dev.csv"
H100 = cluster_preset("dgx-h100")
QWEN = replace(model_preset("qwen3-235b-a22b"), seq_len=16384)
# The ModelZoo's long-context Qwen3 layout (dev set): TP4 PP8 VP4 EP8, MoE-block recompute
ZOO = Plan(tp=4, pp=8, vpp=4, dp=8, ep=8, micro_batch_size=1, global_batch_size=256,
           sequence_parallel=True, recompute="moe", zero=1)


def test_factor_one_is_the_default():
    assert estimate(QWEN, H100, ZOO) == estimate(QWEN, H100, replace(ZOO, moe_load_factor=1.0))


def test_imbalance_slows_only_the_expert_terms_and_never_the_model_flops():
    runs = [estimate(QWEN, H100, replace(ZOO, moe_load_factor=f)) for f in (1.0, 1.25, 1.5, 2)]
    steps = [e.step_time_s for e in runs]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    kept = [estimate(QWEN, H100, replace(ZOO, recompute="selective", moe_load_factor=f))
            for f in (1.0, 1.25, 1.5, 2)]  # MoE-block recompute keeps no expert activations
    acts = [e.memory_breakdown_bytes["activations"] for e in kept]
    assert acts == sorted(acts) and len(set(acts)) == len(acts)
    assert len({e.model_flops_per_step for e in runs}) == 1  # MFU counts the mean work
    # Stage boundaries and the optimizer do not see the routing (the bubble grows with the
    # stage's time; more compute hides more of the gradient reduction; the slowest stage
    # may change from the last, with the logits, to a full one, and with it the TP term).
    for name in ("cp_comm", "pp_comm", "optimizer"):
        assert len({round(e.breakdown_s[name], 12) for e in runs}) == 1, name
    dp = [e.breakdown_s["dp_comm"] for e in runs]
    assert dp == sorted(dp, reverse=True)
    for name in ("compute", "recompute", "ep_comm"):
        assert runs[-1].breakdown_s[name] > runs[0].breakdown_s[name], name


def test_dense_models_are_unaffected():
    llama = model_preset("llama3-70b")
    plan = Plan(tp=8, pp=4, dp=2, micro_batch_size=1, global_batch_size=64,
                sequence_parallel=True, zero=1)
    assert estimate(llama, H100, plan) == estimate(llama, H100,
                                                  replace(plan, moe_load_factor=2.0))


def test_expert_rows_and_all_to_all_scale_with_the_busiest_rank():
    base, busy = (expert_gemms(QWEN, 4096.0, 4, 8, load) for load in (1.0, 1.5))
    for a, b in zip(base, busy):
        scale = 1.5 if a.name.startswith("expert_") else 1.0  # the router sees every token
        assert np.isclose(b.m, scale * a.m) and a.k == b.k and a.n == b.n
    one, two = (ep_comm_per_layer_s(QWEN, from_plans([replace(ZOO, moe_load_factor=f)]), 8,
                                    H100)[0] for f in (1.0, 2.0))
    # 16K tokens x 8 copies: bandwidth-bound, so twice the bytes is nearly twice the time
    assert 1.9 * one < two <= 2.0 * one


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, math.nan, math.inf, "2", True])
def test_plan_rejects_a_factor_below_one_or_not_a_number(bad):
    with pytest.raises(SpecError, match="moe_load_factor"):
        replace(ZOO, moe_load_factor=bad)


def _zoo_row(**cells):
    raw = {r["id"]: r for r in read_rows(DEV)}["zoo-qwen3-235b-s16k-dropless"]
    return {**raw, **cells}


def test_validate_reads_an_optional_column():
    model_row = next(r for r in parse_rows([_zoo_row()]))
    assert {p.moe_load_factor for p in model_row.candidates} == {1.0}
    stated = next(r for r in parse_rows([_zoo_row(moe_load_factor="1.5")]))
    assert {p.moe_load_factor for p in stated.candidates} == {1.5}
    with pytest.raises(SpecError, match="moe_load_factor='lots' must be a number >= 1"):
        row_candidates(_zoo_row(moe_load_factor="lots"), model_row.model)


def test_published_dropless_pairs_imply_one_factor():
    """The four ModelZoo forced-balance/dropless pairs (16K-128K tokens, slowdowns 9-25%)
    are explained by one load factor to within 0.05: the slowdown is the experts' work."""
    rows = {r.id: r for r in parse_rows(read_rows(DEV))
            if isinstance(r, Row)}
    factors = [analyse_pair(rows, f"zoo-qwen3-235b-s{s}-forced",
                            f"zoo-qwen3-235b-s{s}-dropless").implied_factor
               for s in ("16k", "32k", "64k", "128k")]
    assert all(1.3 < f < 1.8 for f in factors), factors
    assert max(factors) - min(factors) < 0.05, factors


def _autotune(*args):
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("args, needle", [
    (("predict", "--model", "llama3-70b", "--moe-load-factor", "1.5"), "dense model"),
    (("predict", "--model", "qwen3-235b-a22b", "--moe-load-factor", "0.9"), "must be a number"),
    (("--model", "llama3-70b", "--gpus", "64", "--moe-load-factor", "1.5"), "dense model"),
    (("--model", "qwen3-235b-a22b", "--gpus", "256", "--moe-load-factor", "nan"),
     "must be a number >= 1"),
    (("predict", "--model", "mixtral-8x22b", "--ep", "8", "--dp", "8", "--moe-load-factor",
      "9"), "over 4 = experts / top-k of mixtral-8x22b"),
])
def test_cli_rejects_a_bad_factor_in_one_line(args, needle):
    proc = _autotune(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and needle in lines[0], lines


def test_load_factor_command_prints_the_pairs():
    proc = subprocess.run([sys.executable, "-m", "cost_models.load_factor", DEV,
                           "zoo-qwen3-235b-s16k-forced:zoo-qwen3-235b-s16k-dropless"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "implied factor: 1.5" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "cost_models.load_factor", DEV, "nocolon"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "FORCED_ID" in bad.stderr


def test_the_busiest_rank_cannot_get_more_than_all_its_experts_tokens():
    """Mixtral (8 experts, top-2) at EP8: a rank's one expert sees at most every token once,
    4x the mean (num_experts / topk); at EP2, 2x (all tokens' copies for its 4 experts)."""
    from cost_models.plan_arrays import busiest_rank_load

    mixtral = model_preset("mixtral-8x22b")
    plans = from_plans([Plan(dp=8, ep=ep, global_batch_size=8, moe_load_factor=f)
                        for ep, f in ((8, 1e308), (8, 3.0), (2, 10.0), (1, 5.0))])
    assert busiest_rank_load(mixtral, plans).tolist() == \
        [4.0, 3.0, 2.0, 1.0]


def _load_factor(*args):
    return subprocess.run([sys.executable, "-m", "cost_models.load_factor", *args],
                          capture_output=True, text=True)


def test_load_factor_refuses_pairs_that_cannot_show_imbalance(tmp_path):
    import csv

    rows = list(csv.DictReader(open(DEV)))
    forced = next(r for r in rows if r["id"] == "zoo-qwen3-235b-s16k-forced")
    dropless = next(r for r in rows if r["id"] == "zoo-qwen3-235b-s16k-dropless")
    runs = tmp_path / "runs.csv"
    with runs.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(forced))
        writer.writeheader()
        writer.writerows([forced, dropless, {**dropless, "id": "other-tp", "tp": "2",
                                             "dp": "16"},
                          {**dropless, "id": "broken", "num_layers": "x"}])
    cases = {"zoo-qwen3-235b-s16k-dropless:zoo-qwen3-235b-s16k-forced": "is not slower than",
             "zoo-qwen3-235b-s16k-forced:other-tp": "are not one plan (they differ in tp, dp)",
             "zoo-qwen3-235b-s16k-forced:broken": "row 'broken' cannot be predicted: column "
                                                  "num_layers='x' is not a number"}
    for pair, message in cases.items():
        proc = _load_factor(str(runs), pair)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("python -m cost_models.load_factor: error: ")
        assert message in proc.stderr, proc.stderr
