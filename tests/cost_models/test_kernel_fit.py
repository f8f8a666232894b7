"""The compute constants are the figures the kept GPU measurements give (results/gpu/, one
H100 SXM), and the compute model predicts the measured transformer layers."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cost_models import compute
from cost_models.catalog_clusters import cluster_preset
from cost_models.host_fit import best_norm, fit_runs, read_runs
from cost_models.host_fit import host_s_per_op as host_fit_s_per_op
from cost_models.kernel_fit import (
    attention_fit,
    fp8_speedup,
    fused_op_counts,
    grouped_rows_half,
    layer_check,
    main,
    memory_bound_fraction,
    step_check,
)

GPU_RESULTS = Path(__file__).resolve().parents[2] / "results" / "gpu"
H100 = cluster_preset("dgx-h100").gpu


def read(name: str) -> pd.DataFrame:
    return pd.read_csv(GPU_RESULTS / name)


def test_fp8_speedup_is_the_measured_median():
    speed = fp8_speedup(read("gemm_h100.csv"))
    assert len(speed) > 100
    assert speed.median() == pytest.approx(compute.FP8_GEMM_SPEEDUP, abs=0.01)


def test_attention_fraction_is_the_measured_fit():
    fraction, fixed_s, errors = attention_fit(read("attention_h100.csv"), H100.peak_bf16_flops)
    assert fraction == pytest.approx(compute.ATTENTION_FRACTION, abs=0.001)
    assert 0 < fixed_s < 1e-3 and abs(errors).max() < 0.1


def test_memory_bound_fraction_is_the_measured_median():
    fraction = memory_bound_fraction(read("elementwise_h100.csv"), H100.hbm_bandwidth_bytes_per_s)
    assert fraction == pytest.approx(compute.MEMORY_BOUND_FRACTION, abs=0.005)


def test_grouped_rows_half_is_the_measured_fit():
    half, errors = grouped_rows_half(read("grouped_h100.csv"), H100.peak_bf16_flops)
    assert half == pytest.approx(compute.GROUPED_ROWS_HALF, abs=0.5)
    assert abs(errors).mean() < 0.08 and abs(errors).max() < 0.15


def test_host_constants_are_the_megatron_layer_fit():
    """HOST_S_PER_OP and HOST_OVERLAP_NORM re-derived from the megatron-core layers timed on
    five machines; the norm fits those layer calls better than perfect overlap, max(H, G)."""
    runs = read_runs(GPU_RESULTS)
    assert len(runs) == 5
    norm, fits = best_norm(runs)
    assert norm == compute.HOST_OVERLAP_NORM
    assert host_fit_s_per_op(fits) == pytest.approx(compute.HOST_S_PER_OP, abs=0.1e-6)
    at_max = np.abs(np.concatenate(fit_runs(runs, np.inf).errors.to_list()))
    at_norm = np.abs(np.concatenate(fits.errors.to_list()))
    assert at_norm.mean() < 0.05 and at_norm.mean() < at_max.mean() - 0.02


def test_fused_operator_counts_are_the_gpu_counts():
    fused = fused_op_counts(read("host_ops.csv"), read_runs(GPU_RESULTS))
    assert compute.HOST_OPS_PER_LAYER[(False, True)] == fused[False]
    assert compute.HOST_OPS_PER_LAYER[(True, True)] == fused[True]


def test_grouped_kernel_slows_down_only_with_few_rows_per_expert():
    factor = compute.grouped_rows_factor([128, 512, 2048, 8192])
    assert factor[0] > 2.0 and factor[1] < 1.1 and factor[3] < 1.001
    assert list(factor) == sorted(factor, reverse=True)


def test_model_predicts_measured_layers():
    layers = pd.concat([read("layer_h100_s2048.csv"), read("layer_h100_s8192.csv"),
                        read("layer_llama_h100_s8192.csv")])
    check = layer_check(layers, cluster_preset("dgx-h100"))
    assert len(check) == 38
    assert check.err_pct.abs().median() < 6.0
    llama = check[check.mlp == "swiglu"]  # RMSNorm, GQA, SwiGLU: Llama 3 8B/70B/405B layers
    assert len(llama) == 12 and llama.err_pct.abs().max() < 10.0
    # all but the smallest layer (1.6 ms: eager PyTorch's kernel launches dominate) within 20%
    big = check[check.measured_s > 2e-3]
    assert big.err_pct.abs().max() < 20.0


def test_model_predicts_measured_training_steps():
    steps = pd.concat([read(f"step_h100_{name}.csv") for name in ("8b_l4", "8b_l4_ga4",
                                                                  "70b_l2")])
    check = step_check(steps, cluster_preset("dgx-h100"))
    assert len(check) == 3
    assert check.err_pct.abs().max() < 15.0
    single = check[check.micro_batches == 1]  # the benchmark's own grad copies add to GA
    assert single.mem_err_pct.abs().max() < 6.0


def test_unreadable_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "gemm_h100.csv").write_text("m,k\n1,2\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks the column 'time_s'" in err
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no measurement files" in err


def test_missing_sections_are_skipped(tmp_path, capsys):
    (tmp_path / "layer_h100_s2048.csv").write_text(
        (GPU_RESULTS / "layer_h100_s2048.csv").read_text())
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped: no gemm_h100.csv" in out and "layer error: mean" in out
