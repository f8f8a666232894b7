"""Achieved matrix-multiply throughput as a function of shape: the compute-efficiency curve.

    time_s = 2*m*k*n / (peak * max_fraction / (1 + k_half / k)) + overhead_s

`max_fraction` is the share of the datasheet dense peak that a large product reaches;
`k_half` is the reduction depth at which efficiency halves (thin tensor-parallel shards
have small k, e.g. the output projection h/tp -> h, and stream more bytes per FLOP);
`overhead_s` is the fixed time of one kernel (launch and tail).

The constants are fitted by `fit_gemm_curve` to measured products
(cost_models/data/h100_sxm_bf16_gemm.csv: one H100 SXM, cuBLAS bf16, CUDA events; see
/results/calibration/README.md). GEMM benchmarks of the suite (`bench/gemm.py`) write the same
columns, so a measured file for another GPU replaces the curve (`fit_gemm_curve(path)`).
Other GPUs use the H100 fractions of their own peak: an assumption, marked where used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
H100_GEMM_CSV = DATA_DIR / "h100_sxm_bf16_gemm.csv"
H100_BF16_PEAK_FLOPS = 989.4e12  # NVIDIA H100 SXM datasheet, dense BF16


@dataclass(frozen=True, slots=True, kw_only=True)
class GemmCurve:
    max_fraction: float
    k_half: float
    overhead_s: float
    source: str


# Fitted by fit_gemm_curve(H100_GEMM_CSV): mean |error| 4.1%, max 25% (a 35 us product),
# over the 196 measured shapes; tests/unit/test_gemm_curve.py re-fits and compares.
H100_BF16_CURVE = GemmCurve(max_fraction=0.7132, k_half=113.5, overhead_s=22.0e-6,
                            source="cost_models/data/h100_sxm_bf16_gemm.csv")


def curve_for(gpu) -> GemmCurve:
    """The GPU's own measured curve when its spec carries one, else the H100 curve applied
    to its peak (ASSUMPTION for GPUs without measurements: same fractions of peak)."""
    if gpu.gemm_max_fraction > 0:
        return GemmCurve(max_fraction=gpu.gemm_max_fraction, k_half=gpu.gemm_k_half,
                         overhead_s=gpu.gemm_overhead_s, source=f"gpu {gpu.name} spec")
    return H100_BF16_CURVE


def with_curve(gpu, curve: GemmCurve):
    """The GPU spec carrying a fitted curve (e.g. from bench/gemm.py results)."""
    from dataclasses import replace

    return replace(gpu, gemm_max_fraction=curve.max_fraction, gemm_k_half=curve.k_half,
                   gemm_overhead_s=curve.overhead_s)


def gemm_time_s(m, k, n, peak_flops: float, curve: GemmCurve = H100_BF16_CURVE) -> np.ndarray:
    """Seconds for one product of shape (m, k, n); arrays broadcast; m == 0 costs nothing."""
    m, k, n = (np.asarray(x, dtype=float) for x in (m, k, n))
    rate = peak_flops * curve.max_fraction / (1.0 + curve.k_half / np.maximum(k, 1.0))
    return np.where(m * n > 0, 2.0 * m * k * n / rate + curve.overhead_s, 0.0)


def fit_gemm_curve(path: Path = H100_GEMM_CSV,
                   peak_flops: float = H100_BF16_PEAK_FLOPS) -> tuple[GemmCurve, np.ndarray]:
    """Least squares on relative error; returns the curve and each row's relative error.

    For a fixed k_half the model is linear in 1/max_fraction and overhead_s, so k_half is
    found on a log grid and the other two by weighted linear least squares.
    """
    import pandas as pd

    rows = pd.read_csv(path)
    if "precision" in rows.columns:  # bench.gemm files may hold fp8 rows too
        rows = rows[rows["precision"].fillna("bf16") == "bf16"]
    m, k, n, t = (rows[c].to_numpy(float) for c in ("m", "k", "n", "time_s"))
    best = None
    for k_half in np.geomspace(1.0, 4096.0, 400):
        work = 2 * m * k * n * (1 + k_half / k) / peak_flops
        design = np.column_stack([work / t, np.ones_like(t) / t])
        (inv_frac, overhead), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
        err = (work * inv_frac + overhead) / t - 1
        score = float(np.sum(err**2))
        if inv_frac > 0 and overhead >= 0 and (best is None or score < best[0]):
            best = (score, GemmCurve(max_fraction=1 / inv_frac, k_half=float(k_half),
                                     overhead_s=float(overhead), source=str(path)), err)
    assert best is not None
    return best[1], best[2]
