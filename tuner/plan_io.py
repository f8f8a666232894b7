"""The plan file: a versioned JSON document, the contract between `autotune` and the launchers.

    doc = plan_document(model, cluster, plan, estimate, tokens_budget=2e12, provenance=prov)
    save_plan(doc, "results/plans/llama3-70b_h100_512.json")   # atomic
    loaded = load_plan("results/plans/llama3-70b_h100_512.json")  # -> LoadedPlan

The schema is documented in README.md ("The plan file"). A reader rejects a file whose
`schema_version` differs from PLAN_SCHEMA_VERSION, a missing or mistyped field, and unknown
fields in `model`, `plan` or `launch`, each with one SpecError line naming the file and the
field. The `launch` section is type-checked whole (megatron_args a list of strings or null,
megatron_env an object of strings, deepspeed_config an object or null, unsupported an object
of reason strings), so a hand-edited file fails on loading, before a launcher writes anything.
Standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path

from cost_models.atomic import write_json_atomic
from cost_models.goodput import goodput
from cost_models.json_text import parse_json
from cost_models.loaders import cluster_from_dict, cluster_to_dict
from cost_models.params import count_parameters
from cost_models.specs import (
    ClusterSpec,
    Estimate,
    ModelSpec,
    Plan,
    SpecError,
    load_factor_problem,
)
from tuner.deepspeed_config import deepspeed_config
from tuner.megatron import megatron_args, megatron_env

PLAN_SCHEMA_VERSION = 1
PLAN_KIND = "partune.plan"
SECONDS_PER_DAY = 86_400.0
# How to get a good plan file: the main command (`autotune` without a subcommand searches).
RECREATE_HINT = "re-create the file with `autotune --model MODEL --gpus N --out PLAN.json`"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoadedPlan:
    """A plan file read back: the specs rebuilt, the rest as stored."""

    model: ModelSpec
    plan: Plan
    cluster: ClusterSpec
    prediction: Mapping[str, object]
    raw: Mapping[str, object]

    @property
    def num_gpus(self) -> int:
        return self.plan.num_gpus

    @property
    def gpu_memory_bytes(self) -> int:
        return self.cluster.gpu.memory_bytes

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.gpus_per_node


# ---------------------------------------------------------------- writing

def _plain(value: object) -> object:
    """A JSON-ready copy: enums by value, numpy scalars as Python numbers, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, numbers.Integral):
        return int(value)  # int and numpy integers
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{type(value).__name__} {value!r} cannot be stored in a plan file")


def spec_dict(spec: object) -> dict[str, object]:
    """A frozen spec dataclass as a JSON-ready dict, one key per field."""
    return {f.name: _plain(getattr(spec, f.name)) for f in dataclasses.fields(spec)}


def train_days(tokens_budget: float, tokens_per_s: float) -> float:
    """Days to process `tokens_budget` tokens at `tokens_per_s` (the one formula)."""
    return tokens_budget / tokens_per_s / SECONDS_PER_DAY


def time_to_train(tokens_budget: float, tokens_per_s: float, num_gpus: int) -> dict[str, object]:
    """Wall time and GPU-hours to process `tokens_budget` tokens at `tokens_per_s`."""
    if tokens_per_s <= 0 or not math.isfinite(tokens_per_s):
        return {"tokens": tokens_budget, "seconds": None, "days": None, "gpu_hours": None}
    days = train_days(tokens_budget, tokens_per_s)
    seconds = days * SECONDS_PER_DAY
    return {"tokens": tokens_budget, "seconds": seconds, "days": days,
            "gpu_hours": seconds * num_gpus / 3600.0}


def prediction_block(estimate: Estimate, tokens_budget: float, num_gpus: int) -> dict[str, object]:
    """What the cost model predicts, in the plan file's units (bytes as integers)."""
    return {
        "step_time_s": float(estimate.step_time_s), "mfu": float(estimate.mfu),
        "tokens_per_s": float(estimate.tokens_per_s),
        "model_tflops_per_gpu": float(estimate.model_tflops_per_gpu),
        "model_flops_per_step": float(estimate.model_flops_per_step),
        "peak_memory_bytes": round(estimate.peak_memory_bytes),
        "memory_capacity_bytes": round(estimate.memory_capacity_bytes),
        "breakdown_s": _plain(dict(estimate.breakdown_s)),
        "memory_breakdown_bytes": {name: round(size_bytes) for name, size_bytes
                                   in estimate.memory_breakdown_bytes.items()},
        "feasible": estimate.feasible, "infeasible_reason": estimate.infeasible_reason,
        "notes": list(estimate.notes),
        "time_to_train": time_to_train(tokens_budget, float(estimate.tokens_per_s), num_gpus),
    }


def failures_block(model: ModelSpec, plan: Plan, estimate: Estimate,
                   tokens_budget: float) -> dict[str, object]:
    """Expected time to train with failures and checkpoints (cost_models.goodput)."""
    g = goodput(plan.num_gpus, count_parameters(model))
    days = train_days(tokens_budget, float(estimate.tokens_per_s)) / max(g.goodput, 1e-9)
    return {"job_mtbf_s": g.job_mtbf_s, "checkpoint_s": g.checkpoint_s,
            "checkpoint_interval_s": g.checkpoint_interval_s, "goodput": g.goodput,
            "days_with_failures": days}


def cluster_block(cluster: ClusterSpec) -> dict[str, object]:
    """The cluster the plan was made for: the cluster-profile format of cost_models.loaders,
    plus `gpu_memory_bytes` at the top for readers that need only that."""
    return cluster_to_dict(cluster) | {"gpu_memory_bytes": cluster.gpu.memory_bytes}


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool_version() -> str:
    try:
        return metadata.version("partune")
    except metadata.PackageNotFoundError:
        return "unknown"


def make_provenance(*, cost_model: str, parameters: Mapping[str, object],
                    profile_path: str | os.PathLike[str] | None = None,
                    preset: str | None = None) -> dict[str, object]:
    """Where the cost model's parameters came from: a preset, or a measured profile file."""
    block: dict[str, object] = {"name": cost_model, "parameters": _plain(dict(parameters))}
    if profile_path is None:
        block |= {"source": "preset", "preset": preset}
    else:
        if not Path(profile_path).is_file():
            raise SpecError(f"profile file {str(profile_path)!r} does not exist; "
                            "pass the cluster JSON the cost model was fitted from")
        block |= {"source": "measured", "profile_path": str(profile_path),
                  "profile_sha256": file_sha256(profile_path)}
    return {"tool": "partune", "tool_version": tool_version(), "cost_model": block}


def launch_block(model: ModelSpec, plan: Plan) -> dict[str, object]:
    """Megatron-LM arguments and DeepSpeed config; null with the reason where unsupported."""
    block: dict[str, object] = {"megatron_args": None, "megatron_env": {},
                                "deepspeed_config": None, "unsupported": {}}
    try:
        block["megatron_args"] = megatron_args(model, plan)
        block["megatron_env"] = megatron_env(plan)
    except SpecError as error:
        block["unsupported"]["megatron"] = str(error)
    try:
        block["deepspeed_config"] = deepspeed_config(model, plan)
    except SpecError as error:
        block["unsupported"]["deepspeed"] = str(error)
    return block


def _layout_block(plan: Plan, cluster: ClusterSpec) -> dict[str, object]:
    return {"name": plan.name, "num_gpus": plan.num_gpus,
            "num_nodes": -(-plan.num_gpus // cluster.gpus_per_node),
            "num_microbatches": plan.num_microbatches}


def plan_document(model: ModelSpec, cluster: ClusterSpec, plan: Plan, estimate: Estimate, *,
                  tokens_budget: float, provenance: Mapping[str, object],
                  alternatives: Iterable[tuple[Plan, Estimate]] = ()) -> dict[str, object]:
    """The plan file's content for one chosen plan (and ranked runners-up)."""
    if "cost_model" not in provenance:
        raise SpecError("provenance needs a 'cost_model' entry; build it with make_provenance()")
    stamp = {"tool": "partune", "tool_version": tool_version(),
             "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return {
        "kind": PLAN_KIND, "schema_version": PLAN_SCHEMA_VERSION,
        "model": spec_dict(model), "cluster": cluster_block(cluster),
        "plan": spec_dict(plan), "layout": _layout_block(plan, cluster),
        "prediction": prediction_block(estimate, tokens_budget, plan.num_gpus)
        | {"failures": failures_block(model, plan, estimate, tokens_budget)},
        "alternatives": [{"plan": spec_dict(other), "layout": _layout_block(other, cluster),
                          "prediction": prediction_block(other_estimate, tokens_budget,
                                                         other.num_gpus)}
                         for other, other_estimate in alternatives],
        "provenance": stamp | _plain(dict(provenance)),
        "launch": launch_block(model, plan),
    }


def save_plan(doc: Mapping[str, object], path: str | os.PathLike[str]) -> None:
    """Write a plan document atomically (temp file + os.replace)."""
    write_json_atomic(path, doc)


# ---------------------------------------------------------------- reading

_JSON_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
               "Mlp": (str,), "Recompute": (str,), "Precision": (str,)}


# A plan file always holds these (later fields have defaults so older files still load):
# a hand-edited file missing one must not fall back to 1 silently.
PLAN_CORE_FIELDS = ("tp", "pp", "vpp", "dp", "cp", "ep", "micro_batch_size",
                    "global_batch_size", "recompute", "zero", "precision")


def _require_fields(data: object, names: tuple[str, ...], where: str) -> None:
    if isinstance(data, Mapping):
        for name in names:
            if name not in data:
                raise SpecError(f"{where}.{name} is missing; {RECREATE_HINT}")


def _spec_from_dict(kind: type, data: object, where: str) -> object:
    """Rebuild a spec dataclass, naming the first missing, unknown or mistyped field."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where} has unknown field(s) {', '.join(unknown)}")
    for name, spec_field in fields.items():
        required = spec_field.default is dataclasses.MISSING
        if name not in data:
            if required:
                raise SpecError(f"{where}.{name} is missing")
            continue
        allowed = _JSON_TYPES.get(str(spec_field.type), (object,))
        value = data[name]
        if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
            raise SpecError(f"{where}.{name}={value!r} has the wrong type "
                            f"(expected {spec_field.type})")
    return kind(**data)


def _section(doc: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = doc.get(key)
    if not isinstance(value, Mapping):
        raise SpecError(f"'{key}' is missing or not a JSON object")
    return value


def _number(block: Mapping[str, object], key: str, where: str) -> float:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}.{key} is missing or not a number")
    return value


def _check_prediction(prediction: Mapping[str, object]) -> None:
    for key in ("step_time_s", "mfu", "tokens_per_s", "peak_memory_bytes"):
        _number(prediction, key, "prediction")
    _section(prediction, "breakdown_s")
    _section(prediction, "time_to_train")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_map(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(item, str) for item in value.values())


def _is_reasons(value: object) -> bool:
    return _is_str_map(value) and set(value) <= {"megatron", "deepspeed"}


# launch key: (accepts the stored value, what it must be); megatron_env and unsupported may
# be absent (the launcher regenerates both from the plan), the other two are required.
_LAUNCH_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "megatron_args": (lambda value: value is None or _is_str_list(value),
                      "a list of strings, or null"),
    "megatron_env": (_is_str_map, "an object of strings, e.g. {'CUDA_DEVICE_MAX_CONNECTIONS': "
                     "'1'}"),
    "deepspeed_config": (lambda value: value is None or isinstance(value, Mapping),
                         "a JSON object, or null"),
    "unsupported": (_is_reasons, "an object of reason strings keyed megatron/deepspeed"),
}


def _check_launch(launch: Mapping[str, object]) -> None:
    """Type-check the launch section whole: one line naming the first bad field."""
    unknown = sorted(set(launch) - set(_LAUNCH_FIELDS))
    if unknown:
        raise SpecError(f"launch has unknown field(s) {', '.join(unknown)} (it holds "
                        f"{', '.join(_LAUNCH_FIELDS)}); {RECREATE_HINT}")
    for key in ("megatron_args", "deepspeed_config"):
        if key not in launch:
            raise SpecError(f"launch.{key} is missing; {RECREATE_HINT}")
    for key, (accepts, expected) in _LAUNCH_FIELDS.items():
        if key in launch and not accepts(launch[key]):
            raise SpecError(f"launch.{key}={_short(launch[key])} has the wrong type (expected "
                            f"{expected}); {RECREATE_HINT}")


def _cluster(block: Mapping[str, object]) -> ClusterSpec:
    profile = {key: value for key, value in block.items() if key != "gpu_memory_bytes"}
    cluster = cluster_from_dict(profile, "cluster")
    stored = _number(block, "gpu_memory_bytes", "cluster")
    if stored != cluster.gpu.memory_bytes:
        raise SpecError(f"cluster.gpu_memory_bytes={stored!r} does not match "
                        f"cluster.gpu.memory_bytes={cluster.gpu.memory_bytes}")
    return cluster


def parse_plan(doc: object) -> LoadedPlan:
    """Validate a plan document (already parsed JSON) and rebuild its specs."""
    if not isinstance(doc, Mapping):
        raise SpecError("the top level must be a JSON object")
    if doc.get("kind") != PLAN_KIND:
        raise SpecError(f"kind is {doc.get('kind')!r}, not {PLAN_KIND!r}: not a partune plan "
                        f"file; {RECREATE_HINT}")
    version = doc.get("schema_version")
    if type(version) is not int or version != PLAN_SCHEMA_VERSION:
        raise SpecError(f"schema_version is {version!r}, this partune ({tool_version()}) reads "
                        f"{PLAN_SCHEMA_VERSION}; {RECREATE_HINT}")
    model = _spec_from_dict(ModelSpec, doc.get("model"), "model")
    _require_fields(doc.get("plan"), PLAN_CORE_FIELDS, "plan")
    plan = _spec_from_dict(Plan, doc.get("plan"), "plan")
    cluster, prediction = _cluster(_section(doc, "cluster")), _section(doc, "prediction")
    _check_prediction(prediction)
    _section(_section(doc, "provenance"), "cost_model")
    _check_launch(_section(doc, "launch"))
    layout = _section(doc, "layout")
    stored = layout.get("num_gpus")
    nodes = layout.get("num_nodes")
    if type(nodes) is not int or nodes < 1:
        raise SpecError(f"layout.num_nodes={nodes!r} must be an integer >= 1; {RECREATE_HINT}")
    if stored != plan.num_gpus:
        raise SpecError(f"layout.num_gpus={stored!r} does not match the plan's "
                        f"tp*pp*dp*cp={plan.num_gpus}")
    if nodes != -(-plan.num_gpus // cluster.gpus_per_node):
        raise SpecError(f"layout.num_nodes={nodes} does not hold {plan.num_gpus} GPUs at "
                        f"{cluster.gpus_per_node} per node; {RECREATE_HINT}")
    for key, value in _layout_block(plan, cluster).items():  # name, num_microbatches
        if layout.get(key) != value:
            raise SpecError(f"layout.{key}={_short(layout.get(key))} does not match the plan "
                            f"({value!r}); was the plan edited by hand? {RECREATE_HINT}")
    problem = load_factor_problem(model, plan.moe_load_factor)
    if problem:
        raise SpecError(f"plan.moe_load_factor={plan.moe_load_factor:g}: {problem}; "
                        f"{RECREATE_HINT}")
    return LoadedPlan(model=model, plan=plan, cluster=cluster, prediction=prediction, raw=doc)


def load_plan(path: str | os.PathLike[str]) -> LoadedPlan:
    """Read a plan file; any problem is one SpecError line naming the file."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"plan file {name!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read plan file {name!r}: {error}") from None
    doc = parse_json(text, f"plan file {name!r}", RECREATE_HINT)
    try:
        return parse_plan(doc)
    except SpecError as error:
        raise SpecError(f"plan file {name!r}: {error}") from None
