"""Read models and clusters from names, size strings and files; write cluster profiles.

Every failure is a `SpecError` whose message is one line naming the file, the field and what
is allowed, so the CLI can print it and exit 2.

Model references (`load_model`): a preset name (cost_models.catalog.MODELS), a size string
("70b", see catalog_sizes), a JSON/YAML file holding ModelSpec fields, or a HuggingFace
`config.json` (or a folder holding one).

Cluster profile (`cluster_to_dict`, the file `fit` writes and `load_cluster` reads), JSON:
    {"schema_version": 1, "name": ..., "gpu": {GpuSpec fields}, "gpus_per_node": ...,
     "nics_per_node": ..., "nic_bandwidth_bytes_per_s": ...,
     "tiers": [{LinkTier fields, "per_collective": [{CollectiveLink fields}, ...]}, ...],
     "source": ..., "provenance": {...}, "fit": {...}}
Units are in the key names (bytes, bytes_per_s, latency_s, flops = FLOP/s). "provenance" and
"fit" are optional free-form objects; `load_cluster_profile` returns them untouched.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bench.records import Collective
from cost_models.atomic import write_json_atomic
from cost_models.catalog import MODELS, closest_names, model_preset
from cost_models.catalog_clusters import CLUSTERS, cluster_preset
from cost_models.catalog_sizes import is_size, model_from_size
from cost_models.json_text import DuplicateKey, parse_json, unique_keys
from cost_models.specs import (
    MODEL_LIMITS,
    ClusterSpec,
    CollectiveLink,
    GpuSpec,
    LinkTier,
    Mlp,
    ModelSpec,
    SpecError,
)

SCHEMA_VERSION = 1
_FILE_SUFFIXES = (".json", ".yaml", ".yml")
_KINDS = {"int": ((int,), "an integer"), "float": ((int, float), "a number"),
          "str": ((str,), "a string"), "bool": ((bool,), "true or false"),
          "Mlp": ((str,), "a string")}


# --- generic field checking --------------------------------------------------------------------

def _require_mapping(data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected an object with named fields, "
                        f"got {type(data).__name__}")
    return data


def _check_keys(data: dict, cls: type, where: str, extra: tuple[str, ...] = ()) -> None:
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names) - set(extra))
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}; allowed: "
                        f"{', '.join(names + list(extra))}")
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data:
            raise SpecError(f"{where}: missing field {f.name!r}")


def _check_value(name: str, type_name: str, value: object, where: str) -> None:
    kinds, wanted = _KINDS[type_name]
    ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise SpecError(f"{where}: field {name!r} must be {wanted}, got {value!r}")


def _build(cls: type, data: object, where: str, extra: tuple[str, ...] = (), **nested: Any):
    """cls(**data) after checking keys and scalar types; spec errors get the `where` prefix."""
    data = _require_mapping(data, where)
    _check_keys(data, cls, where, extra)
    for f in fields(cls):
        if f.name in data and f.type in _KINDS and f.name not in nested:
            _check_value(f.name, f.type, data[f.name], where)
    values = {k: v for k, v in data.items() if k not in extra} | nested
    try:
        return cls(**values)
    except SpecError as error:
        raise SpecError(f"{where}: {error}") from None


# --- files ---------------------------------------------------------------------------------------

def _read_mapping(path: Path) -> dict:
    """The top-level object of a JSON or YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory; give the file (e.g. {path}/config.json)"
                        ) from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text; save the file as UTF-8 JSON or YAML"
                        ) from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read ({error.strerror or error})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _parse_yaml(path, text)
    else:
        data = parse_json(text, str(path), "a model or cluster file is a flat JSON object")
    return _require_mapping(data, str(path))


@functools.cache
def _unique_key_loader() -> type:
    """PyYAML's SafeLoader refusing a key given twice in one mapping (DuplicateKey); built on
    first use so that planning without YAML files never imports yaml."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
            unique_keys([(key, None) for key in keys if isinstance(key, Hashable)])
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _parse_yaml(path: Path, text: str) -> object:
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except DuplicateKey as error:
        raise SpecError(error.line(str(path), "a model or cluster file is a flat object")
                        ) from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    except (RecursionError, ValueError):
        raise SpecError(f"{path}: nested too deeply or a number too large to read; a model or "
                        "cluster file is a flat object") from None


def _looks_like_file(ref: str) -> bool:
    return Path(ref).suffix.lower() in _FILE_SUFFIXES or os.sep in ref or "/" in ref


def _check_schema(data: dict, where: str, required: bool) -> None:
    version = data.get("schema_version")
    if version is None and not required:
        return
    if version != SCHEMA_VERSION:
        raise SpecError(f"{where}: schema_version={version!r}; this version of partune reads "
                        f"schema_version {SCHEMA_VERSION} (a file partune-fit wrote, or one "
                        f"with \"schema_version\": {SCHEMA_VERSION} and the ClusterSpec fields)")


# --- models --------------------------------------------------------------------------------------

def model_to_dict(model: ModelSpec) -> dict:
    return {"schema_version": SCHEMA_VERSION, **asdict(model), "mlp": model.mlp.value}


def model_from_dict(data: object, where: str = "model") -> ModelSpec:
    """A ModelSpec from our own format (ModelSpec fields, optional schema_version)."""
    _check_schema(_require_mapping(data, where), where, required=False)
    return _build(ModelSpec, data, where, extra=("schema_version",))


def save_model(model: ModelSpec, path: str | os.PathLike) -> None:
    write_json_atomic(path, model_to_dict(model))


def load_model(ref: str, *, seq_len: int | None = None) -> ModelSpec:
    """A preset name, a size string, or a path to our JSON/YAML or a HuggingFace config.

    `seq_len` overrides the sequence length (HF configs only state the longest context)."""
    model = _resolve_model(str(ref))
    if seq_len is not None:
        model = replace(model, seq_len=seq_len)
    return model


def _resolve_model(ref: str) -> ModelSpec:
    if not _looks_like_file(ref):
        if ref.strip().lower() in MODELS:
            return model_preset(ref)
        if is_size(ref):
            return model_from_size(ref)
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if _looks_like_file(ref) or path.is_file():
        return _model_from_file(path)
    raise SpecError(f"unknown model {ref!r}: not a preset, a size like 70b, or a .json/.yaml "
                    f"file; {closest_names(ref, list(MODELS))}")


def _model_from_file(path: Path) -> ModelSpec:
    data = _read_mapping(path)
    if "num_hidden_layers" in data or "architectures" in data or "model_type" in data:
        default = path.parent.name if path.name == "config.json" else path.stem
        return model_from_hf_config(data, where=str(path), name=default or path.stem)
    if "gpu" in data and "tiers" in data:
        raise SpecError(f"{path}: this is a cluster profile, not a model (pass it as the cluster)")
    data = {"name": path.stem, **data}
    return model_from_dict(data, where=str(path))


# --- HuggingFace config.json ---------------------------------------------------------------------

# hidden_act -> MLP. Llama/Mistral/Mixtral/Qwen MLPs are gated (gate, up, down) with SiLU;
# Nemotron uses squared ReLU ("relu2"); GPT-style models a plain GELU MLP.
_HF_ACT = {"silu": Mlp.SWIGLU, "swish": Mlp.SWIGLU, "gelu": Mlp.GELU, "gelu_new": Mlp.GELU,
           "gelu_fast": Mlp.GELU, "gelu_pytorch_tanh": Mlp.GELU, "relu2": Mlp.RELU2,
           "relu": Mlp.RELU}
# model_type values whose transformers config class defaults tie_word_embeddings to False
# (PretrainedConfig itself defaults to True).
_HF_UNTIED_BY_DEFAULT = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
                         "qwen3_moe", "nemotron")


def _hf_int(data: dict, key: str, where: str, default: int | None = None) -> int:
    value = data.get(key)
    if value is None:
        if default is None:
            raise SpecError(f"{where}: missing HuggingFace config key {key!r}")
        return default
    _check_value(key, "int", value, where)
    return value


def _hf_mlp(data: dict, where: str) -> Mlp:
    act = data.get("hidden_act", "silu")  # LlamaConfig / Qwen / Mixtral default
    if not isinstance(act, str) or act not in _HF_ACT:
        raise SpecError(f"{where}: hidden_act={act!r} is not supported; allowed: "
                        f"{', '.join(_HF_ACT)}")
    if _HF_ACT[act] == Mlp.GELU and str(data.get("model_type", "")).startswith("gemma"):
        return Mlp.SWIGLU  # Gemma's GeGLU is gated: three matrices, like SwiGLU
    return _HF_ACT[act]


def _hf_moe_layers(data: dict, layers: int, where: str) -> int:
    """Qwen-MoE: layer i is MoE if (i+1) % decoder_sparse_step == 0 and i not in
    mlp_only_layers (transformers Qwen3MoeDecoderLayer); DeepSeek-V2/V3: i >=
    first_k_dense_replace and i % moe_layer_freq == 0 (DeepseekV3DecoderLayer); other MoE
    configs: every layer."""
    if "first_k_dense_replace" in data:
        first = _hf_int(data, "first_k_dense_replace", where)
        every = _hf_int(data, "moe_layer_freq", where, default=1)
        if not 0 <= first < layers or every < 1:
            raise SpecError(f"{where}: first_k_dense_replace={first} must be in 0..{layers - 1} "
                            f"and moe_layer_freq={every} >= 1")
        return sum(1 for i in range(first, layers) if i % every == 0)
    step = _hf_int(data, "decoder_sparse_step", where, default=1)
    if step < 1:
        raise SpecError(f"{where}: decoder_sparse_step={step} must be >= 1")
    dense = data.get("mlp_only_layers") or []
    if not isinstance(dense, list):
        raise SpecError(f"{where}: mlp_only_layers must be a list of layer indices")
    dense_set = {i for i in dense if isinstance(i, int)}  # a set: one lookup per layer
    return sum(1 for i in range(layers) if (i + 1) % step == 0 and i not in dense_set)


def _hf_moe(data: dict, layers: int, ffn: int, where: str) -> dict:
    experts = (data.get("num_experts") or data.get("num_local_experts")
               or data.get("n_routed_experts") or 1)
    _check_value("num_experts", "int", experts, where)
    if experts < 1:
        raise SpecError(f"{where}: num_experts={experts} must be >= 1 (1: a dense model)")
    moe_layers = _hf_moe_layers(data, layers, where) if experts > 1 else 0
    if moe_layers == 0:
        return {}
    expert_ffn = _hf_int(data, "moe_intermediate_size", where, default=ffn)
    # DeepSeek counts shared experts of the routed experts' width (n_shared_experts)
    shared = _hf_int(data, "n_shared_experts", where, default=0) * expert_ffn
    groups = _hf_int(data, "n_group", where, default=1)  # DeepSeek's group-limited routing
    limit = ({"moe_router_groups": groups,
              "moe_router_group_topk": _hf_int(data, "topk_group", where)} if groups > 1 else {})
    return {**limit, "num_experts": experts,
            "moe_topk": _hf_int(data, "num_experts_per_tok", where),
            "moe_ffn_hidden_size": expert_ffn,
            "moe_shared_ffn_hidden_size": _hf_int(data, "shared_expert_intermediate_size",
                                                  where, default=shared),
            "moe_layer_freq": moe_layers / layers}


def _hf_mla(data: dict, where: str) -> dict:
    """DeepSeek-V2/V3 multi-head latent attention fields (q_lora_rank null: no query
    latent); head_dim is the no-RoPE part of a query/key head."""
    if "kv_lora_rank" not in data:
        return {}
    heads = _hf_int(data, "num_attention_heads", where)
    return {"kv_lora_rank": _hf_int(data, "kv_lora_rank", where),
            "q_lora_rank": _hf_int(data, "q_lora_rank", where, default=0),
            "head_dim": _hf_int(data, "qk_nope_head_dim", where),
            "qk_rope_head_dim": _hf_int(data, "qk_rope_head_dim", where),
            "v_head_dim": _hf_int(data, "v_head_dim", where), "num_kv_heads": heads}


def model_from_hf_config(data: dict, *, where: str, name: str) -> ModelSpec:
    """A ModelSpec from a HuggingFace config.json (Llama, Mistral/Mixtral, Qwen2/3(-MoE),
    DeepSeek-V2/V3, Nemotron and other Llama-style configs). seq_len is
    max_position_embeddings; DeepSeek's num_nextn_predict_layers are its MTP depths."""
    if not isinstance(data.get("model_type", ""), str):
        raise SpecError(f"{where}: model_type={data['model_type']!r} must be a string")
    layers = _hf_int(data, "num_hidden_layers", where)
    if not 1 <= layers <= MODEL_LIMITS["num_layers"]:
        raise SpecError(f"{where}: num_hidden_layers={layers} must be in "
                        f"1..{MODEL_LIMITS['num_layers']:,}")
    heads = _hf_int(data, "num_attention_heads", where)
    ffn = _hf_int(data, "intermediate_size", where,
                  default=data.get("moe_intermediate_size") or None)
    tied = data.get("tie_word_embeddings",
                    data.get("model_type") not in _HF_UNTIED_BY_DEFAULT)
    _check_value("tie_word_embeddings", "bool", tied, where)
    fields_ = {"name": name, "num_layers": layers,
               "hidden_size": _hf_int(data, "hidden_size", where), "ffn_hidden_size": ffn,
               "num_heads": heads,
               "num_kv_heads": _hf_int(data, "num_key_value_heads", where, default=heads),
               "head_dim": _hf_int(data, "head_dim", where, default=0),
               "seq_len": _hf_int(data, "max_position_embeddings", where),
               "vocab_size": _hf_int(data, "vocab_size", where), "mlp": _hf_mlp(data, where),
               "tied_embeddings": tied, **_hf_moe(data, layers, ffn, where),
               **_hf_mla(data, where),
               "mtp_layers": _hf_int(data, "num_nextn_predict_layers", where, default=0)}
    try:
        return ModelSpec(**fields_)
    except SpecError as error:
        raise SpecError(f"{where}: {error}") from None


# --- clusters ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterProfile:
    """A cluster profile file: the ClusterSpec plus the free-form blocks stored with it."""

    cluster: ClusterSpec
    provenance: Mapping[str, Any] = field(default_factory=dict)
    fit: Mapping[str, Any] = field(default_factory=dict)


def cluster_to_dict(cluster: ClusterSpec, *, provenance: Mapping | None = None,
                    fit: Mapping | None = None) -> dict:
    data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **asdict(cluster)}
    data["tiers"] = [dict(tier, per_collective=list(tier["per_collective"]))
                     for tier in data["tiers"]]
    if provenance is not None:
        data["provenance"] = dict(provenance)
    if fit is not None:
        data["fit"] = dict(fit)
    return data


def _collective_link(data: object, where: str) -> CollectiveLink:
    link = _build(CollectiveLink, data, where)
    allowed = [c.value for c in Collective]
    if link.collective not in allowed:
        raise SpecError(f"{where}: collective {link.collective!r} is not one of: "
                        f"{', '.join(allowed)}")
    return link


def _list_field(data: dict, name: str, where: str) -> list:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise SpecError(f"{where}: field {name!r} must be a list, got {value!r}")
    return value


def _tier(data: object, where: str) -> LinkTier:
    data = _require_mapping(data, where)
    links = tuple(_collective_link(item, f"{where}.per_collective[{i}]")
                  for i, item in enumerate(_list_field(data, "per_collective", where)))
    return _build(LinkTier, data, where, per_collective=links)


def cluster_from_dict(data: object, where: str = "cluster") -> ClusterSpec:
    """The inverse of cluster_to_dict (provenance and fit are ignored here)."""
    data = _require_mapping(data, where)
    _check_schema(data, where, required=True)
    _check_keys(data, ClusterSpec, where, extra=("schema_version", "provenance", "fit"))
    gpu = _build(GpuSpec, data["gpu"], f"{where}: gpu")
    tiers = tuple(_tier(item, f"{where}: tiers[{i}]")
                  for i, item in enumerate(_list_field(data, "tiers", where)))
    return _build(ClusterSpec, data, where, extra=("schema_version", "provenance", "fit"),
                  gpu=gpu, tiers=tiers)


def save_cluster(cluster: ClusterSpec, path: str | os.PathLike, *,
                 provenance: Mapping | None = None, fit: Mapping | None = None) -> None:
    """Write a cluster profile atomically (temporary file + os.replace)."""
    write_json_atomic(path, cluster_to_dict(cluster, provenance=provenance, fit=fit))


def _optional_block(data: dict, name: str, where: str) -> dict:
    block = data.get(name, {})
    if not isinstance(block, dict):
        raise SpecError(f"{where}: field {name!r} must be an object, got {block!r}")
    return block


def load_cluster_profile(path: str | os.PathLike) -> ClusterProfile:
    """A cluster profile file; ClusterSpec.source becomes '<path> sha256:<digest>'."""
    path = Path(path)
    data = _read_mapping(path)
    cluster = cluster_from_dict(data, where=str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ClusterProfile(cluster=replace(cluster, source=f"{path} sha256:{digest}"),
                          provenance=_optional_block(data, "provenance", str(path)),
                          fit=_optional_block(data, "fit", str(path)))


def load_cluster(ref: str) -> ClusterSpec:
    """A cluster preset name or a path to a cluster profile file."""
    ref = str(ref)
    if not _looks_like_file(ref) and ref.strip().lower() in CLUSTERS:
        return cluster_preset(ref)
    if _looks_like_file(ref) or Path(ref).is_file():
        return load_cluster_profile(ref).cluster
    raise SpecError(f"unknown cluster {ref!r}: not a preset or a .json profile; "
                    f"{closest_names(ref, list(CLUSTERS))}")


__all__ = ["ClusterProfile", "SCHEMA_VERSION", "cluster_from_dict", "cluster_to_dict",
           "load_cluster", "load_cluster_profile", "load_model", "model_from_dict",
           "model_from_hf_config",
           "model_to_dict", "save_cluster", "save_model"]
