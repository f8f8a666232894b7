"""Launch training from a plan file with Megatron-LM or DeepSpeed, through torchrun.

    python -m tuner.launch PLAN.json --framework megatron|deepspeed [--dry-run]
        [--nodes N --gpus-per-node G] [--master-addr HOST] [--master-port PORT]
        [--script pretrain_gpt.py] [-- extra training arguments]

Run it once per node (e.g. `srun --ntasks-per-node=1 python -m tuner.launch ...` inside the
allocation). The allocation comes from the flags, else from Slurm's environment:
SLURM_JOB_NUM_NODES (SLURM_NNODES), SLURM_GPUS_ON_NODE (else SLURM_NTASKS_PER_NODE),
SLURM_JOB_NODELIST (its first host is the rendezvous host, expanded by `scontrol show
hostnames` when scontrol is there), SLURM_JOB_ID (the rendezvous id); MASTER_ADDR and
MASTER_PORT override the host and port. It must hold exactly the plan's tp*pp*dp*cp GPUs.
`--dry-run` prints the command, each argument shell-quoted, and exits 0; it writes nothing
(with deepspeed one stderr line says where the config would be written). Otherwise the
DeepSpeed config is written next to the plan (`<stem>.deepspeed.json`, atomically) once the
command is built, and the process becomes torchrun (os.execvp).

The Megatron-LM arguments, environment and DeepSpeed config are regenerated from the file's
`model` and `plan` sections, and a file whose stored `launch` entries differ is refused
(tuner.launch_check): a hand-edited plan (tp 1 -> 8) with a stale launch section would
otherwise launch something else than the file's plan says, or than its prediction priced.
Bad input (a malformed or inconsistent file, a wrong flag): one line on stderr, exit 2,
nothing written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cost_models.atomic import write_json_atomic
from cost_models.cli_args import Parser
from cost_models.specs import SpecError
from tuner.launch_check import checked_launch
from tuner.plan_io import LoadedPlan, load_plan, parse_plan
from tuner.slurm_env import SlurmEnvError, expand_hostlist

FRAMEWORKS = ("megatron", "deepspeed")
DEFAULT_SCRIPTS = {"megatron": "pretrain_gpt.py", "deepspeed": "train.py"}
DEFAULT_MASTER_PORT = 29500
MAX_PORT = 65535


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """The nodes and GPUs a job holds, and where torchrun's rendezvous runs."""

    nodes: int
    gpus_per_node: int
    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT
    job_id: str = "partune"

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def first_host(nodelist: str) -> str:
    """The first host of a Slurm nodelist: `scontrol show hostnames` if present, else parsed."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        result = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True,
                                text=True, timeout=30, check=False)
        names = result.stdout.split()
        if result.returncode == 0 and names:
            return names[0]
    try:
        return expand_hostlist(nodelist)[0]
    except SlurmEnvError as exc:
        raise SpecError(str(exc)) from None


def _env_int(env: Mapping[str, str], *names: str,
             fix: str = "pass --nodes and --gpus-per-node instead") -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise SpecError(f"{name}={value!r} is not a whole number; {fix}")
            return int(value)
    return None


def _env_port(env: Mapping[str, str]) -> int:
    fix = f"set it to a port in 1..{MAX_PORT} or pass --master-port"
    port = _env_int(env, "MASTER_PORT", fix=fix)
    if port is None:
        return DEFAULT_MASTER_PORT
    if not 1 <= port <= MAX_PORT:
        raise SpecError(f"MASTER_PORT={port} is not a TCP port; {fix}")
    return port


def allocation_from_env(env: Mapping[str, str], *, nodes: int | None = None,
                        gpus_per_node: int | None = None, master_addr: str | None = None,
                        master_port: int | None = None) -> Allocation:
    """The allocation from flags first, then Slurm's variables; SpecError if unknown."""
    nodes = nodes or _env_int(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
    gpus_per_node = gpus_per_node or _env_int(env, "SLURM_GPUS_ON_NODE", "SLURM_NTASKS_PER_NODE")
    if nodes is None or gpus_per_node is None:
        raise SpecError("no allocation: run inside a Slurm job (SLURM_JOB_NUM_NODES, "
                        "SLURM_GPUS_ON_NODE) or pass --nodes and --gpus-per-node")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    host = master_addr or env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else None)
    if host is None:
        if nodes > 1:
            raise SpecError(f"{nodes} nodes but no rendezvous host: pass --master-addr or run "
                            "inside a Slurm job (SLURM_JOB_NODELIST)")
        host = "127.0.0.1"
    port = master_port or _env_port(env)
    return Allocation(nodes=nodes, gpus_per_node=gpus_per_node, master_addr=host,
                      master_port=port, job_id=env.get("SLURM_JOB_ID", "partune"))


def check_allocation(doc: Mapping[str, object] | LoadedPlan, allocation: Allocation) -> None:
    """Raise SpecError unless the allocation holds exactly the plan's GPUs."""
    plan = (doc if isinstance(doc, LoadedPlan) else parse_plan(doc)).plan
    if allocation.num_gpus == plan.num_gpus:
        return
    raise SpecError(
        f"the allocation has {allocation.nodes} node(s) x {allocation.gpus_per_node} GPUs = "
        f"{allocation.num_gpus} GPUs but plan {plan.name} needs tp*pp*dp*cp = {plan.num_gpus}; "
        f"allocate {plan.num_gpus} GPUs or plan for {allocation.num_gpus} with `autotune "
        f"--model MODEL --gpus {allocation.num_gpus} --out PLAN.json`")


def torchrun_command(allocation: Allocation) -> list[str]:
    """torchrun with c10d rendezvous: the same command on every node of the allocation."""
    return ["torchrun", "--nnodes", str(allocation.nodes),
            "--nproc-per-node", str(allocation.gpus_per_node),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{allocation.master_addr}:{allocation.master_port}",
            "--rdzv-id", allocation.job_id]


def _script(script: str | None, framework: str) -> str:
    if script is None:
        return DEFAULT_SCRIPTS[framework]
    if not script.strip():
        raise SpecError("--script is empty; pass the training script's path, or leave --script "
                        "out for pretrain_gpt.py (megatron) or train.py (deepspeed)")
    return script


def _env_prefix(env: Mapping[str, str]) -> list[str]:
    return ["env", *(f"{key}={value}" for key, value in sorted(env.items()))] if env else []


def launch_command(doc: Mapping[str, object] | LoadedPlan, framework: str,
                   allocation: Allocation, *,
                   script: str | None = None, extra_args: Sequence[str] = (),
                   deepspeed_config_path: str | os.PathLike[str] | None = None,
                   with_megatron_args: bool = False) -> list[str]:
    """The full command one node runs for the plan in `doc` on `allocation`.

    megatron: [env VAR=...] torchrun ... pretrain_gpt.py <launch.megatron_args> <extra_args>
    deepspeed: torchrun ... train.py --deepspeed --deepspeed_config PATH <extra_args>
    (with_megatron_args adds the Megatron arguments too, for Megatron-DeepSpeed).
    The launch entries are regenerated from the plan and must match the stored ones.
    """
    if framework not in FRAMEWORKS:
        raise SpecError(f"framework {framework!r} is not one of: {', '.join(FRAMEWORKS)}")
    loaded = doc if isinstance(doc, LoadedPlan) else parse_plan(doc)
    launch = checked_launch(loaded, framework, with_megatron_args=with_megatron_args)
    check_allocation(loaded, allocation)
    script = _script(script, framework)
    if framework == "megatron":
        prefix = _env_prefix(launch["megatron_env"])
        return prefix + torchrun_command(allocation) + [
            script, *launch["megatron_args"], *extra_args]
    if deepspeed_config_path is None:
        raise SpecError("the deepspeed launch needs the path of the written DeepSpeed config")
    megatron = list(launch["megatron_args"]) if with_megatron_args else []
    return torchrun_command(allocation) + [
        script, *megatron, "--deepspeed", "--deepspeed_config", str(deepspeed_config_path),
        *extra_args]


def deepspeed_config_path_for(plan_path: str | os.PathLike[str]) -> Path:
    """Where the DeepSpeed config is written: next to the plan, `<stem>.deepspeed.json`."""
    path = Path(plan_path)
    return path.with_name(f"{path.stem}.deepspeed.json")


def build_parser(prog: str = "python -m tuner.launch") -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Launch training from a partune plan file; "
                     "arguments after -- go to the training script.")
    parser.add_argument("plan", help="plan JSON written by `autotune --model MODEL --gpus N "
                        "--out PLAN.json`")
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    parser.add_argument("--nodes", type=int, help="nodes (default: SLURM_JOB_NUM_NODES)")
    parser.add_argument("--gpus-per-node", type=int,
                        help="GPUs per node (default: SLURM_GPUS_ON_NODE)")
    parser.add_argument("--master-addr", help="rendezvous host (default: first Slurm node)")
    parser.add_argument("--master-port", type=int,
                        help=f"rendezvous port, 1..{MAX_PORT} (default: MASTER_PORT, else "
                        f"{DEFAULT_MASTER_PORT})")
    parser.add_argument("--script", help="training script (default: pretrain_gpt.py for "
                        "megatron, train.py for deepspeed)")
    parser.add_argument("--with-megatron-args", action="store_true",
                        help="deepspeed: also pass the Megatron arguments (Megatron-DeepSpeed)")
    return parser


def _split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _check_flags(args: argparse.Namespace) -> None:
    for name in ("nodes", "gpus_per_node"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SpecError(f"--{name.replace('_', '-')} must be >= 1")
    if args.master_port is not None and not 1 <= args.master_port <= MAX_PORT:
        raise SpecError(f"--master-port {args.master_port} is not a TCP port; pass a port in "
                        f"1..{MAX_PORT}, or leave it out for {DEFAULT_MASTER_PORT}")
    if args.master_addr is not None and not args.master_addr.strip():
        raise SpecError("--master-addr is empty; pass the rendezvous host, or leave it out to "
                        "use MASTER_ADDR or the first node of the Slurm job")
    if args.master_addr is not None and any(c.isspace() for c in args.master_addr):
        raise SpecError(f"--master-addr {args.master_addr!r} holds white space; pass one host "
                        "name or address")
    _script(args.script, args.framework)


def _checked_plan(args: argparse.Namespace) -> tuple[LoadedPlan, dict[str, object]]:
    """The plan file read and type-checked, and the launch block its plan gives (SpecError
    naming the file where the stored one differs)."""
    loaded = load_plan(args.plan)
    try:
        launch = checked_launch(loaded, args.framework,
                                with_megatron_args=args.with_megatron_args)
    except SpecError as error:
        raise SpecError(f"plan file {args.plan!r}: {error}") from None
    return loaded, launch


def _write_config(config: object, path: Path, dry_run: bool, prog: str) -> None:
    if dry_run:
        print(f"{prog}: dry run: nothing written; a launch writes the DeepSpeed config to "
              f"{shlex.quote(str(path))}", file=sys.stderr)
        return
    write_json_atomic(path, config)


def run(argv: Sequence[str], env: Mapping[str, str], prog: str = "python -m tuner.launch") -> int:
    """The CLI without the exit: returns the exit code (or execs torchrun)."""
    own, extra = _split_extra(argv)
    args = build_parser(prog).parse_args(own)
    _check_flags(args)
    loaded, launch = _checked_plan(args)
    allocation = allocation_from_env(env, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                     master_addr=args.master_addr, master_port=args.master_port)
    config_path = None
    if args.framework == "deepspeed":
        config_path = deepspeed_config_path_for(args.plan)
    command = launch_command(loaded, args.framework, allocation, script=args.script,
                             extra_args=extra, deepspeed_config_path=config_path,
                             with_megatron_args=args.with_megatron_args)
    if not args.dry_run and shutil.which(command[0]) is None:
        raise SpecError(f"cannot start {command[0]!r}: not on PATH; install torch (it provides "
                        "torchrun) in this environment")
    if config_path is not None:
        _write_config(launch["deepspeed_config"], config_path, args.dry_run, prog)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except OSError as error:
        raise SpecError(f"cannot start {command[0]!r}: {error.strerror}; install torch (it "
                        "provides torchrun) in this environment") from None
    return 0  # not reached


def main(argv: Sequence[str] | None = None, prog: str = "python -m tuner.launch") -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, os.environ, prog)
    except SpecError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
