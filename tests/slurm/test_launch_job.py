"""Training launch from a plan file as a Slurm job, with --dry-run: the job prints the full
command line built for its allocation (one torchrun per node, rendezvous on the first node)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tuner import slurm_gen

pytestmark = pytest.mark.slurm

GPUS = 4


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory):
    """A real plan for 4 GPUs, written by a single-process `autotune` search."""
    path = tmp_path_factory.mktemp("plan") / "llama3-8b-4.json"
    proc = subprocess.run([sys.executable, "-m", "tuner", "search", "--model", "llama3-8b",
                           "--gpus", str(GPUS), "--no-alternatives", "--quiet",
                           "--out", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return path


def _dry_run(slurm, tmp_path, plan_path, framework: str, *tool_args: str) -> tuple[str, list]:
    script = tmp_path / f"launch-{framework}.sbatch"
    code = slurm_gen.main(["launch", "--nodes", "1", "--gpus-per-node", str(GPUS),
                           "--plan", str(plan_path), "--framework", framework, "--dry-run",
                           "--job-name", f"train {framework}", "--log-dir", str(tmp_path),
                           "-o", str(script), "--", *tool_args])
    assert code == 0
    (state,) = slurm.run(str(script), cwd=tmp_path)
    log = (tmp_path / f"launch-{state.job_id}.out").read_text()
    assert state.ok, log
    lines = [x for x in log.splitlines() if "torchrun" in x]
    assert len(lines) == 1, log  # one node, one torchrun command
    return state.job_id, shlex.split(lines[0])


def _torchrun(job_id: str) -> list[str]:
    return ["torchrun", "--nnodes", "1", "--nproc-per-node", str(GPUS),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"localhost:{20000 + int(job_id) % 20000}",  # one port per job
            "--rdzv-id", job_id]


def test_megatron_dry_run_prints_the_command_for_the_allocation(gpu_slurm, tmp_path, plan_path):
    job_id, argv = _dry_run(gpu_slurm, tmp_path, plan_path, "megatron", "--data-path", "my data")
    launch = json.loads(plan_path.read_text())["launch"]
    env = [f"{k}={v}" for k, v in sorted((launch.get("megatron_env") or {}).items())]
    prefix = ["env", *env] if env else []
    assert argv == prefix + _torchrun(job_id) + [
        "pretrain_gpt.py", *launch["megatron_args"], "--data-path", "my data"]


def test_deepspeed_dry_run_points_at_its_config_and_writes_nothing(gpu_slurm, tmp_path,
                                                                   plan_path):
    job_id, argv = _dry_run(gpu_slurm, tmp_path, plan_path, "deepspeed")
    config = plan_path.with_name(f"{plan_path.stem}.deepspeed.json")
    assert argv == _torchrun(job_id) + ["train.py", "--deepspeed", "--deepspeed_config",
                                        str(config)]
    assert not config.exists()  # a real launch writes it (tests/launch/test_launch.py)
