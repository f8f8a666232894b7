"""The checks of a plan against a model's shape that every framework needs.

Tensor parallelism splits attention heads and KV heads (query groups) evenly (Megatron-LM
and DeepSpeed AutoTP alike, and the cost model prices even shards); pipeline stages need a
split of the layers (cost_models.pipeline.stage_split, the split the prediction priced);
expert parallelism needs whole experts per rank and an expert group inside the ranks of one
stage (expert tensor parallel 1). Used by the launchers (framework-specific checks live in
tuner.megatron and tuner.deepspeed_config) and by validation (a published row whose plan
does not divide its model is skipped with the reason). Standard library only.
"""

from __future__ import annotations

from cost_models.pipeline import stage_split
from cost_models.specs import ModelSpec, Plan, SpecError


def shape_problem(model: ModelSpec, plan: Plan) -> str | None:
    """What in `plan` does not divide `model` (one clause with its fix), or None."""
    if model.num_heads % plan.tp:
        return f"num_heads={model.num_heads} is not divisible by tp={plan.tp}"
    if model.num_kv_heads % plan.tp:
        return (f"num_kv_heads={model.num_kv_heads} (query groups) is not divisible by "
                f"tp={plan.tp}; use a tp that divides {model.num_kv_heads}")
    if stage_split(model.num_layers, plan.pp, plan.vpp, model.mtp_layers) is None:
        return (f"num_layers={model.num_layers} cannot be split over pp={plan.pp} stages "
                "(uneven splits keep the middle stages equal)")
    if not model.is_moe:
        return f"ep={plan.ep} needs an MoE model (num_experts > 1)" if plan.ep > 1 else None
    if model.num_experts % plan.ep:
        return f"num_experts={model.num_experts} is not divisible by ep={plan.ep}"
    dense_ranks = plan.tp * plan.cp * plan.dp
    if dense_ranks % plan.ep:
        return f"ep={plan.ep} must divide tp*cp*dp={dense_ranks} (expert tensor parallel 1)"
    return None


def check_shapes(model: ModelSpec, plan: Plan, where: str) -> None:
    """SpecError `where` + the problem, when the plan does not divide the model."""
    problem = shape_problem(model, plan)
    if problem:
        raise SpecError(f"{where} {problem}")
