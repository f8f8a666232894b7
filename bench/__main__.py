"""`python -m bench`: the communication benchmark (nccl-tests style), one command line for
torchrun, srun and mpiexec. See bench/README.md.

    torchrun --nproc-per-node 4 -m bench all_reduce -b 8 -e 64M -f 2 -n 20 -w 5 \\
        --backend gloo --group-size 2 --layout strided -o results/bench/run.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter

from bench.collectives import DTYPE_BYTES, MPI_DTYPES, P2P_MODES
from bench.dist import BACKENDS, MPICH_ALGORITHMS, BackendUnavailable, connect, node_name
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

PROG = "partune-bench"  # the console script (pyproject.toml); also python -m bench
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


def _csv(kind, what: str):
    """A comma-list argument type; an empty list is refused later, with the flag's name."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of {what}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("collectives", help="comma list of " + ", ".join(c.value for c in Collective)
                   + ", or 'all'")
    p.add_argument("-b", "--minbytes", default="8", help="smallest size (K/M/G suffixes)")
    p.add_argument("-e", "--maxbytes", default="32M", help="largest size")
    p.add_argument("-f", "--stepfactor", type=float, default=2.0, help="size multiplier")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed iterations per size")
    p.add_argument("-w", "--warmup-iters", type=int, default=5)
    p.add_argument("-d", "--dtype", type=_csv(str, "names"), default=("float32",),
                   help="comma list of " + ", ".join(DTYPE_BYTES))
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="gloo (CPU), nccl (GPU) or mpi (mpi4py); default nccl with GPUs")
    p.add_argument("-g", "--group-size", type=_csv(int, "integers"), default=(0,),
                   help="comma list of group sizes; 0 = the whole world")
    p.add_argument("--layout", type=_csv(str, "names"), default=("consecutive",),
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
    collectives = _collectives(args.collectives)
    _check_lists(args)
    _check_numbers(args)
    try:
        size_list = sizes(parse_size(args.minbytes), parse_size(args.maxbytes),
                          args.stepfactor)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return SweepConfig(collectives=collectives, sizes_bytes=tuple(size_list),
                       dtypes=tuple(args.dtype), group_sizes=tuple(args.group_size),
                       layouts=tuple(args.layout), concurrent=not args.one_group,
                       warmup=args.warmup_iters, iters=args.iters, p2p=args.p2p,
                       timeout_s=args.timeout, check=bool(args.check))


def _collectives(text: str) -> tuple[Collective, ...]:
    try:
        names = [c.value for c in Collective] if text == "all" else text.split(",")
        return tuple(Collective(c) for c in names)
    except ValueError:
        raise UsageError(f"unknown collective in {text!r}; use "
                         + ", ".join(c.value for c in Collective) + " or all") from None


def _check_lists(args) -> None:
    """--dtype, --group-size and --layout: non-empty lists of known values."""
    allowed = MPI_DTYPES if args.backend == "mpi" else tuple(DTYPE_BYTES)
    for flag, values, choices in (("--dtype", args.dtype, allowed),
                                  ("--layout", args.layout, LAYOUTS[1:])):
        if not values:
            raise UsageError(f"{flag} is empty; give a comma list of {', '.join(choices)}")
    bad = [d for d in args.dtype if d not in allowed]
    if bad:
        raise UsageError(f"--dtype {bad[0]!r} is not one of {', '.join(allowed)}")
    if any(lay not in LAYOUTS for lay in args.layout):
        raise UsageError(f"--layout {','.join(args.layout)!r}: use {', '.join(LAYOUTS[1:])}")
    if not args.group_size or min(args.group_size) < 0:
        raise UsageError(f"--group-size {','.join(map(str, args.group_size))!r}: give a comma "
                         "list of group sizes >= 0 (0: the whole world), e.g. 0,2")


def _check_numbers(args) -> None:
    if args.iters < 1 or args.warmup_iters < 0:
        raise UsageError("--iters must be >= 1 and --warmup-iters >= 0")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout {args.timeout:g} must be a finite number of seconds > 0")


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
    """Rank 0: the writer, and the points already measured when resuming. Resuming needs the
    same backend, world size and sweep settings as the file's header: its points are skipped
    by identity, so other settings would mix two sweeps under one header."""
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory; name a results file, e.g. "
                         f"{os.path.join(path, 'run.jsonl')}")
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if exists and not resume:
        raise UsageError(f"{path} already exists; pass --resume to continue that sweep or "
                         "choose another --output")
    done: set = set()
    if exists:
        try:
            old = read_results(path)
        except ResultsError as exc:
            raise UsageError(f"cannot resume: {exc}") from None
        for key in ("backend", "world_size"):
            if old.header.get(key) != header[key]:
                raise UsageError(f"cannot resume {path}: it was measured with {key}="
                                 f"{old.header.get(key)!r}, this run has {header[key]!r}")
        check_same_sweep(path, old.header, header)
        done = {m.key() for m in old.measurements if m.wrong == 0}
    return ResultsWriter(path, header), done


def sweep_settings(args: object) -> dict | None:
    """What a sweep measures, by flag, from a header's `args` (None when they cannot be read:
    a header written by hand or by an older version)."""
    if not isinstance(args, dict):
        return None
    try:
        cfg = config_from_args(argparse.Namespace(**args))
    except (UsageError, AttributeError, TypeError, ValueError):
        return None
    return {"collectives": cfg.collectives, "sizes (-b/-e/-f)": cfg.sizes_bytes,
            "--dtype": cfg.dtypes, "--group-size": cfg.group_sizes, "--layout": cfg.layouts,
            "--one-group": not cfg.concurrent, "--warmup-iters": cfg.warmup,
            "--iters": cfg.iters, "--p2p": cfg.p2p, "--check": int(cfg.check)}


def check_same_sweep(path: str, old_header: dict, header: dict) -> None:
    """Refuse to resume a file with other sweep settings than this run's, in one line."""
    old, new = sweep_settings(old_header.get("args")), sweep_settings(header["args"])
    if old is None or new is None:
        return
    for flag, value in old.items():
        if new[flag] != value:
            raise UsageError(f"cannot resume {path}: it was measured with {flag} "
                             f"{_brief(value)}, this run has {_brief(new[flag])}; resume with "
                             "the flags of its header's command or choose another --output")


def _brief(value: object) -> str:
    if not isinstance(value, tuple):
        return str(value)
    items = [str(getattr(v, "value", v)) for v in value]
    return ",".join(items) if len(items) <= 6 else f"{items[0]}..{items[-1]} ({len(items)})"


def header_args(args) -> dict:
    """The command line as the header records it (JSON: lists, not tuples)."""
    return vars(args) | {"dtype": list(args.dtype), "group_size": list(args.group_size),
                         "layout": list(args.layout)}


def make_run_header(args, backend: str, comm, node_of_rank: list[str]) -> dict:
    per_node = Counter(node_of_rank)
    return make_header(
        command=shlex.join([os.path.basename(sys.executable), "-m", "bench", *sys.argv[1:]]),
        args=header_args(args),
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
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        backend = args.backend or default_backend()
        comm = connect(backend, cfg.timeout_s)
    except (UsageError, BackendUnavailable, ImportError) as exc:
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
    if comm.rank == 0 and status[1]:
        print(f"# resuming {path}: skipping the {len(status[1])} points already in it",
              flush=True)
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
