"""`autotune --plot DIR`: the step-time breakdown of the top plans and a scaling curve.

breakdown.png: one stacked bar per plan (best layouts first), one colour per named term.
scaling.png: predicted MFU and step time of the best plan at power-of-two GPU counts from a
few hundred up to the requested count, and at the requested count itself (each point is its
own exact search, so a count with few divisors shows up as a dip).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cost_models.analytical import TIME_TERMS
from cost_models.atomic import ensure_folder, output_target, replace_atomically
from tuner.search import Ranked, best_per_layout, exhaustive_best

SCALING_START_GPUS = 256


def scaling_counts(num_gpus: int) -> list[int]:
    """Powers of two from SCALING_START_GPUS below num_gpus, then num_gpus."""
    counts, n = [], min(SCALING_START_GPUS, num_gpus)
    while n < num_gpus:
        counts.append(n)
        n *= 2
    return counts + [num_gpus]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    replace_atomically(path, lambda name: fig.savefig(name, dpi=120, format="png"))


def breakdown_png(path: Path, ranked: list[Ranked], top_k: int) -> None:
    plt = _pyplot()
    plans = best_per_layout(ranked)[:max(top_k, 1)]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(plans) + 1.8))
    labels = [f"{r.plan.name}\nMFU {100 * r.mfu:.1f}%" for r in plans]
    left = [0.0] * len(plans)
    for term in TIME_TERMS:
        widths = [r.breakdown_s[term] for r in plans]
        if any(w > 0 for w in widths):
            ax.barh(labels, widths, left=left, label=term)
            left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set(xlabel="predicted seconds per step", title="Step-time breakdown of the top plans")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def scaling_png(path: Path, space, headroom: float) -> list[tuple[int, Ranked | None]]:
    plt = _pyplot()
    points = [(n, exhaustive_best(replace(space, num_gpus=n), headroom))
              for n in scaling_counts(space.num_gpus)]
    ok = [(n, r) for n, r in points if r is not None]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot([n for n, _ in ok], [100 * r.mfu for _, r in ok], "o-", label="MFU")
    ax1.set(xscale="log", xlabel="GPUs", ylabel="predicted MFU (%)",
            title=f"{space.model.name} on {space.cluster.name}: best plan per GPU count")
    ax2 = ax1.twinx()
    ax2.plot([n for n, _ in ok], [r.step_time_s for _, r in ok], "s--", color="tab:red",
             label="step time")
    ax2.set_ylabel("predicted step time (s)")
    fig.legend(loc="lower left", fontsize=8, bbox_to_anchor=(0.12, 0.15))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return points


PLOT_NAMES = ("breakdown.png", "scaling.png")


def plot_targets(folder: str) -> list[Path]:
    """The files `write_plots` writes, checked (output_target) before anything is written."""
    return [output_target(Path(folder) / name) for name in PLOT_NAMES]


def write_plots(folder: str, req, ranked: list[Ranked], args) -> None:
    out = ensure_folder(folder)
    breakdown_png(out / "breakdown.png", ranked, args.top_k)
    scaling_png(out / "scaling.png", req.space, args.memory_headroom)
