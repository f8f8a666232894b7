"""Presets reproduce published parameter counts; size strings give rule-abiding shapes;
cluster presets carry datasheet numbers and map the validation CSV's hardware columns."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.records import Collective
from cost_models.catalog import MODELS, model_preset, narayanan_gpt
from cost_models.catalog_clusters import CLUSTERS, cluster_for_run, cluster_preset, parse_nics
from cost_models.catalog_sizes import model_from_size, parse_size
from cost_models.comm import collective_time_s
from cost_models.params import count_active_parameters, count_parameters
from cost_models.specs import Precision, SpecError


def rel_err(value: float, reference: float) -> float:
    return abs(value - reference) / reference


# Published totals, in parameters.
PUBLISHED = [
    ("gpt3-175b", 174.6e9, 0.005),  # Narayanan et al. 2021 Table 1/2 count of GPT-3
    ("llama3-8b", 8.03e9, 0.005),  # HF model card of Llama 3.1 8B (8.03B)
    ("llama3-70b", 70.6e9, 0.005),  # HF model card of Llama 3.1 70B (70.6B)
    ("llama3-405b", 405.9e9, 0.005),  # HF model card of Llama 3.1 405B (405.9B)
    ("mt-nlg-530b", 529.6e9, 0.005),  # Narayanan et al. 2021 Table 1 (same shape)
    ("nemotron4-15b", 15.7e9, 0.01),  # arXiv:2402.16819: 12.5B non-embedding + 3.2B embedding
    ("nemotron4-340b", 341.0e9, 0.005),  # arXiv:2406.11704: 331.6B + 9.4B embedding
    ("qwen3-235b-a22b", 235e9, 0.02),  # Qwen3 report Table 2: 235B total
    ("mixtral-8x22b", 141e9, 0.01),  # Mistral release note: 141B total
]
ACTIVE = [("qwen3-235b-a22b", 22e9, 0.02), ("mixtral-8x22b", 39e9, 0.01)]


@pytest.mark.parametrize(("name", "published", "tolerance"), PUBLISHED)
def test_preset_parameter_count_matches_publication(name, published, tolerance):
    assert rel_err(count_parameters(model_preset(name)), published) <= tolerance


@pytest.mark.parametrize(("name", "published", "tolerance"), ACTIVE)
def test_moe_active_parameters_match_publication(name, published, tolerance):
    assert rel_err(count_active_parameters(model_preset(name)), published) <= tolerance


# Narayanan et al. 2021 Table 1: label, layers, hidden, heads.
NARAYANAN = [("1.7b", 24, 2304, 24), ("3.6b", 30, 3072, 32), ("7.5b", 36, 4096, 32),
             ("18.4b", 40, 6144, 48), ("39.1b", 48, 8192, 64), ("76.1b", 60, 10240, 80),
             ("145.6b", 80, 12288, 96), ("310.1b", 96, 16384, 128),
             ("529.6b", 105, 20480, 128), ("1008b", 128, 25600, 160)]


@pytest.mark.parametrize(("label", "layers", "hidden", "heads"), NARAYANAN)
def test_narayanan_family_shapes_and_counts(label, layers, hidden, heads):
    model = model_preset(f"gpt-{label}")
    assert (model.num_layers, model.hidden_size, model.num_heads) == (layers, hidden, heads)
    assert model.ffn_hidden_size == 4 * hidden and model.vocab_size == 51200
    # The label is rounded to its last printed digit (1.7B: +-0.05B = 2.9%); allow that half
    # unit plus 0.5% (Narayanan's count also holds position embeddings and biases).
    number = label[:-1]
    decimals = len(number.partition(".")[2])
    tolerance = 0.5 * 10.0 ** -decimals / float(number) + 0.005
    assert rel_err(count_parameters(model), float(number) * 1e9) <= tolerance


def test_registry_names_match_and_are_lower_case():
    for key, builder in MODELS.items():
        assert key == key.lower() and builder().name == key


def test_llama31_variants_share_the_llama3_shape():
    for size in ("8b", "70b", "405b"):
        a, b = model_preset(f"llama3-{size}"), model_preset(f"llama3.1-{size}")
        assert count_parameters(a) == count_parameters(b) and a.seq_len == b.seq_len == 8192


def test_unknown_preset_names_the_closest():
    with pytest.raises(SpecError, match="closest: llama3-70b"):
        model_preset("llama-70b")
    with pytest.raises(SpecError, match="known: 1.7b"):
        narayanan_gpt("2b")


SIZES = ["1b", "1.5b", "3b", "7b", "7.5b", "13b", "30b", "70b", "175b", "405b", "500b",
         "530B", "1t", "1.5T", "2t"]


def check_rule(model) -> None:
    assert model.hidden_size % 1024 == 0 and model.ffn_hidden_size % 256 == 0
    assert 3.0 <= model.ffn_hidden_size / model.hidden_size <= 4.0
    assert model.head_dim == 128 and model.num_kv_heads == 8
    assert model.num_heads * 128 == model.hidden_size and model.num_heads % 8 == 0
    assert 32 <= model.hidden_size / model.num_layers <= 512


@pytest.mark.parametrize("size", SIZES)
def test_size_string_lands_within_2_percent_and_follows_rule(size):
    model = model_from_size(size)
    assert rel_err(count_parameters(model), parse_size(size)) <= 0.02
    check_rule(model)
    assert model_from_size(size) == model  # deterministic


@pytest.mark.parametrize("size", ["7b", "70b", "500b", "2t"])
def test_size_string_depth_follows_the_llama_aspect_ratio(size):
    model = model_from_size(size)
    assert 0.75 <= model.hidden_size / model.num_layers / 128 <= 1.33


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=10, max_value=20000))
def test_any_size_from_1b_to_2t_is_within_2_percent(tenths_of_billion):
    size = f"{tenths_of_billion / 10:g}b"
    model = model_from_size(size)
    assert rel_err(count_parameters(model), tenths_of_billion * 1e8) <= 0.02
    check_rule(model)


def test_size_string_case_and_units():
    assert parse_size("530B") == parse_size("530b") == 530e9
    assert parse_size("1.5T") == 1.5e12 and parse_size("500m") == 5e8
    assert replace(model_from_size("1t"), name="x") == replace(model_from_size("1000b"), name="x")


@pytest.mark.parametrize("bad", ["70", "b70", "70x", "1e9", "", "0.1b", "100t"])
def test_bad_size_strings_raise(bad):
    with pytest.raises(SpecError, match="size"):
        model_from_size(bad)


# --- clusters ------------------------------------------------------------------------------------

def test_cluster_presets_are_consistent():
    for key in CLUSTERS:
        cluster = cluster_preset(key)
        assert cluster.name == key
        nvlink, leaf, spine = cluster.tiers
        assert nvlink.domain_gpus == cluster.gpus_per_node and spine.domain_gpus == 0
        assert leaf.domain_gpus % cluster.gpus_per_node == 0
        line_rate = cluster.nics_per_node * cluster.nic_bandwidth_bytes_per_s
        assert leaf.bandwidth_bytes_per_s == pytest.approx(0.9 * line_rate
                                                           / cluster.gpus_per_node)
        assert nvlink.bandwidth_bytes_per_s > leaf.bandwidth_bytes_per_s
        assert nvlink.latency_s < leaf.latency_s <= spine.latency_s


def test_datasheet_numbers():
    a100, h100 = cluster_preset("dgx-a100-80gb"), cluster_preset("dgx-h100")
    assert a100.gpu.peak_flops(Precision.BF16) == 312e12
    assert a100.gpu.hbm_bandwidth_bytes_per_s == 2039e9
    assert cluster_preset("dgx-a100-40gb").gpu.hbm_bandwidth_bytes_per_s == 1555e9
    assert h100.gpu.peak_flops(Precision.FP8) == pytest.approx(1979e12, rel=1e-3)
    assert cluster_preset("h200").gpu.hbm_bandwidth_bytes_per_s == 4.8e12
    assert a100.nic_bandwidth_bytes_per_s == 25e9 and h100.nic_bandwidth_bytes_per_s == 50e9
    assert a100.tiers[1].domain_gpus == 160 and h100.tiers[1].domain_gpus == 256
    with pytest.raises(SpecError, match="fp8"):
        a100.gpu.peak_flops(Precision.FP8)
    assert cluster_preset("dgx2-v100").gpus_per_node == 16


@pytest.mark.parametrize(("gpu", "gpn", "nics", "expected"), [
    ("A100-SXM4-80GB", 8, "8x200G", "dgx-a100-80gb"),
    ("A100-SXM4-80GB", 8, "", "dgx-a100-80gb"),
    ("A100-SXM4-40GB", 8, None, "dgx-a100-40gb"),
    ("H100-SXM5-80GB", 8, "", "dgx-h100"),
    ("H100-SXM5-80GB", 8, "8x400G", "dgx-h100"),
    ("V100-SXM3-32GB", 16, "", "dgx2-v100"),
])
def test_cluster_for_validation_rows(gpu, gpn, nics, expected):
    assert cluster_for_run(gpu, gpn, nics) == cluster_preset(expected)


def test_cluster_for_run_with_other_nics_rescales_the_network():
    standard = cluster_preset("dgx-h100")
    half = cluster_for_run("h100-sxm5-80gb", 8, "4x400G")
    assert half.nics_per_node == 4
    assert half.tiers[1].bandwidth_bytes_per_s == standard.tiers[1].bandwidth_bytes_per_s / 2
    assert half.tiers[0] == standard.tiers[0]


@pytest.mark.parametrize(("gpu", "expected"), [
    ("H100", "dgx-h100"), ("NVIDIA H100 80GB HBM3", "dgx-h100"), ("h100-sxm-80gb", "dgx-h100"),
    ("A100 80GB", "dgx-a100-80gb"), ("A100-SXM4-40GB", "dgx-a100-40gb"), ("H800", "h800"),
    ("V100-SXM2-32GB", "dgx2-v100"), ("H200 141GB", "h200"), ("B200", "b200"),
])
def test_gpus_are_found_by_family_and_memory_as_papers_write_them(gpu, expected):
    assert cluster_for_run(gpu, CLUSTERS[expected].gpus_per_node, "") == cluster_preset(expected)


def test_another_gpu_count_per_node_keeps_each_gpus_links():
    """An 8-GPU V100 node (DGX-1) as the DGX-2's per-GPU NVLink and network share."""
    dgx2, dgx1 = cluster_preset("dgx2-v100"), cluster_for_run("V100-SXM2-32GB", 8, "")
    assert dgx1.gpus_per_node == 8 and dgx1.nics_per_node == 4
    assert dgx1.tiers[0].bandwidth_bytes_per_s == dgx2.tiers[0].bandwidth_bytes_per_s
    assert dgx1.tiers[1].bandwidth_bytes_per_s == dgx2.tiers[1].bandwidth_bytes_per_s


@pytest.mark.parametrize(("args", "message"), [
    (("A200-SXM", 8, ""), "unknown gpu 'A200-SXM'; known: A100-SXM4-40GB"),
    (("A100", 8, ""), "ambiguous: name one of A100-SXM4-40GB, A100-SXM4-80GB"),
    (("H100-PCIe-80GB", 8, ""), "unknown gpu"),  # other clocks and links: not an alias
    (("GH200", 4, ""), "unknown gpu"),
    (("V100 16GB", 8, ""), "unknown gpu"),
    (("H100-SXM5-80GB", 0, ""), "gpus_per_node=0"),
    (("H100-SXM5-80GB", 8, "8x"), "not like '8x200G'"),
])
def test_cluster_for_run_rejects_bad_input(args, message):
    with pytest.raises(SpecError, match=message):
        cluster_for_run(*args)


def test_parse_nics():
    assert parse_nics("8x200G") == (8, 200.0) and parse_nics("2 x 400Gb") == (2, 400.0)


def test_presets_order_tiers_in_collective_time():
    """Through comm.py: in-node < across nodes in one SU <= across the spine."""
    cluster, size = cluster_preset("dgx-h100"), 1 << 30
    times = [collective_time_s(Collective.ALL_REDUCE, size, n, 8, cluster).item()
             for n in (8, 64, 512)]
    assert times[0] < times[1] <= times[2]
    expected_in_node = 2 * 7 / 8 * size / cluster.tiers[0].bandwidth_bytes_per_s
    assert times[0] == pytest.approx(expected_in_node, rel=0.01)
    assert np.isfinite(times).all() and not math.isnan(times[2])
