"""The timing loop (nccl-tests BenchTime): warm up, then time each iteration on every rank.

Each timed iteration (sample) starts after a barrier over the whole world, so concurrent
groups start together, and is timed with time.perf_counter() (CPU backends) or CUDA events
(nccl). Operations faster than SAMPLE_TARGET_S run several times back to back per sample
(`calls_per_iter`, recorded), so the barrier and clock cost nothing measurable. The
per-call times are then reduced over ranks with MAX, the slowest rank being what a training
step waits for; statistics are taken over samples afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bench.records import RANK_REDUCE, Collective, Measurement, algbw_gbps, busbw_gbps

SAMPLE_TARGET_S = 1e-3  # a timed sample lasts at least this long (several calls if needed)
MAX_CALLS_PER_SAMPLE = 100


def calls_per_sample(comm, run, warmup: int) -> int:
    """Back-to-back calls per timed sample, from the warm-up's time per call (slowest rank):
    fast operations are batched so the barrier and the clock do not dominate them, as
    nccl-tests times its iterations back to back. Every rank gets the same number."""
    start = time.perf_counter()
    for _ in range(warmup):
        if run is not None:
            run()
        comm.sync()
    per_call = (time.perf_counter() - start) / warmup if warmup and run is not None else 0.0
    slowest = float(comm.reduce_array(np.array([per_call]), "max")[0])
    if slowest <= 0:
        return 1
    return int(min(max(SAMPLE_TARGET_S // slowest, 1), MAX_CALLS_PER_SAMPLE))


def time_iterations(comm, run: Callable[[], None] | None, iters: int,
                    calls: int = 1) -> np.ndarray:
    """Seconds per call of each timed sample on this rank (zeros where this rank's group
    idles); a sample is `calls` back-to-back calls after a barrier over the world."""
    if comm.backend == "nccl":
        return _time_cuda(comm, run, iters, calls)
    times = np.zeros(iters)
    for i in range(iters):
        comm.barrier()
        if run is not None:
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[i] = (time.perf_counter() - start) / calls
    return times


def _time_cuda(comm, run, iters: int, calls: int) -> np.ndarray:
    import torch

    times = np.zeros(iters)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(iters):
        comm.barrier()
        if run is not None:
            start.record()
            for _ in range(calls):
                run()
            end.record()
            end.synchronize()
            times[i] = start.elapsed_time(end) / 1e3 / calls
    return times


def summarize(slowest_s: np.ndarray) -> dict[str, float]:
    """mean/min/max/p50/p99 in microseconds of per-iteration (slowest-rank) times."""
    us = np.asarray(slowest_s) * 1e6
    return {"time_us_mean": float(us.mean()), "time_us_min": float(us.min()),
            "time_us_max": float(us.max()), "time_us_p50": float(np.percentile(us, 50)),
            "time_us_p99": float(np.percentile(us, 99))}


def measure(comm, *, collective: Collective, run, check, count: int, size_bytes: int,
            dtype: str, group_size: int, warmup: int, iters: int, **layout) -> Measurement:
    """Time one point on every rank, reduce over ranks, check the result, build the record."""
    calls = calls_per_sample(comm, run, warmup)
    mine = time_iterations(comm, run, iters, calls)
    slowest = comm.reduce_array(mine, RANK_REDUCE)
    wrong_here = check() if check is not None else 0
    wrong = int(comm.reduce_array(np.array([wrong_here], dtype=float), "sum")[0])
    stats = summarize(slowest)
    time_s = stats["time_us_mean"] / 1e6
    return Measurement(collective=collective, size_bytes=size_bytes, count=count, dtype=dtype,
                       group_size=group_size, warmup_iters=warmup, iters=iters,
                       calls_per_iter=calls, **stats,
                       algbw_gbps=algbw_gbps(size_bytes, time_s),
                       busbw_gbps=busbw_gbps(collective, size_bytes, time_s, group_size),
                       wrong=wrong, **layout)
