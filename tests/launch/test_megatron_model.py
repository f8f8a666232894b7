"""A real megatron-core GPTModel built from the tuner's TransformerConfig arguments has the
parameter count the cost model computes (bench.megatron_step --smoke: built on the CPU; the
GPU run, forward and backward included, is in results/gpu/)."""

import csv

import pytest

from bench.megatron_step import SMOKE_SHAPE, model_and_plan
from cost_models.params import count_parameters
from tests.bench.conftest import run_module

pytest.importorskip("megatron.core")


def test_megatron_core_model_has_the_parameters_the_cost_model_counts(tmp_path):
    out = tmp_path / "m.csv"
    done = run_module("bench.megatron_step", "--smoke", "-o", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = list(csv.DictReader(out.open()))
    model, _ = model_and_plan("llama3-8b", 2, 0, SMOKE_SHAPE)
    assert int(row["parameters"]) == count_parameters(model)


def test_unknown_preset_is_one_line(tmp_path):
    done = run_module("bench.megatron_step", "--smoke", "--model", "gpt-7", "-o",
                      str(tmp_path / "m.csv"), timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert not (tmp_path / "m.csv").exists()
