"""The shape of the Slurm allocation this process runs in, and the state of a Slurm job.

Inside a job (SLURM_JOB_ID set), `current_allocation()` reads the nodes, the node list and the
GPUs per node from Slurm's own variables (sbatch/salloc/srun output environment, see `man
sbatch`, "OUTPUT ENVIRONMENT VARIABLES"), falling back to `scontrol show node` for the GPU
count when the job did not ask for GPUs but holds whole GPU nodes. Outside a job it returns
None. `job_state()` and `wait_job()` read a job's state, exit code and log paths from
`scontrol show job` (no accounting database, so no sacct). Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

SCONTROL_TIMEOUT_S = 20
# States after which a job never runs again (man squeue, "JOB STATE CODES").
TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED",
})


class SlurmEnvError(ValueError):
    """Slurm's environment or output is malformed; the message is one actionable line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """The nodes and GPUs a Slurm job holds."""

    job_id: str
    num_nodes: int
    gpus_per_node: int  # 0: the job holds no GPUs
    nodes: tuple[str, ...]  # expanded host names, in Slurm's order; nodes[0] hosts rank 0
    tasks: int | None = None  # SLURM_NTASKS when the job set a task count
    array_task_id: int | None = None  # SLURM_ARRAY_TASK_ID inside a job array

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise SlurmEnvError(f"job {self.job_id}: {self.num_nodes} nodes and "
                                f"{self.gpus_per_node} GPUs per node is not an allocation")
        if len(self.nodes) != self.num_nodes:
            raise SlurmEnvError(f"job {self.job_id}: SLURM_JOB_NUM_NODES={self.num_nodes} but "
                                f"the node list names {len(self.nodes)} hosts")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def master_addr(self) -> str:
        return self.nodes[0]


def expand_hostlist(hostlist: str) -> tuple[str, ...]:
    """Expand a Slurm host list: "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1.

    Same grammar as `scontrol show hostnames`: comma-separated names, each a prefix and
    bracketed ranges (several brackets multiply out); "lo-hi" keeps the zero padding of lo.
    """
    hosts: list[str] = []
    for name in _split_top_level(hostlist.strip()):
        parts = re.split(r"\[([^\[\]]*)\]", name)
        if "[" in "".join(parts[::2]) or "]" in "".join(parts[::2]) or (
                len(parts) > 1 and parts[-1]):
            raise SlurmEnvError(f"invalid Slurm host list {hostlist!r}: text after a "
                                "']' or unbalanced brackets")
        expanded = [parts[0]]
        for ranges, text in zip(parts[1::2], parts[2::2]):
            expanded = [h + n + text for h in expanded for n in _expand_ranges(ranges, hostlist)]
        hosts.extend(expanded)
    if not hosts or any(not h for h in hosts):
        raise SlurmEnvError(f"invalid Slurm host list {hostlist!r}: an empty host name")
    return tuple(hosts)


def _split_top_level(hostlist: str) -> list[str]:
    """Split on commas outside brackets."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            names.append(hostlist[start:i])
            start = i + 1
    names.append(hostlist[start:])
    return names


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    out: list[str] = []
    for part in ranges.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise SlurmEnvError(f"invalid Slurm host list {hostlist!r}: range {part!r} "
                                "is not N or LO-HI with LO <= HI")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        out.extend(str(n).zfill(len(m[1])) for n in range(lo, hi + 1))
    return out


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise SlurmEnvError(f"{name}={text!r} is not a non-negative integer; is this a "
                            "Slurm job environment?")
    return int(text)


def _gpu_count(spec: str) -> int | None:
    """GPUs in a GRES-style count: "4", "gpu:4", "gpu:h100:4", "gpu:h100:4(S:0-1)"."""
    first = spec.split(",")[0].split("(")[0]
    tail = first.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def gpus_from_env(env: Mapping[str, str]) -> int | None:
    """GPUs per node from the job's own variables; None when the job asked for none."""
    on_node = _positive_int(env, "SLURM_GPUS_ON_NODE")
    if on_node is not None:
        return on_node
    for name in ("SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        text = env.get(name, "")
        if not text:
            continue
        count = len(text.split(",")) if name != "SLURM_GPUS_PER_NODE" else _gpu_count(text)
        if count is None:
            raise SlurmEnvError(f"{name}={text!r}: cannot read a GPU count from it")
        return count
    return None


def gpus_from_scontrol(node: str) -> int:
    """GPUs a node has according to `scontrol show node` (its Gres=gpu:...), 0 if none."""
    out = _scontrol("show", "node", "-o", node)
    m = re.search(r"\bGres=(\S+)", out)
    if not m or m[1] == "(null)":
        return 0
    gpus = [_gpu_count(g) for g in m[1].split(",") if g.startswith("gpu")]
    return sum(g for g in gpus if g is not None)


def current_allocation(env: Mapping[str, str] | None = None, *,
                       ask_scontrol: bool = True) -> Allocation | None:
    """The allocation this process runs in, or None outside a Slurm job."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    hostlist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not hostlist:
        raise SlurmEnvError(f"job {job_id}: SLURM_JOB_NODELIST is not set; run inside an "
                            "sbatch/salloc allocation or unset SLURM_JOB_ID")
    nodes = expand_hostlist(hostlist)
    num_nodes = (_positive_int(env, "SLURM_JOB_NUM_NODES") or _positive_int(env, "SLURM_NNODES")
                 or len(nodes))
    gpus = gpus_from_env(env)
    if gpus is None:
        gpus = gpus_from_scontrol(nodes[0]) if ask_scontrol and shutil.which("scontrol") else 0
    return Allocation(job_id=job_id, num_nodes=num_nodes, gpus_per_node=gpus, nodes=nodes,
                      tasks=_positive_int(env, "SLURM_NTASKS"),
                      array_task_id=_positive_int(env, "SLURM_ARRAY_TASK_ID"))


# --- job state (scontrol show job) -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JobState:
    """One job (or one array task) as `scontrol show job` reports it."""

    job_id: str  # "12", or "12_3" for task 3 of array job 12
    name: str
    state: str  # e.g. PENDING, RUNNING, COMPLETED, FAILED
    exit_code: int  # the batch script's exit status (ExitCode=N:signal)
    signal: int
    stdout_path: str
    stderr_path: str

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0

    def describe(self) -> str:
        """One line for a user: which job, how it ended, where its log is."""
        how = f"exit code {self.exit_code}" + (f", signal {self.signal}" if self.signal else "")
        return f"Slurm job {self.job_id} ({self.name}) {self.state} with {how}; " \
               f"log: {self.stdout_path}"


def _scontrol(*args: str) -> str:
    try:
        proc = subprocess.run(["scontrol", *args], capture_output=True, text=True,
                              timeout=SCONTROL_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmEnvError("scontrol not found: run on a Slurm login or compute node") from None
    except subprocess.TimeoutExpired:
        raise SlurmEnvError(f"scontrol {' '.join(args)} took over {SCONTROL_TIMEOUT_S} s: "
                            "is slurmctld up? (scontrol ping)") from None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SlurmEnvError(f"scontrol {' '.join(args)} failed: {reason}")
    return proc.stdout


def _record_fields(record: list[str]) -> dict[str, str]:
    """Fields of one multi-line `scontrol show job` record.

    Values with spaces are safe: JobName ends its (first) line, and paths (StdOut, StdErr,
    WorkDir, Command) each fill a line of their own; the other values hold no spaces.
    """
    first, _, name = record[0].partition(" JobName=")
    fields = dict(tok.split("=", 1) for tok in first.split() if "=" in tok)
    fields["JobName"] = name
    for line in record[1:]:
        key, sep, value = line.strip().partition("=")
        if sep and key in ("StdOut", "StdErr", "StdIn", "WorkDir", "Command"):
            fields[key] = value
        elif sep:
            fields.update(tok.split("=", 1) for tok in line.split() if "=" in tok)
    return fields


def parse_job_records(text: str) -> list[JobState]:
    """Parse `scontrol show job` output: one record per job, one per array task."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("JobId="):
            records.append([line])
        elif records and line.strip():
            records[-1].append(line)
    jobs = []
    for record in records:
        f = _record_fields(record)
        job_id = f["JobId"]
        if f.get("ArrayTaskId") and f.get("ArrayJobId"):
            job_id = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
        code, _, sig = f.get("ExitCode", "0:0").partition(":")
        jobs.append(JobState(job_id=job_id, name=f["JobName"], state=f.get("JobState", "?"),
                             exit_code=int(code or 0), signal=int(sig or 0),
                             stdout_path=f.get("StdOut", ""), stderr_path=f.get("StdErr", "")))
    return jobs


def job_states(job_id: str) -> list[JobState]:
    """Every record of a job (a job array gives one per task)."""
    return parse_job_records(_scontrol("show", "job", str(job_id)))


def wait_job(job_id: str, timeout_s: float, *, poll_s: float = 0.5) -> list[JobState]:
    """Poll until every record of the job is in a terminal state; bounded by timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = job_states(job_id)
        if states and all(s.done for s in states):
            return states
        if time.monotonic() >= deadline:
            now = ", ".join(f"{s.job_id}={s.state}" for s in states) or "no record"
            raise TimeoutError(f"Slurm job {job_id} not finished after {timeout_s:g} s "
                               f"({now}); see squeue -j {job_id}")
        time.sleep(poll_s)
