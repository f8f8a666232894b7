"""Loaders: round-trips, HuggingFace configs, and one clear SpecError line per bad input."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import yaml

from cost_models.catalog import MODELS, model_preset
from cost_models.catalog_clusters import CLUSTERS, cluster_preset
from cost_models.catalog_sizes import model_from_size
from cost_models.loaders import (
    cluster_from_dict,
    cluster_to_dict,
    load_cluster,
    load_cluster_profile,
    load_model,
    model_from_dict,
    model_to_dict,
    save_cluster,
    save_model,
)
from cost_models.params import count_active_parameters, count_parameters
from cost_models.specs import CollectiveLink, Mlp, SpecError

# Values of the published HuggingFace configs (meta-llama/Llama-3.1-70B, Qwen/Qwen3-235B-A22B,
# mistralai/Mixtral-8x22B-v0.1), trimmed to the keys the loader reads plus a few it ignores.
LLAMA_70B_HF = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 8192, "intermediate_size": 28672, "max_position_embeddings": 131072,
    "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 128256,
}
QWEN3_MOE_HF = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 12288, "head_dim": 128,
    "max_position_embeddings": 40960, "num_attention_heads": 64, "num_hidden_layers": 94,
    "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
    "moe_intermediate_size": 1536, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "norm_topk_prob": True, "tie_word_embeddings": False, "vocab_size": 151936,
}
MIXTRAL_HF = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 6144,
    "intermediate_size": 16384, "max_position_embeddings": 65536, "num_attention_heads": 48,
    "num_hidden_layers": 56, "num_key_value_heads": 8, "num_local_experts": 8,
    "num_experts_per_tok": 2, "vocab_size": 32768,
}


def write_json(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def fails(call, *args, match: str, **kwargs) -> str:
    """The call raises SpecError matching `match`, with a one-line message."""
    with pytest.raises(SpecError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_json_round_trip(tmp_path, name):
    model = model_preset(name)
    path = tmp_path / "model.json"
    save_model(model, path)
    assert load_model(str(path)) == model
    assert model_from_dict(json.loads(path.read_text())) == model


def test_model_yaml_file_and_default_name(tmp_path):
    data = model_to_dict(model_preset("qwen3-235b-a22b"))
    del data["name"], data["schema_version"]
    path = tmp_path / "my-moe.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_model(str(path)) == replace(model_preset("qwen3-235b-a22b"), name="my-moe")


def test_names_sizes_and_seq_len_override():
    assert load_model("Llama3-70B") == model_preset("llama3-70b")
    assert load_model("500b") == model_from_size("500b")
    assert load_model("llama3-8b", seq_len=4096).seq_len == 4096


def test_unknown_model_lists_closest_presets():
    message = fails(load_model, "lama3-70b", match="unknown model 'lama3-70b'")
    assert "closest: llama3-70b" in message


BAD_MODEL_FILES = [
    ({"num_layers": 32}, "missing field 'hidden_size'"),
    ({**model_to_dict(model_preset("llama3-8b")), "num_layer": 3},
     "unknown field 'num_layer'; allowed: name, num_layers"),
    ({**model_to_dict(model_preset("llama3-8b")), "num_layers": "32"},
     "field 'num_layers' must be an integer, got '32'"),
    ({**model_to_dict(model_preset("llama3-8b")), "num_layers": True},
     "field 'num_layers' must be an integer"),
    ({**model_to_dict(model_preset("llama3-8b")), "tied_embeddings": "no"},
     "field 'tied_embeddings' must be true or false"),
    ({**model_to_dict(model_preset("llama3-8b")), "num_layers": 0}, "num_layers=0 must be > 0"),
    ({**model_to_dict(model_preset("llama3-8b")), "mlp": "tanh"}, "mlp='tanh' is not one of"),
    ({**model_to_dict(model_preset("llama3-8b")), "schema_version": 7}, "schema_version=7"),
    ({**model_to_dict(model_preset("deepseek-v3")), "num_kv_heads": 8},
     "multi-head latent attention has one key/value head per query head"),
    ({**model_to_dict(model_preset("llama3-8b")), "q_lora_rank": 128},
     "q_lora_rank/qk_rope_head_dim/v_head_dim are multi-head latent attention fields"),
    ({**model_to_dict(model_preset("deepseek-v3")), "mtp_layers": -1}, "mtp_layers must be >= 0"),
    ({**model_to_dict(model_preset("llama3-8b")), "moe_router_groups": 4},
     "moe_router_groups need num_experts > 1"),
]


@pytest.mark.parametrize(("data", "message"), BAD_MODEL_FILES)
def test_bad_model_files_name_the_file_and_field(tmp_path, data, message):
    path = write_json(tmp_path / "bad.json", data)
    assert fails(load_model, path, match=message).startswith(path)


def test_malformed_and_missing_files(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"num_layers": 32,,}')
    fails(load_model, str(path), match=r"broken.json: not valid JSON \(.* line 1 column")
    (tmp_path / "list.json").write_text("[1, 2]")
    fails(load_model, str(tmp_path / "list.json"), match="expected an object.*got list")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    fails(load_model, str(tmp_path / "bad.yaml"), match="not valid YAML")
    fails(load_model, str(tmp_path / "absent.json"), match="absent.json: no such file")
    (tmp_path / "a-file").write_text("")
    fails(save_model, model_preset("llama3-8b"), tmp_path / "a-file" / "m.json",
          match="a-file: a file is in the way of this folder")
    cluster_file = tmp_path / "cluster.json"
    save_cluster(cluster_preset("h800"), cluster_file)
    fails(load_model, str(cluster_file), match="this is a cluster profile, not a model")
    nan_model = {**model_to_dict(model_preset("mixtral-8x22b")), "moe_layer_freq": float("nan")}
    path = write_json(tmp_path / "nan.json", nan_model)
    fails(load_model, path, match="'moe_layer_freq' must be a number, got nan")


# --- HuggingFace configs -------------------------------------------------------------------------

def test_hf_llama_config_matches_the_preset(tmp_path):
    folder = tmp_path / "Llama-3.1-70B"
    folder.mkdir()
    write_json(folder / "config.json", LLAMA_70B_HF)
    model = load_model(str(folder / "config.json"))
    assert model.seq_len == 131072 and model.name == "Llama-3.1-70B"
    assert replace(model, seq_len=8192, name="llama3-70b") == model_preset("llama3-70b")
    assert load_model(str(folder), seq_len=8192).seq_len == 8192  # a model folder works too


def test_hf_qwen3_moe_config_matches_the_preset(tmp_path):
    model = load_model(write_json(tmp_path / "config.json", QWEN3_MOE_HF), seq_len=4096)
    preset = model_preset("qwen3-235b-a22b")
    assert count_parameters(model) == count_parameters(preset)
    assert count_active_parameters(model) == count_active_parameters(preset)
    assert model.num_moe_layers == 94 and model.head_dim == 128 and model.mlp == Mlp.SWIGLU


def test_hf_moe_layer_pattern_and_shared_expert(tmp_path):
    data = {**QWEN3_MOE_HF, "mlp_only_layers": [0, 1], "shared_expert_intermediate_size": 768}
    model = load_model(write_json(tmp_path / "config.json", data))
    assert model.num_moe_layers == 92 and model.num_dense_layers == 2
    assert model.moe_shared_ffn_hidden_size == 768
    every_other = {**QWEN3_MOE_HF, "decoder_sparse_step": 2}
    assert load_model(write_json(tmp_path / "c2.json", every_other)).num_moe_layers == 47


# deepseek-ai/DeepSeek-V3 config.json (the keys the loader reads, and a few it ignores)
DEEPSEEK_V3_HF = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
    "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256,
    "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
    "first_k_dense_replace": 3, "moe_layer_freq": 1, "vocab_size": 129280,
    "max_position_embeddings": 163840, "tie_word_embeddings": False, "hidden_act": "silu",
    "num_nextn_predict_layers": 1, "n_group": 8, "topk_group": 4}


def test_hf_deepseek_v3_config_matches_the_preset(tmp_path):
    """MLA fields, routed + shared experts and the dense first layers from DeepSeek's keys;
    671B total and 37B activated as published (arXiv:2412.19437), MTP excluded."""
    model = load_model(write_json(tmp_path / "config.json", DEEPSEEK_V3_HF), seq_len=4096)
    assert replace(model, name="deepseek-v3") == model_preset("deepseek-v3")
    assert model.num_dense_layers == 3 and model.is_mla and model.q_dim == 128 * 192
    assert count_parameters(model) / 1e9 == pytest.approx(671, rel=0.005)
    assert count_active_parameters(model) / 1e9 == pytest.approx(37, rel=0.02)
    no_q_latent = {**DEEPSEEK_V3_HF, "q_lora_rank": None}  # DeepSeek-V2-Lite style
    assert load_model(write_json(tmp_path / "lite.json", no_q_latent)).q_lora_rank == 0


def test_hf_mixtral_config_matches_the_preset(tmp_path):
    model = load_model(write_json(tmp_path / "mixtral.json", MIXTRAL_HF), seq_len=4096)
    assert replace(model, name="mixtral-8x22b") == model_preset("mixtral-8x22b")


@pytest.mark.parametrize(("change", "message"), [
    ({"num_hidden_layers": None}, "missing HuggingFace config key 'num_hidden_layers'"),
    ({"hidden_size": "4096"}, "field 'hidden_size' must be an integer"),
    ({"hidden_act": "mish"}, "hidden_act='mish' is not supported; allowed: silu"),
    ({"kv_lora_rank": 512}, "missing HuggingFace config key 'qk_nope_head_dim'"),
    ({"num_key_value_heads": 5}, "must be a multiple of num_kv_heads=5"),
])
def test_bad_hf_configs(tmp_path, change, message):
    data = {k: v for k, v in {**LLAMA_70B_HF, **change}.items() if v is not None}
    path = write_json(tmp_path / "config.json", data)
    assert fails(load_model, path, match=message).startswith(path)


# --- clusters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_cluster_dict_round_trip(name):
    cluster = cluster_preset(name)
    data = json.loads(json.dumps(cluster_to_dict(cluster)))
    assert data["schema_version"] == 1 and cluster_from_dict(data) == cluster


def fitted_cluster():
    cluster = cluster_preset("dgx-h100")
    leaf = replace(cluster.tiers[1], per_collective=(
        CollectiveLink(collective="all_to_all", latency_s=9e-6, bandwidth_bytes_per_s=3e10),))
    return replace(cluster, tiers=(cluster.tiers[0], leaf, cluster.tiers[2]))


def test_cluster_profile_file_keeps_provenance_fit_and_hash(tmp_path):
    cluster, path = fitted_cluster(), tmp_path / "h100.json"
    save_cluster(cluster, path, provenance={"git": "abc123"}, fit={"rmse_rel": 0.04})
    profile = load_cluster_profile(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert profile.cluster.source == f"{path} sha256:{digest}"
    assert replace(profile.cluster, source=cluster.source) == cluster
    assert profile.provenance == {"git": "abc123"} and profile.fit == {"rmse_rel": 0.04}
    assert load_cluster(str(path)) == profile.cluster
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h100.json"]  # no temp file left


def test_save_cluster_never_leaves_a_half_written_file(tmp_path):
    path = tmp_path / "c.json"
    save_cluster(cluster_preset("dgx-h100"), path)
    before = path.read_bytes()
    with pytest.raises(SpecError, match="cannot write"):
        save_cluster(cluster_preset("b200"), path, provenance={"bad": object()})
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_cluster_names():
    assert load_cluster("DGX-H100") == cluster_preset("dgx-h100")
    fails(load_cluster, "dgx-h10", match="unknown cluster 'dgx-h10'.*closest: dgx-h100")


def mutate(data: dict, path: tuple, value) -> dict:
    data = json.loads(json.dumps(data))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD_CLUSTERS = [
    (("tiers",), None, "missing field 'tiers'"),
    (("schema_version",), None, "schema_version=None"),
    (("schema_version",), 2, "schema_version=2; this version of partune reads"),
    (("colour",), "red", "unknown field 'colour'; allowed: name, gpu"),
    (("gpu",), "H100", r"gpu: expected an object"),
    (("gpu", "memory_bytes"), "80GB", "gpu: field 'memory_bytes' must be an integer"),
    (("tiers",), {"a": 1}, "field 'tiers' must be a list"),
    (("tiers", 1, "latency_s"), "fast", r"tiers\[1\]: field 'latency_s' must be a number"),
    (("tiers", 1, "per_collective", 0, "collective"), "allreduce",
     "collective 'allreduce' is not one of: all_reduce"),
    (("tiers", 0, "domain_gpus"), 4, "tiers\\[0\\].domain_gpus=4 must equal gpus_per_node=8"),
    (("provenance",), [1], "field 'provenance' must be an object"),
]


@pytest.mark.parametrize(("where", "value", "message"), BAD_CLUSTERS)
def test_bad_cluster_profiles(tmp_path, where, value, message):
    good = cluster_to_dict(fitted_cluster(), provenance={}, fit={})
    path = write_json(tmp_path / "cluster.json", mutate(good, where, value))
    assert fails(load_cluster, path, match=message).startswith(path)


def test_files_python_cannot_parse_are_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    fails(load_model, str(deep), match="nested too deeply or a number too large")
    huge = tmp_path / "huge.json"
    huge.write_text('{"num_layers": ' + "9" * 5000 + "}")
    fails(load_model, str(huge), match="nested too deeply or a number too large")
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    fails(load_model, str(latin), match="not UTF-8 text")
    fails(load_model, str(tmp_path), match="is a directory; give the file")


@pytest.mark.parametrize("name, text", [
    ("twice.json", '{"name": "m", "num_layers": 2, "num_layers": 4}'),
    ("twice.yaml", "name: m\nnum_layers: 2\nnum_layers: 4\n"),
])
def test_a_key_given_twice_is_refused_not_resolved_silently(tmp_path, name, text):
    """JSON and YAML readers keep the last of two equal keys; which one the user meant is
    unknowable, so the file is refused."""
    path = tmp_path / name
    path.write_text(text)
    fails(load_model, str(path), match="key 'num_layers' appears twice in one object")


def test_hf_config_with_odd_values_is_one_line(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    write_json(folder / "config.json", {**LLAMA_70B_HF, "hidden_act": ["silu"]})
    fails(load_model, str(folder / "config.json"), match="hidden_act=\\['silu'\\] is not")
    write_json(folder / "config.json", {**LLAMA_70B_HF, "num_hidden_layers": 10**12})
    fails(load_model, str(folder / "config.json"), match="num_hidden_layers=.* must be in")


def test_cluster_profiles_with_impossible_values_are_refused(tmp_path):
    good = cluster_to_dict(cluster_preset("dgx-h100"))
    cases = [({"gpu": {**good["gpu"], "gemm_max_fraction": 5}}, "gemm_max_fraction=5"),
             ({"nics_per_node": 0}, "nics_per_node=0"),
             ({"tiers": [good["tiers"][0], {**good["tiers"][1], "domain_gpus": 4},
                         good["tiers"][2]]}, "must grow outwards")]
    for i, (change, message) in enumerate(cases):
        path = write_json(tmp_path / f"c{i}.json", {**good, **change})
        fails(load_cluster, path, match=message)


def test_hf_moe_layer_fields_out_of_range_are_one_line(tmp_path):
    folder = tmp_path / "moe"
    folder.mkdir()
    base = {"num_hidden_layers": 8, "hidden_size": 256, "intermediate_size": 512,
            "num_attention_heads": 4, "max_position_embeddings": 1024, "vocab_size": 1000,
            "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128}
    for extra, message in (({"decoder_sparse_step": 0}, "decoder_sparse_step=0 must be >= 1"),
                           ({"first_k_dense_replace": 9}, "first_k_dense_replace=9 must be in"),
                           ({"model_type": ["qwen3_moe"]}, "model_type=.* must be a string")):
        write_json(folder / "config.json", {**base, **extra})
        fails(load_model, str(folder / "config.json"), match=message)
