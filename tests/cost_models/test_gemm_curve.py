"""The compute-efficiency curve: its constants are a fit of the shipped measurements."""

from dataclasses import replace

import numpy as np
import pytest

from cost_models.analytical import estimate
from cost_models.catalog import model_preset
from cost_models.catalog_clusters import cluster_preset
from cost_models.gemm_curve import (
    H100_BF16_CURVE,
    H100_BF16_PEAK_FLOPS,
    GemmCurve,
    curve_for,
    fit_gemm_curve,
    gemm_time_s,
    with_curve,
)
from cost_models.specs import Plan


def test_constants_are_the_fit_of_the_measurements():
    curve, errors = fit_gemm_curve()
    assert curve.max_fraction == pytest.approx(H100_BF16_CURVE.max_fraction, rel=1e-3)
    assert curve.k_half == pytest.approx(H100_BF16_CURVE.k_half, rel=0.02)
    assert curve.overhead_s == pytest.approx(H100_BF16_CURVE.overhead_s, rel=0.02)
    assert np.mean(np.abs(errors)) < 0.05


def test_thin_shards_run_slower_per_flop():
    wide = gemm_time_s(8192, 12288, 12288, H100_BF16_PEAK_FLOPS)
    thin = gemm_time_s(8192, 1536, 12288, H100_BF16_PEAK_FLOPS)  # proj at tp 8
    assert thin * 8 > wide  # same FLOPs x 8 take longer than the wide product


def test_a_measured_curve_replaces_the_default():
    cluster = cluster_preset("dgx-h100")
    slow = GemmCurve(max_fraction=0.35, k_half=113.5, overhead_s=22e-6, source="test")
    gpu = with_curve(cluster.gpu, slow)
    assert curve_for(gpu) == replace(slow, source=f"gpu {gpu.name} spec")
    plan = Plan(tp=8, pp=1, dp=1, micro_batch_size=1, global_batch_size=8,
                sequence_parallel=True)
    model = model_preset("llama3-8b")
    fast_t = estimate(model, cluster, plan).breakdown_s["compute"]
    slow_t = estimate(model, replace(cluster, gpu=gpu), plan).breakdown_s["compute"]
    assert slow_t > 1.5 * fast_t


def test_fit_puts_a_measured_gemm_curve_into_the_profile(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from cost_models.loaders import load_cluster

    root = Path(__file__).resolve().parents[2]
    gemm = tmp_path / "gemm.csv"
    rows = (root / "cost_models/data/h100_sxm_bf16_gemm.csv").read_text().splitlines()
    slow = [rows[0]] + [",".join(r.split(",")[:-1] + [str(2 * float(r.split(",")[-1]))])
                        for r in rows[1:]]  # every product twice as slow
    gemm.write_text("\n".join(slow) + "\n")
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, "-m", "cost_models.fit",
                    str(root / "results/bench/fabric_2x2_1gbit.jsonl"), "-o", str(out),
                    "--gemm", str(gemm)], check=True, capture_output=True)
    curve = curve_for(load_cluster(str(out)).gpu)
    assert curve.max_fraction == pytest.approx(H100_BF16_CURVE.max_fraction / 2, rel=0.02)
