"""`python -m tuner.launch`: the command line it builds under a (fake) Slurm allocation, its
one-line errors, and real launches through torchrun on CPU ranks (tests/launch/rank_probe.py).
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from launch_specs import HERE, LLAMA, QWEN3, TINY, TINY_MOE, document, subprocess_env

from cost_models.specs import Plan
from tuner.launch import Allocation, allocation_from_env, launch_command
from tuner.plan_io import save_plan
from tuner.slurm_env import expand_hostlist

LLAMA_8 = Plan(tp=4, pp=2, dp=1, micro_batch_size=1, global_batch_size=16,
               sequence_parallel=True, zero=1)
SLURM_2x4 = {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}


def launch(args: list[str], env: dict[str, str], timeout_s: float = 120):
    return subprocess.run([sys.executable, "-m", "tuner.launch", *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def saved(tmp_path: Path, model, plan, name: str = "plan.json") -> tuple[Path, dict]:
    doc = document(model, plan)
    path = tmp_path / name
    save_plan(doc, path)
    return path, json.loads(path.read_text())


def torchrun_head(nodes: int, gpus: int, endpoint: str, job: str) -> list[str]:
    return ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(gpus),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job]


def without_scontrol(env: dict[str, str]) -> dict[str, str]:
    """PATH minus the folder holding scontrol, so the built-in hostlist parser is used."""
    found = shutil.which("scontrol")
    if found is None:
        return env
    folder = str(Path(found).parent)
    kept = [part for part in env["PATH"].split(":") if part != folder]
    return env | {"PATH": ":".join(kept + [str(Path(sys.executable).parent)])}


def test_megatron_dry_run_under_slurm(tmp_path):
    path, doc = saved(tmp_path, LLAMA, LLAMA_8)
    env = without_scontrol(subprocess_env(**SLURM_2x4))
    result = launch([str(path), "--framework", "megatron", "--dry-run", "--",
                     "--data-path", "my data/x", "--mock-data"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    expected = (["env", "CUDA_DEVICE_MAX_CONNECTIONS=1"]
                + torchrun_head(2, 4, "gpu07:29500", "4242")
                + ["pretrain_gpt.py", *doc["launch"]["megatron_args"],
                   "--data-path", "my data/x", "--mock-data"])
    assert shlex.split(result.stdout) == expected
    assert "'my data/x'" in result.stdout  # shell-quoted when printed


def test_flags_override_slurm_and_master_env(tmp_path):
    path, doc = saved(tmp_path, LLAMA, LLAMA_8)
    env = subprocess_env(SLURM_JOB_NUM_NODES="1", SLURM_GPUS_ON_NODE="2",
                         MASTER_ADDR="10.0.0.5", MASTER_PORT="31000")
    result = launch([str(path), "--framework", "megatron", "--dry-run", "--nodes", "1",
                     "--gpus-per-node", "8", "--script", "/opt/Megatron-LM/pretrain_gpt.py"], env)
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout)
    head = torchrun_head(1, 8, "10.0.0.5:31000", "partune")
    assert command[2:2 + len(head)] == head
    assert command[2 + len(head)] == "/opt/Megatron-LM/pretrain_gpt.py"


def test_deepspeed_dry_run_writes_nothing_and_says_where_the_config_goes(tmp_path):
    path, doc = saved(tmp_path, LLAMA, LLAMA_8)
    env = subprocess_env(**SLURM_2x4)
    result = launch([str(path), "--framework", "deepspeed", "--dry-run", "--", "--lr", "3e-4"],
                    env)
    assert result.returncode == 0, result.stderr
    config_path = tmp_path / "plan.deepspeed.json"
    assert sorted(tmp_path.iterdir()) == [path]  # a dry run writes no file
    assert result.stderr.count("\n") == 1
    assert f"dry run: nothing written; a launch writes the DeepSpeed config to {config_path}" \
        in result.stderr
    assert result.stdout.count("\n") == 1
    command = shlex.split(result.stdout)
    head = torchrun_head(2, 4, "gpu07:29500", "4242")
    assert command[:len(head)] == head
    assert command[len(head):] == ["train.py", "--deepspeed", "--deepspeed_config",
                                   str(config_path), "--lr", "3e-4"]


@pytest.mark.parametrize(("env", "flags", "expected"), [
    ({"SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_NODELIST": "gpu07"},
     [], "1 node(s) x 4 GPUs = 4 GPUs but plan tp4.pp2.vpp1.dp1.cp1.ep1.mb1 needs "
         "tp*pp*dp*cp = 8"),
    ({}, ["--nodes", "4", "--gpus-per-node", "8", "--master-addr", "h0"],
     "= 32 GPUs but plan tp4.pp2.vpp1.dp1.cp1.ep1.mb1 needs tp*pp*dp*cp = 8; allocate 8 GPUs or "
     "plan for 32 with `autotune --model MODEL --gpus 32 --out PLAN.json`"),
    ({}, [], "no allocation: run inside a Slurm job"),
    ({"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"}, [],
     "2 nodes but no rendezvous host"),
    ({"SLURM_JOB_NUM_NODES": "two", "SLURM_GPUS_ON_NODE": "4"}, [],
     "SLURM_JOB_NUM_NODES='two' is not a whole number"),
    ({}, ["--nodes", "0", "--gpus-per-node", "8"], "--nodes must be >= 1"),
    ({}, ["--nodes", "1", "--gpus-per-node", "8", "--master-port", "70000"],
     "--master-port 70000 is not a TCP port; pass a port in 1..65535"),
    ({}, ["--nodes", "1", "--gpus-per-node", "8", "--master-port", "0"],
     "--master-port 0 is not a TCP port"),
    ({"MASTER_PORT": "70000"}, ["--nodes", "1", "--gpus-per-node", "8"],
     "MASTER_PORT=70000 is not a TCP port; set it to a port in 1..65535 or pass --master-port"),
    ({"MASTER_PORT": "0"}, ["--nodes", "1", "--gpus-per-node", "8"],
     "MASTER_PORT=0 is not a TCP port"),
    ({"MASTER_PORT": "x"}, ["--nodes", "1", "--gpus-per-node", "8"],
     "MASTER_PORT='x' is not a whole number; set it to a port in 1..65535"),
    ({}, ["--nodes", "1", "--gpus-per-node", "8", "--script", ""],
     "--script is empty; pass the training script's path, or leave --script out"),
    ({}, ["--nodes", "1", "--gpus-per-node", "8", "--script", " "], "--script is empty"),
    ({}, ["--nodes", "1", "--gpus-per-node", "8", "--master-addr", ""],
     "--master-addr is empty; pass the rendezvous host"),
    ({}, ["--framework", "jax"], "argument --framework: invalid choice: 'jax'"),
    ({}, ["--bogus"], "unrecognized arguments: --bogus"),
])
@pytest.mark.parametrize("framework", ["megatron", "deepspeed"])
def test_bad_allocation_or_flags_is_one_line_and_exit_2(tmp_path, env, flags, expected,
                                                          framework):
    path, _ = saved(tmp_path, LLAMA, LLAMA_8)
    result = launch([str(path), "--framework", framework, "--dry-run", *flags],
                    subprocess_env(**env))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "plan.deepspeed.json").exists()


def test_unsupported_framework_for_the_plan_is_one_line(tmp_path):
    plan = Plan(tp=2, pp=2, dp=2, global_batch_size=8, zero=2)  # DeepSpeed PP needs ZeRO <= 1
    path, _ = saved(tmp_path, LLAMA, plan)
    env = subprocess_env(SLURM_JOB_NUM_NODES="1", SLURM_GPUS_ON_NODE="8")
    result = launch([str(path), "--framework", "deepspeed", "--dry-run"], env)
    assert result.returncode == 2
    assert "its pipeline engine supports ZeRO stage 0 or 1 only" in result.stderr
    assert result.stderr.count("\n") == 1
    ok = launch([str(path), "--framework", "megatron", "--dry-run"], env)
    assert ok.returncode == 0, ok.stderr


def test_malformed_plan_file_is_one_line(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"schema_version": 1, "plan": {"tp": 2')
    result = launch([str(path), "--framework", "megatron", "--dry-run", "--nodes", "1",
                     "--gpus-per-node", "1"], subprocess_env())
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not valid JSON" in result.stderr


def test_hostlist_expansion():
    assert list(expand_hostlist("gpu[07-09,12],login1,n[1-2]")) == [
        "gpu07", "gpu08", "gpu09", "gpu12", "login1", "n1", "n2"]
    assert expand_hostlist("node001") == ("node001",)
    assert expand_hostlist("a[098-101]") == ("a098", "a099", "a100", "a101")


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="needs Slurm's scontrol")
def test_hostlist_expansion_matches_scontrol(tmp_path, monkeypatch):
    # scontrol only needs a readable slurm.conf to expand host lists; no daemon is contacted.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1\n"
                    "PartitionName=p Nodes=localhost\n")
    for nodelist in ("gpu[07-09,12],login1,n[1-2]", "a[098-101]", "x1,y[3-4]"):
        result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                text=True, env={"SLURM_CONF": str(conf), "PATH": "/usr/bin"},
                                timeout=30, check=True)
        assert result.stdout.split() == list(expand_hostlist(nodelist))
    monkeypatch.setenv("SLURM_CONF", str(conf))  # first_host runs scontrol with this
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_JOB_NODELIST": "gpu[12-13]"}
    allocation = allocation_from_env(env)
    assert (allocation.master_addr, allocation.num_gpus) == ("gpu12", 16)


def test_launch_command_is_reusable_from_python(tmp_path):
    _, doc = saved(tmp_path, QWEN3, Plan(tp=4, pp=2, dp=4, ep=16, global_batch_size=64,
                                         sequence_parallel=True, zero=1))
    allocation = Allocation(nodes=4, gpus_per_node=8, master_addr="n0", master_port=29400,
                            job_id="77")
    command = launch_command(doc, "megatron", allocation, extra_args=["--mock-data"])
    assert command[:2] == ["env", "CUDA_DEVICE_MAX_CONNECTIONS=1"]
    head = torchrun_head(4, 8, "n0:29400", "77")
    assert command[2:2 + len(head)] == head
    assert command[-1] == "--mock-data"
    assert "--num-experts" in command and "--expert-model-parallel-size" in command


# ------------------------------------------------------------ real launches through torchrun

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_through_torchrun(tmp_path: Path, model, plan, framework: str, *flags: str) -> list[dict]:
    """Launch rank_probe.py on plan.num_gpus CPU ranks (one node); return each rank's report."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun (from torch) is not installed")
    path, _ = saved(tmp_path, model, plan)
    out = tmp_path / "ranks"
    out.mkdir()
    env = subprocess_env(PROBE_OUT=str(out), SLURM_JOB_NUM_NODES="1",
                         SLURM_GPUS_ON_NODE=str(plan.num_gpus), SLURM_JOB_NODELIST="localhost",
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result = launch([str(path), "--framework", framework, "--script",
                     str(HERE / "rank_probe.py"), *flags], env, timeout_s=240)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((out / f"rank{rank}.json").read_text())
               for rank in range(plan.num_gpus)]
    assert [report["world"] for report in reports] == [plan.num_gpus] * plan.num_gpus
    return reports


@pytest.mark.slow
def test_megatron_launch_builds_the_plan_groups(tmp_path):
    plan = Plan(tp=2, dp=1, micro_batch_size=1, global_batch_size=4, sequence_parallel=True)
    for report in run_through_torchrun(tmp_path, TINY, plan, "megatron"):
        assert (report["tp"], report["pp"], report["cp"], report["dp"]) == (2, 1, 1, 1)
        assert report["cuda_device_max_connections"] == "1"


def test_deepspeed_parses_the_config_at_world_size_dp(tmp_path):
    plan = Plan(dp=2, micro_batch_size=2, global_batch_size=8, zero=2)
    for report in run_through_torchrun(tmp_path, TINY, plan, "deepspeed"):
        assert report["ds_world_size"] == 2
        assert report["ds_train_batch_size"] == 8 and report["ds_zero_stage"] == 2
        assert "9 != 2 * 2 * 2" in report["ds_wrong_batch_error"]


@pytest.mark.slow
def test_megatron_deepspeed_with_pipeline_and_experts(tmp_path):
    plan = Plan(pp=2, dp=2, ep=2, micro_batch_size=1, global_batch_size=8, zero=1)
    reports = run_through_torchrun(tmp_path, TINY_MOE, plan, "deepspeed", "--with-megatron-args")
    for report in reports:
        assert (report["pp"], report["dp"], report["ep"]) == (2, 2, 2)
        assert report["ds_world_size"] == 2  # DeepSpeed asks megatron's mpu: dp, not 4
        assert "9 != 1 * 4 * 2" in report["ds_wrong_batch_error"]


@pytest.mark.slow
def test_deepspeed_ulysses_world_is_ranks_over_cp(tmp_path):
    plan = Plan(cp=2, dp=2, micro_batch_size=1, global_batch_size=4, zero=1)
    for report in run_through_torchrun(tmp_path, TINY, plan, "deepspeed"):
        assert report["ds_world_size"] == 2  # 4 ranks / sequence_parallel_size 2
        assert "5 != 1 * 2 * 2" in report["ds_wrong_batch_error"]


@pytest.mark.slow
def test_megatron_launch_with_tp_pp_dp_order(tmp_path):
    plan = Plan(tp=2, pp=2, dp=1, global_batch_size=4, order="tp-cp-pp-dp")
    for report in run_through_torchrun(tmp_path, TINY, plan, "megatron"):
        assert (report["tp"], report["pp"], report["dp"]) == (2, 2, 1)
