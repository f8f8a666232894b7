"""A real megatron-core GPTModel built from the tuner's TransformerConfig arguments has the
parameter count the cost model computes (bench.megatron_step --smoke: built on the CPU; the
GPU run, forward and backward included, is in results/gpu/)."""

import csv
from pathlib import Path

import pytest

from bench.megatron_step import SMOKE_SHAPE, model_and_plan
from cost_models.params import count_parameters
from tests.bench.conftest import run_module

pytest.importorskip("megatron.core")


def test_megatron_core_model_has_the_parameters_the_cost_model_counts(tmp_path):
    out = tmp_path / "m.csv"
    done = run_module("bench.megatron_step", "--smoke", "-o", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = list(csv.DictReader(out.open()))
    model, _ = model_and_plan("llama3-8b", 2, 0, SMOKE_SHAPE)
    assert int(row["parameters"]) == count_parameters(model)


def test_unknown_preset_is_one_line(tmp_path):
    done = run_module("bench.megatron_step", "--smoke", "--model", "gpt-7", "-o",
                      str(tmp_path / "m.csv"), timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert not (tmp_path / "m.csv").exists()


def test_megatron_core_mla_block_has_the_weights_the_cost_model_counts():
    """Multi-head latent attention: megatron-core's own MLASelfAttention of a tiny model holds
    exactly the down/up-projection and output weights cost_models.params counts."""
    import subprocess
    import sys


    script = Path(__file__).with_name("mla_param_count.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    megatron, ours = (int(x) for x in done.stdout.split()[-2:])
    assert megatron == ours


def test_host_operator_counts_are_megatron_cores_own(tmp_path):
    """The operators per layer the cost model's host term uses (results/gpu/host_ops.csv,
    cost_models.compute.HOST_OPS_PER_LAYER) are what megatron-core's layers run today."""


    from cost_models.compute import HOST_OPS_PER_LAYER

    out = tmp_path / "ops.csv"
    done = run_module("bench.host_ops", "-o", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counted = {r["layer"]: (int(r["ops_fwd_bwd"]), int(r["ops_fwd"]))
               for r in csv.DictReader(out.open())}
    kept = Path(__file__).resolve().parents[2] / "results" / "gpu" / "host_ops.csv"
    assert counted == {r["layer"]: (int(r["ops_fwd_bwd"]), int(r["ops_fwd"]))
                       for r in csv.DictReader(kept.open())}
    shared, expert = counted["megatron_moe_shared"], counted["megatron_moe_per_expert"]
    assert HOST_OPS_PER_LAYER[(False, False)] == counted["megatron_dense"]
    assert HOST_OPS_PER_LAYER[(True, False)] == (shared[0] + expert[0], shared[1] + expert[1])
    assert counted["megatron_moe_per_expert"][0] > 0 and shared[0] > counted["megatron_dense"][0]
    # a one-kernel attention core issues fewer operators than the unfused one
    assert counted["megatron_dense_fused"][0] < counted["megatron_dense"][0]
    assert counted["megatron_moe_shared_fused"][0] < shared[0]


def test_megatron_layer_bench_counts_its_layers_on_the_cpu(tmp_path):
    """bench.megatron_layer's smoke run: megatron-core's MoE layers with 16 local experts as
    one grouped part or 16 SequentialMLP calls; the per-layer operator slope of the latter is
    host_ops.csv's shared part plus 16 experts."""
    import pandas as pd

    out = tmp_path / "layers.csv"
    done = run_module("bench.megatron_layer", "--smoke", "--tokens", "64", "--layers", "1,2",
                      "-o", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pd.read_csv(out).sort_values("layers")
    slope = {impl: int(g.ops.iloc[1] - g.ops.iloc[0]) for impl, g in rows.groupby("experts_impl")}
    kept = Path(__file__).resolve().parents[2] / "results" / "gpu" / "host_ops.csv"
    counts = {r["layer"]: int(r["ops_fwd_bwd"]) for r in csv.DictReader(kept.open())}
    assert slope["sequential"] == counts["megatron_moe_shared"] + 16 * counts[
        "megatron_moe_per_expert"]
    assert slope["grouped"] < slope["sequential"]


@pytest.mark.parametrize("flags", [["--layers", "3"], ["--model", "gpt5"],
                                   ["--experts-impl", "loop"], ["--tokens", "0"],
                                   ["--iters", "0"], ["--kernels", "/"]])
def test_megatron_layer_bench_refuses_bad_flags_in_one_line(tmp_path, flags):
    done = run_module("bench.megatron_layer", "--smoke", *flags, "-o", str(tmp_path / "x.csv"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()
