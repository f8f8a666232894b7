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
    """Layers on the slowest pipeline stage."""
    return np.ceil(num_layers / np.asarray(pp, dtype=float))
