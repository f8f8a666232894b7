"""The vocabulary shared by the benchmark suite and the cost models.

Standard library only: the cost models and the tuner import this module, and planning must
work on a laptop without torch or mpi4py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path


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


# ---------------------------------------------------------------------------------------------
# Results files: JSON lines, line 1 a header, then one Measurement per line, appended and
# flushed as each one is made, so a crashed run keeps what it measured.
# ---------------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
RANK_REDUCE = "max"  # per iteration the slowest rank's time, then statistics over iterations


class ResultsError(ValueError):
    """A results file cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One (collective, size, dtype, group layout) point, reduced over ranks and iterations.

    Times are per operation in microseconds. Each iteration's time is the maximum over all
    ranks of all concurrently running groups (`rank_reduce="max"`: the slowest rank is what
    training feels); mean/min/max/p50/p99 are then taken over the timed iterations.
    """

    collective: Collective
    size_bytes: int  # nccl-tests "size": the larger of send and receive buffer, bytes
    count: int  # elements per rank buffer, nccl-tests "count"
    dtype: str
    group_size: int
    layout: str  # "world", "consecutive" or "strided"
    num_groups: int  # groups of `group_size` running the collective at the same time
    ranks_per_node: int  # most members of one group on one node
    nodes: int  # nodes one group spans
    groups_per_node: int  # most running groups with a member on one node
    warmup_iters: int
    iters: int  # timed samples
    calls_per_iter: int = 1  # back-to-back calls per timed sample (times are per call)
    time_us_mean: float
    time_us_min: float
    time_us_max: float
    time_us_p50: float
    time_us_p99: float
    rank_reduce: str = RANK_REDUCE
    algbw_gbps: float
    busbw_gbps: float
    wrong: int  # elements that differ from the expected result (0: correct)

    def __post_init__(self) -> None:
        object.__setattr__(self, "collective", Collective(self.collective))

    def key(self) -> tuple:
        """Identity of the point in a sweep: what --resume skips when it is already there."""
        return (self.collective.value, self.size_bytes, self.dtype, self.group_size,
                self.layout, self.num_groups)


MEASUREMENT_FIELDS = tuple(Measurement.__dataclass_fields__)


def make_header(**fields: object) -> dict:
    """The first line of a results file: schema version plus what describes the run."""
    return {"kind": "header", "schema": SCHEMA_VERSION, **fields}


class ResultsWriter:
    """Appends records to a results file; writes the header when the file is new."""

    def __init__(self, path: str | os.PathLike, header: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", encoding="utf-8")
        if new:
            self._write_line(header)
        else:
            self._write_line({"kind": "resume", "time": header.get("start_time", "")})

    def _write_line(self, obj: dict) -> None:
        self._file.write(json.dumps(obj, sort_keys=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, m: Measurement) -> None:
        self._write_line({"kind": "measurement", **asdict(m)})

    def write_error(self, message: str, rank: int | None) -> None:
        self._write_line({"kind": "error", "rank": rank, "message": message})

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    """A parsed results file: its header, its measurements and what was wrong with it."""

    path: str
    header: dict
    measurements: tuple[Measurement, ...]
    problems: tuple[str, ...]  # one line each: skipped lines, truncation, recorded errors


def _parse_measurement(obj: dict) -> Measurement:
    fields = {k: obj[k] for k in MEASUREMENT_FIELDS if k in obj}
    return Measurement(**fields)


def read_results(path: str | os.PathLike) -> Results:
    """Parse one results file. Raises ResultsError when it has no usable header.

    Bad or truncated measurement lines do not raise: they are skipped and named in
    `problems`, so a run that crashed mid-line still yields what it measured before.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from None
    header = _parse_header(path, lines[0] if lines else "")
    measurements, problems = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        item, problem = _parse_line(path, number, line, last=number == len(lines))
        if problem:
            problems.append(problem)
        elif item is not None:
            measurements.append(item)
    if lines[-1].strip():
        problems.append(f"{path}:{len(lines)}: last line has no newline (run interrupted?)")
    return Results(path=path, header=header, measurements=tuple(measurements),
                   problems=tuple(problems))


def _parse_header(path: str, line: str) -> dict:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        raise ResultsError(f"{path}:1: not a bench results file (line 1 is not a JSON "
                           "header); produce it with `python -m bench`") from None
    if not isinstance(header, dict) or header.get("kind") != "header":
        raise ResultsError(f"{path}:1: not a bench results file (no header record)")
    if header.get("schema") != SCHEMA_VERSION:
        raise ResultsError(f"{path}:1: schema {header.get('schema')!r} is not the supported "
                           f"{SCHEMA_VERSION}; re-run the benchmark with this version")
    return header


def _parse_line(path: str, number: int, line: str, last: bool):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None, f"{path}:{number}: not valid JSON ({'truncated' if last else 'corrupt'})"
    if not isinstance(obj, dict):
        return None, f"{path}:{number}: not a JSON object"
    kind = obj.get("kind")
    if kind == "error":
        return None, f"{path}:{number}: the run stopped: {obj.get('message')}"
    if kind != "measurement":
        return None, None
    try:
        return _parse_measurement(obj), None
    except (TypeError, ValueError) as exc:
        return None, f"{path}:{number}: bad measurement: {exc}"
