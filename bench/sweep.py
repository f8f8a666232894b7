"""The outer loop (nccl-tests TimeTest): collectives x group layouts x dtypes x sizes.

Rank 0 appends each measurement to the results file as soon as it is made, so a run that
dies keeps what it measured; `--resume` skips the points already in the file.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bench.collectives import element_count, mpi_operation, torch_operation
from bench.groups import Placement, layout_name, make_groups, placement
from bench.harness import measure
from bench.records import Collective, Measurement

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
FAULT_ENV = "PARTUNE_BENCH_FAULT"  # "RANK:STEP:exit|hang", to test fault handling


def parse_size(text: str) -> int:
    """'8', '64K', '64M', '1G' -> bytes (binary multiples, as nccl-tests -b/-e)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text.upper())
    if not match:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G suffix")
    return int(match.group(1)) * _UNITS[match.group(2)]


MAX_SIZES = 10_000  # a step factor so close to 1 that the sweep would never end


def sizes(min_bytes: int, max_bytes: int, factor: float) -> list[int]:
    """min, min*f, min*f^2, ... up to max (inclusive), as nccl-tests -b -e -f."""
    if min_bytes < 1 or max_bytes < min_bytes or not (math.isfinite(factor) and factor > 1):
        raise ValueError(f"sizes need 1 <= -b ({min_bytes}) <= -e ({max_bytes}) and a "
                         f"finite step factor -f ({factor}) > 1")
    if math.log(max_bytes / min_bytes) / math.log(factor) >= MAX_SIZES:
        raise ValueError(f"step factor {factor} makes over {MAX_SIZES} sizes from {min_bytes} "
                         f"to {max_bytes} B; use a larger -f such as 2")
    out, size = [], float(min_bytes)
    while size <= max_bytes * (1 + 1e-9):
        out.append(int(round(size)))
        size *= factor
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepConfig:
    collectives: tuple[Collective, ...]
    sizes_bytes: tuple[int, ...]
    dtypes: tuple[str, ...]
    group_sizes: tuple[int, ...]  # 0: the whole world
    layouts: tuple[str, ...]
    concurrent: bool
    warmup: int
    iters: int
    p2p: str
    timeout_s: float
    check: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    collective: Collective
    size_bytes: int
    dtype: str
    group_size: int
    layout: str
    groups: tuple[tuple[int, ...], ...]  # all groups, in creation order
    active: tuple[tuple[int, ...], ...]  # those that run


def points(cfg: SweepConfig, world_size: int) -> Iterator[Point]:
    for collective in cfg.collectives:
        for g in cfg.group_sizes:
            for layout in dict.fromkeys(layout_name(lay, g, world_size) for lay in cfg.layouts):
                groups = tuple(make_groups(world_size, g or world_size, layout))
                active = groups if cfg.concurrent else groups[:1]
                for dtype in cfg.dtypes:
                    for size in cfg.sizes_bytes:
                        yield Point(collective=collective, size_bytes=size, dtype=dtype,
                                    group_size=len(groups[0]), layout=layout, groups=groups,
                                    active=active)


def point_key(p: Point, count_bytes: int) -> tuple:
    return (p.collective.value, count_bytes, p.dtype, p.group_size, p.layout, len(p.active))


def actual_size(p: Point) -> tuple[int, int]:
    """(count, size_bytes) after rounding the requested size to whole chunks."""
    from bench.collectives import DTYPE_BYTES

    count = element_count(p.collective, p.size_bytes, p.dtype, p.group_size)
    return count, count * DTYPE_BYTES[p.dtype]


def _operation(comm, p: Point, count: int, cfg: SweepConfig):
    """(run, check) for this rank's group, (None, None) when its group idles."""
    mine = next((g for g in p.active if comm.rank in g), None)
    if comm.backend == "mpi":
        sub = comm.split(list(p.groups))
        if mine is None:
            return None, None
        return mpi_operation(p.collective, count, p.dtype, mine.index(comm.rank), sub, cfg.p2p)
    handles = [comm.group(g) for g in p.groups]  # every rank creates every group, in order
    if mine is None:
        return None, None
    return torch_operation(p.collective, count, p.dtype, mine.index(comm.rank), mine,
                           handles[p.groups.index(mine)], comm.device, cfg.p2p)


def _inject_fault(rank: int, step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    fault_rank, fault_step, mode = spec.split(":")
    if int(fault_rank) == rank and int(fault_step) == step:
        if mode == "hang":
            threading.Event().wait()
        os._exit(9)


def describe(p: Point, size_bytes: int) -> str:
    return (f"{p.collective.value} {size_bytes} B {p.dtype} ({p.layout} groups of "
            f"{p.group_size}, {len(p.active)} running)")


def run_sweep(comm, cfg: SweepConfig, done: set, node_of_rank: list[str],
              emit: Callable[[Measurement], None], progress: dict,
              watchdog: Watchdog | None = None) -> int:
    """Measure every point not in `done`; returns how many were measured.

    `progress["point"]` names the point being measured, for error messages."""
    measured = 0
    for step, p in enumerate(points(cfg, comm.world_size), start=1):
        count, size_bytes = actual_size(p)
        if point_key(p, size_bytes) in done:
            continue
        _inject_fault(comm.rank, step)
        if comm.heartbeat is not None:
            comm.heartbeat.step(step)
        progress["point"] = describe(p, size_bytes)
        if watchdog is not None:
            watchdog.arm(progress["point"])
        run, check = _operation(comm, p, count, cfg)
        where: Placement = placement(list(p.active), node_of_rank)
        m = measure(comm, collective=p.collective, run=run, check=check if cfg.check else None,
                    count=count, size_bytes=size_bytes, dtype=p.dtype,
                    group_size=p.group_size, warmup=cfg.warmup, iters=cfg.iters,
                    layout=p.layout, num_groups=len(p.active),
                    ranks_per_node=where.ranks_per_node, nodes=where.nodes,
                    groups_per_node=where.groups_per_node)
        done.add(point_key(p, size_bytes))
        emit(m)
        measured += 1
    if watchdog is not None:
        watchdog.disarm()
    return measured


class Watchdog:
    """Ends an MPI run whose point makes no progress for `timeout_s` (MPI has no timeouts)."""

    def __init__(self, timeout_s: float, on_expire: Callable[[str], None]) -> None:
        self.timeout_s, self.on_expire = timeout_s, on_expire
        self._timer: threading.Timer | None = None

    def arm(self, what: str) -> None:
        self.disarm()
        self._timer = threading.Timer(self.timeout_s, self.on_expire, args=(what,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
