"""Harness overhead: the suite's time for a collective vs bare timed loops of the same call.

    torchrun --nproc-per-node 2 -m bench.overhead --backend gloo
    mpiexec -n 2 python -m bench.overhead --backend mpi

For each size, rounds alternate between (a) the suite's `harness.measure` (barrier before
each sample, per-sample times, max over ranks, mean over samples), (b) a bare loop timed
as nccl-tests times it: one barrier, as many back-to-back calls of the raw API
(dist.all_reduce / comm.Allreduce) as the suite made, timed as a whole, divided by the
calls, max over ranks, and
(c) the same raw call timed one at a time after a barrier each, max over ranks per call,
mean over calls: the suite's definition without the suite. (a)/(c) is the harness's own
overhead; (a)/(b) adds the definition's cost: back-to-back calls overlap (a rank starts the
next call while its peer finishes the last one), which calls that training issues between
computations do not. The three take turns going first in a round (the first one pays for
the switch from the previous one: measured, the first was up to 25% slower). It prints the
median over rounds of each time, and the median over rounds of each round's ratios (a
paired comparison: the host's slow phases hit both sides of a round alike); rank 0 prints.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from bench.collectives import element_count, mpi_operation, torch_operation
from bench.dist import BackendUnavailable, connect
from bench.harness import calls_per_sample, measure
from bench.records import Collective
from bench.sweep import parse_size
from cost_models.cli_args import Parser

AR = Collective.ALL_REDUCE


def bare_loop_s(comm, call, iters: int) -> float:
    """Slowest rank's mean seconds per call of `iters` back-to-back calls."""
    call()
    comm.sync()
    comm.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    comm.sync()
    mine = (time.perf_counter() - start) / iters
    return float(comm.reduce_array(np.array([mine]), "max")[0])


def isolated_calls_s(comm, call, iters: int) -> float:
    """Mean over calls of the slowest rank's time for one call started after a barrier."""
    call()
    comm.sync()
    mine = np.zeros(iters)
    for i in range(iters):
        comm.barrier()
        start = time.perf_counter()
        call()
        comm.sync()
        mine[i] = time.perf_counter() - start
    return float(comm.reduce_array(mine, "max").mean())


def operation(comm, count: int):
    """(suite run callable, raw API call) for an all-reduce over the whole world."""
    ranks = tuple(range(comm.world_size))
    if comm.backend == "mpi":
        sub = comm.split([ranks])
        run, _ = mpi_operation(AR, count, "float32", comm.rank, sub)
        buf_in, buf_out = np.ones(count, np.float32), np.zeros(count, np.float32)
        return run, lambda: sub.Allreduce(buf_in, buf_out)
    import torch
    import torch.distributed as dist

    group = comm.group(ranks)
    run, _ = torch_operation(AR, count, "float32", comm.rank, ranks, group, comm.device)
    t = torch.zeros(count, device=comm.device)
    return run, lambda: dist.all_reduce(t, group=group)


def compare(comm, size_bytes: int, iters: int, rounds: int) -> dict[str, float]:
    """Medians over rounds: times in microseconds (suite, back-to-back loop, isolated calls)
    and the per-round ratios suite / isolated and suite / back-to-back."""
    count = element_count(AR, size_bytes, "float32", comm.world_size)
    run, raw = operation(comm, count)
    # as many back-to-back calls as the suite makes (its samples batch fast calls)
    calls = iters * calls_per_sample(comm, run, warmup=2)

    def suite_us() -> float:
        return measure(comm, collective=AR, run=run, check=None, count=count,
                       size_bytes=count * 4, dtype="float32", group_size=comm.world_size,
                       warmup=2, iters=iters, layout="world", num_groups=1,
                       ranks_per_node=comm.world_size, nodes=1,
                       groups_per_node=1).time_us_mean

    methods = {"suite": suite_us,
               "bare": lambda: bare_loop_s(comm, raw, calls) * 1e6,
               "isolated": lambda: isolated_calls_s(comm, raw, iters) * 1e6}
    times = {name: [] for name in methods}
    names = list(methods)
    for r in range(rounds):
        # whichever runs first in a round pays for the switch from the last one: rotate
        for name in names[r % 3:] + names[:r % 3]:
            times[name].append(methods[name]())
    suite, bare, isolated = times["suite"], times["bare"], times["isolated"]
    med = statistics.median
    return {"suite": med(suite), "bare": med(bare), "isolated": med(isolated),
            "vs_isolated": med(a / b for a, b in zip(suite, isolated)),
            "vs_bare": med(a / b for a, b in zip(suite, bare))}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.overhead")
    p.add_argument("--backend", choices=("gloo", "nccl", "mpi"), default="gloo")
    p.add_argument("--sizes", default="4K,64K,1M,16M")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    try:
        comm = connect(args.backend, 300.0)
    except BackendUnavailable as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    if comm.rank == 0:
        print(f"# all_reduce float32, {comm.world_size} ranks, backend {args.backend}, "
              f"{args.iters} iterations x {args.rounds} alternating rounds (medians; ratios: "
              f"median of each round's ratio)")
        print(f"# {'size (B)':>10} {'suite (us)':>11} {'isolated':>11} {'back2back':>11} "
              f"{'suite/isolated':>15} {'suite/back2back':>16}")
    for text in args.sizes.split(","):
        r = compare(comm, parse_size(text), args.iters, args.rounds)
        if comm.rank == 0:
            print(f"  {parse_size(text):>10} {r['suite']:>11.1f} {r['isolated']:>11.1f} "
                  f"{r['bare']:>11.1f} {r['vs_isolated']:>15.3f} {r['vs_bare']:>16.3f}",
                  flush=True)
    comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
