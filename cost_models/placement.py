"""Where each parallel group lands on the nodes, from the plan's placement order.

Ranks are numbered so that the first axis of `order` varies fastest (Megatron-Core's
`RankGenerator` convention: "tp-cp-dp-pp" puts TP ranks on consecutive GPUs). A group of
axis `a` has stride = product of the sizes of the axes inside it; with G GPUs per node it
has G // stride members on each node (at least 1, at most its size).
"""

from __future__ import annotations

import numpy as np

from cost_models.plan_arrays import ORDER_POSITION, PlanArrays
from cost_models.specs import AXES


def axis_strides(plans: PlanArrays) -> dict[str, np.ndarray]:
    sizes = {"tp": plans.tp, "cp": plans.cp, "dp": plans.dp, "pp": plans.pp}
    position = ORDER_POSITION[plans.order]  # (N, 4): position of each axis, innermost 0
    strides = {}
    for i, axis in enumerate(AXES):
        stride = np.ones(len(plans), dtype=np.int64)
        for j, other in enumerate(AXES):
            stride = np.where(position[:, j] < position[:, i], stride * sizes[other], stride)
        strides[axis] = stride
    return strides


def ranks_per_node(size, stride, gpus_per_node: int) -> np.ndarray:
    """Members of one group on each node it touches."""
    per_node = np.maximum(gpus_per_node // np.maximum(stride, 1), 1)
    return np.minimum(per_node, size)


def group_ranks_per_node(plans: PlanArrays, gpus_per_node: int) -> dict[str, np.ndarray]:
    """Ranks per node of the tp, cp, dp, pp groups, and of the expert-parallel group.

    The EP group is carved out of the tp*cp*dp ranks of a stage, innermost first
    (Megatron-Core expert grid with expert-TP 1): consecutive ranks unless the placement puts
    PP innermost, which spreads them by pp.
    """
    strides = axis_strides(plans)
    out = {axis: ranks_per_node(getattr(plans, axis), strides[axis], gpus_per_node)
           for axis in AXES}
    pp_inside = ORDER_POSITION[plans.order][:, AXES.index("pp")] == 0
    ep_stride = np.where(pp_inside, plans.pp, 1)
    out["ep"] = ranks_per_node(plans.ep, ep_stride, gpus_per_node)
    # Data-parallel gradient groups span dp*cp ranks (CP ranks hold the same weights): the
    # members a node holds are its CP members times its DP members.
    out["dp_cp"] = np.minimum(out["cp"] * out["dp"], gpus_per_node)
    return out
