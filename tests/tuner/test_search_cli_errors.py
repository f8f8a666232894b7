"""Bad input through the real `autotune` command: exit code 2, one line on stderr naming the
problem, no traceback, and no plan file (not even a partial or temporary one) on failure."""

from __future__ import annotations

import json

import pytest
from search_cases import autotune

BAD_REQUESTS = {
    "unknown preset": (["--model", "llama9-1t"], "unknown model 'llama9-1t'"),
    "malformed model JSON": (["--model", "{bad_json}"], "not valid JSON"),
    "model JSON missing fields": (["--model", "{partial_json}"], "num_layers"),
    "no factorization of 7 GPUs": (["--model", "llama3-8b", "--gpus", "7", "--tp", "4"],
                                   "no tensor-parallel degree divides 7 GPUs"),
    "no layout under the pins": (["--model", "gpt3-175b", "--gpus", "7", "--pp", "2"],
                                 "no (tp, pp, cp, ep) layout fits 7 GPUs"),
    "contradictory cp pins": (["--no-cp", "--cp", "2"], "--no-cp contradicts --cp"),
    "model fits no plan": (["--model", "1t", "--gpus", "8"], "no plan of dense-1t fits 8"),
    "zero GPUs": (["--gpus", "0"], "--gpus 0 must be in 1..1,000,000"),
    "precision the GPU lacks": (["--model", "llama3-8b", "--gpus", "8", "--cluster",
                                 "dgx2-v100"], "no bf16 tensor cores; use --precision fp16"),
    "unknown flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "bad sampler": (["--sampler", "grid"], "--sampler 'grid' is not one of"),
    "zero trials": (["--model", "llama3-8b", "--gpus", "8", "--trials", "0"],
                    "--trials 0 must be in 1..1,000,000"),
    "storage not a URL": (["--storage", "nowhere"], "is not a storage URL"),
    "journal in a missing folder": (["--storage", "journal:/nonexistent/dir/s.log"],
                                    "cannot open the journal file"),
    "deepspeed cannot recompute the MoE block": (
        ["--model", "qwen3-235b-a22b", "--gpus", "256", "--zero", "3", "--recompute", "moe",
         "--zero3-impl", "deepspeed"], "DeepSpeed cannot recompute the MoE block"),
    "unknown ZeRO-3 implementation": (["--zero3-impl", "zero"], "invalid choice: 'zero'"),
    "bad stale threshold": (["--model", "llama3-8b", "--gpus", "8", "--storage", "{journal}"],
                            "PARTUNE_STALE_TRIAL_S"),
    "journal of garbage": (["--model", "llama3-8b", "--gpus", "8", "--storage",
                            "{garbage_journal}"], "holds something other than an Optuna journal"),
    "absurd GPU count": (["--gpus", "1000000000000000"], "must be in 1..1,000,000"),
    "absurd batch": (["--model", "llama3-8b", "--gpus", "8", "--global-batch", "1-99999999999"],
                     "give a smaller --global-batch"),
    "negative batch": (["--global-batch", "-4"], "must be positive"),
    "batch under one sequence": (["--global-batch-tokens", "1"], "less than one sequence"),
    "negative seed": (["--model", "llama3-8b", "--gpus", "8", "--seed", "-1"],
                      "--seed -1 must be in 0..4294967295"),
    "too many trials": (["--model", "llama3-8b", "--gpus", "8", "--trials", "99999999999"],
                        "must be in 1..1,000,000"),
    "zero tokens": (["--tokens", "0"], "must be a positive number of tokens"),
    "negative top-k": (["--top-k", "-1"], "--top-k -1 must be >= 0"),
    "max-tp below one": (["--max-tp", "0"], "--max-tp 0 must be >= 1"),
    "format the plan's framework cannot run": (
        ["--model", "llama3-8b", "--gpus", "64", "--zero", "3", "--format", "deepspeed"],
        "--format deepspeed: plan tp"),
    "plot folder blocked by a file": (["--model", "llama3-8b", "--gpus", "8", "--plot",
                                       "{a_file}/plots"], "a file is in the way"),
    "load factor on a dense model": (["--model", "llama3-8b", "--gpus", "8",
                                      "--moe-load-factor", "1.5"], "is a dense model"),
    "bf16 Adam states without zero 1": (["--model", "llama3-8b", "--gpus", "8", "--zero", "0",
                                         "--optimizer-dtype", "bf16"], "needs zero 1 plans"),
    "bf16 Adam states in an fp16 run": (["--model", "llama3-8b", "--gpus", "8", "--precision",
                                         "fp16", "--optimizer-dtype", "bf16"],
                                        "--precision bf16 or fp8"),
    "unknown Adam state dtype": (["--optimizer-dtype", "fp8"], "invalid choice: 'fp8'"),
    "empty plot folder": (["--model", "llama3-8b", "--gpus", "8", "--plot", ""],
                          "--plot is empty"),
    "empty batch": (["--model", "llama3-8b", "--gpus", "8", "--global-batch", ""],
                    "--global-batch '' is not a number"),
    "plot file blocked by a folder": (["--model", "llama3-8b", "--gpus", "8", "--plot",
                                       "{blocked_plot}"], "breakdown.png' is a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_one_line_exit_2_and_no_plan_file(tmp_path, case):
    args, words = BAD_REQUESTS[case]
    (tmp_path / "bad.json").write_text('{"name": "x", "num_layers": ')
    (tmp_path / "partial.json").write_text(json.dumps({"name": "x", "hidden_size": 64}))
    fill = {"{bad_json}": str(tmp_path / "bad.json"),
            "{partial_json}": str(tmp_path / "partial.json"),
            "{journal}": f"journal:{tmp_path / 's.log'}",
            "{garbage_journal}": f"journal:{tmp_path / 'garbage.log'}",
            "{a_file}/plots": str(tmp_path / "a-file" / "plots"),
            "{blocked_plot}": str(tmp_path / "blocked")}
    (tmp_path / "blocked" / "breakdown.png").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "garbage.log").write_text("this is not a journal\n{\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {"PARTUNE_STALE_TRIAL_S": "soon"} if case == "bad stale threshold" else None
    result = autotune(*[fill.get(a, a) for a in args], "--out", str(out_dir / "plan.json"),
                      env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("autotune: error: ") and words in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(out_dir.iterdir()) == []  # no plan, no temporary file


def test_good_request_writes_the_plan_file_it_prints(tmp_path):
    out = tmp_path / "plan.json"
    quiet = autotune("--model", "llama3-8b", "--gpus", "64", "--quiet", "--out", str(out))
    assert quiet.returncode == 0 and quiet.stderr == ""
    doc = json.loads(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    printed = autotune("--model", "llama3-8b", "--gpus", "64", "--format", "json",
                       "--no-alternatives")
    assert json.loads(printed.stdout)["plan"] == doc["plan"]
    plan = doc["plan"]
    name = (f"tp{plan['tp']}.pp{plan['pp']}.vpp{plan['vpp']}.dp{plan['dp']}.cp{plan['cp']}"
            f".ep{plan['ep']}.mb{plan['micro_batch_size']}")
    assert quiet.stdout.strip() == name


def test_no_plan_names_the_layout_closest_to_fitting():
    """Memory needs compare as numbers, not strings: 202.7 GB comes before 1213.2 GB."""
    from tuner.autotune import closest_reason

    reasons = ["needs at least 1213.2 GB per GPU, limit 81.6 GB",
               "needs at least 202.7 GB per GPU, limit 81.6 GB",
               "no global batch in range is divisible by dp x micro-batch"]
    assert closest_reason(reasons) == [reasons[1]]
    assert closest_reason(reasons[2:]) == reasons[2:]


def test_outputs_never_replace_inputs_each_other_or_special_files(tmp_path):
    """Checked before the search: an output naming the model file, another output, or a
    FIFO (a device or pipe would be replaced by the atomic rename) is one line, and every
    file is left as it was."""
    import os

    model = tmp_path / "model.json"
    model.write_text(json.dumps({"name": "tiny", "num_layers": 4, "hidden_size": 256,
                                 "ffn_hidden_size": 1024, "num_heads": 8, "num_kv_heads": 8,
                                 "seq_len": 512,
                                 "vocab_size": 1024}))
    before = model.read_text()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cases = [(["--model", str(model), "--gpus", "8", "--out", str(model)],
              f"--out {model} is also --model {model}"),
             (["--model", "llama3-8b", "--gpus", "8", "--out", str(tmp_path / "p" /
                                                                   "scaling.png"),
               "--plot", str(tmp_path / "p")], "is also --out"),
             (["--model", "llama3-8b", "--gpus", "8", "--out", str(fifo)],
              "is not a regular file (a device, pipe or socket)"),
             (["--model", "llama3-8b", "--gpus", "8", "--out", ""], "--out is empty")]
    for args, words in cases:
        result = autotune(*args)
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert model.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "pipe"]
