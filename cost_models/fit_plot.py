"""Predicted vs measured time per collective (the fit's picture); matplotlib, Agg backend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cost_models.atomic import staged_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_formats() -> tuple[str, ...]:
    """File extensions (no dot) matplotlib can write: png, pdf, svg, ..."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def plot_fit(checked: pd.DataFrame, path: str, title: str = "", fmt: str | None = None) -> None:
    """One panel per collective: measured (dots) and predicted (line) time vs size, one
    colour per (group size, layout, running groups); held-out points drawn hollow. `fmt`:
    the image format (default: from the file's extension)."""
    plt = _pyplot()
    names = sorted(checked["collective"].unique())
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        part = checked[checked["collective"] == name]
        for i, (key, rows) in enumerate(part.groupby(["group_size", "layout", "num_groups"])):
            rows = rows.sort_values("size_bytes")
            color = f"C{i}"
            label = f"g={key[0]} {key[1]} x{key[2]}"
            ax.plot(rows["size_bytes"], rows["predicted_s"], "-", color=color, label=label)
            held = rows["held_out"] if "held_out" in rows else False
            ax.scatter(rows["size_bytes"][~held], rows["measured_s"][~held], color=color, s=14)
            ax.scatter(rows["size_bytes"][held], rows["measured_s"][held], facecolors="none",
                       edgecolors=color, s=22)
        ax.set(xscale="log", yscale="log", xlabel="size (B)", ylabel="time (s)", title=name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: measured (dots; hollow = held out) vs fitted model (lines)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80, format=fmt)
    finally:
        plt.close(fig)


def render_plot(checked: pd.DataFrame, path: str, title: str = "") -> Path:
    """Draw the plot into a new temporary file beside `path` and return it (atomic.staged_file):
    the caller commits it to `path` once its other outputs are written, or deletes it, so a
    failed run leaves no plot without its profile. SpecError when `path` cannot be written."""
    fmt = Path(path).suffix.lstrip(".").lower()
    return staged_file(path, lambda temp: plot_fit(checked, temp, title, fmt=fmt))
