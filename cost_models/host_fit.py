"""The host side of a layer call, fitted from megatron-core's own layers timed on one GPU
(`python -m bench.megatron_layer`, results/gpu/megatron_*_layer_h100_run*.csv; each run is one
machine).

A layer call needs the host to issue its operators (host seconds H) and the GPU to run them
(GPU seconds G, the profiled busy time). Were the two perfectly overlapped, the call would
take max(H, G); it takes longer where they are close, because the work is not spread evenly
(the MoE dispatcher's host waits drain the GPU's queue; runs of tiny kernels starve it while
long products let the host run ahead). The model takes the norm (H^p + G^p)^(1/p)
(`compute.host_bound_time_s`; p = inf is max(H, G)); for each p on a grid this fits one H
per run and layer kind and keeps the p with the smallest mean error. H over the layer's
operators is that machine's host seconds per operator; `compute.HOST_S_PER_OP` is their
median over machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cost_models.compute import host_bound_time_s

NORM_GRID = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, np.inf)
MIN_TOKEN_COUNTS = 2
HOST_GRID_S = np.linspace(0.1e-3, 60e-3, 6000)


def layer_slopes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (experts_impl, tokens): seconds and operators per layer call, the least-squares
    slope over the layer counts (the embedding and the head cancel)."""
    rows = []
    for (impl, tokens), g in frame.groupby(["experts_impl", "tokens"]):
        slope = {c: np.polyfit(g.layers, g[c], 1)[0] for c in ("wall_s", "gpu_busy_s", "ops")}
        rows.append({"experts_impl": impl, "tokens": tokens, **slope})
    return pd.DataFrame(rows)


def fit_host_s(slopes: pd.DataFrame, norm: float) -> tuple[float, np.ndarray]:
    """(host seconds per layer call, relative errors) that fit one layer kind at this norm."""
    wall, gpu = slopes.wall_s.to_numpy(), slopes.gpu_busy_s.to_numpy()
    pred = host_bound_time_s(HOST_GRID_S[:, None], gpu[None, :], norm)
    best = int(np.argmin(((pred / wall - 1) ** 2).sum(axis=1)))
    return float(HOST_GRID_S[best]), pred[best] / wall - 1


def on_grid_edge(host_s) -> np.ndarray:
    """Whether fitted host seconds are the first or last of HOST_GRID_S: the timings did not
    determine them (the best value may lie beyond the grid)."""
    return np.isin(host_s, HOST_GRID_S[[0, -1]])


def read_runs(folder: Path) -> dict[str, pd.DataFrame]:
    """Each run's layer slopes, all layer kinds of that run (machine) together."""
    runs: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(folder.glob("megatron_*_layer_*_run*.csv")):
        run = path.stem.rsplit("_", 1)[1]
        runs.setdefault(run, []).append(layer_slopes(pd.read_csv(path)))
    return {run: pd.concat(runs[run], ignore_index=True) for run in sorted(runs)}


def fit_runs(runs: dict[str, pd.DataFrame], norm: float) -> pd.DataFrame:
    """One row per (run, layer kind): fitted host seconds, per operator, errors."""
    out = []
    for run, slopes in runs.items():
        for impl, kind in slopes.groupby("experts_impl"):
            if len(kind) < MIN_TOKEN_COUNTS:
                continue  # one token count cannot tell the host from the GPU
            host_s, err = fit_host_s(kind, norm)
            ops = float(kind.ops.median())
            out.append({"run": run, "layer": impl, "host_s": host_s, "ops": ops,
                        "per_op_s": host_s / ops,
                        "mean_err": float(np.abs(err).mean()), "max_err": float(np.abs(err).max()),
                        "errors": err})
    return pd.DataFrame(out)


def best_norm(runs: dict[str, pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    """(the norm of the grid with the smallest mean |error| over every point, its fits)."""
    def mean_error(fits: pd.DataFrame) -> float:
        return float(np.abs(np.concatenate(fits.errors.to_list())).mean())
    fits = {norm: fit_runs(runs, norm) for norm in NORM_GRID}
    norm = min(fits, key=lambda n: mean_error(fits[n]))
    return norm, fits[norm]


def host_s_per_op(fits: pd.DataFrame) -> float:
    """The median over machines (runs) of each machine's median seconds per operator."""
    return float(fits.groupby("run").per_op_s.median().median())


def host_fit_lines(runs: dict[str, pd.DataFrame]) -> list[str]:
    """The report of the fit (cost_models.kernel_fit prints it)."""
    norm, fits = best_norm(runs)
    at_max = np.abs(np.concatenate(fit_runs(runs, np.inf).errors.to_list()))
    at_norm = np.abs(np.concatenate(fits.errors.to_list()))
    table = fits.drop(columns="errors").assign(
        host_ms=fits.host_s * 1e3, per_op_us=fits.per_op_s * 1e6,
        mean_err_pct=fits.mean_err * 100, max_err_pct=fits.max_err * 100)[
        ["run", "layer", "ops", "host_ms", "per_op_us", "mean_err_pct", "max_err_pct"]]
    return ["megatron-core layer calls (bench.megatron_layer): host and GPU combine as "
            f"(H^p + G^p)^(1/p), p = {norm:g}: mean |err| {100 * at_norm.mean():.1f}%, max "
            f"{100 * at_norm.max():.1f}% (max(H, G): {100 * at_max.mean():.1f}%, "
            f"{100 * at_max.max():.1f}%) over {at_norm.size} layer calls",
            table.to_string(index=False, float_format=lambda v: f"{v:.3g}"),
            f"HOST_S_PER_OP: {host_s_per_op(fits) * 1e6:.1f} us, the median over "
            f"{fits.run.nunique()} machines of each one's median"]
