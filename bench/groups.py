"""Group layouts: training's groups are not the whole world.

`consecutive` groups hold neighbouring ranks ([0,1], [2,3], ...): with ranks packed per node
they stay inside a node while the group fits (tensor parallelism). `strided` groups take every
(world/g)-th rank ([0,2], [1,3]): they span nodes (data parallelism). With `concurrent` all
groups run the collective at the same time, as DP groups side by side do, sharing each node's
network; with it off only the first group runs while the others wait.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

LAYOUTS = ("world", "consecutive", "strided")


class LayoutError(ValueError):
    """A group size or layout that does not tile the world."""


def make_groups(world_size: int, group_size: int, layout: str) -> list[tuple[int, ...]]:
    """Disjoint groups covering all ranks, in the order every rank creates them."""
    if layout == "world" or group_size in (0, world_size):
        return [tuple(range(world_size))]
    if layout not in LAYOUTS:
        raise LayoutError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if group_size < 1 or world_size % group_size:
        raise LayoutError(f"--group-size {group_size} must divide the world size {world_size}")
    stride = world_size // group_size
    if layout == "consecutive":
        return [tuple(range(i * group_size, (i + 1) * group_size)) for i in range(stride)]
    return [tuple(range(i, world_size, stride)) for i in range(stride)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """How running groups land on nodes (what the cost model's tiers depend on)."""

    ranks_per_node: int  # most members of one group on one node
    nodes: int  # most nodes one group spans
    groups_per_node: int  # most running groups with a member on one node


def placement(active: list[tuple[int, ...]], node_of_rank: list[str]) -> Placement:
    per_group = [Counter(node_of_rank[r] for r in g) for g in active]
    load = Counter(node for counts in per_group for node in counts)
    return Placement(ranks_per_node=max(max(c.values()) for c in per_group),
                     nodes=max(len(c) for c in per_group),
                     groups_per_node=max(load.values()))


def layout_name(layout: str, group_size: int, world_size: int) -> str:
    return "world" if group_size in (0, world_size) else layout
