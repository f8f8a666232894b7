"""The plan file: round trip, contents, atomic writes, and one-line errors for bad files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from launch_specs import CLUSTER, GPT3, HERE, LLAMA, QWEN3, document, estimate, subprocess_env

import tuner.plan_io as plan_io
from cost_models.specs import Plan, SpecError
from tuner.plan_io import (
    PLAN_SCHEMA_VERSION,
    load_plan,
    make_provenance,
    parse_plan,
    save_plan,
    time_to_train,
)

PLANS = [
    (GPT3, Plan(tp=8, pp=8, vpp=2, dp=4, micro_batch_size=1, global_batch_size=1536,
                sequence_parallel=True, recompute="selective", zero=1)),
    (LLAMA, Plan(tp=8, pp=4, dp=8, cp=2, micro_batch_size=1, global_batch_size=512,
                 sequence_parallel=True, recompute="full", zero=2, order="tp-cp-pp-dp")),
    (QWEN3, Plan(tp=4, pp=2, dp=16, ep=16, micro_batch_size=2, global_batch_size=1024,
                 sequence_parallel=True, zero=3, precision="fp8")),
]


@pytest.mark.parametrize(("model", "plan"), PLANS, ids=lambda x: getattr(x, "name", ""))
def test_round_trip_gives_the_same_specs(tmp_path, model, plan):
    doc = document(model, plan)
    path = tmp_path / "plans" / "p.json"
    save_plan(doc, path)
    loaded = load_plan(path)
    assert loaded.model == model
    assert loaded.plan == plan
    assert loaded.num_gpus == plan.tp * plan.pp * plan.dp * plan.cp
    assert loaded.cluster == CLUSTER
    assert loaded.gpu_memory_bytes == 80 * 2**30
    assert loaded.gpus_per_node == 8
    assert dict(loaded.prediction) == doc["prediction"]
    assert loaded.raw == json.loads(json.dumps(doc))


def test_document_has_the_schema_fields():
    model, plan = PLANS[0]
    other = replace(plan, micro_batch_size=2)
    doc = document(model, plan, alternatives=[(other, estimate(step_time_s=12.0))])
    assert doc["schema_version"] == PLAN_SCHEMA_VERSION
    assert set(doc["plan"]) >= {"tp", "pp", "vpp", "dp", "cp", "ep", "micro_batch_size",
                                "global_batch_size", "sequence_parallel", "recompute", "zero",
                                "precision"}
    prediction = doc["prediction"]
    assert set(prediction) >= {"step_time_s", "mfu", "tokens_per_s", "peak_memory_bytes",
                               "breakdown_s", "time_to_train"}
    assert prediction["peak_memory_bytes"] == 65_000_000_000
    assert prediction["breakdown_s"] == {"compute": 8.0, "pp_bubble": 1.0,
                                         "dp_comm_exposed": 1.0}
    assert doc["cluster"]["gpu_memory_bytes"] == 80 * 2**30
    assert [tier["name"] for tier in doc["cluster"]["tiers"]] == ["nvlink", "ib"]
    assert doc["provenance"]["tool_version"]
    assert doc["provenance"]["cost_model"]["source"] == "preset"
    assert doc["layout"] == {"name": plan.name, "num_gpus": 256, "num_nodes": 32,
                             "num_microbatches": 384}
    assert doc["alternatives"][0]["plan"]["micro_batch_size"] == 2
    assert doc["alternatives"][0]["prediction"]["step_time_s"] == 12.0
    assert doc["launch"]["megatron_args"][:2] == ["--tensor-model-parallel-size", "8"]
    # interleaved (vpp 2): DeepSpeed's 1F1B engine cannot run it, and the file says why
    assert doc["launch"]["deepspeed_config"] is None
    assert "vpp=2" in doc["launch"]["unsupported"]["deepspeed"]


def test_time_to_train_in_seconds_days_and_gpu_hours():
    # 1e12 tokens at 1e6 tokens/s: 1e6 s = 11.574 days; on 256 GPUs 256e6/3600 GPU-hours.
    result = time_to_train(1e12, 1e6, 256)
    assert result["seconds"] == pytest.approx(1e6)
    assert result["days"] == pytest.approx(11.574074, rel=1e-6)
    assert result["gpu_hours"] == pytest.approx(71_111.111, rel=1e-6)
    assert time_to_train(1e12, 0.0, 256)["seconds"] is None
    doc = document(*PLANS[0], tokens_budget=2e12)
    assert doc["prediction"]["time_to_train"]["seconds"] == pytest.approx(2e6)


def test_provenance_records_the_profile_hash(tmp_path):
    profile = tmp_path / "cluster.json"
    profile.write_text('{"tiers": []}\n')
    provenance = make_provenance(cost_model="analytical", parameters={"alpha_s": 1e-5},
                                 profile_path=profile)
    block = provenance["cost_model"]
    assert block["source"] == "measured"
    assert block["profile_sha256"] == hashlib.sha256(b'{"tiers": []}\n').hexdigest()
    with pytest.raises(SpecError, match="does not exist"):
        make_provenance(cost_model="analytical", parameters={},
                        profile_path=tmp_path / "missing.json")


def test_a_plan_no_framework_can_run_keeps_the_reasons():
    plan = Plan(tp=2, pp=79, dp=1, global_batch_size=8)  # 80 layers do not split in 79 stages
    doc = document(LLAMA, plan)
    assert doc["launch"]["megatron_args"] is None
    assert doc["launch"]["deepspeed_config"] is None
    for framework in ("megatron", "deepspeed"):
        assert "num_layers=80 cannot be split over pp=79" in doc["launch"]["unsupported"][
            framework]


def test_a_plan_only_megatron_can_run_keeps_the_deepspeed_reason():
    plan = Plan(tp=2, pp=2, vpp=2, dp=1, global_batch_size=8, zero=1)
    doc = document(LLAMA, plan)
    assert doc["launch"]["megatron_args"] is not None
    assert doc["launch"]["deepspeed_config"] is None
    assert "vpp=2" in doc["launch"]["unsupported"]["deepspeed"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text("old content\n")

    def crash(fd):  # the data is written, the disk sync fails: a crash mid-write
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(plan_io.os, "fsync", crash)
    with pytest.raises((OSError, SpecError)):  # SpecError where atomic.py reports it in a line
        save_plan(document(*PLANS[0]), path)
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["plan.json"]


def test_process_killed_before_rename_never_leaves_a_partial_plan(tmp_path):
    path = tmp_path / "plan.json"
    code = ("import os\nimport tuner.plan_io as io\nimport launch_specs as s\n"
            "from cost_models.specs import Plan\n"
            "doc = s.document(s.GPT3, Plan(tp=8, pp=8, dp=4, global_batch_size=64))\n"
            "io.os.replace = lambda *a: os._exit(9)\n"
            f"io.save_plan(doc, {str(path)!r})\n")
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
    result = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
    assert result.returncode == 9
    assert not path.exists()  # only the hidden temp file exists; the plan path never half-full


def test_nan_prediction_is_refused_before_anything_is_written(tmp_path):
    doc = document(*PLANS[0])
    doc["prediction"]["mfu"] = float("nan")
    with pytest.raises(SpecError, match="Out of range float values"):
        save_plan(doc, tmp_path / "plan.json")
    assert list(tmp_path.iterdir()) == []


def _edit(doc, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    if value is KeyError:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("schema_version", 2, "schema_version is 2, this partune"),
    ("schema_version", 2, "; re-create the file with `autotune --model MODEL --gpus N --out "),
    ("schema_version", KeyError, "schema_version is None"),
    ("plan.global_batch_size", KeyError, "plan.global_batch_size is missing"),
    ("plan.tp", "8", "plan.tp='8' has the wrong type"),
    ("plan.tp", 0, "plan.tp=0 must be > 0"),
    ("plan.sequence_parallel", 1, "plan.sequence_parallel=1 has the wrong type"),
    ("plan.stages", 4, "plan has unknown field(s) stages"),
    ("plan.recompute", "some", "plan.recompute='some' is not one of: none, selective, full"),
    ("model.num_layers", KeyError, "model.num_layers is missing"),
    ("model", [], "model must be a JSON object"),
    ("prediction.mfu", KeyError, "prediction.mfu is missing or not a number"),
    ("prediction.breakdown_s", KeyError, "'breakdown_s' is missing"),
    ("provenance.cost_model", KeyError, "'cost_model' is missing"),
    ("launch.megatron_args", KeyError, "launch.megatron_args is missing; re-create the file"),
    ("launch.megatron_args", "--tp 8", "launch.megatron_args='--tp 8' has the wrong type "
     "(expected a list of strings, or null); re-create the file with `autotune --model"),
    ("launch.megatron_args", [1, 2], "launch.megatron_args=[1, 2] has the wrong type"),
    ("launch.megatron_args", {"a": 1}, "launch.megatron_args={'a': 1} has the wrong type"),
    ("launch.megatron_env", ["A=1"], "launch.megatron_env=['A=1'] has the wrong type "
     "(expected an object of strings"),
    ("launch.megatron_env", "A=1", "launch.megatron_env='A=1' has the wrong type"),
    ("launch.megatron_env", {"A": 1}, "launch.megatron_env={'A': 1} has the wrong type"),
    ("launch.megatron_env", None, "launch.megatron_env=None has the wrong type"),
    ("launch.deepspeed_config", "str", "launch.deepspeed_config='str' has the wrong type "
     "(expected a JSON object, or null)"),
    ("launch.deepspeed_config", [], "launch.deepspeed_config=[] has the wrong type"),
    ("launch.unsupported", ["x"], "launch.unsupported=['x'] has the wrong type (expected an "
     "object of reason strings keyed megatron/deepspeed)"),
    ("launch.unsupported", "nope", "launch.unsupported='nope' has the wrong type"),
    ("launch.unsupported", {"jax": "no"}, "launch.unsupported={'jax': 'no'} has the wrong"),
    ("launch.unsupported", {"deepspeed": 3}, "launch.unsupported={'deepspeed': 3} has the"),
    ("launch.megatron_arg", [], "launch has unknown field(s) megatron_arg (it holds "
     "megatron_args, megatron_env, deepspeed_config, unsupported)"),
    ("layout.num_gpus", 64, "layout.num_gpus=64 does not match"),
    ("cluster.gpu_memory_bytes", KeyError, "cluster.gpu_memory_bytes is missing"),
    ("cluster.gpu_memory_bytes", 1, "cluster.gpu_memory_bytes=1 does not match"),
    ("cluster.gpus_per_node", KeyError, "cluster: missing field 'gpus_per_node'"),
])
def test_malformed_plan_is_one_spec_error_line(tmp_path, dotted, value, expected):
    doc = json.loads(json.dumps(document(*PLANS[0])))
    _edit(doc, dotted, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert expected in message
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(("text", "expected"), [
    ('{"schema_version": 1, "plan": ', "not valid JSON (Expecting value at line 1 column 31"),
    ("{", "; re-create the file with `autotune --model MODEL --gpus N --out PLAN.json`"),
    ("", "not valid JSON"),
    ("[" * 100_000, "nested too deeply or a number too large to read"),
    ('{"plan": {"tp": 1' + "0" * 5000 + "}}", "nested too deeply or a number too large"),
    ("[1, 2]", "the top level must be a JSON object"),
    ('{"kind": "partune.plan", "kind": "x"}', "key 'kind' appears twice in one object"),
    (b"\xff\xfe\x00", "cannot read plan file"),
])
def test_unreadable_files_are_one_line(tmp_path, text, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as caught:
        load_plan(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(SpecError, match="does not exist"):
        load_plan(tmp_path / "missing.json")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("kind"), "kind is None, not 'partune.plan'"),
    (lambda d: d.update(kind="other.tool"), "kind is 'other.tool'"),
    (lambda d: d["plan"].pop("tp"), "plan.tp is missing"),
    (lambda d: d.update(schema_version=True), "schema_version is True"),
    (lambda d: d["layout"].update(num_nodes=0), "layout.num_nodes=0 must be an integer >= 1"),
])
def test_hand_edited_identity_fields_are_refused(edit, message):
    doc = json.loads(json.dumps(document(*PLANS[0])))
    edit(doc)
    with pytest.raises(SpecError, match=message):
        parse_plan(doc)
