"""Start the ranks of a benchmark as local processes and watch them (no torchrun needed).

    python -m bench.launch -n 4 -- all_reduce -b 8 -e 1M --backend gloo -o results/bench/x.jsonl

Each rank gets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, as torchrun would set.
bench.fabric uses the same supervisor to run ranks inside network namespaces. When a rank
fails the others get `grace_s` to report (they name the failed rank themselves), then every
remaining process group is killed; Ctrl-C and SIGTERM kill them too.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from cost_models.cli_args import Parser

EXIT_USAGE = 2


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, local_rank: int, local_world: int, master_addr: str,
             master_port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
               LOCAL_WORLD_SIZE=str(local_world), MASTER_ADDR=master_addr,
               MASTER_PORT=str(master_port), OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


class Ranks:
    """The rank processes, each in its own session so one signal reaches its whole tree."""

    def __init__(self, commands: list[list[str]], envs: list[dict[str, str]]) -> None:
        self.procs: list[subprocess.Popen] = []
        for cmd, env in zip(commands, envs):
            self.procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))

    def kill(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for p in self.procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait_s
            while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
                time.sleep(0.05)

    def supervise(self, timeout_s: float, grace_s: float = 5.0) -> tuple[int, str]:
        """(exit code, one-line reason): 0 when every rank succeeded."""
        deadline, failed_at = time.monotonic() + timeout_s, None
        while True:
            codes = [p.poll() for p in self.procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if all(c is not None for c in codes):
                break
            if bad and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                self.kill()
                break
            if time.monotonic() > deadline:
                self.kill()
                return EXIT_USAGE, f"the benchmark did not finish within {timeout_s:g} s"
            time.sleep(0.1)
        return _verdict([p.poll() for p in self.procs], bad)


def _verdict(codes: list, bad: list) -> tuple[int, str]:
    if not bad:
        return 0, ""
    first_rank, first_code = bad[0]
    lost = [r for r, c in enumerate(codes) if c not in (0, EXIT_USAGE)]
    what = f"rank(s) {', '.join(map(str, lost))} exited abnormally" if lost else \
        f"rank {first_rank} reported an error"
    return EXIT_USAGE, f"{what} (exit codes {codes}); see the ranks' messages above"


def run_ranks(commands: list[list[str]], envs: list[dict[str, str]], timeout_s: float,
              on_start: Callable[[Ranks], None] | None = None) -> tuple[int, str]:
    """Start, supervise and always clean up (also on Ctrl-C and SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    ranks = None
    try:
        ranks = Ranks(commands, envs)
        if on_start:
            on_start(ranks)
        return ranks.supervise(timeout_s)
    except KeyboardInterrupt:
        return EXIT_USAGE, "interrupted; every rank was stopped"
    finally:
        if ranks is not None:
            ranks.kill()
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.launch", description=__doc__.split("\n")[0])
    p.add_argument("-n", "--nproc", type=int, required=True, help="ranks to start")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then `python -m bench` args")
    args = p.parse_args(argv)
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if args.nproc < 1 or not bench_args:
        print("bench.launch: error: need -n >= 1 and benchmark arguments after --",
              file=sys.stderr)
        return EXIT_USAGE
    port = free_port()
    cmd = [sys.executable, "-m", "bench", *bench_args]
    envs = [rank_env(r, args.nproc, r, args.nproc, "127.0.0.1", port) for r in range(args.nproc)]
    code, reason = run_ranks([cmd] * args.nproc, envs, args.timeout)
    if code:
        print(f"bench.launch: error: {reason}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
