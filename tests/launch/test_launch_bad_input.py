"""`autotune launch` on hand-edited plan files: a mistyped or stale `launch` section is one
line on stderr, exit 2, and no file written (not even `<plan>.deepspeed.json`); a dry run
writes nothing, a real launch writes the DeepSpeed config only once the command is built.

Most cases run `tuner.cli.main` in-process (the real `autotune launch` entry point); the
real launch execs a stand-in `torchrun` script in a subprocess.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from launch_specs import LLAMA, document, subprocess_env

from cost_models.specs import ModelSpec, Plan, SpecError
from tuner import cli
from tuner.launch import Allocation, build_parser, launch_command

LLAMA_8 = Plan(tp=4, pp=2, dp=1, micro_batch_size=1, global_batch_size=16,
               sequence_parallel=True, zero=1)
ALLOCATION = ["--nodes", "1", "--gpus-per-node", "8", "--master-addr", "h0"]
RECREATE = "re-create the file with `autotune --model MODEL --gpus N --out PLAN.json`"


def write(tmp_path: Path, doc: dict, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def autotune_launch(capsys, monkeypatch, path: Path, framework: str,
                    *flags: str) -> tuple[int, str, str]:
    """`autotune launch PATH --framework F --dry-run` in-process, without Slurm variables."""
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in ("MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name)
    code = cli.main(["launch", str(path), "--framework", framework, "--dry-run", *ALLOCATION,
                     *flags])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, tmp_path: Path, expected: str):
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("autotune launch: error: ")
    assert expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # nothing written


def edited(section: str, key: str, value: object) -> dict:
    doc = json.loads(json.dumps(document(LLAMA, LLAMA_8)))
    doc[section][key] = value
    return doc


# ------------------------------------------------------------ item 1: mistyped launch section

@pytest.mark.parametrize(("key", "value", "expected"), [
    ("megatron_args", [1, 2], "launch.megatron_args=[1, 2] has the wrong type (expected a "
     "list of strings, or null)"),
    ("megatron_args", "--tp 8", "launch.megatron_args='--tp 8' has the wrong type"),
    ("megatron_env", ["A=1"], "launch.megatron_env=['A=1'] has the wrong type (expected an "
     "object of strings"),
    ("megatron_env", "A=1", "launch.megatron_env='A=1' has the wrong type"),
    ("megatron_env", {"A": 1, "B": None}, "launch.megatron_env={'A': 1, 'B': None} has the"),
    ("unsupported", ["x"], "launch.unsupported=['x'] has the wrong type"),
    ("unsupported", "nope", "launch.unsupported='nope' has the wrong type"),
    ("deepspeed_config", "str", "launch.deepspeed_config='str' has the wrong type (expected "
     "a JSON object, or null)"),
])
@pytest.mark.parametrize("framework", ["megatron", "deepspeed"])
def test_mistyped_launch_section_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                                key, value, expected, framework):
    path = write(tmp_path, edited("launch", key, value))
    code, out, err = autotune_launch(capsys, monkeypatch, path, framework)
    assert_one_line_error(code, out, err, tmp_path, expected)
    assert f"plan file {str(path)!r}: " in err and RECREATE in err


# ------------------------------------------------------------ item 2: stale launch arguments

def stale_tp8() -> dict:
    """A tp4/pp2 plan edited by hand to tp8/pp1 (same GPU count), its launch section kept."""
    doc = json.loads(json.dumps(document(LLAMA, LLAMA_8)))
    doc["plan"] |= {"tp": 8, "pp": 1}
    doc["layout"]["name"] = "tp8.pp1.vpp1.dp1.cp1.ep1.mb1"
    return doc


@pytest.mark.parametrize(("framework", "expected"), [
    ("megatron", "launch.megatron_args has --tensor-model-parallel-size 4 where the plan gives "
     "--tensor-model-parallel-size 8"),
    ("deepspeed", "launch.deepspeed_config.tensor_parallel.autotp_size is 4 where the plan "
     "gives 8"),
])
def test_stale_launch_section_is_refused(tmp_path, capsys, monkeypatch, framework, expected):
    path = write(tmp_path, stale_tp8())
    code, out, err = autotune_launch(capsys, monkeypatch, path, framework)
    assert_one_line_error(code, out, err, tmp_path, expected)
    assert "the launch section does not match plan tp8.pp1.vpp1.dp1.cp1.ep1.mb1: " in err
    assert RECREATE in err and "training arguments of your own go after --" in err


@pytest.mark.parametrize(("key", "edit", "expected"), [
    ("megatron_args", lambda args: [*args, "--use-flash-attn"],
     "launch.megatron_args has --use-flash-attn, which the plan does not give"),
    ("megatron_args", lambda args: args[2:],
     "launch.megatron_args lacks --tensor-model-parallel-size 4, which the plan gives"),
    ("megatron_args", lambda args: [*args, *args[:2]],
     "launch.megatron_args repeats arguments the plan gives once"),
    ("megatron_args", lambda args: None,
     "launch.megatron_args is null where the plan gives [\"--tensor-model-parallel-size\""),
    ("megatron_env", lambda env: {},
     "launch.megatron_env.CUDA_DEVICE_MAX_CONNECTIONS is missing where the plan gives \"1\""),
    ("megatron_env", lambda env: env | {"NCCL_DEBUG": "INFO"},
     'launch.megatron_env.NCCL_DEBUG="INFO" is not in what the plan gives'),
])
def test_hand_edited_megatron_entries_are_refused(tmp_path, capsys, monkeypatch, key, edit,
                                                  expected):
    doc = json.loads(json.dumps(document(LLAMA, LLAMA_8)))
    doc["launch"][key] = edit(doc["launch"][key])
    path = write(tmp_path, doc)
    code, out, err = autotune_launch(capsys, monkeypatch, path, "megatron")
    assert_one_line_error(code, out, err, tmp_path, expected)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda config: None, "launch.deepspeed_config is null where the plan gives {"),
    (lambda config: config | {"train_batch_size": 32},
     "launch.deepspeed_config.train_batch_size is 32 where the plan gives 16"),
    (lambda config: config | {"gradient_accumulation_steps": float("nan")},
     "launch.deepspeed_config.gradient_accumulation_steps is NaN where the plan gives 16"),
    (lambda config: config | {"bf16": {"enabled": 1}},
     "launch.deepspeed_config.bf16.enabled is 1 where the plan gives true"),
    (lambda config: config | {"zero_allow_untested_optimizer": True},
     "launch.deepspeed_config.zero_allow_untested_optimizer=true is not in what the plan"),
])
def test_hand_edited_deepspeed_config_is_refused(tmp_path, capsys, monkeypatch, edit,
                                                 expected):
    doc = json.loads(json.dumps(document(LLAMA, LLAMA_8)))
    doc["launch"]["deepspeed_config"] = edit(doc["launch"]["deepspeed_config"])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))  # json writes NaN as the NaN Python's reader accepts
    code, out, err = autotune_launch(capsys, monkeypatch, path, "deepspeed")
    assert_one_line_error(code, out, err, tmp_path, expected)


def test_with_megatron_args_checks_the_megatron_arguments_too(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, edited("launch", "megatron_args", ["--tensor-model-parallel-size",
                                                             "1"]))
    code, _, err = autotune_launch(capsys, monkeypatch, path, "deepspeed")
    assert code == 0, err  # a DeepSpeed launch does not read the Megatron arguments
    code, out, err = autotune_launch(capsys, monkeypatch, path, "deepspeed",
                                     "--with-megatron-args")
    assert_one_line_error(code, out, err, tmp_path,
                          "launch.megatron_args has --tensor-model-parallel-size 1 where")


def test_reordered_arguments_and_an_absent_env_are_the_plans_own(tmp_path, capsys,
                                                                  monkeypatch):
    doc = json.loads(json.dumps(document(LLAMA, LLAMA_8)))
    args = doc["launch"]["megatron_args"]
    doc["launch"]["megatron_args"] = args[2:4] + args[:2] + args[4:]  # pp before tp
    del doc["launch"]["megatron_env"], doc["launch"]["unsupported"]  # optional entries
    path = write(tmp_path, doc)
    code, out, err = autotune_launch(capsys, monkeypatch, path, "megatron")
    assert code == 0, err
    command = shlex.split(out)
    assert command[:2] == ["env", "CUDA_DEVICE_MAX_CONNECTIONS=1"]  # the plan's, regenerated
    assert command[-len(args):] == args


def test_launch_command_from_python_refuses_a_stale_document():
    allocation = Allocation(nodes=1, gpus_per_node=8, master_addr="h0")
    with pytest.raises(SpecError, match="launch.megatron_args has --tensor-model-parallel-size "
                                        "4 where the plan gives --tensor-model-parallel-size 8"):
        launch_command(stale_tp8(), "megatron", allocation)
    with pytest.raises(SpecError, match="--script is empty"):
        launch_command(document(LLAMA, LLAMA_8), "megatron", allocation, script="")


# ------------------------------------------------------------ item 4: what a launch writes

def fake_torchrun(folder: Path) -> Path:
    """A `torchrun` that records its arguments, one a line, in $FAKE_TORCHRUN_ARGS."""
    script = folder / "torchrun"
    script.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$FAKE_TORCHRUN_ARGS\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_real_deepspeed_launch_writes_the_config_then_execs(tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    doc = document(LLAMA, LLAMA_8)
    path = write(plans, doc)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_torchrun(bin_dir)
    record = tmp_path / "args.txt"
    env = subprocess_env(FAKE_TORCHRUN_ARGS=str(record))
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    result = subprocess.run([sys.executable, "-m", "tuner", "launch", str(path), "--framework",
                             "deepspeed", *ALLOCATION], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    config = plans / "plan.deepspeed.json"
    assert json.loads(config.read_text()) == doc["launch"]["deepspeed_config"]
    assert record.read_text().split("\n")[-4:-1] == ["--deepspeed", "--deepspeed_config",
                                                     str(config)]


def test_a_refused_real_launch_writes_nothing(tmp_path):
    path = write(tmp_path, stale_tp8())
    result = subprocess.run([sys.executable, "-m", "tuner", "launch", str(path), "--framework",
                             "deepspeed", *ALLOCATION], env=subprocess_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "does not match plan tp8.pp1" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_a_launch_without_torchrun_on_path_writes_no_config(tmp_path):
    path = write(tmp_path, document(LLAMA, LLAMA_8))
    env = subprocess_env()
    env["PATH"] = str(tmp_path / "empty-bin")  # no torchrun anywhere
    result = subprocess.run([sys.executable, "-m", "tuner", "launch", str(path), "--framework",
                             "deepspeed", *ALLOCATION], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot start 'torchrun': not on PATH" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("host", ["h0\nh1", "a b", "h0\t"])
def test_a_master_address_with_white_space_is_refused(tmp_path, capsys, monkeypatch, host):
    path = write(tmp_path, document(LLAMA, LLAMA_8))
    code, out, err = autotune_launch(capsys, monkeypatch, path, "megatron", "--master-addr",
                                     host)
    assert_one_line_error(code, out, err, tmp_path, "holds white space; pass one host")


# ------------------------------------------------------------ item 5: the command users type

def test_help_names_the_main_command_not_the_hidden_search(capsys):
    with pytest.raises(SystemExit):
        build_parser("autotune launch").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "autotune search" not in text
    assert "plan JSON written by `autotune --model MODEL --gpus N --out PLAN.json`" in text
    assert "rendezvous port, 1..65535" in text


def _hand_edited(plan_edit: dict, config_edit: dict) -> dict:
    """A plan edited by hand with its layout and DeepSpeed config edited to agree: the launch
    section matches, so only the checks of the plan against the model can refuse it."""
    doc = json.loads(json.dumps(document(LLAMA, LLAMA_8)))
    doc["plan"] |= plan_edit
    p = doc["plan"]
    num_gpus = p["tp"] * p["pp"] * p["dp"] * p["cp"]
    doc["layout"] |= {"num_gpus": num_gpus, "num_nodes": -(-num_gpus // 8),
                      "num_microbatches": p["global_batch_size"] // (
                          p["micro_batch_size"] * p["dp"]),
                      "name": ".".join(f"{k}{p[f]}" for k, f in (
                          ("tp", "tp"), ("pp", "pp"), ("vpp", "vpp"), ("dp", "dp"), ("cp", "cp"),
                          ("ep", "ep"), ("mb", "micro_batch_size")))}
    config = doc["launch"]["deepspeed_config"] | config_edit
    doc["launch"]["deepspeed_config"] = {k: v for k, v in config.items() if v is not None}
    return doc


@pytest.mark.parametrize(("plan_edit", "config_edit", "expected"), [
    ({"tp": 16, "pp": 1}, {"tensor_parallel": {"autotp_size": 16}, "pipeline": None},
     "num_kv_heads=8 (query groups) is not divisible by tp=16; use a tp that divides 8"),
    ({"tp": 1, "pp": 96, "sequence_parallel": False}, {"tensor_parallel": None, "pipeline": {
        "stages": 96, "activation_checkpoint_interval": 0}},
     "num_layers=80 cannot be split over pp=96 stages"),
    ({"tp": 8, "pp": 1}, {"tensor_parallel": {"autotp_size": 8}, "pipeline": None}, None),
])
def test_deepspeed_launch_checks_the_plan_against_the_model(tmp_path, capsys, monkeypatch,
                                                            plan_edit, config_edit, expected):
    """A DeepSpeed launch runs the shape checks a Megatron launch runs (heads and KV heads
    over tp, layers over pp), even where the hand-edited launch section agrees; a valid
    edit (tp 8) launches."""
    doc = _hand_edited(plan_edit, config_edit)
    path = write(tmp_path, doc)
    nodes = ["--nodes", str(doc["layout"]["num_nodes"]), "--gpus-per-node",
             str(min(8, doc["layout"]["num_gpus"])), "--master-addr", "h0"]
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in ("MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name)
    code = cli.main(["launch", str(path), "--framework", "deepspeed", "--dry-run", *nodes])
    out, err = capsys.readouterr()
    if expected is None:
        assert code == 0, err
        return
    assert_one_line_error(code, out, err, tmp_path, expected)
    assert "DeepSpeed cannot run plan" in err


def test_deepspeed_ulysses_needs_heads_and_sequence_divisible_by_cp():
    from tuner.deepspeed_config import deepspeed_config

    odd_heads = ModelSpec(name="odd", num_layers=8, hidden_size=768, ffn_hidden_size=3072,
                          num_heads=12, num_kv_heads=12, seq_len=4096, vocab_size=1024)
    with pytest.raises(SpecError, match="Ulysses sequence parallelism \\(cp=8\\) needs "
                                        "num_heads=12 and seq_len=4096 divisible by cp"):
        deepspeed_config(odd_heads, Plan(dp=1, cp=8, global_batch_size=4))
    assert deepspeed_config(odd_heads, Plan(dp=1, cp=4, global_batch_size=4))[
        "sequence_parallel_size"] == 4


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("layout", "num_nodes", 7, "layout.num_nodes=7 does not hold 8 GPUs at 8 per node"),
    ("layout", "num_microbatches", 3, "layout.num_microbatches=3 does not match the plan"),
    ("layout", "name", "tp1.pp1", "layout.name='tp1.pp1' does not match the plan"),
    ("plan", "moe_load_factor", 2.0, "plan.moe_load_factor=2: "),
])
@pytest.mark.parametrize("framework", ["megatron", "deepspeed"])
def test_sections_that_contradict_the_plan_or_model_are_refused(
        tmp_path, capsys, monkeypatch, framework, section, key, value, expected):
    """A layout whose node count cannot hold the plan, or a load factor the (dense) model
    cannot have, is refused by the plan reader itself (launch and predict alike)."""
    path = write(tmp_path, edited(section, key, value))
    code, out, err = autotune_launch(capsys, monkeypatch, path, framework)
    assert_one_line_error(code, out, err, tmp_path, expected)
