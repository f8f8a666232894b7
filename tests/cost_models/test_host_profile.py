"""A cluster's own host speed (ClusterSpec.host_s_per_op): measured by bench.megatron_layer,
folded into a profile by `partune-fit --host-layers`, or given as --host-us-per-op."""

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cost_models.analytical import estimate
from cost_models.catalog import model_preset
from cost_models.catalog_clusters import cluster_preset
from cost_models.compute import HOST_S_PER_OP
from cost_models.host_fit import fit_runs, read_runs
from cost_models.loaders import load_cluster
from cost_models.specs import Plan, SpecError

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "results" / "gpu"
H100 = cluster_preset("dgx-h100")
QWEN3 = model_preset("qwen3-235b-a22b")
THIN = Plan(tp=4, pp=8, vpp=4, dp=8, ep=8, micro_batch_size=1, global_batch_size=2048,
            sequence_parallel=True, recompute="none", zero=1, precision="bf16")


def host_wait_s(per_op_s):
    return estimate(QWEN3, replace(H100, host_s_per_op=per_op_s), THIN).breakdown_s["host_wait"]


def test_a_slower_host_waits_longer_and_none_is_the_default():
    waits = [host_wait_s(s) for s in (0.0, 10e-6, HOST_S_PER_OP, 40e-6)]
    assert waits[0] == 0 and np.all(np.diff(waits) > 0)
    assert host_wait_s(None) == waits[2]


@pytest.mark.parametrize("bad", [-1e-6, 0.5, float("nan"), True, "fast"])
def test_impossible_host_speeds_are_refused(bad):
    with pytest.raises(SpecError, match="host_s_per_op"):
        replace(H100, host_s_per_op=bad)


def fit(tmp_path, *csvs):
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "-m", "cost_models.fit",
                           str(ROOT / "results/bench/fabric_2x2_1gbit.jsonl"), "-o", str(out),
                           "--host-layers", *map(str, csvs)], capture_output=True, text=True,
                          timeout=120)
    return done, out


def test_fit_stores_the_machines_host_speed_in_the_profile(tmp_path):
    csvs = [GPU / "megatron_moe_layer_h100_run3.csv", GPU / "megatron_dense_layer_h100_run3.csv"]
    done, out = fit(tmp_path, *csvs)
    assert done.returncode == 0, done.stderr
    expected = fit_runs({"run3": read_runs(GPU)["run3"]}, 3.0).per_op_s.median()
    assert load_cluster(str(out)).host_s_per_op == pytest.approx(expected)
    assert json.loads(out.read_text())["fit"]["host"]["files"] == list(map(str, csvs))
    assert "host: 16.8 us per operator" in done.stdout  # the fastest of the five machines


@pytest.mark.parametrize("run", sorted(read_runs(GPU)))
def test_every_measured_machine_passes_the_layer_checks(run):
    """The checks on --host-layers CSVs (cost_models.fit) accept each of the five machines'
    files as measured, without a numpy warning, and fit what host_fit fits from them."""
    from cost_models.compute import HOST_OVERLAP_NORM
    from cost_models.host_layers import with_measured_host

    csvs = sorted(map(str, GPU.glob(f"megatron_*_layer_h100_{run}.csv")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster, _ = with_measured_host(H100, csvs)
    expected = fit_runs({run: read_runs(GPU)[run]}, HOST_OVERLAP_NORM).per_op_s.median()
    assert cluster.host_s_per_op == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name, text, says", [
    ("notes.csv", "a,b\n1,2\n", "not a bench.megatron_layer CSV"),
    ("one_count.csv", "experts_impl,tokens,layers,wall_s,gpu_busy_s,ops\n"
                      "dense,512,1,0.01,0.005,200\ndense,512,5,0.03,0.02,800\n",
     "two or more token counts"),
    ("cpu.csv", "experts_impl,tokens,layers,wall_s,gpu_busy_s,ops\n"
                "dense,64,1,0.01,nan,200\ndense,64,3,0.03,nan,600\n", "GPU busy time"),
])
def test_unusable_layer_files_are_one_line_and_write_nothing(tmp_path, name, text, says):
    bad = tmp_path / name
    bad.write_text(text)
    done, out = fit(tmp_path, bad)
    assert done.returncode == 2 and says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def autotune(*args):
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True,
                          text=True, timeout=120)


def test_the_host_flag_prices_the_wait_and_shows_in_the_header(tmp_path):
    plan = tmp_path / "plan.json"
    done = autotune("--model", "llama3-8b", "--gpus", "64", "--host-us-per-op", "40",
                    "--out", str(plan), "--no-alternatives")
    assert done.returncode == 0, done.stderr
    assert "host 40.0 us/op" in done.stdout.splitlines()[1]
    assert json.loads(plan.read_text())["cluster"]["host_s_per_op"] == pytest.approx(40e-6)
    waits = [json.loads(autotune("predict", "--plan", str(plan), *extra, "--json").stdout)
             ["breakdown_s"]["host_wait"] for extra in ((), ("--host-us-per-op", "0"))]
    assert waits[0] > 0 and waits[1] == 0


@pytest.mark.parametrize("value", ["-1", "nan", "1e9"])
def test_a_bad_host_flag_is_one_line(value):
    done = autotune("--model", "llama3-8b", "--gpus", "64", "--host-us-per-op", value)
    assert done.returncode == 2 and "--host-us-per-op" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
