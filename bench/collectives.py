"""Per-collective buffers, calls and correctness checks (nccl-tests' `testColl` registry).

Buffer sizes follow nccl-tests (doc/PERFORMANCE.md): `size_bytes` is the larger of the send
and receive buffers and `count` its elements. All-gather sends count/n and receives count;
reduce-scatter sends count and receives count/n; all-to-all sends and receives count, a
count/n chunk per peer. Every rank fills chunk j with the small integer `fill(rank, j)`, exact
in every dtype, so the expected result is known exactly and checked after each timed sweep.
Send/recv runs as a ring (rank i sends to i+1, receives from i-1, as nccl-tests sendrecv) or
in pairs (i <-> i xor 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.records import DTYPE_BYTES, Collective  # DTYPE_BYTES: imported from here too

MPI_DTYPES = ("float32", "float64", "int32", "int64")
P2P_MODES = ("ring", "pairs")
# Collectives whose count is rounded to a multiple of the group size (one chunk per member).
CHUNKED = (Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.REDUCE_SCATTER,
           Collective.ALL_TO_ALL)


def fill(rank, chunk):
    """Value every rank puts in chunk `chunk`: small integers, exact even in bfloat16."""
    return (np.asarray(rank) * 3 + np.asarray(chunk) * 5) % 7 + 1


def element_count(collective: Collective, size_bytes: int, dtype: str, n: int) -> int:
    """Elements of the size-defining buffer for a requested size (rounded down, >= one)."""
    count = max(size_bytes // DTYPE_BYTES[dtype], 1)
    if collective in CHUNKED:
        count = max(count // n, 1) * n
    return count


def peer(mode: str, index: int, n: int) -> tuple[int, int]:
    """(destination, source) group indices of a send/recv step."""
    if mode == "pairs":
        other = index ^ 1 if (index ^ 1) < n else index
        return other, other
    return (index + 1) % n, (index - 1) % n


@dataclass(frozen=True, slots=True, kw_only=True)
class Buffers:
    """Host-side description: what each rank sends and what it must receive."""

    send_chunks: np.ndarray  # value per chunk of the send buffer
    send_chunk_len: int
    expect_chunks: np.ndarray  # expected value per chunk of the receive buffer
    expect_chunk_len: int


def plan_buffers(collective: Collective, count: int, index: int, n: int,
                 p2p: str = "ring") -> Buffers:
    """Send contents and expected receive contents for group member `index` of `n`."""
    members = np.arange(n)
    if collective == Collective.ALL_REDUCE:
        c = count // n
        return Buffers(send_chunks=fill(index, members), send_chunk_len=c,
                       expect_chunks=fill(members[:, None], members).sum(0), expect_chunk_len=c)
    if collective == Collective.ALL_GATHER:
        c = count // n
        return Buffers(send_chunks=fill(index, np.zeros(1)), send_chunk_len=c,
                       expect_chunks=fill(members, 0), expect_chunk_len=c)
    if collective == Collective.REDUCE_SCATTER:
        c = count // n
        return Buffers(send_chunks=fill(index, members), send_chunk_len=c,
                       expect_chunks=np.array([fill(members, index).sum()]), expect_chunk_len=c)
    if collective == Collective.ALL_TO_ALL:
        c = count // n
        return Buffers(send_chunks=fill(index, members), send_chunk_len=c,
                       expect_chunks=fill(members, index), expect_chunk_len=c)
    if collective == Collective.BROADCAST:
        return Buffers(send_chunks=fill(index, np.zeros(1)), send_chunk_len=count,
                       expect_chunks=fill(0, np.zeros(1)), expect_chunk_len=count)
    _, source = peer(p2p, index, n)
    return Buffers(send_chunks=fill(index, np.zeros(1)), send_chunk_len=count,
                   expect_chunks=fill(source, np.zeros(1)), expect_chunk_len=count)


def expand(chunks: np.ndarray, chunk_len: int) -> np.ndarray:
    return np.repeat(np.asarray(chunks, dtype=np.float64), chunk_len)


# ---------------------------------------------------------------------------------------------
# torch.distributed calls: fn(send, recv, group, group_ranks, index, p2p) for one operation.
# ---------------------------------------------------------------------------------------------

def _torch_call(collective: Collective) -> Callable:
    import torch.distributed as dist

    def all_reduce(send, recv, group, ranks, index, p2p):
        dist.all_reduce(recv, group=group)

    def all_gather(send, recv, group, ranks, index, p2p):
        dist.all_gather_into_tensor(recv, send, group=group)

    def reduce_scatter(send, recv, group, ranks, index, p2p):
        dist.reduce_scatter_tensor(recv, send, group=group)

    def all_to_all(send, recv, group, ranks, index, p2p):
        dist.all_to_all_single(recv, send, group=group)

    def broadcast(send, recv, group, ranks, index, p2p):
        dist.broadcast(recv, src=ranks[0], group=group)

    def send_recv(send, recv, group, ranks, index, p2p):
        dst, src = peer(p2p, index, len(ranks))
        ops = [dist.P2POp(dist.isend, send, ranks[dst], group=group),
               dist.P2POp(dist.irecv, recv, ranks[src], group=group)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()

    return locals()[collective.value]


def torch_operation(collective: Collective, count: int, dtype: str, index: int,
                    ranks: tuple[int, ...], group, device, p2p: str = "ring"):
    """(run, check): run() does one operation in place; check() refills, runs once and
    returns the number of wrong elements. all_reduce and broadcast work in place on `recv`."""
    import torch

    n = len(ranks)
    plan = plan_buffers(collective, count, index, n, p2p)
    tdtype = getattr(torch, dtype)
    send = torch.from_numpy(expand(plan.send_chunks, plan.send_chunk_len)).to(device, tdtype)
    recv_len = len(plan.expect_chunks) * plan.expect_chunk_len
    recv = torch.zeros(recv_len, dtype=tdtype, device=device)
    call = _torch_call(collective)
    def run():
        call(send, recv, group, ranks, index, p2p)

    def check() -> int:
        in_place_source = collective == Collective.ALL_REDUCE or (
            collective == Collective.BROADCAST and index == 0)
        recv.copy_(send) if in_place_source else recv.zero_()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        want = expand(plan.expect_chunks, plan.expect_chunk_len)
        got = recv.to("cpu", torch.float64).numpy()
        return int(np.count_nonzero(got != want))

    return run, check


# ---------------------------------------------------------------------------------------------
# MPI calls through mpi4py with numpy buffers.
# ---------------------------------------------------------------------------------------------

def mpi_operation(collective: Collective, count: int, dtype: str, index: int, comm,
                  p2p: str = "ring"):
    """(run, check) for MPI; `comm` is the group's communicator, `index` the rank in it."""
    n = comm.Get_size()
    plan = plan_buffers(collective, count, index, n, p2p)
    send = expand(plan.send_chunks, plan.send_chunk_len).astype(dtype)
    recv = np.zeros(len(plan.expect_chunks) * plan.expect_chunk_len, dtype=dtype)
    dst, src = peer(p2p, index, n)
    calls = {
        Collective.ALL_REDUCE: lambda: comm.Allreduce(send, recv),
        Collective.ALL_GATHER: lambda: comm.Allgather(send, recv),
        Collective.REDUCE_SCATTER: lambda: comm.Reduce_scatter_block(send, recv),
        Collective.ALL_TO_ALL: lambda: comm.Alltoall(send, recv),
        Collective.BROADCAST: lambda: comm.Bcast(send if index == 0 else recv, root=0),
        Collective.SEND_RECV: lambda: comm.Sendrecv(send, dst, 0, recv, src, 0),
    }
    run = calls[collective]

    def check() -> int:
        recv[:] = 0
        run()
        got = send if (collective == Collective.BROADCAST and index == 0) else recv
        want = expand(plan.expect_chunks, plan.expect_chunk_len)
        return int(np.count_nonzero(got.astype(np.float64) != want))

    return run, check
