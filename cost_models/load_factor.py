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
from cost_models.specs import SpecError
from cost_models.validate import Row, best_candidate, cluster_for_row, parse_rows, read_rows

MAX_FACTOR = 8.0  # a busiest rank with 8x the mean tokens: beyond any published router
TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class PairResult:
    forced_id: str
    dropless_id: str
    published_ratio: float  # dropless / forced step time, as published
    implied_factor: float  # the factor at which the model's ratio equals the published one
    dropless_error_at_1: float  # the dropless row's prediction error at factor 1 (fraction)


def step_time_s(row: Row, factor: float) -> float:
    """The row's plan (chosen as `autotune validate` chooses it) at this load factor."""
    plan, _ = best_candidate(row)
    return estimate(row.model, row.cluster, replace(plan, moe_load_factor=factor)).step_time_s


def implied_factor(row: Row, ratio: float) -> float:
    """Bisect the factor f >= 1 with step(f) / step(1) = ratio (the step grows with f)."""
    base = step_time_s(row, 1.0)
    if ratio <= 1.0:
        return 1.0
    low, high = 1.0, MAX_FACTOR
    if step_time_s(row, high) / base < ratio:
        raise SpecError(f"{row.id}: a load factor of {MAX_FACTOR:g} does not explain a "
                        f"{ratio:.2f}x slowdown; the pair differs in more than routing")
    while high - low > TOLERANCE:
        mid = (low + high) / 2
        low, high = (mid, high) if step_time_s(row, mid) / base < ratio else (low, mid)
    return (low + high) / 2


def analyse_pair(rows: dict[str, Row], forced_id: str, dropless_id: str) -> PairResult:
    for rid in (forced_id, dropless_id):
        if rid not in rows:
            raise SpecError(f"no usable row {rid!r} in the file")
    forced, dropless = rows[forced_id], rows[dropless_id]
    ratio = dropless.ref_iter_time_s / forced.ref_iter_time_s
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
    p = Parser(prog="python -m cost_models.load_factor",
               description="The MoE load factor implied by forced-balance/dropless run pairs.")
    p.add_argument("runs", help="CSV in the published-runs schema")
    p.add_argument("pairs", nargs="+", metavar="FORCED_ID:DROPLESS_ID",
                   help="ids of two rows of one plan: forced balance, then dropless")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = {r.id: r for r in parse_rows(read_rows(args.runs), cluster_for_row)
                if isinstance(r, Row)}
        pairs = [_pair(text) for text in args.pairs]
        print(report([analyse_pair(rows, f, d) for f, d in pairs]))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _pair(text: str) -> tuple[str, str]:
    forced, sep, dropless = text.partition(":")
    if not sep or not forced or not dropless:
        raise SpecError(f"pair {text!r} must be FORCED_ID:DROPLESS_ID")
    return forced, dropless


if __name__ == "__main__":
    sys.exit(main())
