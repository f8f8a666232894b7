"""The MoE load factor a pair of published runs implies: `python -m cost_models.load_factor`.

Two runs of one plan that differ only in routing -- forced balance (Megatron-Core
--moe-router-force-load-balancing) and dropless -- give the dropless run's slowdown. If that
slowdown is the busiest expert rank's extra tokens (Plan.moe_load_factor: its expert products,
permutation and all-to-all scale with them, nothing else does), one factor should explain it
at every sequence length. This solves, per pair, for the factor that makes the model's
dropless/forced ratio equal the published one, and prints it next to the dropless run's error
at factor 1. It is a check of the mechanism, not a correction: `autotune validate` predicts
every row at factor 1 unless its CSV has a `moe_load_factor` column.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace

from cost_models.analytical import estimate
from cost_models.cli_args import Parser
from cost_models.specs import Plan, SpecError
from cost_models.validate import Row, best_candidate, parse_rows, read_rows

PROG = "python -m cost_models.load_factor"
MAX_FACTOR = 8.0  # a busiest rank with 8x the mean tokens: beyond any published router
TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class PairResult:
    forced_id: str
    dropless_id: str
    published_ratio: float  # dropless / forced step time, as published
    implied_factor: float  # the factor at which the model's ratio equals the published one
    dropless_error_at_1: float  # the dropless row's prediction error at factor 1 (fraction)


def step_time_s(row: Row, factor: float, plan: Plan | None = None) -> float:
    """The row's plan (chosen as `autotune validate` chooses it, unless given) at this load
    factor."""
    plan = plan or best_candidate(row)[0]
    return estimate(row.model, row.cluster, replace(plan, moe_load_factor=factor)).step_time_s


def implied_factor(row: Row, ratio: float) -> float:
    """Bisect the factor f >= 1 with step(f) / step(1) = ratio (the step grows with f)."""
    plan = best_candidate(row)[0]
    base = step_time_s(row, 1.0, plan)
    low, high = 1.0, MAX_FACTOR
    if step_time_s(row, high, plan) / base < ratio:
        raise SpecError(f"{row.id}: a load factor of {MAX_FACTOR:g} does not explain a "
                        f"{ratio:.2f}x slowdown; the pair differs in more than routing")
    while high - low > TOLERANCE:
        mid = (low + high) / 2
        low, high = (mid, high) if step_time_s(row, mid, plan) / base < ratio else (low, mid)
    return (low + high) / 2


# What must agree for two rows to be one plan that differs only in routing
SAME_RUN_COLUMNS = ("num_layers", "hidden_size", "ffn_hidden_size", "seq_len", "num_experts",
                    "moe_topk", "gpu", "num_gpus", "tp", "pp", "vpp", "dp", "cp", "ep",
                    "micro_batch_size", "global_batch_size", "recompute", "precision")


def analyse_pair(rows: dict[str, Row], forced_id: str, dropless_id: str,
                 raw: dict[str, dict] | None = None) -> PairResult:
    """`rows` holds the parsed rows; `raw` (optional) the CSV cells, to check the pair is
    one plan."""
    for rid in (forced_id, dropless_id):
        if rid not in rows:
            raise SpecError(f"no usable row {rid!r} in the file")
    if raw is not None:
        differ = [c for c in SAME_RUN_COLUMNS
                  if raw[forced_id].get(c, "").strip() != raw[dropless_id].get(c, "").strip()]
        if differ:
            raise SpecError(f"{forced_id} and {dropless_id} are not one plan (they differ in "
                            f"{', '.join(differ)}); pair runs that differ only in routing")
    forced, dropless = rows[forced_id], rows[dropless_id]
    ratio = dropless.ref_iter_time_s / forced.ref_iter_time_s
    if not ratio > 1.0:
        raise SpecError(f"{dropless_id} ({dropless.ref_iter_time_s:g} s) is not slower than "
                        f"{forced_id} ({forced.ref_iter_time_s:g} s): no imbalance to explain; "
                        "give FORCED_ID:DROPLESS_ID in that order")
    at_one = step_time_s(dropless, 1.0) / dropless.ref_iter_time_s - 1.0
    return PairResult(forced_id, dropless_id, ratio, implied_factor(forced, ratio), at_one)


def report(results: list[PairResult]) -> str:
    lines = [f"{'forced-balance run':<32} {'dropless run':<32} {'published':>9} "
             f"{'implied':>8} {'error at 1':>10}",
             f"{'':<32} {'':<32} {'ratio':>9} {'factor':>8} {'':>10}"]
    for r in results:
        lines.append(f"{r.forced_id:<32} {r.dropless_id:<32} {r.published_ratio:>9.3f} "
                     f"{r.implied_factor:>8.3f} {100 * r.dropless_error_at_1:>+9.1f}%")
    factors = [r.implied_factor for r in results]
    lines.append(f"implied factor: {min(factors):.3f} .. {max(factors):.3f} over "
                 f"{len(factors)} pairs")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG,
               description="The MoE load factor implied by forced-balance/dropless run pairs.")
    p.add_argument("runs", help="CSV in the published-runs schema")
    p.add_argument("pairs", nargs="+", metavar="FORCED_ID:DROPLESS_ID",
                   help="ids of two rows of one plan: forced balance, then dropless")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        raw = read_rows(args.runs)
        parsed = list(parse_rows(raw))
        rows = {r.id: r for r in parsed if isinstance(r, Row)}
        skipped = {r.id: r.reason for r in parsed if not isinstance(r, Row)}
        pairs = [_pair(text) for text in args.pairs]
        for rid in (rid for pair in pairs for rid in pair if rid in skipped):
            raise SpecError(f"row {rid!r} cannot be predicted: {skipped[rid]}")
        cells = {(r.get("id") or "").strip(): r for r in raw}
        print(report([analyse_pair(rows, f, d, cells) for f, d in pairs]))
    except SpecError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _pair(text: str) -> tuple[str, str]:
    forced, sep, dropless = text.partition(":")
    if not sep or not forced or not dropless:
        raise SpecError(f"pair {text!r} must be FORCED_ID:DROPLESS_ID")
    return forced, dropless


if __name__ == "__main__":
    sys.exit(main())
