"""How layers split over pipeline stages, including uneven splits.

Megatron-LM runs an uneven split with `--decoder-first-pipeline-num-layers` and
`--decoder-last-pipeline-num-layers`: the middle stages hold the same number of layers and the
first and last stages take the rest (they also carry the embedding and the loss, so fewer
layers there balance the pipeline). We give the middle stages ceil(L/pp) layers and split the
rest between the first and last stage; the slowest stage, which sets the step time, holds
ceil(L/pp) layers. Multi-token-prediction depths run on the last stage after its layers
(Megatron-Core); each counts as one more layer slot there, so the last stage takes that many
fewer decoder layers (`last_extra`).
"""

from __future__ import annotations

import numpy as np


def _uneven_split(num_layers: int, pp, last_extra):
    """(first, middle, last, fits) decoder layers, vectorized: the middle stages hold
    ceil((L + last_extra) / pp) slots, the first and last stage halve the rest, and the last
    gives `last_extra` of its slots to multi-token prediction; `fits` where every stage keeps
    a layer and the first and last hold no more than a middle one."""
    pp = np.asarray(pp, dtype=float)
    extra = np.asarray(last_extra, dtype=float)
    slots = num_layers + extra
    middle = np.ceil(slots / pp)
    rest = slots - (pp - 2) * middle
    first = np.floor(rest / 2)
    last = rest - first - extra
    fits = (first >= 1) & (last >= 1) & ((pp <= 2) | (last + extra <= middle))
    return first, middle, last, fits


def pipeline_split(num_layers: int, pp: int, last_extra: int = 0
                   ) -> tuple[int, int, int] | None:
    """(first, middle, last) decoder layers per stage, or None when no such split exists.

    An even split returns (L/pp, L/pp, L/pp). `last_extra`: layer slots the last stage
    carries besides its decoder layers (multi-token-prediction depths)."""
    if pp < 1 or pp > num_layers:
        return None
    if pp == 1 or (num_layers % pp == 0 and last_extra == 0):
        even = num_layers // pp
        return even, even, even
    first, middle, last, fits = _uneven_split(num_layers, pp, last_extra)
    return (int(first), int(middle), int(last)) if fits else None


def last_stage_extra(num_layers: int, pp, vpp, mtp_layers: int):
    """Layer slots the split gives the last stage for multi-token prediction: its depths,
    where a split with that many fewer layers on the last stage exists and there is no
    interleaving (interleaved stages are split evenly; otherwise the last stage carries the
    depths on top of its layers), else 0. Vectorized over pp and vpp."""
    *_, fits = _uneven_split(num_layers, pp, mtp_layers)
    pp = np.asarray(pp)
    return np.where((np.asarray(vpp) == 1) & (pp > 1) & fits, mtp_layers, 0)


def stage_split(num_layers: int, pp: int, vpp: int = 1, mtp_layers: int = 0
                ) -> tuple[int, int, int, int] | None:
    """(first, middle, last, extra): the split Megatron-LM runs for a plan, `extra` being
    the multi-token-prediction slots given to the last stage; None when there is none."""
    extra = int(last_stage_extra(num_layers, pp, vpp, mtp_layers))
    split = pipeline_split(num_layers, pp, extra)
    return None if split is None else (*split, extra)


def stage_layers(num_layers: int, pp) -> np.ndarray:
    """Layers on the fullest pipeline stage (a middle one; all of them when the split is even)."""
    return np.ceil(num_layers / np.asarray(pp, dtype=float))


def inner_and_last_layers(num_layers: int, pp, last_extra=0) -> tuple[np.ndarray, np.ndarray]:
    """(layers of the fullest stage other than the last, decoder layers of the last stage)
    of the split above, vectorized: the step waits for the slower of a full stage and the
    last stage, which also computes the logits, the loss and any `last_extra` slots."""
    first, middle, last, _ = _uneven_split(num_layers, pp, last_extra)
    pp = np.asarray(pp, dtype=float)
    inner = np.where(pp > 2, middle, first)
    return np.where(pp > 1, inner, num_layers), np.where(pp > 1, last, num_layers)


# Megatron-Core can count the input embedding and the loss as one layer each
# (account_for_embedding_in_pipeline_split / account_for_loss_in_pipeline_split,
# transformer_config.py): L + 2 slots split evenly over pp*vpp virtual stages, the first and
# the last stage one layer short. That interleaves layer counts no pp*vpp divides: Llama 3
# 405B's 126 layers as 16 x 8 slots (Dubey et al. 2024 Sec. 3.3.2 balance the pipeline the
# same way), Qwen3-235B's 94 as 8 x 12 or 16 x 6.
EMBEDDING_AND_LOSS_SLOTS = 2


def interleaving(num_layers: int, pp: int, vpp: int) -> str | None:
    """How `num_layers` split into pp*vpp equal virtual stages: "even", "embedding_and_loss"
    (counting those two as layers), or None when neither divides."""
    if num_layers % (pp * vpp) == 0:
        return "even"
    if pp > 1 and (num_layers + EMBEDDING_AND_LOSS_SLOTS) % (pp * vpp) == 0:
        return "embedding_and_loss"
    return None
