"""`autotune validate RUNS.csv --out PREDS.csv`: predict published runs and score the errors.

RUNS.csv follows the schema of the published-runs file (documented in the README); rows come
in any order. Rows with usable=1 are predicted; rows that cannot be modelled are skipped with
the reason. PREDS.csv gets one row per predicted run: id, pred_iter_time_s, the reference,
the signed and absolute percentage error, the plan chosen for cells the source left empty,
and the time breakdown. `--report DIR` adds a Markdown table and a predicted-vs-published PNG.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import defaultdict
from pathlib import Path

from cost_models.atomic import distinct_files, ensure_folder, output_target, write_text_atomic
from cost_models.cli_args import Parser
from cost_models.specs import SpecError
from cost_models.validate import (
    Row,
    Skipped,
    best_candidate,
    parse_rows,
    read_rows,
)

PLAN_COLUMNS = ("tp", "pp", "vpp", "dp", "cp", "ep", "micro_batch_size", "sequence_parallel",
                "recompute", "zero", "zero3_impl", "flash_attention", "grad_reduce_in_bf16",
                "moe_load_factor", "optimizer_dtype")


def build_parser(prog: str = "autotune validate") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Predict published runs; report the error.")
    p.add_argument("runs", help="CSV in the published-runs schema")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.add_argument("--report", help="folder for a Markdown table and a PNG plot")
    return p



def check_outputs(args: argparse.Namespace) -> None:
    """Every output checked before any work: not empty, a writable place, no output naming
    another or the runs file, and the --report folder made."""
    from tuner.validation_report import REPORT_NAMES

    if not args.out.strip():
        raise SpecError("--out is empty; name the predictions CSV to write, e.g. --out "
                        "preds.csv")
    if args.report is not None and not args.report.strip():
        raise SpecError("--report is empty; name a folder for the report, or leave --report "
                        "out")
    reports = [Path(args.report) / name for name in REPORT_NAMES] if args.report else []
    for path in [args.out, *reports]:
        output_target(path)
    distinct_files([("--out", args.out)] + [("--report", p) for p in reports],
                   inputs=[("the runs file", args.runs)])
    if args.report:
        ensure_folder(args.report)


def predict_row(row: Row) -> dict:
    plan, out = best_candidate(row)
    err = out["pred_iter_time_s"] / row.ref_iter_time_s - 1.0
    record = {"id": row.id, "pred_iter_time_s": out.pop("pred_iter_time_s"),
              "ref_iter_time_s": row.ref_iter_time_s, "err_pct": 100 * err,
              "abs_err_pct": 100 * abs(err)}
    record.update({f"plan_{c}": str(getattr(plan, c)) for c in PLAN_COLUMNS})
    record.update(out)
    return record


PLAN_CELLS = ("tp", "pp", "vpp", "dp", "cp", "ep", "micro_batch_size", "global_batch_size",
              "sequence_parallel", "recompute", "zero")


def same_plan(a: dict, b: dict) -> bool:
    """Rows whose printed plan cells agree wherever both are stated describe one plan."""
    return all(not a[c].strip() or not b[c].strip() or a[c].strip() == b[c].strip()
               for c in PLAN_CELLS)


def order_checks(records: list[dict], rows: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """Alternative plans (one model, GPU count and precision; the printed plans differ):
    does the prediction order them as published?"""
    groups = defaultdict(list)
    for r in records:
        src = rows[r["id"]]
        key = tuple(src[c] for c in ("num_layers", "hidden_size", "num_gpus", "gpu", "seq_len",
                                     "precision", "num_experts"))
        groups[key].append(r)
    out = []
    for members in groups.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if (a["ref_iter_time_s"] == b["ref_iter_time_s"]
                        or same_plan(rows[a["id"]], rows[b["id"]])):
                    continue
                same = ((a["ref_iter_time_s"] < b["ref_iter_time_s"])
                        == (a["pred_iter_time_s"] < b["pred_iter_time_s"]))
                out.append((a["id"], b["id"], same))
    return out


def to_csv(records: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in records for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


def run(argv: list[str], prog: str = "autotune validate") -> int:
    args = build_parser(prog).parse_args(argv)
    check_outputs(args)
    raw = read_rows(Path(args.runs))
    by_id = {(r.get("id") or "").strip(): r for r in raw}  # as parse_rows reads ids
    records, skipped = [], []
    for item in parse_rows(raw):
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            records.append(predict_row(item))
    if not records:
        first = f"; {skipped[0].id}: {skipped[0].reason}" if skipped else ""
        raise SpecError(f"{args.runs}: no row could be predicted ({len(skipped)} skipped"
                        f"{first})")
    errors = [r["abs_err_pct"] for r in records]
    checks = order_checks(records, by_id)
    write_text_atomic(args.out, to_csv(records))
    for s in skipped:
        print(f"skipped {s.id}: {s.reason}")
    print(f"predicted {len(records)} runs, skipped {len(skipped)}; iteration time error: "
          f"mean {sum(errors) / len(errors):.1f}%, max {max(errors):.1f}% -> {args.out}")
    agree = sum(ok for *_, ok in checks)
    print(f"order of alternative plans (same model, GPUs, precision): {agree}/{len(checks)} "
          "pairs as published")
    for a, b, ok in checks:
        if not ok:
            print(f"  order differs: {a} vs {b}")
    if args.report:
        from tuner.validation_report import write_report

        write_report(Path(args.report), records, checks, skipped, argv, by_id)
    return 0
