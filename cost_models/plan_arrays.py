"""Many plans as columns of numpy arrays, so the cost model scores them in one pass.

`PlanArrays` holds one array per `Plan` field; enums are stored as small integer codes.
`from_plans` / `to_plan` convert both ways; the search builds arrays directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from cost_models.specs import AXES, ModelSpec, Plan, Precision, Recompute

RECOMPUTE_CODES = (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL, Recompute.MOE)
FULL_RECOMPUTE = RECOMPUTE_CODES.index(Recompute.FULL)
MOE_RECOMPUTE = RECOMPUTE_CODES.index(Recompute.MOE)
PRECISION_CODES = (Precision.FP16, Precision.BF16, Precision.FP8)
ORDERS = tuple("-".join(p) for p in itertools.permutations(AXES))
# ORDER_POSITION[code, axis] = position of AXES[axis] in ORDERS[code], innermost = 0
ORDER_POSITION = np.array([[order.split("-").index(a) for a in AXES] for order in ORDERS])


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanArrays:
    tp: np.ndarray
    pp: np.ndarray
    vpp: np.ndarray
    dp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    micro_batch_size: np.ndarray
    global_batch_size: np.ndarray
    sequence_parallel: np.ndarray  # bool
    recompute: np.ndarray  # index into RECOMPUTE_CODES
    zero: np.ndarray
    precision: np.ndarray  # index into PRECISION_CODES
    flash_attention: np.ndarray  # bool
    order: np.ndarray  # index into ORDERS
    grad_reduce_in_bf16: np.ndarray  # bool
    zero3_deepspeed: np.ndarray  # bool: plan.zero3_impl == "deepspeed"
    moe_load_factor: np.ndarray  # float
    bf16_optimizer: np.ndarray  # bool: plan.optimizer_dtype == "bf16"

    def __len__(self) -> int:
        return len(self.tp)

    @property
    def num_microbatches(self) -> np.ndarray:
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    @property
    def num_gpus(self) -> np.ndarray:
        return self.tp * self.pp * self.dp * self.cp

    def take(self, index) -> PlanArrays:
        return PlanArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def concat(parts: Sequence[PlanArrays]) -> PlanArrays:
    """The plans of `parts`, in order, as one PlanArrays (at least one part)."""
    return PlanArrays(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                         for f in fields(PlanArrays)})


def from_plans(plans: Sequence[Plan]) -> PlanArrays:
    def column(name: str, convert=int) -> np.ndarray:
        return np.array([convert(getattr(p, name)) for p in plans])

    return PlanArrays(
        tp=column("tp"), pp=column("pp"), vpp=column("vpp"), dp=column("dp"),
        cp=column("cp"), ep=column("ep"), micro_batch_size=column("micro_batch_size"),
        global_batch_size=column("global_batch_size"),
        sequence_parallel=column("sequence_parallel", bool),
        recompute=np.array([RECOMPUTE_CODES.index(p.recompute) for p in plans]),
        zero=column("zero"),
        precision=np.array([PRECISION_CODES.index(p.precision) for p in plans]),
        flash_attention=column("flash_attention", bool),
        order=np.array([ORDERS.index(p.order) for p in plans]),
        grad_reduce_in_bf16=column("grad_reduce_in_bf16", bool),
        zero3_deepspeed=np.array([p.zero3_impl == "deepspeed" for p in plans], dtype=bool),
        moe_load_factor=column("moe_load_factor", float),
        bf16_optimizer=np.array([p.optimizer_dtype == "bf16" for p in plans], dtype=bool))


def to_plan(arrays: PlanArrays, i: int) -> Plan:
    return Plan(tp=int(arrays.tp[i]), pp=int(arrays.pp[i]), vpp=int(arrays.vpp[i]),
                dp=int(arrays.dp[i]), cp=int(arrays.cp[i]), ep=int(arrays.ep[i]),
                micro_batch_size=int(arrays.micro_batch_size[i]),
                global_batch_size=int(arrays.global_batch_size[i]),
                sequence_parallel=bool(arrays.sequence_parallel[i]),
                recompute=RECOMPUTE_CODES[int(arrays.recompute[i])], zero=int(arrays.zero[i]),
                precision=PRECISION_CODES[int(arrays.precision[i])],
                flash_attention=bool(arrays.flash_attention[i]),
                order=ORDERS[int(arrays.order[i])],
                grad_reduce_in_bf16=bool(arrays.grad_reduce_in_bf16[i]),
                zero3_impl="deepspeed" if arrays.zero3_deepspeed[i] else "fsdp",
                moe_load_factor=float(arrays.moe_load_factor[i]),
                optimizer_dtype="bf16" if arrays.bf16_optimizer[i] else "fp32")


def busiest_rank_load(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    """The plan's moe_load_factor as it can happen: a rank holds num_experts/ep experts and a
    token sends at most min(topk, num_experts/ep) copies to one rank, so the busiest rank
    gets at most min(ep, model.max_moe_load_factor) times the mean (1 with one expert rank)."""
    cap = np.maximum(np.minimum(plans.ep, model.max_moe_load_factor), 1.0)
    return np.clip(plans.moe_load_factor, 1.0, cap)


def routed_copies(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    """Routed copies of each token the busiest expert-parallel rank processes: top-k on
    average, times the load factor (the rank every other one waits for)."""
    return model.moe_topk * busiest_rank_load(model, plans)
