"""`autotune predict`: one plan from flags or from a plan file."""

import json
import subprocess
import sys

import pytest


def autotune(*args):
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True,
                          text=True, check=True)


def test_predict_a_saved_plan_on_its_own_cluster(tmp_path):
    plan = tmp_path / "plan.json"
    autotune("--model", "llama3-8b", "--gpus", "64", "--cluster", "dgx-a100-80gb",
             "--out", str(plan), "--quiet", "--no-alternatives")
    saved = json.loads(plan.read_text())["prediction"]
    again = json.loads(autotune("predict", "--plan", str(plan), "--json").stdout)
    assert again["step_time_s"] == saved["step_time_s"]
    assert again["mfu"] == saved["mfu"]
    other = json.loads(autotune("predict", "--plan", str(plan), "--cluster", "dgx-h100",
                                "--json").stdout)
    assert other["step_time_s"] < saved["step_time_s"]  # H100 is faster than A100


def test_predict_from_flags_table_and_json_agree():
    flags = ("predict", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--tp", "8",
             "--pp", "12", "--gpus", "384", "--global-batch", "1536", "--recompute", "full",
             "--zero", "0", "--precision", "fp16")
    table = autotune(*flags).stdout
    doc = json.loads(autotune(*flags, "--json").stdout)
    assert doc["plan"] == "tp8.pp12.vpp1.dp4.cp1.ep1.mb1"
    assert f"{doc['step_time_s']:.3f} s" in table
    assert abs(sum(doc["breakdown_s"].values()) - doc["step_time_s"]) < 1e-9


def test_inside_an_allocation_the_gpu_count_comes_from_slurm(monkeypatch):
    import os

    env = {**os.environ, "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8"}
    out = subprocess.run([sys.executable, "-m", "tuner", "--model", "8b", "--format", "json",
                          "--no-alternatives"], capture_output=True, text=True, env=env,
                         check=True)
    assert json.loads(out.stdout)["layout"]["num_gpus"] == 16
    broken = {**os.environ, "SLURM_JOB_ID": "5"}
    bad = subprocess.run([sys.executable, "-m", "tuner", "--model", "8b"], capture_output=True,
                         text=True, env=broken)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "SLURM_JOB_NODELIST is not set" in bad.stderr


def test_zero3_implementation_flag_reaches_the_prediction_and_the_plan_file(tmp_path):
    """--zero3-impl deepspeed prices DeepSpeed's re-gathers and rail-bound links: slower than
    FSDP on the same plan; a searched plan keeps the choice and only DeepSpeed launches it."""
    flags = ("predict", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "384",
             "--global-batch", "1536", "--recompute", "full", "--zero", "3", "--json")
    fsdp = json.loads(autotune(*flags).stdout)
    ds = json.loads(autotune(*flags, "--zero3-impl", "deepspeed").stdout)
    assert ds["breakdown_s"]["dp_comm"] > 2 * fsdp["breakdown_s"]["dp_comm"]
    plan = tmp_path / "plan.json"
    autotune("--model", "llama3-8b", "--gpus", "64", "--zero", "3", "--zero3-impl",
             "deepspeed", "--out", str(plan), "--quiet", "--no-alternatives")
    doc = json.loads(plan.read_text())
    assert doc["plan"]["zero3_impl"] == "deepspeed"
    assert doc["launch"]["megatron_args"] is None and doc["launch"]["deepspeed_config"]
    again = json.loads(autotune("predict", "--plan", str(plan), "--json").stdout)
    assert again["step_time_s"] == doc["prediction"]["step_time_s"]


def test_bf16_adam_states_reach_the_search_the_plan_file_and_the_launch(tmp_path):
    """--optimizer-dtype bf16: every plan searched is zero 1, the plan file keeps the choice,
    Megatron-LM gets the precision-aware optimizer, and it needs less memory than fp32."""
    plan = tmp_path / "plan.json"
    autotune("--model", "llama3-70b", "--gpus", "64", "--optimizer-dtype", "bf16",
             "--out", str(plan), "--quiet", "--no-alternatives")
    doc = json.loads(plan.read_text())
    assert doc["plan"]["optimizer_dtype"] == "bf16" and doc["plan"]["zero"] == 1
    args = doc["launch"]["megatron_args"]
    i = args.index("--use-precision-aware-optimizer")
    assert args[i:i + 5] == ["--use-precision-aware-optimizer", "--exp-avg-dtype", "bf16",
                             "--exp-avg-sq-dtype", "bf16"]
    assert doc["launch"]["deepspeed_config"] is None
    again = json.loads(autotune("predict", "--plan", str(plan), "--json").stdout)
    assert again["step_time_s"] == doc["prediction"]["step_time_s"]
    flags = ("predict", "--model", "llama3-70b", "--tp", "8", "--pp", "4", "--gpus", "64",
             "--global-batch", "64", "--sequence-parallel", "--zero", "1", "--json")
    fp32 = json.loads(autotune(*flags).stdout)
    bf16 = json.loads(autotune(*flags, "--optimizer-dtype", "bf16").stdout)
    assert bf16["memory_breakdown_bytes"]["optimizer"] == pytest.approx(
        fp32["memory_breakdown_bytes"]["optimizer"] / 2)
    assert "needs zero 1" in _refused(*flags[1:-3], "--zero", "0", "--optimizer-dtype", "bf16")


def _refused(*args):
    proc = subprocess.run([sys.executable, "-m", "tuner", "predict", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def test_flags_the_plan_file_fixes_are_refused_not_ignored(tmp_path):
    plan = tmp_path / "plan.json"
    autotune("--model", "llama3-8b", "--gpus", "8", "--out", str(plan), "--quiet",
             "--no-alternatives")
    for flags in (["--tp", "4"], ["--model", "llama3-70b"], ["--seq-len", "4096"],
                  ["--precision", "fp16"], ["--recompute", "full"],
                  ["--model", "500b"], ["--precision=bf16"],  # also at their defaults
                  ["--prec", "bf16"], ["--optim=fp32"]):  # and abbreviated
        assert "cannot be combined with --plan" in _refused("--plan", str(plan), *flags)
    autotune("predict", "--plan", str(plan), "--cluster", "dgx-a100-80gb")  # allowed
    assert "--plan is empty" in _refused("--plan", "")


def test_zero_degrees_are_refused_not_taken_as_one():
    for flag in ("--tp", "--pp", "--vpp", "--cp", "--global-batch"):
        assert "must be > 0" in _refused("--model", "llama3-8b", flag, "0")
    assert "--gpus 0 must be >= 1" in _refused("--model", "llama3-8b", "--gpus", "0")


def test_gpus_and_dp_that_disagree_are_refused():
    assert "--gpus 64 but tp*pp*cp*dp = 32" in _refused("--model", "llama3-8b", "--gpus", "64",
                                                         "--dp", "32")
