"""The vocabulary shared by the benchmark suite and the cost models.

Standard library only: the cost models and the tuner import this module, and planning must
work on a laptop without torch or mpi4py.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class Collective(StrEnum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    BROADCAST = "broadcast"
    SEND_RECV = "send_recv"


# busbw = algbw * BUS_FACTOR[collective](n), n = ranks in the group.
# Source: NVIDIA nccl-tests, doc/PERFORMANCE.md ("Bus bandwidth"): all-reduce 2(n-1)/n,
# all-gather and reduce-scatter (n-1)/n, all-to-all (n-1)/n, broadcast and send/recv 1.
BUS_FACTOR: dict[Collective, Callable[[int], float]] = {
    Collective.ALL_REDUCE: lambda n: 2 * (n - 1) / n,
    Collective.ALL_GATHER: lambda n: (n - 1) / n,
    Collective.REDUCE_SCATTER: lambda n: (n - 1) / n,
    Collective.ALL_TO_ALL: lambda n: (n - 1) / n,
    Collective.BROADCAST: lambda n: 1.0,
    Collective.SEND_RECV: lambda n: 1.0,
}


def algbw_gbps(size_bytes: float, time_s: float) -> float:
    """Algorithm bandwidth in GB/s (1e9), nccl-tests doc/PERFORMANCE.md: algbw = S / t."""
    return size_bytes / time_s / 1e9


def busbw_gbps(collective: Collective, size_bytes: float, time_s: float, group_size: int) -> float:
    """Bus bandwidth in GB/s, nccl-tests doc/PERFORMANCE.md: busbw = algbw * factor(n)."""
    return algbw_gbps(size_bytes, time_s) * BUS_FACTOR[collective](group_size)
