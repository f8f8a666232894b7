"""Plain jobs on the real Slurm: state, exit code and log of a job; the allocation a job sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.slurm_env import SlurmEnvError, expand_hostlist, job_states

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]

PRINT_ALLOCATION = ("import dataclasses, json; from tuner.slurm_env import current_allocation; "
                    "print('ALLOC ' + json.dumps(dataclasses.asdict(current_allocation())))")


def test_trivial_job_completes_with_its_output_in_the_log(slurm, job_dir):
    log = job_dir / "hello-%j.out"
    (state,) = slurm.run("--job-name=hello", f"--output={log}",
                         "--wrap", "echo hello from $SLURM_JOB_ID")
    assert (state.state, state.exit_code) == ("COMPLETED", 0)
    assert state.ok and state.name == "hello"
    path = job_dir / f"hello-{state.job_id}.out"
    assert state.stdout_path == str(path)
    assert path.read_text().strip() == f"hello from {state.job_id}"


def test_failing_job_is_reported_with_id_exit_code_and_log(slurm, job_dir):
    (state,) = slurm.run(f"--output={job_dir}/fail-%j.out", "--wrap", "echo boom; exit 3")
    assert (state.state, state.exit_code, state.ok) == ("FAILED", 3, False)
    line = state.describe()
    assert f"Slurm job {state.job_id} " in line and "FAILED" in line
    assert line.endswith(f"log: {job_dir}/fail-{state.job_id}.out")


def test_job_array_gives_one_record_per_task(slurm, job_dir):
    states = slurm.run("--array=0-1", f"--output={job_dir}/arr-%A_%a.out",
                       "--wrap", "exit $SLURM_ARRAY_TASK_ID")
    by_task = {s.job_id.split("_")[1]: s for s in states}
    assert set(by_task) == {"0", "1"}
    assert by_task["0"].ok and by_task["1"].state == "FAILED"
    assert by_task["1"].stdout_path == f"{job_dir}/arr-{by_task['1'].job_id}.out"


def test_unknown_job_is_one_clear_error(slurm):
    with pytest.raises(SlurmEnvError, match="scontrol show job 999999 failed"):
        job_states("999999")


def _allocation_in_job(slurm, job_dir, *sbatch_args: str) -> dict:
    (state,) = slurm.run(*sbatch_args, f"--output={job_dir}/alloc-%j.out",
                         "--wrap", f"{sys.executable} -c \"{PRINT_ALLOCATION}\"")
    text = open(state.stdout_path).read()
    assert state.ok, text
    line = next(x for x in text.splitlines() if x.startswith("ALLOC "))
    return json.loads(line[len("ALLOC "):]) | {"_job_id": state.job_id}


def test_allocation_from_a_real_job_with_gpus(gpu_slurm, job_dir):
    alloc = _allocation_in_job(gpu_slurm, job_dir, "--nodes=1", "--ntasks=2", "--gpus-per-node=2")
    assert alloc["job_id"] == alloc["_job_id"]
    assert alloc["num_nodes"] == 1 and alloc["nodes"] == ["localhost"]
    assert alloc["gpus_per_node"] == 2 and alloc["tasks"] == 2
    assert alloc["array_task_id"] is None


def test_allocation_without_gpu_request_reads_the_node_from_scontrol(gpu_slurm, job_dir):
    # No --gpus: the job's variables say nothing, so the node's Gres decides (whole-node jobs).
    alloc = _allocation_in_job(gpu_slurm, job_dir, "--ntasks=1")
    assert alloc["gpus_per_node"] == gpu_slurm.gpus > 0


def test_allocation_in_an_array_task(slurm, job_dir):
    alloc = _allocation_in_job(slurm, job_dir, "--array=1")
    assert alloc["array_task_id"] == 1 and alloc["_job_id"].endswith("_1")


@pytest.mark.parametrize("hostlist", ["localhost", "gpu[01-03,07],login1", "n[008-011]",
                                      "a[1-2]b[3-4]", "n[9-11],m[1,3]"])
def test_hostlist_expansion_matches_scontrol(slurm, hostlist):
    out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert list(expand_hostlist(hostlist)) == out


def test_slurm_up_again_reuses_the_running_cluster(slurm):
    proc = subprocess.run(["bash", "scripts/slurm-up.sh"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"export SLURM_CONF={slurm.conf}\n"
    assert "already running" in proc.stderr


@pytest.mark.parametrize("name, value", [("PARTUNE_SLURM_CPUS", "two"),
                                         ("PARTUNE_SLURM_GPUS", "-1"),
                                         ("PARTUNE_SLURM_PORT", "http")])
def test_slurm_up_refuses_bad_settings_in_one_line(name, value):
    if os.geteuid() != 0:
        pytest.skip("slurm-up.sh checks for root first")
    proc = subprocess.run(["bash", "scripts/slurm-up.sh"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=dict(os.environ, **{name: value}))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"slurm-up: {name}={value} is not " + \
        {"PARTUNE_SLURM_CPUS": "a positive integer", "PARTUNE_SLURM_GPUS":
         "a non-negative integer", "PARTUNE_SLURM_PORT": "a port number"}[name] + "\n"
