"""A plan as a DeepSpeed config (the JSON `deepspeed.initialize(config=...)` reads).

Keys and their checks follow DeepSpeed 0.19.8 `deepspeed/runtime/config.py` (the version
pinned in pyproject.toml):
- batch: DeepSpeed asserts `train_batch_size == train_micro_batch_size_per_gpu *
  gradient_accumulation_steps * world`, where `world` is the data-parallel size: the size the
  `mpu` reports (Megatron-DeepSpeed), or the process count divided by
  `sequence_parallel_size` (Ulysses) without one. So train_batch_size = mbs * ga * dp.
- `zero_optimization.stage` is plan.zero; the pipeline engine refuses ZeRO-2/3
  ("ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism"), so pp > 1 needs zero <= 1.
- tensor parallelism is `tensor_parallel.autotp_size` (AutoTP training), pipeline stages are
  `pipeline.stages`, context parallelism is Ulysses `sequence_parallel_size`, expert
  parallelism is `expert_parallel.autoep_size` (AutoEP, expert tensor parallel 1).
- fp8: the DeepSpeed config has no FP8 GEMM switch (FP8 comes from Transformer Engine layers
  in the model code); the config carries bf16, the precision of everything else.
Standard library only.
"""

from __future__ import annotations

from cost_models.plan_shapes import check_shapes
from cost_models.specs import ModelSpec, Plan, Precision, Recompute, SpecError


def check_deepspeed(model: ModelSpec, plan: Plan) -> None:
    """Raise SpecError for a plan DeepSpeed's engines refuse, or one that does not divide the
    model (cost_models.plan_shapes; Ulysses also scatters heads and the sequence over cp ranks)."""
    check_shapes(model, plan, f"DeepSpeed cannot run plan {plan.name} for model "
                              f"{model.name!r}:")
    if plan.cp > 1 and (model.num_heads % plan.cp or model.seq_len % plan.cp):
        raise SpecError(f"DeepSpeed cannot run plan {plan.name}: Ulysses sequence parallelism "
                        f"(cp={plan.cp}) needs num_heads={model.num_heads} and "
                        f"seq_len={model.seq_len} divisible by cp; use a cp that divides both")
    if plan.recompute == Recompute.MOE:
        raise SpecError(f"DeepSpeed cannot run plan {plan.name}: recompute 'moe' is "
                        "Megatron-Core's --recompute-modules layernorm moe; use selective or "
                        "full")
    if plan.vpp > 1:
        raise SpecError(f"DeepSpeed cannot run plan {plan.name}: its pipeline engine runs 1F1B "
                        f"without interleaving, so vpp={plan.vpp} would not be the schedule "
                        "predicted; launch it with --framework megatron, or search with --vpp 1")
    if plan.pp > 1 and plan.zero >= 2:
        raise SpecError(f"DeepSpeed cannot run plan {plan.name}: its pipeline engine supports "
                        f"ZeRO stage 0 or 1 only, got zero={plan.zero} with pp={plan.pp}; "
                        "use zero 1 or pp 1")
    if plan.optimizer_dtype != "fp32":
        raise SpecError(f"DeepSpeed cannot run plan {plan.name} as predicted: its ZeRO "
                        f"optimizer keeps fp32 Adam states, the plan {plan.optimizer_dtype} "
                        "ones (Megatron-Core's precision-aware optimizer); launch it with "
                        "--framework megatron, or re-plan with --optimizer-dtype fp32")
    if plan.zero == 3 and plan.zero3_impl != "deepspeed":
        raise SpecError(f"plan {plan.name} was predicted for Megatron-FSDP (zero3_impl fsdp), "
                        "whose gathers the cost model prices faster than DeepSpeed ZeRO-3's; "
                        "launch it with --framework megatron, or re-plan with --zero3-impl "
                        "deepspeed")


def _precision_block(plan: Plan) -> dict[str, object]:
    if plan.precision == Precision.FP16:
        # loss_scale 0 selects dynamic loss scaling, starting at 2**initial_scale_power
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}}
    if plan.grad_reduce_in_bf16:  # gradients accumulated and reduced in bf16
        return {"bf16": {"enabled": True}, "communication_data_type": "bf16",
                "data_types": {"grad_accum_dtype": "bf16"}}
    return {"bf16": {"enabled": True}}


def _zero_block(plan: Plan) -> dict[str, object]:
    block: dict[str, object] = {"stage": plan.zero}
    if plan.zero >= 1:
        block |= {"overlap_comm": True, "contiguous_gradients": True}
    return block


def _parallel_blocks(model: ModelSpec, plan: Plan) -> dict[str, object]:
    blocks: dict[str, object] = {}
    if plan.tp > 1:
        blocks["tensor_parallel"] = {"autotp_size": plan.tp}
    if plan.pp > 1:
        checkpoint_every = 1 if plan.recompute == Recompute.FULL else 0
        blocks["pipeline"] = {"stages": plan.pp,
                              "activation_checkpoint_interval": checkpoint_every}
    if plan.cp > 1:
        blocks["sequence_parallel_size"] = plan.cp
    if model.is_moe and plan.ep > 1:
        blocks["expert_parallel"] = {"enabled": True, "autoep_size": plan.ep,
                                     "expert_tensor_parallel_size": 1}
    return blocks


def _recompute_block(plan: Plan) -> dict[str, object]:
    if plan.recompute == Recompute.NONE:
        return {}
    # Which modules are recomputed is chosen where the model calls
    # deepspeed.checkpointing.checkpoint; this block only configures how.
    return {"activation_checkpointing": {"partition_activations": plan.tp > 1,
                                         "contiguous_memory_optimization": False,
                                         "cpu_checkpointing": False}}


def deepspeed_config(model: ModelSpec, plan: Plan) -> dict[str, object]:
    """The DeepSpeed config that runs `plan`: batch sizes, ZeRO, precision, parallel blocks."""
    check_deepspeed(model, plan)
    config: dict[str, object] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.num_microbatches,
        "train_batch_size": plan.global_batch_size,  # = mbs * ga * dp
        "zero_optimization": _zero_block(plan),
    }
    config |= _precision_block(plan)
    config |= _parallel_blocks(model, plan)
    config |= _recompute_block(plan)
    return config
