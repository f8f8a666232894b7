"""`partune-fit --host-layers`: bench.megatron_layer CSVs of one machine, read and checked,
fitted into a cluster's host seconds per operator (cost_models/host_fit.py).

Every problem is one SpecError line naming the file: a CSV that is not the benchmark's, a
cell that holds no measurement, rows that are no timings of one machine, per-layer slopes no
layer has, and fits the timings do not determine.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from cost_models.csv_text import check_header
from cost_models.specs import ClusterSpec, SpecError

HOST_LAYER_COLUMNS = ("experts_impl", "tokens", "layers", "wall_s", "gpu_busy_s", "ops")
LAYER_KEY = ["experts_impl", "tokens", "layers"]  # one measured model
LAYER_COUNTS = ("tokens", "layers", "ops")
LAYER_TIMES_S = ("wall_s", "gpu_busy_s")
# A model's forward and backward (rows) and one layer's share of it (slopes) take between
# 1 us and an hour; megatron-core's layers issue 161-768 operators each (results/gpu).
TIME_RANGE_S = (1e-6, 3600.0)
OPS_PER_LAYER_RANGE = (10, 100_000)
# gpu_busy_s is one profiled step, wall_s the median of many: the measured layers show busy
# time up to 2.7% over the wall time (results/gpu), so more than this is no measurement.
BUSY_OVER_WALL_SLACK = 0.10
MAX_HOST_FIT_ERROR = 0.25  # mean |relative error| of one layer kind's fit (measured: 2.5-10%)


def with_measured_host(cluster: ClusterSpec, paths: list[str]) -> tuple[ClusterSpec, dict]:
    """The cluster with host_s_per_op fitted to bench.megatron_layer CSVs of one machine, at
    the cost model's own overlap norm (cost_models/host_fit.py)."""
    from cost_models.compute import HOST_OVERLAP_NORM
    from cost_models.host_fit import fit_runs

    slopes = pd.concat([_host_layer_slopes(path) for path in paths])
    fits = fit_runs({"this machine": slopes}, HOST_OVERLAP_NORM)
    if fits.empty:
        raise SpecError(f"{', '.join(paths)}: each layer kind needs two or more token counts "
                        "(python -m bench.megatron_layer --tokens 512,2048,8192)")
    _refuse(", ".join(paths), _host_fit_problem(fits))
    per_op_s = float(fits.per_op_s.median())
    summary = {"files": list(paths), "host_s_per_op": per_op_s,
               "layers": {r.layer: {"host_s": r.host_s, "ops": r.ops,
                                    "mean_abs_rel_error": r.mean_err}
                          for r in fits.itertuples()}}
    return replace(cluster, host_s_per_op=per_op_s), summary


def _host_layer_slopes(path: str) -> pd.DataFrame:
    """Per-layer seconds and operators of one bench.megatron_layer CSV, its cells, rows and
    slopes checked: SpecError naming the file and the first problem."""
    from cost_models.host_fit import layer_slopes

    frame = _read_layer_csv(path)
    _refuse(path, _layer_cells_problem(frame) or _layer_rows_problem(frame))
    slopes = layer_slopes(frame)
    _refuse(path, _layer_slopes_problem(slopes))
    return slopes


def _refuse(where: str, problem: str | None) -> None:
    if problem:
        raise SpecError(f"{where}: {problem}")


def _read_layer_csv(path: str) -> pd.DataFrame:
    """The CSV with its numbers converted (NaN where a cell holds none). Read as text first,
    so a number too large for a float becomes inf (refused with the other bad values)."""
    check_header(path)
    try:
        frame = pd.read_csv(path, dtype=str)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())  # pandas' messages span lines
        raise SpecError(f"{path}: cannot read it as a CSV ({reason}); pass python -m "
                        "bench.megatron_layer's output") from None
    missing = [c for c in HOST_LAYER_COLUMNS if c not in frame.columns]
    if missing:
        raise SpecError(f"{path}: not a bench.megatron_layer CSV (no column "
                        f"{', '.join(missing)}); pass that command's output")
    numbers = list(LAYER_COUNTS + LAYER_TIMES_S)
    return frame.assign(**frame[numbers].apply(pd.to_numeric, errors="coerce"))


def _layer_cells_problem(frame: pd.DataFrame) -> str | None:
    """The first cell that holds no measurement (None: every one does)."""
    if frame.empty:
        return "no rows (only a header); pass the output of a finished bench.megatron_layer run"
    seconds = f"must be {TIME_RANGE_S[0]:g}-{TIME_RANGE_S[1]:g} seconds"
    rules = [("experts_impl", frame["experts_impl"].notna(),
              "is empty (the layer kind: dense, grouped or sequential)")]
    rules += [(c, (frame[c] >= 1) & (frame[c] % 1 == 0), "must be a whole number >= 1")
              for c in LAYER_COUNTS]
    rules += [("wall_s", frame["wall_s"].between(*TIME_RANGE_S), seconds),
              ("gpu_busy_s", frame["gpu_busy_s"].between(*TIME_RANGE_S), f"{seconds} (a CPU "
               "--smoke run has no GPU busy time; measure on the GPU nodes)")]
    for column, ok, rule in rules:
        if not ok.all():
            return f"row {_first_row(~ok)}: {column} {rule}"
    return None


def _layer_rows_problem(frame: pd.DataFrame) -> str | None:
    """What makes well-formed rows no layer timings of one machine (None: nothing)."""
    busy = _busy_above_wall(frame)
    if busy.any():
        return (f"row {_first_row(busy)}: gpu_busy_s is above wall_s (the GPU cannot be busy "
                "longer than the call takes); measure again")
    if (frame.groupby(LAYER_KEY).ops.nunique() > 1).any():
        return ("rows of one experts_impl, token and layer count differ in ops (different "
                "models or layer kinds in one file?); keep one model's rows per file")
    if (frame.groupby(["experts_impl", "tokens"]).layers.nunique() < 2).any():
        return ("each token count needs two or more layer counts "
                "(python -m bench.megatron_layer --layers 1,5)")
    return None


def _layer_slopes_problem(slopes: pd.DataFrame) -> str | None:
    """What in the per-layer slopes no layer does (None: nothing): times that do not grow
    with the layers (or absurdly), an absurd operator count, the GPU busier than the call."""
    low_s, high_s = TIME_RANGE_S
    low_ops, high_ops = OPS_PER_LAYER_RANGE
    for row in slopes.itertuples():
        where = f"{row.experts_impl} layers at {row.tokens:g} tokens"
        if not all(low_s <= t <= high_s for t in (row.wall_s, row.gpu_busy_s)):
            return (f"{where}: wall_s and gpu_busy_s must grow by {low_s:g}-{high_s:g} s per "
                    f"layer, got {row.wall_s:.3g} and {row.gpu_busy_s:.3g} s; measure again")
        if not low_ops <= row.ops <= high_ops:
            return (f"{where}: ops grow by {row.ops:.3g} per layer, not {low_ops}-{high_ops:,}"
                    "; pass bench.megatron_layer's output unedited")
    if _busy_above_wall(slopes).any():
        return ("gpu_busy_s grows faster with the layer count than wall_s (the GPU cannot be "
                "busy longer than the calls take); measure again")
    return None


def _busy_above_wall(table: pd.DataFrame) -> pd.Series:
    return table["gpu_busy_s"] > table["wall_s"] * (1 + BUSY_OVER_WALL_SLACK)


def _first_row(mask: pd.Series) -> int:
    """The 1-based data row (after the header) of the first True."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def _host_fit_problem(fits: pd.DataFrame) -> str | None:
    """A layer kind whose host time the timings do not determine (the fit ends on an edge of
    host_fit.HOST_GRID_S) or that the model does not describe (None: all fine)."""
    from cost_models.host_fit import HOST_GRID_S, on_grid_edge

    edge = fits[on_grid_edge(fits.host_s)]
    if not edge.empty:
        row = edge.iloc[0]
        return (f"the timings of the {row.layer} layers do not determine the host time (the "
                f"fit ends at {row.host_s * 1e3:g} ms per layer call, an end of its "
                f"{HOST_GRID_S[0] * 1e3:g}-{HOST_GRID_S[-1] * 1e3:g} ms range); measure "
                "token counts from host-bound to GPU-bound (--tokens 256,1024,4096,8192)")
    poor = fits[fits.mean_err > MAX_HOST_FIT_ERROR]
    if not poor.empty:
        row = poor.iloc[0]
        return (f"the host-and-GPU model misses the {row.layer} layers' timings by "
                f"{row.mean_err:.0%} on average (more than {MAX_HOST_FIT_ERROR:.0%}); "
                "measure again on a quiet machine")
    return None
