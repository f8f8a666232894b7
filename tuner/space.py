"""The declared search space: which plans are valid for (model, cluster, GPU count).

Two levels. A *layout* fixes the degrees that shape the job on the machine (tp, pp, cp, ep;
dp follows). For each layout, `inner_candidates` enumerates every combination of the other
knobs (interleaving, micro-batch, global batch, sequence parallel, recompute, sharding,
placement) as columns of numpy arrays, so the cost model scores them all in one pass.

Constraints (Megatron-Core's, plus the ones it lets through silently):
- heads and KV heads divisible by tp; tp within one node (NVLink domain);
- pp stages hold equal layers, or uneven ones with the rest on the first and last stage
  (cost_models.pipeline); interleaving needs layers divisible by pp*vpp, pp > 1 and
  micro-batches divisible by pp;
- cp > 1 only for sequences of at least CP_MIN_SEQ_LEN tokens, seq_len divisible by 2*cp
  (load-balanced causal chunks);
- ep only for MoE models: ep divides the experts and tp*cp*dp (expert grid, expert-TP 1);
- global batch divisible by micro-batch * dp; ZeRO-2/3 only without pipeline parallelism
  (neither Megatron-Core nor DeepSpeed combines them with PP).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from cost_models.pipeline import EMBEDDING_AND_LOSS_SLOTS, pipeline_split
from cost_models.plan_arrays import ORDERS, PRECISION_CODES, RECOMPUTE_CODES, PlanArrays
from cost_models.specs import (
    ClusterSpec,
    ModelSpec,
    Precision,
    Recompute,
    SpecError,
    load_factor_problem,
)

CP_MIN_SEQ_LEN = 8192
MAX_GBS_CHOICES = 12
DEFAULT_ORDERS = ("tp-cp-dp-pp", "tp-cp-pp-dp")


@dataclass(frozen=True, slots=True, kw_only=True)
class Knobs:
    """Allowed values of each knob after the user's pins and exclusions."""

    tp: tuple[int, ...] | None = None  # None: every valid value
    pp: tuple[int, ...] | None = None
    cp: tuple[int, ...] | None = None
    ep: tuple[int, ...] | None = None
    vpp: tuple[int, ...] | None = None
    micro_batch_size: tuple[int, ...] = (1, 2, 4, 8)
    sequence_parallel: tuple[bool, ...] = (False, True)
    recompute: tuple[Recompute, ...] = tuple(Recompute)
    zero: tuple[int, ...] = (0, 1, 2, 3)
    orders: tuple[str, ...] = DEFAULT_ORDERS
    max_pp: int | None = None
    max_tp: int | None = None
    grad_reduce_in_bf16: bool = False  # a numerics choice the user makes, not searched
    zero3_impl: str = "fsdp"  # the framework that shards under zero 3: the user's choice
    moe_load_factor: float = 1.0  # the router's imbalance (Plan.moe_load_factor), not searched
    optimizer_dtype: str = "fp32"  # Adam state precision (Plan.optimizer_dtype), not searched


@dataclass(frozen=True, slots=True, kw_only=True)
class Space:
    model: ModelSpec
    cluster: ClusterSpec
    num_gpus: int
    global_batch_range: tuple[int, int]  # sequences, inclusive
    precision: Precision
    knobs: Knobs = field(default_factory=Knobs)


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Layout:
    tp: int
    pp: int
    cp: int
    ep: int

    @property
    def key(self) -> str:
        return f"tp{self.tp}-pp{self.pp}-cp{self.cp}-ep{self.ep}"


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _allowed(values: list[int], pinned: tuple[int, ...] | None, cap: int | None = None):
    kept = [v for v in values if (pinned is None or v in pinned) and (cap is None or v <= cap)]
    return kept


def tp_choices(space: Space) -> list[int]:
    m, k = space.model, space.knobs
    cap = min(space.cluster.gpus_per_node, k.max_tp or space.cluster.gpus_per_node)
    valid = [t for t in divisors(space.num_gpus)
             if m.num_heads % t == 0 and m.num_kv_heads % t == 0 and sp_choices(space, t)]
    return _allowed(valid, k.tp, cap)


def pp_choices(space: Space, tp: int) -> list[int]:
    valid = [p for p in divisors(space.num_gpus // tp)
             if pipeline_split(space.model.num_layers, p) is not None
             and vpp_choices(space, p) and zero_choices(space, p)]
    return _allowed(valid, space.knobs.pp, space.knobs.max_pp)


def cp_choices(space: Space, tp: int, pp: int) -> list[int]:
    seq = space.model.seq_len
    valid = [c for c in divisors(space.num_gpus // (tp * pp))
             if c == 1 or (seq >= CP_MIN_SEQ_LEN and seq % (2 * c) == 0
                           and seq // c >= CP_MIN_SEQ_LEN // 4)]
    return _allowed(valid, space.knobs.cp)


def ep_choices(space: Space, tp: int, pp: int, cp: int) -> list[int]:
    if not space.model.is_moe:
        return [1]
    stage_ranks = space.num_gpus // pp
    valid = [e for e in divisors(space.model.num_experts) if stage_ranks % e == 0]
    return _allowed(valid, space.knobs.ep)


def layouts(space: Space) -> list[Layout]:
    out = []
    for tp in tp_choices(space):
        for pp in pp_choices(space, tp):
            for cp in cp_choices(space, tp, pp):
                for ep in ep_choices(space, tp, pp, cp):
                    out.append(Layout(tp=tp, pp=pp, cp=cp, ep=ep))
    return out


def global_batch_choices(lo: int, hi: int, dp: int) -> list[int]:
    """Multiples of dp in [lo, hi], thinned to MAX_GBS_CHOICES evenly spread (largest kept)."""
    first = -(-lo // dp) * dp
    values = list(range(first, hi + 1, dp))
    if len(values) <= MAX_GBS_CHOICES:
        return values
    picks = np.linspace(0, len(values) - 1, MAX_GBS_CHOICES).round().astype(int)
    return [values[i] for i in sorted(set(picks))]


def vpp_choices(space: Space, pp: int) -> list[int]:
    if pp == 1:
        return _allowed([1], space.knobs.vpp)  # a --vpp pin without 1 excludes pp 1
    layers = space.model.num_layers
    # equal virtual stages, of the layers or of the layers plus the embedding and the loss
    valid = sorted({1} | {v for slots in (layers, layers + EMBEDDING_AND_LOSS_SLOTS)
                          if slots % pp == 0 for v in divisors(slots // pp)})
    return _allowed(valid, space.knobs.vpp)


def sp_choices(space: Space, tp: int) -> list[bool]:
    return [s for s in space.knobs.sequence_parallel if not s or tp > 1]


def recompute_choices(space: Space) -> list[int]:
    """Recompute codes to try; recomputing the MoE block only exists in MoE models."""
    return [RECOMPUTE_CODES.index(r) for r in space.knobs.recompute
            if r != Recompute.MOE or space.model.is_moe]


def zero_choices(space: Space, pp: int) -> list[int]:
    """ZeRO-2/3 only without pipelining; bf16 Adam states only in the distributed optimizer."""
    bf16_states = space.knobs.optimizer_dtype == "bf16"
    return [z for z in space.knobs.zero
            if (z <= 1 or pp == 1) and (z == 1 or not bf16_states)]


def product_columns(*axes) -> tuple[np.ndarray, ...]:
    """The cartesian product of integer lists, one read-only column per list, in
    itertools.product order (built by numpy). The search asks once per layout and most
    layouts share their lists, so products are kept by the lists' values (about 10% of a
    whole search's time on the 500b space)."""
    return _cartesian(tuple(tuple(int(v) for v in a) for a in axes))


@functools.lru_cache(maxsize=256)
def _cartesian(axes: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, ...]:
    columns = [np.asarray(a, dtype=np.int64) for a in axes]
    index = np.indices([len(c) for c in columns]).reshape(len(columns), -1)
    out = tuple(column[i] for column, i in zip(columns, index))
    for column in out:
        column.flags.writeable = False  # shared between callers
    return out


def clear_candidate_cache() -> None:
    """Forget the kept products: what a benchmark of a search's first call needs."""
    _cartesian.cache_clear()


def inner_candidates(space: Space, layout: Layout) -> PlanArrays:
    """Every valid combination of the inner knobs for one layout, as arrays."""
    dp = space.num_gpus // (layout.tp * layout.pp * layout.cp)
    k = space.knobs
    lo, hi = space.global_batch_range
    vpp, gbs, mbs, sp, rec, zero, order = product_columns(
        vpp_choices(space, layout.pp), global_batch_choices(lo, hi, dp), k.micro_batch_size,
        sp_choices(space, layout.tp), recompute_choices(space),
        zero_choices(space, layout.pp), [ORDERS.index(o) for o in k.orders])
    micro = gbs // np.maximum(mbs * dp, 1)
    ok = (gbs % (mbs * dp) == 0) & (micro >= 1)
    ok &= (vpp == 1) | (micro % layout.pp == 0)
    if space.model.is_moe:
        ok &= (layout.tp * layout.cp * dp) % layout.ep == 0
    if k.zero3_impl == "deepspeed":  # DeepSpeed runs ZeRO-3 but not the MoE-block recompute
        ok &= (zero != 3) | (rec != RECOMPUTE_CODES.index(Recompute.MOE))
    n = int(ok.sum())
    full = np.full(n, 1, dtype=np.int64)
    return PlanArrays(
        tp=full * layout.tp, pp=full * layout.pp, vpp=vpp[ok], dp=full * dp,
        cp=full * layout.cp, ep=full * layout.ep, micro_batch_size=mbs[ok],
        global_batch_size=gbs[ok], sequence_parallel=sp[ok].astype(bool),
        recompute=rec[ok], zero=zero[ok],
        precision=full * PRECISION_CODES.index(space.precision),
        flash_attention=np.ones(n, dtype=bool), order=order[ok],
        grad_reduce_in_bf16=np.full(n, space.knobs.grad_reduce_in_bf16, dtype=bool),
        zero3_deepspeed=np.full(n, space.knobs.zero3_impl == "deepspeed", dtype=bool),
        moe_load_factor=np.full(n, float(space.knobs.moe_load_factor)),
        bf16_optimizer=np.full(n, space.knobs.optimizer_dtype == "bf16", dtype=bool))


def check_load_factor(model: ModelSpec, load: float) -> None:
    """--moe-load-factor as the user gave it (cost_models.specs.load_factor_problem)."""
    problem = load_factor_problem(model, load)
    if problem:
        raise SpecError(f"--moe-load-factor {load!r}: {problem}")


def check_space(space: Space) -> None:
    """One clear line when nothing in the space can be valid."""
    pinned_ep = space.knobs.ep
    if pinned_ep is not None and not space.model.is_moe and pinned_ep != (1,):
        raise SpecError(f"--ep {','.join(map(str, pinned_ep))}: {space.model.name} is a dense "
                        "model; expert parallelism needs experts (drop --ep)")
    check_load_factor(space.model, space.knobs.moe_load_factor)
    if space.knobs.grad_reduce_in_bf16 and space.precision == Precision.FP16:
        raise SpecError("--grad-reduce-in-bf16 needs --precision bf16 or fp8 (fp16 runs "
                        "reduce gradients in fp16 already)")
    if not recompute_choices(space):
        raise SpecError(f"--recompute moe: {space.model.name} is a dense model; recomputing "
                        "the MoE block needs experts (use none, selective or full)")
    k = space.knobs
    if k.optimizer_dtype == "bf16" and (space.precision == Precision.FP16 or 1 not in k.zero):
        raise SpecError("--optimizer-dtype bf16 needs zero 1 plans (Megatron-Core's "
                        "precision-aware optimizer runs in its distributed optimizer) and "
                        "--precision bf16 or fp8; allow --zero 1, or use --optimizer-dtype fp32")
    if k.zero3_impl == "deepspeed" and set(k.zero) == {3} and set(k.recompute) == {Recompute.MOE}:
        raise SpecError("--zero 3 --recompute moe --zero3-impl deepspeed: DeepSpeed cannot "
                        "recompute the MoE block (a Megatron-Core module list); allow another "
                        "--recompute, or use --zero3-impl fsdp")
    if not tp_choices(space):
        raise SpecError(f"no tensor-parallel degree divides {space.num_gpus} GPUs, the "
                        f"{space.model.num_heads} heads and {space.model.num_kv_heads} KV "
                        "heads within one node; change --gpus or the --tp pin")
    if not layouts(space):
        raise SpecError(f"no (tp, pp, cp, ep) layout fits {space.num_gpus} GPUs and "
                        f"{space.model.num_layers} layers under the pins; try another GPU "
                        "count (e.g. a multiple of 8 x a divisor of the layer count) or "
                        "relax --pp/--max-pp/--cp/--vpp/--zero")
