"""Render sbatch scripts for the benchmark, the search (one job or a job array) and the launch.

    python -m tuner.slurm_gen bench --nodes 2 --gpus-per-node 8 --backend nccl \\
        --results results/raw/mycluster/run.jsonl --profile results/clusters/mycluster.json \\
        --base-cluster dgx-h100 -o bench.sbatch -- -b 8 -e 1G
    python -m tuner.slurm_gen search-array --workers 8 --storage journal.log \\
        --study-name s1 --trials 50 --plan plan.json -o search.sbatch -- --model llama3_8b
    python -m tuner.slurm_gen launch --nodes 4 --gpus-per-node 8 --plan plan.json \\
        --framework megatron --dry-run -o launch.sbatch
    python -m tuner.slurm_gen examples slurm/     # the example scripts kept in the repo

Arguments after `--` go to the tool the job runs (bench, autotune, tuner.launch). Every value
lands in the script as one shell word (shlex.quote) or one #SBATCH argument (double-quoted and
backslash-escaped the way sbatch reads its directives), so names and paths with spaces, quotes,
`$`, backticks or `;` stay data. Control characters (newlines) are refused. `--submit` hands the
script to sbatch; `--wait S` then follows the job and names its id and log if it fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from cost_models.atomic import write_text_atomic
from cost_models.cli_args import Parser
from cost_models.specs import SpecError
from tuner.slurm_env import SlurmEnvError, wait_job

KINDS = ("bench", "search", "search-array", "launch")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The failure report: job id (and array task), exit status, failing command, log path.
PRELUDE = r"""set -euo pipefail
partune_failed() {
  local job=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}
  echo "partune: Slurm job $job failed with exit code $1 at line $2: $3; log: $partune_log" >&2
  exit "$1"
}
trap 'partune_failed $? $LINENO "$BASH_COMMAND"' ERR"""
RENDEZVOUS = r"""# torch.distributed rendezvous: rank 0 runs on the first node; one port per job.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))"""


class GenError(ValueError):
    """Bad generator input; the message is the one line the user sees."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """What every script shares: the sbatch request and the environment of the job."""

    kind: str
    job_name: str
    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    array: str | None = None
    log_dir: str = "."
    sbatch_args: tuple[str, ...] = ()
    python: str = "python3"
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    source: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()  # shell variables the body reads
    tool_args: tuple[str, ...] = ()  # arguments after `--`, for the tool the job runs
    flags: frozenset[str] = field(default_factory=frozenset)  # e.g. {"dry_run", "mpi"}


def check_text(what: str, value: str) -> str:
    """Refuse control characters: a newline would end an #SBATCH line or a shell word."""
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise GenError(f"{what} {value!r} contains a control character ({bad[0]!r}); "
                       "use a value without newlines or tabs")
    if not value:
        raise GenError(f"{what} is empty; give a value")
    return value


def directive(option: str, value: str | None = None) -> str:
    """One #SBATCH line. sbatch splits a directive on blanks, honours "..." and takes the
    character after a backslash literally (src/sbatch/opt.c, _get_argument), so the value is
    double-quoted with \\ and " escaped: it reaches sbatch as exactly one argument."""
    if value is None:
        return f"#SBATCH {option}"
    escaped = check_text(option, value).replace("\\", "\\\\").replace('"', '\\"')
    return f'#SBATCH {option}="{escaped}"'


def log_pattern(job: Job) -> str:
    """Log path for --output: `%` is doubled (sbatch expands %j, %A, %a); %j/%A_%a appended."""
    tail = "%A_%a" if job.array else "%j"
    folder = check_text("--log-dir", job.log_dir).replace("%", "%%")
    return os.path.join(folder, f"{job.kind}-{tail}.out")


def log_path_lines(job: Job) -> list[str]:
    """The same path in the job's shell, made absolute against the job's starting folder
    (where sbatch resolves a relative --output), for the failure report."""
    tail = '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' if job.array else '"$SLURM_JOB_ID"'
    folder = _word("--log-dir", job.log_dir)
    return [f"partune_log={folder}/{job.kind}-{tail}.out",
            '[[ $partune_log == /* ]] || partune_log=$PWD/$partune_log']


def directives(job: Job) -> list[str]:
    lines = [directive("--job-name", job.job_name), directive("--nodes", str(job.nodes)),
             directive("--ntasks-per-node", str(job.ntasks_per_node)),
             directive("--output", log_pattern(job))]
    optional = (("--gpus-per-node", job.gpus_per_node or None),
                ("--cpus-per-task", job.cpus_per_task), ("--time", job.time),
                ("--partition", job.partition), ("--account", job.account),
                ("--array", job.array))
    lines += [directive(opt, str(v)) for opt, v in optional if v is not None]
    lines += [directive(check_text("--sbatch-arg", a)) if "=" not in a
              else directive(*a.split("=", 1)) for a in job.sbatch_args]
    return lines


def _word(what: str, value: str) -> str:
    return shlex.quote(check_text(what, value))


def setup_lines(job: Job) -> list[str]:
    """Parameters and environment, each value one quoted shell word."""
    lines = log_path_lines(job) + [f"python={_word('--python', job.python)}"]
    lines += [f"{name}={_word(name, value)}" for name, value in job.params]
    words = " ".join(_word("argument after --", a) for a in job.tool_args)
    lines.append(f"tool_args=({words})")
    for name, value in job.env:
        if not ENV_NAME.fullmatch(name):
            raise GenError(f"--env {name}=...: {name!r} is not a variable name")
        lines.append(f"export {name}={_word('--env ' + name, value)}")
    lines += [f"source {_word('--source', path)}" for path in job.source]
    if job.workdir:
        lines.append(f"cd -- {_word('--workdir', job.workdir)}")
    return lines


def bench_body(job: Job) -> list[str]:
    """Collectives on every GPU, then (with --host-layers) megatron-core layers on one, then
    the fit of both into the profile."""
    mpi = ' --mpi="$mpi"' if "mpi" in job.flags else ""
    lines = [RENDEZVOUS, "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
             'mkdir -p -- "$(dirname -- "$results")" "$(dirname -- "$profile")"',
             f'srun --kill-on-bad-exit=1{mpi} "$python" -m bench "$collectives" '
             '--backend "$backend" -o "$results" "${tool_args[@]}"']
    fit = ('"$python" -m cost_models.fit "$results" -o "$profile" '
           '--base-cluster "$base_cluster"')
    if "host_layers" in job.flags:
        lines += ['host_layers="${results%.jsonl}-host-layers.csv"',
                  'srun --nodes=1 --ntasks=1 --gpus=1 --kill-on-bad-exit=1 "$python" -m '
                  'bench.megatron_layer --layers 1,5 --tokens 512,1024,2048,4096,8192 '
                  '-o "$host_layers"']
        fit += ' --host-layers "$host_layers"'
    return lines + [fit, 'echo "partune: results in $results, profile in $profile"']


def body(job: Job) -> list[str]:
    """The commands of each kind; they read only the quoted variables set above."""
    if job.kind == "bench":
        return bench_body(job)
    if job.kind in ("search", "search-array"):
        out = '"$plan"' if job.kind == "search" else \
            '"${plan%.json}-task${SLURM_ARRAY_TASK_ID}.json"'
        # Array workers of one study each get their own seed (a --seed among the tool
        # arguments, given later, wins): with one seed, brute force hands workers that start
        # together the same layouts in the same order, and their trials duplicate each other.
        seed = '--seed "$SLURM_ARRAY_TASK_ID" ' if job.kind == "search-array" else ""
        return ['mkdir -p -- "$(dirname -- "$plan")"',
                '"$python" -m tuner search --storage "$storage" --study-name "$study_name" '
                f'--trials "$trials" --out {out} {seed}"${{tool_args[@]}}"']
    dry = " --dry-run" if "dry_run" in job.flags else ""
    return [RENDEZVOUS,
            'srun --ntasks-per-node=1 --kill-on-bad-exit=1 "$python" -m tuner.launch "$plan" '
            f'--framework "$framework"{dry} -- "${{tool_args[@]}}"']


def render(job: Job) -> str:
    if job.kind not in KINDS:
        raise GenError(f"unknown script kind {job.kind!r}; use one of {', '.join(KINDS)}")
    head = ["#!/bin/bash", f"# {job.kind} job, written by `python -m tuner.slurm_gen` (partune)."
            " Values below are shell-quoted: edit them, not the commands."]
    return "\n".join(head + directives(job) + ["", PRELUDE, ""] + setup_lines(job) + [""]
                     + body(job)) + "\n"


def write_atomic(path: str, text: str) -> None:
    """The script written atomically, executable (cost_models.atomic)."""
    try:
        write_text_atomic(path, text, mode=0o755)
    except SpecError as error:
        raise GenError(str(error)) from None


def submit(script_path: str) -> str:
    """sbatch the script; returns the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True,
                              text=True, timeout=60)
    except FileNotFoundError:
        raise GenError("sbatch not found: --submit needs a Slurm login node") from None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise GenError(f"sbatch {script_path} failed: {reason}")
    return proc.stdout.strip().split(";")[0]


def report(job_id: str, timeout_s: float) -> int:
    """Follow the job; one line per failed job or array task, naming its id and log."""
    states = wait_job(job_id, timeout_s)
    failed = [s for s in states if not s.ok]
    for state in failed:
        print(f"error: {state.describe()}", file=sys.stderr)
    if not failed:
        print(f"Slurm job {job_id} completed; log: {states[0].stdout_path}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m tuner.slurm_gen", description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        _add_common(kinds.add_parser(kind, help=f"the {kind} batch script"))
    bench, search, array, launch = (kinds.choices[k] for k in KINDS)
    bench.add_argument("--backend", choices=("nccl", "gloo", "mpi"), default="nccl")
    bench.add_argument("--mpi", default="pmi2", help="srun --mpi plugin for --backend mpi "
                       "(pmi2 for MPICH, pmix for Open MPI)")
    bench.add_argument("--collectives", default="all", help="bench's collectives argument")
    bench.add_argument("--host-layers", action="store_true",
                       help="also time megatron-core layers on one GPU (python -m "
                            "bench.megatron_layer; needs megatron-core) and fit the nodes' "
                            "host seconds per operator into the profile")
    for name in ("--results", "--profile", "--base-cluster"):
        bench.add_argument(name, required=True)
    for sub in (search, array):
        for name in ("--storage", "--study-name", "--plan"):
            sub.add_argument(name, required=True)
        sub.add_argument("--trials", type=int, required=True, help="trials per worker")
    array.add_argument("--workers", type=int, required=True, help="array tasks")
    array.add_argument("--max-parallel", type=int, help="array tasks running at once")
    launch.add_argument("--plan", required=True)
    launch.add_argument("--framework", choices=("megatron", "deepspeed"), required=True)
    launch.add_argument("--dry-run", action="store_true", help="print the command line only")
    examples = kinds.add_parser("examples", help="write the example scripts to FOLDER")
    examples.add_argument("folder")
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="script to write (default: stdout)")
    p.add_argument("--job-name")
    for name in ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task"):
        p.add_argument(name, type=int)
    for name in ("--time", "--partition", "--account", "--workdir"):
        p.add_argument(name)
    p.add_argument("--log-dir", default="slurm-logs", help="created if missing")
    p.add_argument("--python", default=sys.executable, help="interpreter the job runs")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--source", action="append", default=[], metavar="FILE",
                   help="file the job sources first (a venv's bin/activate)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="OPT[=VALUE]",
                   help="another #SBATCH option, e.g. --exclusive or --constraint=h100")
    p.add_argument("--submit", action="store_true", help="sbatch the written script")
    p.add_argument("--wait", type=float, metavar="S", help="with --submit: follow the job")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    for name in ("nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task", "trials",
                 "workers", "max_parallel"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "gpus_per_node" else 1):
            raise GenError(f"--{name.replace('_', '-')} {value} is out of range")
    if getattr(args, "submit", False) and not args.output:
        raise GenError("--submit needs -o FILE: sbatch reads the script from a file")
    if getattr(args, "wait", None) is not None and not args.submit:
        raise GenError("--wait follows a submitted job: add --submit")
    return args, argv[cut + 1:]


def _params(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    names = {"bench": ("backend", "mpi", "collectives", "results", "profile", "base_cluster"),
             "launch": ("plan", "framework")}.get(args.kind,
                                                  ("storage", "study_name", "trials", "plan"))
    return tuple((n, str(getattr(args, n))) for n in names)


def build_job(args: argparse.Namespace, tool_args: Sequence[str]) -> Job:
    gpus = args.gpus_per_node or 0
    tasks = args.ntasks_per_node or (gpus if args.kind == "bench" and gpus else 1)
    if args.kind == "launch" and tasks != 1:
        raise GenError("launch runs one torchrun per node: drop --ntasks-per-node")
    env = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise GenError(f"--env {item!r}: write NAME=VALUE")
        env.append((name, value))
    array = None
    if args.kind == "search-array":
        array = f"0-{args.workers - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    flags = {"mpi"} if getattr(args, "backend", None) == "mpi" else set()
    flags |= {"dry_run"} if getattr(args, "dry_run", False) else set()
    flags |= {"host_layers"} if getattr(args, "host_layers", False) else set()
    return Job(kind=args.kind, job_name=args.job_name or f"partune-{args.kind}",
               nodes=args.nodes or 1, ntasks_per_node=tasks, gpus_per_node=gpus,
               cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition,
               account=args.account, array=array, log_dir=args.log_dir,
               sbatch_args=tuple(args.sbatch_arg), python=args.python, workdir=args.workdir,
               env=tuple(env), source=tuple(args.source), params=_params(args),
               tool_args=tuple(tool_args), flags=frozenset(flags))


# The scripts kept in slurm/: rendered from these arguments (tests check they are current).
EXAMPLES = {
    "bench.sbatch": ["bench", "--nodes", "2", "--gpus-per-node", "8", "--backend", "nccl",
                     "--results", "results/raw/mycluster/bench.jsonl",
                     "--profile", "results/clusters/mycluster.json",
                     "--base-cluster", "dgx-h100", "--", "-b", "8", "-e", "1G"],
    "search.sbatch": ["search", "--cpus-per-task", "2",
                      "--storage", "journal:results/search.log",
                      "--study-name", "llama3-8b-64", "--trials", "200",
                      "--plan", "results/plans/llama3-8b-64.json",
                      "--", "--model", "llama3-8b", "--gpus", "64"],
    "search-array.sbatch": ["search-array", "--workers", "8",
                            "--storage", "journal:results/search.log",
                            "--study-name", "llama3-8b-64", "--trials", "50",
                            "--plan", "results/plans/llama3-8b-64.json",
                            "--", "--model", "llama3-8b", "--gpus", "64"],
    "launch.sbatch": ["launch", "--nodes", "8", "--gpus-per-node", "8",
                      "--plan", "results/plans/llama3-8b-64.json", "--framework", "megatron"],
}


def example_scripts() -> dict[str, str]:
    common = ["--python", "python3", "--log-dir", "."]
    out = {}
    for name, argv in EXAMPLES.items():
        cut = argv.index("--") if "--" in argv else len(argv)
        args, tool_args = parse_args(argv[:1] + common + argv[1:cut] + argv[cut:])
        out[name] = render(build_job(args, tool_args))
    return out


def write_examples(folder: str) -> int:
    for name, text in example_scripts().items():
        write_atomic(os.path.join(folder, name), text)
        print(os.path.join(folder, name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, tool_args = parse_args(argv)
        if args.kind == "examples":
            return write_examples(args.folder)
        text = render(build_job(args, tool_args))
        if args.output in (None, "-"):
            sys.stdout.write(text)
            return 0
        os.makedirs(args.log_dir, exist_ok=True)
        write_atomic(args.output, text)
        if not args.submit:
            return 0
        job_id = submit(args.output)
        print(f"submitted Slurm job {job_id}")
        return report(job_id, args.wait) if args.wait else 0
    except (GenError, SlurmEnvError, TimeoutError, OSError) as error:
        print(f"python -m tuner.slurm_gen: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
