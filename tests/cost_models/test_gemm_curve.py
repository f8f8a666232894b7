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
