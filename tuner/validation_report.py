"""The validation report: a Markdown table and a predicted-vs-published PNG."""

from __future__ import annotations

import shlex
from pathlib import Path

from cost_models.atomic import ensure_folder, replace_atomically, write_text_atomic


def source_table(records: list[dict], rows: dict[str, dict]) -> list[str]:
    """Markdown rows of the error by (source, GPU, precision) of the runs file."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        row = rows.get(r["id"], {})
        key = (row.get("source", ""), row.get("gpu", ""), row.get("precision", ""))
        groups.setdefault(key, []).append(r)
    lines = ["| source | GPU | precision | runs | mean error % | mean abs error % | max abs % |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (source, gpu, precision), part in sorted(groups.items()):
        signed = [r["err_pct"] for r in part]
        absolute = [r["abs_err_pct"] for r in part]
        lines.append(f"| {source} | {gpu} | {precision} | {len(part)} | "
                     f"{sum(signed) / len(part):+.1f} | {sum(absolute) / len(part):.1f} | "
                     f"{max(absolute):.1f} |")
    return lines


def zero3_impl_tag(record: dict) -> str:
    """'/deepspeed' or '/fsdp' after a ZeRO-3 plan: which implementation was priced."""
    return f"/{record['plan_zero3_impl']}" if str(record["plan_zero"]) == "3" else ""


REPORT_NAMES = ("validation.md", "validation.png")


def write_report(folder: Path, records: list[dict], checks: list, skipped: list,
                 argv: list[str], rows: dict[str, dict] | None = None) -> None:
    ensure_folder(folder)
    errors = [r["abs_err_pct"] for r in records]
    lines = [
        "# Cost-model validation against published runs", "",
        f"Command: `autotune validate {shlex.join(argv)}`", "",
        f"Rows predicted: {len(records)}; skipped: {len(skipped)}. Iteration-time error: "
        f"mean {sum(errors) / len(errors):.1f}%, max {max(errors):.1f}%. Alternative-plan "
        f"order: {sum(ok for *_, ok in checks)}/{len(checks)} pairs as published.", "",
        "Error = predicted / published - 1 (negative: predicted faster).", "",
        *source_table(records, rows or {}), "",
        "| id | published s | predicted s | error % | plan chosen for empty cells |",
        "|---|---:|---:|---:|---|",
    ]
    for r in records:
        knobs = (f"mb{r['plan_micro_batch_size']} vpp{r['plan_vpp']} "
                 f"sp{int(r['plan_sequence_parallel'] == 'True')} {r['plan_recompute']} "
                 f"zero{r['plan_zero']}{zero3_impl_tag(r)} "
                 f"flash{int(r['plan_flash_attention'] == 'True')}"
                 f"{' adam-bf16' if r.get('plan_optimizer_dtype') == 'bf16' else ''}")
        lines.append(f"| {r['id']} | {r['ref_iter_time_s']:.3g} | {r['pred_iter_time_s']:.3g}"
                     f" | {r['err_pct']:+.1f} | {knobs} |")
    for s in skipped:
        lines.append(f"| {s.id} | skipped: {s.reason} | | | |")
    table, plot = (folder / name for name in REPORT_NAMES)
    write_text_atomic(table, "\n".join(lines) + "\n")
    _scatter(plot, records)


def _scatter(path: Path, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = [r["ref_iter_time_s"] for r in records]
    pred = [r["pred_iter_time_s"] for r in records]
    families = sorted({r["id"].split("-")[0] for r in records})
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for family in families:
        xs = [x for x, r in zip(ref, records) if r["id"].split("-")[0] == family]
        ys = [y for y, r in zip(pred, records) if r["id"].split("-")[0] == family]
        ax.scatter(xs, ys, s=18, label=family)
    lo, hi = min(ref + pred) * 0.8, max(ref + pred) * 1.25
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="exact")
    for f, style in ((1.15, ":"), (1 / 1.15, ":")):
        ax.plot([lo, hi], [lo * f, hi * f], "k" + style, lw=0.6)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
           xlabel="published iteration time (s)", ylabel="predicted iteration time (s)",
           title="Cost model vs published runs (dotted: +-15%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        replace_atomically(path, lambda name: fig.savefig(name, dpi=120, format="png"))
    finally:
        plt.close(fig)
