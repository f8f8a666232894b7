"""How layers split over pipeline stages, including uneven splits.

Megatron-LM runs an uneven split with `--decoder-first-pipeline-num-layers` and
`--decoder-last-pipeline-num-layers`: the middle stages hold the same number of layers and the
first and last stages take the rest (they also carry the embedding and the loss, so fewer
layers there balance the pipeline). We give the middle stages ceil(L/pp) layers and split the
rest between the first and last stage; the slowest stage, which sets the step time, holds
ceil(L/pp) layers.
"""

from __future__ import annotations

import numpy as np


def pipeline_split(num_layers: int, pp: int) -> tuple[int, int, int] | None:
    """(first, middle, last) layers per stage, or None when no such split exists.

    An even split returns (L/pp, L/pp, L/pp)."""
    if pp < 1 or pp > num_layers:
        return None
    if num_layers % pp == 0 or pp == 1:
        even = num_layers // pp
        return even, even, even
    middle = -(-num_layers // pp)
    rest = num_layers - (pp - 2) * middle
    first = rest // 2
    last = rest - first
    if pp == 2:
        return first, middle, last
    if first < 1 or last < 1 or last > middle:
        return None
    return first, middle, last


def stage_layers(num_layers: int, pp) -> np.ndarray:
    """Layers on the fullest pipeline stage (a middle one; all of them when the split is even)."""
    return np.ceil(num_layers / np.asarray(pp, dtype=float))


def inner_and_last_layers(num_layers: int, pp) -> tuple[np.ndarray, np.ndarray]:
    """(layers of the fullest stage other than the last, layers of the last stage) of the
    split above, vectorized: the step waits for the slower of a full stage and the last
    stage, which also computes the logits and the loss."""
    pp = np.asarray(pp, dtype=float)
    middle = stage_layers(num_layers, pp)
    rest = num_layers - (pp - 2) * middle
    first = np.floor(rest / 2)
    inner = np.where(pp > 2, middle, first)
    return np.where(pp > 1, inner, num_layers), np.where(pp > 1, rest - first, num_layers)


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
