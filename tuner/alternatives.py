"""Would a slightly smaller GPU count train the token budget sooner?

GPU counts like 10,000 = 2^4 * 5^4 allow few pipeline depths with TP 8; a count a few percent
smaller with more factors of two often allows a much better plan. We score the largest counts
at or below the request that are multiples of 64..1024 GPUs (8 to 128 nodes of 8), down to
MIN_FRACTION of the request, with the same exact search, and report those that finish the
token budget sooner.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuner.plan_io import train_days
from tuner.search import Ranked, exhaustive_best
from tuner.space import Space

ROUNDINGS = (64, 128, 256, 512, 1024)
MIN_FRACTION = 0.9


@dataclass(frozen=True, slots=True, kw_only=True)
class Alternative:
    num_gpus: int
    best: Ranked
    days: float
    gpu_hours: float


def candidate_counts(num_gpus: int) -> list[int]:
    counts = {num_gpus // q * q for q in ROUNDINGS}
    return sorted(c for c in counts if MIN_FRACTION * num_gpus <= c < num_gpus)


def faster_gpu_counts(space: Space, headroom: float, tokens_budget: float,
                      current: Ranked | None) -> list[Alternative]:
    """Counts below the request whose best plan trains the budget sooner, fastest first."""
    base_days = train_days(tokens_budget, current.tokens_per_s) if current else float("inf")
    out = []
    for count in candidate_counts(space.num_gpus):
        best = exhaustive_best(replace(space, num_gpus=count), headroom)
        if best is None:
            continue
        days = train_days(tokens_budget, best.tokens_per_s)
        if days < base_days:
            out.append(Alternative(num_gpus=count, best=best, days=days,
                                   gpu_hours=days * 24 * count))
    return sorted(out, key=lambda a: a.days)


BATCH_FACTORS = (0.5, 2.0)


def other_batch(space: Space, headroom: float, tokens_budget: float,
                current: Ranked | None) -> tuple[tuple[int, int], Ranked, float] | None:
    """The best plan with the global-batch range halved or doubled, when it trains sooner.

    Larger batches amortize the pipeline bubble and gradient reduction; whether the model
    still converges at that batch is the user's call, so this is reported, never chosen.
    """
    base_days = train_days(tokens_budget, current.tokens_per_s) if current else float("inf")
    best = None
    lo, hi = space.global_batch_range
    for factor in BATCH_FACTORS:
        batch = (max(int(lo * factor), 1), max(int(hi * factor), 1))
        found = exhaustive_best(replace(space, global_batch_range=batch), headroom)
        if found is None:
            continue
        days = train_days(tokens_budget, found.tokens_per_s)
        if days < base_days and (best is None or days < best[2]):
            best = (batch, found, days)
    return best
