"""`python -m bench`: the communication benchmark (nccl-tests style), one command line for
torchrun, srun and mpiexec. See bench/README.md.

    torchrun --nproc-per-node 4 -m bench all_reduce -b 8 -e 64M -f 2 -n 20 -w 5 \\
        --backend gloo --group-size 2 --layout strided -o results/bench/run.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter

from bench.collectives import DTYPE_BYTES, MPI_DTYPES, P2P_MODES
from bench.dist import BACKENDS, MPICH_ALGORITHMS, connect, node_name
from bench.groups import LAYOUTS, LayoutError, make_groups
from bench.records import (
    RANK_REDUCE,
    Collective,
    Measurement,
    ResultsError,
    ResultsWriter,
    make_header,
    read_results,
)
from bench.sweep import SweepConfig, Watchdog, parse_size, run_sweep, sizes
from cost_models.cli_args import Parser

EXIT_USAGE = 2  # bad input and failed runs: one line on stderr, exit code 2
ENV_KEPT = ("NCCL_ALGO", "NCCL_PROTO", "NCCL_IB_HCA", "NCCL_SOCKET_IFNAME",
            "GLOO_SOCKET_IFNAME", "UCX_TLS", "OMP_NUM_THREADS", "SLURM_JOB_ID",
            "SLURM_JOB_NODELIST", "PARTUNE_FABRIC", "MPIR_CVAR_NOLOCAL",
            *MPICH_ALGORITHMS)
COLUMNS = (("size", "(B)", 12), ("count", "(elts)", 11), ("type", "", 8), ("group", "", 5),
           ("layout", "", 11), ("ngrp", "", 4), ("nodes", "", 5), ("time", "(us)", 10),
           ("min", "(us)", 10), ("p50", "(us)", 10), ("p99", "(us)", 10),
           ("algbw", "(GB/s)", 8), ("busbw", "(GB/s)", 8), ("#wrong", "", 6))


class UsageError(Exception):
    """Bad command-line input; the message is the one line the user sees."""


def _csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("collectives", help="comma list of " + ", ".join(c.value for c in Collective)
                   + ", or 'all'")
    p.add_argument("-b", "--minbytes", default="8", help="smallest size (K/M/G suffixes)")
    p.add_argument("-e", "--maxbytes", default="32M", help="largest size")
    p.add_argument("-f", "--stepfactor", type=float, default=2.0, help="size multiplier")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed iterations per size")
    p.add_argument("-w", "--warmup-iters", type=int, default=5)
    p.add_argument("-d", "--dtype", type=_csv(str), default=("float32",),
                   help="comma list of " + ", ".join(DTYPE_BYTES))
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="gloo (CPU), nccl (GPU) or mpi (mpi4py); default nccl with GPUs")
    p.add_argument("-g", "--group-size", type=_csv(int), default=(0,),
                   help="comma list of group sizes; 0 = the whole world")
    p.add_argument("--layout", type=_csv(str), default=("consecutive",),
                   help="comma list of " + ", ".join(LAYOUTS[1:]))
    p.add_argument("--one-group", action="store_true",
                   help="run only the first group (default: all groups at once)")
    p.add_argument("--p2p", choices=P2P_MODES, default="ring", help="send_recv pattern")
    p.add_argument("-c", "--check", type=int, choices=(0, 1), default=1,
                   help="check results after each size (default 1)")
    p.add_argument("-o", "--output", default=None, help="results file (.jsonl); default "
                   "results/bench/<date>_<collectives>_<backend>_<world>.jsonl")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --output")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one collective (gloo/nccl) or one size (mpi) may take")
    return p


def config_from_args(args) -> SweepConfig:
    try:
        names = [c.value for c in Collective] if args.collectives == "all" else \
            args.collectives.split(",")
        collectives = tuple(Collective(c) for c in names)
    except ValueError:
        raise UsageError(f"unknown collective in {args.collectives!r}; use "
                         + ", ".join(c.value for c in Collective) + " or all") from None
    bad = [d for d in args.dtype if d not in DTYPE_BYTES or
           (args.backend == "mpi" and d not in MPI_DTYPES)]
    if bad:
        allowed = MPI_DTYPES if args.backend == "mpi" else tuple(DTYPE_BYTES)
        raise UsageError(f"--dtype {bad[0]!r} is not one of {', '.join(allowed)}")
    if any(lay not in LAYOUTS for lay in args.layout):
        raise UsageError(f"--layout {','.join(args.layout)!r}: use {', '.join(LAYOUTS[1:])}")
    if args.iters < 1 or args.warmup_iters < 0 or args.timeout <= 0:
        raise UsageError("--iters must be >= 1, --warmup-iters >= 0 and --timeout > 0")
    try:
        size_list = sizes(parse_size(args.minbytes), parse_size(args.maxbytes),
                          args.stepfactor)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return SweepConfig(collectives=collectives, sizes_bytes=tuple(size_list),
                       dtypes=args.dtype, group_sizes=args.group_size, layouts=args.layout,
                       concurrent=not args.one_group, warmup=args.warmup_iters,
                       iters=args.iters, p2p=args.p2p, timeout_s=args.timeout,
                       check=bool(args.check))


def default_backend() -> str:
    try:
        import torch

        return "nccl" if torch.cuda.is_available() else "gloo"
    except ImportError:
        return "mpi"


def default_output(args, backend: str, world_size: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    what = "all" if args.collectives == "all" else args.collectives.replace(",", "+")
    return os.path.join("results", "bench", f"{stamp}_{what}_{backend}_{world_size}r.jsonl")


def check_layouts(cfg: SweepConfig, world_size: int) -> None:
    for g in cfg.group_sizes:
        for layout in cfg.layouts:
            try:
                make_groups(world_size, g or world_size, layout)
            except LayoutError as exc:
                raise UsageError(str(exc)) from None
    if cfg.p2p == "pairs" and any((g or world_size) % 2 for g in cfg.group_sizes) and \
            Collective.SEND_RECV in cfg.collectives:
        raise UsageError("--p2p pairs needs even group sizes")


def open_results(path: str, resume: bool, header: dict) -> tuple[ResultsWriter, set]:
    """Rank 0: the writer, and the points already measured when resuming."""
    done: set = set()
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if exists and not resume:
        raise UsageError(f"{path} already exists; pass --resume to continue that sweep or "
                         "choose another --output")
    if exists:
        try:
            old = read_results(path)
        except ResultsError as exc:
            raise UsageError(f"cannot resume: {exc}") from None
        for key in ("backend", "world_size"):
            if old.header.get(key) != header[key]:
                raise UsageError(f"cannot resume {path}: it was measured with {key}="
                                 f"{old.header.get(key)!r}, this run has {header[key]!r}")
        done = {m.key() for m in old.measurements if m.wrong == 0}
    return ResultsWriter(path, header), done


def make_run_header(args, backend: str, comm, node_of_rank: list[str]) -> dict:
    per_node = Counter(node_of_rank)
    return make_header(
        command=shlex.join([os.path.basename(sys.executable), "-m", "bench", *sys.argv[1:]]),
        args=vars(args) | {"dtype": list(args.dtype), "group_size": list(args.group_size),
                           "layout": list(args.layout)},
        backend=backend, launcher=comm.launcher,
        world_size=comm.world_size, nodes=len(per_node),
        ranks_per_node=max(per_node.values()), node_of_rank=node_of_rank,
        hosts=sorted(per_node), rank_reduce=f"{RANK_REDUCE} over ranks per iteration, "
        "then mean/min/max/p50/p99 over iterations",
        versions={"python": platform.python_version(), **comm.versions()},
        env={k: os.environ[k] for k in ENV_KEPT if k in os.environ},
        fabric=json.loads(os.environ.get("PARTUNE_FABRIC", "null")),
        start_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def format_row(m: Measurement) -> str:
    values = (m.size_bytes, m.count, m.dtype, m.group_size, m.layout, m.num_groups, m.nodes,
              f"{m.time_us_mean:.1f}", f"{m.time_us_min:.1f}", f"{m.time_us_p50:.1f}",
              f"{m.time_us_p99:.1f}", f"{m.algbw_gbps:.3f}", f"{m.busbw_gbps:.3f}", m.wrong)
    return " ".join(f"{v:>{w}}" for v, (_, _, w) in zip(values, COLUMNS))


def table_head() -> str:
    names = " ".join(f"{n:>{w}}" for n, _, w in COLUMNS)
    units = " ".join(f"{u:>{w}}" for _, u, w in COLUMNS)
    return f"#{names[1:]}\n#{units[1:]}"


def fail(message: str) -> int:
    print(f"bench: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        backend = args.backend or default_backend()
        comm = connect(backend, cfg.timeout_s)
    except (UsageError, ImportError) as exc:
        return fail(str(exc))
    except (RuntimeError, ValueError, OSError) as exc:
        return fail(f"cannot join the other ranks ({backend}): {exc}".splitlines()[0])
    try:
        check_layouts(cfg, comm.world_size)
    except UsageError as exc:
        comm.close()  # leave no heartbeat or process group to the interpreter's exit
        return fail(str(exc))
    node_of_rank = comm.gather_objects(node_name())
    path = args.output or default_output(args, backend, comm.world_size)
    status, writer = None, None
    if comm.rank == 0:
        try:
            writer, done = open_results(path, args.resume,
                                        make_run_header(args, backend, comm, node_of_rank))
            status = ("ok", done)
        except (UsageError, OSError) as exc:
            status = ("error", str(exc))
    status = comm.broadcast_object(status)
    if status[0] == "error":
        comm.close()
        return fail(status[1]) if comm.rank == 0 else EXIT_USAGE
    return _sweep(comm, cfg, status[1], node_of_rank, writer, path)


def _sweep(comm, cfg, done, node_of_rank, writer, path) -> int:
    progress = {"point": "start-up", "kept": len(done)}

    def emit(m: Measurement) -> None:
        progress["kept"] += 1
        if writer is not None:
            if progress.get("collective") != m.collective:
                print(f"# {m.collective.value}\n{table_head()}", flush=True)
                progress["collective"] = m.collective
            writer.write(m)
            print(format_row(m), flush=True)

    watchdog = Watchdog(cfg.timeout_s, lambda what: _abort_mpi(comm, what, cfg.timeout_s)) \
        if comm.backend == "mpi" else None
    try:
        run_sweep(comm, cfg, done, node_of_rank, emit, progress, watchdog)
    except Exception as exc:  # a peer died or hung: name it, keep the file, exit 2
        return _report_failure(comm, exc, progress, writer, path)
    if writer is not None:
        writer.close()
        wrong = "" if cfg.check else " (results not checked)"
        print(f"# done: {progress['kept']} measurements in {path}{wrong}", flush=True)
    comm.close()
    return 0


def _report_failure(comm, exc: Exception, progress: dict, writer, path: str) -> int:
    if comm.heartbeat is not None:
        comm.heartbeat.report_failure()
    who = comm.heartbeat.diagnose() if comm.heartbeat is not None else "a peer rank failed"
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    message = (f"{who}; rank {comm.rank} saw {type(exc).__name__}"
               f"{': ' + detail if detail else ''} during {progress['point']}; "
               f"{progress['kept']} measurements are kept in {path}: run again with --resume")
    if writer is not None:
        writer.write_error(message, comm.rank)
        writer.close()
    fail(message)
    os._exit(EXIT_USAGE)  # the process group is broken: skip its teardown


def _abort_mpi(comm, what: str, timeout_s: float) -> None:
    fail(f"no progress for {timeout_s:g} s during {what} on rank {comm.rank}: a peer rank "
         "died or hangs (mpiexec names a rank that exited); measurements so far are kept, "
         "run again with --resume")
    comm.world.Abort(EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
