"""Predict published runs: the schema of shared/validation/published_runs_dev.csv is the contract.

Each usable row becomes (ModelSpec, ClusterSpec, plan candidates). Cells the source left
empty (micro-batch, interleaving, sequence parallelism, recompute, sharding) are not guessed
per source: every value allowed for them is scored and the fastest plan that fits in memory
is taken, i.e. we assume the publishers tuned the knobs they did not print. Rows that cannot
be modelled are skipped with the reason.

Software changes what an empty cell can mean, so the candidates respect what existed when
the run was published (the first year found in `source`; rows without a year get today's
software). The attention kernel is read from an optional `flash_attention` column (1/0), and
bf16 gradient reduction from an optional `grad_reduce_in_bf16` column (1/0; default fp32),
the ZeRO-3 implementation from an optional `zero3_impl` column (fsdp/deepspeed; default by
year, see `zero3_impl`), an MoE run's expert load imbalance from an optional
`moe_load_factor` column (default 1: balanced), and the Adam state precision from an
optional `optimizer_dtype` column (fp32/bf16; default fp32).
- FlashAttention appeared in May 2022 (Dao et al., arXiv:2205.14135); Megatron-LM gained
  `--use-flash-attn` in 2023: earlier runs use the unfused softmax kernels.
- Selective recomputation and sequence parallelism were introduced by Korthikanti et al. 2022
  (arXiv:2205.05198), the distributed optimizer in Megatron-LM the same year: earlier runs
  have neither, and recompute the full layer (`--checkpoint-activations`, the only mode,
  enabled in every published Megatron-LM script of 2020-21 and in all of Narayanan et al.
  2021's Table 1 runs).
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cost_models.analytical import TIME_TERMS, estimate_batch
from cost_models.catalog_clusters import cluster_for_run
from cost_models.csv_text import check_header
from cost_models.pipeline import interleaving
from cost_models.plan_arrays import PlanArrays, from_plans, to_plan
from cost_models.plan_shapes import shape_problem
from cost_models.specs import (
    OPTIMIZER_DTYPES,
    ZERO3_IMPLS,
    ClusterSpec,
    ModelSpec,
    Plan,
    Precision,
    SpecError,
    load_factor_problem,
)

REQUIRED_COLUMNS = (
    "id", "num_layers", "hidden_size", "ffn_hidden_size", "mlp", "num_heads", "num_kv_heads",
    "head_dim", "seq_len", "vocab_size", "num_experts", "moe_topk",
    "moe_shared_ffn_hidden_size", "moe_layer_freq", "gpu", "gpus_per_node", "num_gpus",
    "inter_node_nics", "tp", "pp", "vpp", "dp", "cp", "ep", "micro_batch_size",
    "global_batch_size", "sequence_parallel", "recompute", "zero", "precision",
    "ref_iter_time_s", "usable")


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    id: str
    model: ModelSpec
    cluster: ClusterSpec
    candidates: tuple[Plan, ...]
    ref_iter_time_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    id: str
    reason: str


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts; a missing file or column is one clear SpecError."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            check_header(path, reader.fieldnames)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SpecError(f"{path}: missing columns {', '.join(missing)}; the schema is "
                                "documented in the README (published runs CSV)")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None


def _cell(row: dict, name: str) -> str:
    """A cell's text; a short row's missing cells are empty."""
    value = row.get(name)
    return value.strip() if isinstance(value, str) else ""


def _number(row: dict, name: str) -> float:
    text = _cell(row, name)
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"column {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise SpecError(f"column {name}={text!r} is not a finite number")
    return value


def _int(row: dict, name: str, default: int | None = None) -> int:
    if _cell(row, name) == "":
        if default is None:
            raise SpecError(f"column {name} is empty")
        return default
    value = _number(row, name)
    if value != int(value):
        raise SpecError(f"column {name}={_cell(row, name)!r} is not an integer")
    return int(value)


def _count(row: dict, name: str, default: int | None = None) -> int:
    """A size or degree: an integer >= 1."""
    value = _int(row, name, default)
    if value < 1:
        raise SpecError(f"column {name}={value} must be >= 1")
    return value


def _flag(row: dict, name: str) -> bool | None:
    """An optional 1/0 column (also true/false, yes/no); None when empty or absent."""
    text = _word(row, name)
    if text == "":
        return None
    if text in ("1", "1.0") or _BOOLEAN_WORDS.get(text) == 1:
        return True
    if text in ("0", "0.0") or _BOOLEAN_WORDS.get(text) == 0:
        return False
    raise SpecError(f"column {name}={_cell(row, name)!r} must be 1 or 0")


def row_model(row: dict) -> ModelSpec:
    experts = _count(row, "num_experts", 1)
    moe = experts > 1
    ffn = _count(row, "ffn_hidden_size")
    return ModelSpec(
        name=_cell(row, "model_name") or _cell(row, "id"), num_layers=_count(row, "num_layers"),
        hidden_size=_count(row, "hidden_size"), ffn_hidden_size=ffn,
        num_heads=_count(row, "num_heads"), num_kv_heads=_count(row, "num_kv_heads"),
        head_dim=_int(row, "head_dim", 0), seq_len=_count(row, "seq_len"),
        vocab_size=_count(row, "vocab_size"),
        mlp=MLP_ALIASES.get(_word(row, "mlp"), _word(row, "mlp")) or "gelu",
        num_experts=experts, moe_topk=_int(row, "moe_topk", 0) if moe else 0,
        moe_ffn_hidden_size=ffn if moe else 0,
        moe_shared_ffn_hidden_size=_int(row, "moe_shared_ffn_hidden_size", 0) if moe else 0,
        moe_layer_freq=(_number(row, "moe_layer_freq") if _cell(row, "moe_layer_freq")
                        else 0.0) if moe else 0.0)


_BOOLEAN_WORDS = {"true": 1, "yes": 1, "on": 1, "false": 0, "no": 0, "off": 0}
# MLP names as other tables write them (HF hidden_act "silu" is Llama's gated SwiGLU)
MLP_ALIASES = {"squared_relu": "relu2", "squared-relu": "relu2", "relu^2": "relu2",
               "silu": "swiglu", "swish": "swiglu", "gelu_new": "gelu"}


def _word(row: dict, name: str) -> str:
    return _cell(row, name).lower()


def _choices(row: dict, name: str, allowed: tuple) -> tuple:
    text = _word(row, name)
    if text == "":
        return allowed
    if not isinstance(allowed[0], int):
        return (text,)
    if text in _BOOLEAN_WORDS:
        return (_BOOLEAN_WORDS[text],)
    return (_int(row, name),)


def recompute_choices(row: dict, model: ModelSpec, modern: bool) -> tuple[str, ...]:
    """The schema's `selective` covers Megatron-Core's module-level recompute of any modules:
    for an MoE model that includes the whole MoE block (`layernorm, moe`)."""
    allowed = ("none", "selective", "full") if modern else ("full",)
    if model.is_moe and modern:
        allowed += ("moe",)
    chosen = _choices(row, "recompute", allowed)
    if model.is_moe and chosen == ("selective",):
        return ("selective", "moe")
    return chosen


def row_candidates(row: dict, model: ModelSpec) -> tuple[Plan, ...]:
    """Every plan consistent with the row: printed knobs fixed, empty ones free."""
    tp, pp, dp, cp = (_count(row, a) for a in ("tp", "pp", "dp", "cp"))
    gbs = _count(row, "global_batch_size")
    gpus = _count(row, "num_gpus")
    if gpus != tp * pp * dp * cp:
        raise SpecError(f"num_gpus={gpus} but tp*pp*dp*cp={tp * pp * dp * cp}; the schema "
                        "needs them equal")
    per_rank = gbs // dp if gbs % dp == 0 else 1
    mbs_all = tuple(b for b in (1, 2, 4, 8, 16, 32) if per_rank % b == 0) or (1,)
    vpp_all = tuple(v for v in (1, 2, 3, 4, 6, 8)
                    if interleaving(model.num_layers, pp, v) is not None)
    vpp_all = (vpp_all or (1,)) if pp > 1 else (1,)
    flash = uses_flash_attention(row)
    bf16_grads, impl = reduces_grads_in_bf16(row), zero3_impl(row)
    load = moe_load_factor(row, model)
    states = optimizer_dtype(row)
    modern = publication_year(row) >= MEGATRON_2022_FEATURES_YEAR
    space = itertools.product(
        _choices(row, "micro_batch_size", mbs_all), _choices(row, "vpp", vpp_all),
        _sp_choices(row, tp, modern),
        recompute_choices(row, model, modern),
        _choices(row, "zero", (0, 1) if modern else (0,)))
    plans, reasons = [], []
    for mbs, vpp, sp, recompute, zero in space:
        try:
            plan = Plan(tp=tp, pp=pp, vpp=vpp, dp=dp, cp=cp, ep=_count(row, "ep", 1),
                        micro_batch_size=mbs, global_batch_size=gbs,
                        sequence_parallel=bool(sp) and tp > 1, recompute=recompute,
                        zero=zero, precision=_word(row, "precision"), flash_attention=flash,
                        grad_reduce_in_bf16=bf16_grads, zero3_impl=impl, moe_load_factor=load,
                        optimizer_dtype=states)
        except SpecError as exc:
            reasons.append(str(exc))
            continue
        problem = shape_problem(model, plan)
        if problem:
            reasons.append(f"plan {plan.name}: {problem}")
        else:
            plans.append(plan)
    if not plans:
        raise SpecError(f"no plan is consistent with the printed knobs ({reasons[0]})")
    return tuple(plans)


def _sp_choices(row: dict, tp: int, modern: bool) -> tuple[int, ...]:
    """sequence_parallel as printed (1/0, true/false), else both where the software had it."""
    stated = _flag(row, "sequence_parallel")
    if stated is not None:
        return (int(stated),)
    return (0, 1) if tp > 1 and modern else (0,)


FLASH_ATTENTION_FIRST_YEAR = 2023
MEGATRON_2022_FEATURES_YEAR = 2022
NO_YEAR = 9999


def publication_year(row: dict) -> int:
    year = re.search(r"\b(19|20)\d\d\b", row.get("source") or "")
    return int(year.group(0)) if year else NO_YEAR


def uses_flash_attention(row: dict) -> bool:
    stated = _flag(row, "flash_attention")
    if stated is not None:
        return stated
    return publication_year(row) >= FLASH_ATTENTION_FIRST_YEAR


def reduces_grads_in_bf16(row: dict) -> bool:
    """Optional column `grad_reduce_in_bf16` (1/0); empty or absent: Megatron-LM's fp32."""
    return bool(_flag(row, "grad_reduce_in_bf16"))


def optimizer_dtype(row: dict) -> str:
    """Optional column `optimizer_dtype` (Plan.optimizer_dtype); empty or absent: fp32, the
    default of Megatron-LM and DeepSpeed. bf16 limits the row to zero 1 (the schema's zero
    cell, if printed, must say 1)."""
    stated = _word(row, "optimizer_dtype")
    if stated and stated not in OPTIMIZER_DTYPES:
        raise SpecError(f"optimizer_dtype={stated!r} is not one of {', '.join(OPTIMIZER_DTYPES)}")
    return stated or "fp32"


def moe_load_factor(row: dict, model: ModelSpec) -> float:
    """Optional column `moe_load_factor` (Plan.moe_load_factor); empty or absent: 1, the
    balanced routing of a forced-balance benchmark (a dropless run's imbalance is not in
    the schema, so such rows are predicted as if balanced unless the column says)."""
    stated = _cell(row, "moe_load_factor")
    if not stated:
        return 1.0
    try:
        value = float(stated)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 1.0):
        raise SpecError(f"moe_load_factor={stated!r} must be a number >= 1")
    problem = load_factor_problem(model, value)
    if problem:
        raise SpecError(f"moe_load_factor={value:g}: {problem}")
    return value


PYTORCH_FSDP_FIRST_YEAR = 2022


def zero3_impl(row: dict) -> str:
    """Optional column `zero3_impl` (fsdp/deepspeed); else by year: PyTorch FSDP shipped in
    PyTorch 1.11 (March 2022), so an earlier ZeRO-3 run is DeepSpeed's (Narayanan et al.
    2021 compare against DeepSpeed ZeRO-3); later ones are taken to be FSDP."""
    stated = (row.get("zero3_impl") or "").strip()
    if stated and stated not in ZERO3_IMPLS:
        raise SpecError(f"zero3_impl={stated!r} is not one of {', '.join(ZERO3_IMPLS)}")
    if stated:
        return stated
    return "deepspeed" if publication_year(row) < PYTORCH_FSDP_FIRST_YEAR else "fsdp"


def cluster_for_row(row: dict) -> ClusterSpec:
    """The cluster a row ran on: its GPU, GPUs per node and NICs (catalog_clusters)."""
    nics = _cell(row, "inter_node_nics") or None
    return cluster_for_run(_cell(row, "gpu"), _count(row, "gpus_per_node"), nics)


def _check_precision(row: dict, cluster: ClusterSpec) -> None:
    """A row in a precision its GPU has no tensor cores for (bf16 on a V100) is a typo."""
    word = _word(row, "precision")
    if word in {p.value for p in Precision} and cluster.gpu.dense_peak_flops(Precision(word)) <= 0:
        raise SpecError(f"precision={word} but {cluster.gpu.name} has no {word} tensor cores")


# A training iteration takes between a millisecond and a day; outside, a typo or a unit
# mistake (and a 1e-300 s reference prints a 300-digit error).
REF_ITER_TIME_RANGE_S = (1e-3, 86_400.0)


def _short_row(row: dict) -> str | None:
    """Why a row has fewer cells than the header (csv.DictReader fills them with None; extra
    cells go under the key None), or None."""
    columns = [key for key in row if key is not None]
    cells = sum(row[key] is not None for key in columns)
    return None if cells == len(columns) else (f"the row has {cells} of {len(columns)} cells "
                                               "(cut short?)")


def parse_rows(rows: list[dict], cluster_of: Callable[[dict], ClusterSpec] = cluster_for_row
               ) -> Iterator[Row | Skipped]:
    seen = set()
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        rid = _cell(row, "id") or f"line {number}"
        short = _short_row(row)
        if short:
            yield Skipped(id=rid, reason=short)
            continue
        if _cell(row, "usable") != "1":
            yield Skipped(id=rid, reason="usable != 1")
            continue
        if not _cell(row, "id") or rid in seen:
            yield Skipped(id=rid, reason="id is empty" if not _cell(row, "id") else
                          "duplicate id (an earlier row has it; ids must be unique)")
            continue
        seen.add(rid)
        try:
            model = row_model(row)
            ref_s = _number(row, "ref_iter_time_s")
            if not REF_ITER_TIME_RANGE_S[0] <= ref_s <= REF_ITER_TIME_RANGE_S[1]:
                raise SpecError(f"ref_iter_time_s={ref_s:g} must be {REF_ITER_TIME_RANGE_S[0]:g}"
                                f"-{REF_ITER_TIME_RANGE_S[1]:g} seconds per iteration")
            cluster = cluster_of(row)
            _check_precision(row, cluster)
            yield Row(id=rid, model=model, cluster=cluster,
                      candidates=row_candidates(row, model), ref_iter_time_s=ref_s)
        except (SpecError, ValueError, KeyError) as exc:
            yield Skipped(id=rid, reason=str(exc))


def best_candidate(row: Row) -> tuple[Plan, dict[str, float]]:
    """The fastest candidate that fits in memory (else the one needing least memory).

    The run was made, so its plan fitted: a candidate counts as fitting when its memory
    without our allocator/framework allowance (the least certain term) fits the GPU.
    """
    arrays: PlanArrays = from_plans(row.candidates)
    est = estimate_batch(row.model, row.cluster, arrays)
    certain = est.peak_memory_bytes - est.memory_bytes["allocator_and_buffers"]
    fits = certain <= row.cluster.gpu.memory_bytes
    score = np.where(fits, est.step_time_s, np.inf)
    i = int(np.argmin(score)) if fits.any() else int(np.argmin(est.peak_memory_bytes))
    out = {f"{name}_s": float(est.breakdown_s[name][i]) for name in TIME_TERMS}
    out.update(pred_iter_time_s=float(est.step_time_s[i]), pred_mfu=float(est.mfu[i]),
               pred_peak_memory_gb=float(est.peak_memory_bytes[i]) / 1e9,
               fits_memory=bool(fits[i]))
    return to_plan(arrays, i), out
