"""Predicted vs measured time per collective (the fit's picture); matplotlib, Agg backend."""

from __future__ import annotations

import pandas as pd


def plot_fit(checked: pd.DataFrame, path: str, title: str = "") -> None:
    """One panel per collective: measured (dots) and predicted (line) time vs size, one
    colour per (group size, layout, running groups); held-out points drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=80)
    plt.close(fig)
