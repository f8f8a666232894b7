"""The vocabulary shared by the benchmark suite and the cost models.

Standard library only: the cost models and the tuner import this module, and planning must
work on a laptop without torch or mpi4py.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from bench.groups import LAYOUTS
from cost_models.json_text import DuplicateKey, unique_keys


class Collective(StrEnum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    BROADCAST = "broadcast"
    SEND_RECV = "send_recv"


# Element sizes of the dtypes the suite measures (torch names).
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "int32": 4,
               "int64": 8}


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


class BadRecordError(ResultsError):
    """A results file with a corrupt record before its last line (garbage, a JSON value that
    is not a record, a missing field or a value of the wrong type or range): not what an
    interrupted run leaves, so the file must be repaired or measured again."""


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
OPTIONAL_FIELDS = ("calls_per_iter", "rank_reduce")  # absent from older files: defaults
# What a measurement's fields may hold: integers with their least value, times (finite and
# > 0 microseconds: a collective takes time), bandwidths (finite, >= 0: busbw is 0 for one
# rank) and names (from the suite's vocabulary).
INT_MINIMUM = {"size_bytes": 1, "count": 1, "group_size": 1, "num_groups": 1,
               "ranks_per_node": 1, "nodes": 1, "groups_per_node": 1, "warmup_iters": 0,
               "iters": 1, "calls_per_iter": 1, "wrong": 0}
INT_LIMIT = 2 ** 63  # integers stay below (a 64-bit signed integer, as pandas reads them)
TIME_FIELDS = ("time_us_mean", "time_us_min", "time_us_max", "time_us_p50", "time_us_p99")
NAME_CHOICES = {"collective": tuple(c.value for c in Collective), "dtype": tuple(DTYPE_BYTES),
                "layout": LAYOUTS, "rank_reduce": (RANK_REDUCE,)}


def field_problem(name: str, value: object) -> str | None:
    """What is wrong with `value` for the measurement field `name` (None: nothing)."""
    if name in NAME_CHOICES:
        choices = NAME_CHOICES[name]
        return None if value in choices else f"must be one of {', '.join(choices)}"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if name in INT_MINIMUM:
        least = INT_MINIMUM[name]
        if not (is_number and isinstance(value, int) and value >= least):
            return f"must be an integer >= {least}"
        return None if value < INT_LIMIT else "is out of range (must be below 2**63)"
    if not (is_number and math.isfinite(value)):
        return "must be a finite number"
    if name in TIME_FIELDS:
        return None if value > 0 else "must be > 0 (microseconds)"
    return None if value >= 0 else "must be >= 0"


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def measurement_from_record(obj: dict) -> Measurement:
    """The Measurement of a record; ValueError naming the first missing or bad field."""
    for name in MEASUREMENT_FIELDS:
        if name not in obj:
            if name in OPTIONAL_FIELDS:
                continue
            raise ValueError(f"the measurement lacks the field {name!r}")
        problem = field_problem(name, obj[name])
        if problem:
            raise ValueError(f"field {name!r} {problem}, got {_short(obj[name])}")
    measurement = Measurement(**{k: obj[k] for k in MEASUREMENT_FIELDS if k in obj})
    try:
        problem = consistency_problem(measurement)
    except OverflowError:
        problem = "a value is too large to compute its bandwidths with"
    if problem:
        raise ValueError(problem)
    return measurement


# Slack for bandwidths a converter may have rounded (nccl-tests prints two decimals); the
# suite writes them unrounded. Times compare with float rounding only.
BANDWIDTH_RTOL = 0.01
ORDER_RTOL = 1e-9


def consistency_problem(m: Measurement) -> str | None:
    """What in a record of well-formed fields contradicts itself (None: nothing): the buffer
    is `count` elements of `dtype`, the time statistics are in order, and algbw and busbw
    follow from size_bytes and time_us_mean (nccl-tests definitions, algbw_gbps and
    busbw_gbps above). A record failing this was edited or produced by something else."""
    problem = placement_problem(m)
    if problem:
        return problem
    element_bytes = DTYPE_BYTES[m.dtype]
    if m.size_bytes != m.count * element_bytes:
        return (f"size_bytes {m.size_bytes} is not count {m.count} x {element_bytes} bytes "
                f"of {m.dtype}")
    ordered = (_at_most(m.time_us_min, m.time_us_p50, m.time_us_p99, m.time_us_max)
               and _at_most(m.time_us_min, m.time_us_mean, m.time_us_max))
    if not ordered:
        return (f"times out of order (min {m.time_us_min:g}, p50 {m.time_us_p50:g}, "
                f"p99 {m.time_us_p99:g}, max {m.time_us_max:g}, mean {m.time_us_mean:g} us; "
                "need min <= p50 <= p99 <= max and min <= mean <= max)")
    time_s = m.time_us_mean / 1e6
    expected = {"algbw_gbps": algbw_gbps(m.size_bytes, time_s),
                "busbw_gbps": busbw_gbps(m.collective, m.size_bytes, time_s, m.group_size)}
    for name, want in expected.items():
        got = getattr(m, name)
        if not math.isclose(got, want, rel_tol=BANDWIDTH_RTOL, abs_tol=1e-12):
            return (f"{name} {got:.4g} does not follow from size_bytes / time_us_mean "
                    f"({want:.4g}, nccl-tests definitions)")
    return None


def placement_problem(m: Measurement) -> str | None:
    """What in a record's group placement cannot be (None: nothing): a group of n ranks on
    `nodes` nodes, at most `ranks_per_node` on one, has ranks_per_node <= n <= nodes x
    ranks_per_node, and every other node it spans holds at least one of its ranks; no more
    groups share a node than run."""
    if m.ranks_per_node > m.group_size:
        return f"ranks_per_node {m.ranks_per_node} is more than group_size {m.group_size}"
    if m.nodes * m.ranks_per_node < m.group_size:
        return (f"nodes {m.nodes} x ranks_per_node {m.ranks_per_node} cannot hold a group of "
                f"{m.group_size} ranks")
    if m.ranks_per_node + m.nodes - 1 > m.group_size:
        return (f"a group of {m.group_size} ranks with {m.ranks_per_node} on one node cannot "
                f"span {m.nodes} nodes")
    if m.groups_per_node > m.num_groups:
        return (f"groups_per_node {m.groups_per_node} is more than the {m.num_groups} "
                "running group(s)")
    return None


def _at_most(*values: float) -> bool:
    return all(a <= b * (1 + ORDER_RTOL) for a, b in zip(values, values[1:]))


def make_header(**fields: object) -> dict:
    """The first line of a results file: schema version plus what describes the run."""
    return {"kind": "header", "schema": SCHEMA_VERSION, **fields}


class ResultsWriter:
    """Appends records to a results file; writes the header when the file is new."""

    def __init__(self, path: str | os.PathLike, header: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _end_last_line(self.path)
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


def _end_last_line(path: Path) -> None:
    """Before appending to a file whose last line has no newline: a line cut off by a run
    killed mid-write (not valid JSON) is removed, so its point is measured again and no
    garbage is left inside the file; a complete line gets its newline."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:
            f.truncate(start)
            return
        f.write(b"\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    """A parsed results file: its header, its measurements and what was wrong with it."""

    path: str
    header: dict
    measurements: tuple[Measurement, ...]
    problems: tuple[str, ...]  # one line each: skipped lines, truncation, recorded errors


def read_results(path: str | os.PathLike) -> Results:
    """Parse one results file. Raises ResultsError when it has no usable header, and
    BadRecordError (one line: file, line number, what is wrong, how to fix it) when a record
    is corrupt: garbage, a JSON value that is not an object, an unknown kind, a second header,
    a missing field or a value of the wrong type or range.

    The one defect tolerated is what a run killed mid-write leaves: a last line cut off (no
    newline, not valid JSON). It is skipped and named in `problems`, so the measurements
    before it stay usable and `--resume` measures its point again. Error records (a run that
    stopped) are named in `problems` too.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from None
    header = _parse_header(path, lines[0] if lines else "")
    measurements, problems = [], []
    parsed = [_parse_line(path, number, line, header)
              for number, line in enumerate(lines[1:-1], start=2) if line.strip()]
    if len(lines) > 1 and lines[-1].strip():
        parsed.append(_parse_last_line(path, len(lines), lines[-1], header))
    for item, problem in parsed:
        if problem:
            problems.append(problem)
        if item is not None:
            measurements.append(item)
    return Results(path=path, header=header, measurements=tuple(measurements),
                   problems=tuple(problems))


def _parse_header(path: str, line: str) -> dict:
    try:
        header = json.loads(line, object_pairs_hook=unique_keys)
    except DuplicateKey as error:
        raise ResultsError(error.line(f"{path}:1", "the header must say each thing once; "
                                      "produce the file with `partune-bench`")) from None
    except (RecursionError, ValueError):  # JSONDecodeError, nesting or digits beyond limits
        raise ResultsError(f"{path}:1: not a bench results file (line 1 is not a JSON "
                           "header); produce it with `partune-bench`") from None
    if not isinstance(header, dict) or header.get("kind") != "header":
        raise ResultsError(f"{path}:1: not a bench results file (no header record)")
    if header.get("schema") != SCHEMA_VERSION:
        raise ResultsError(f"{path}:1: schema {header.get('schema')!r} is not the supported "
                           f"{SCHEMA_VERSION}; re-run the benchmark with this version")
    problem = header_problem(header)
    if problem:
        raise BadRecordError(f"{path}:1: header {problem}; repair the header or measure again")
    return header


HEADER_BACKENDS = ("nccl", "gloo", "mpi")


def header_problem(header: dict) -> str | None:
    """What is inconsistent in a header's world description, or None (fields may be absent
    in files of older versions): the backend is one the suite runs, the counts are integers
    >= 1 and nodes x ranks per node is the world."""
    backend = header.get("backend")
    if backend is not None and backend not in HEADER_BACKENDS:
        return f"backend {_short(backend)} is not one of {', '.join(HEADER_BACKENDS)}"
    counts = {}
    for name in ("world_size", "nodes", "ranks_per_node"):
        value = header.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"field {name!r} must be an integer >= 1, got {_short(value)}"
        counts[name] = value
    if len(counts) == 3 and counts["nodes"] * counts["ranks_per_node"] != counts["world_size"]:
        return (f"nodes {counts['nodes']} x ranks_per_node {counts['ranks_per_node']} is not "
                f"world_size {counts['world_size']}")
    return None


FIX_LINE = "repair or delete that line, or measure again"
JSON_NAMES = {list: "a JSON array", type(None): "JSON null", str: "a JSON string",
              bool: "a JSON boolean", int: "a JSON number", float: "a JSON number"}


def _parse_last_line(path: str, number: int, line: str, header: dict):
    """The file's last line when no newline ends it: cut off by a run killed mid-write
    (skipped and named) or complete (parsed, and named)."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return None, f"{path}:{number}: last line truncated (run interrupted?); skipped it"
    except (RecursionError, ValueError):
        pass  # no record either: _parse_line says what is wrong
    item, problem = _parse_line(path, number, line, header)
    return item, problem or f"{path}:{number}: last line has no newline (run interrupted?)"


def _parse_line(path: str, number: int, line: str, header: dict):
    """(measurement or None, problem or None) of line `number`; BadRecordError if corrupt
    or if it contradicts the run's `header`."""
    where = f"{path}:{number}"
    try:
        obj = json.loads(line, object_pairs_hook=unique_keys)
    except DuplicateKey as error:
        raise BadRecordError(error.line(where, FIX_LINE)) from None
    except json.JSONDecodeError:
        raise BadRecordError(f"{where}: not valid JSON; {FIX_LINE}") from None
    except (RecursionError, ValueError):  # Python's own limits on nesting and digits
        raise BadRecordError(f"{where}: nested too deeply or a number too long to read; "
                             f"{FIX_LINE}") from None
    if not isinstance(obj, dict):
        what = JSON_NAMES.get(type(obj), "a JSON value")
        raise BadRecordError(f"{where}: {what}, not a record (a JSON object); {FIX_LINE}")
    kind = obj.get("kind")
    if kind == "error":
        return None, f"{where}: the run stopped: {obj.get('message')}"
    if kind == "resume":
        return None, None
    if kind == "header":
        raise BadRecordError(f"{where}: a second header (two runs joined in one file?); "
                             "split it into one file per run")
    if kind != "measurement":
        raise BadRecordError(f"{where}: unknown record kind {kind!r}; {FIX_LINE}")
    try:
        measurement = measurement_from_record(obj)
    except ValueError as exc:
        raise BadRecordError(f"{where}: {exc}; {FIX_LINE}") from None
    problem = header_contradiction(measurement, header)
    if problem:
        raise BadRecordError(f"{where}: {problem}; repair the header or that line, or "
                             "measure again")
    return measurement, None


def header_contradiction(m: Measurement, header: dict) -> str | None:
    """What in a record contradicts the world its header describes (None: nothing, or the
    header of an older version does not say): its groups must fit the world, its group
    span no more nodes, and put no more ranks on one node, than the run had."""
    world, nodes, per_node = (header.get(k) for k in ("world_size", "nodes", "ranks_per_node"))
    if world is not None and m.group_size * m.num_groups > world:
        return (f"{m.num_groups} running group(s) of {m.group_size} ranks do not fit the "
                f"header's world of {world}")
    if nodes is not None and m.nodes > nodes:
        return f"the record's group spans {m.nodes} nodes, more than the header's {nodes}"
    if per_node is not None and m.ranks_per_node > per_node:
        return (f"the record puts {m.ranks_per_node} ranks on one node, more than the "
                f"header's ranks_per_node {per_node}")
    return None
