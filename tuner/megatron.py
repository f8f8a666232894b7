"""A plan as Megatron-LM command-line arguments, and the checks megatron-core does not make.

Flag names and their meaning follow Megatron-LM `megatron/training/arguments.py` for
megatron-core 0.16 (the version pinned in pyproject.toml); the field names of
`megatron_transformer_config_kwargs` follow `core_transformer_config_from_args` there, so the
tests can build megatron-core's own `TransformerConfig` from the same values.

ZeRO stages map onto Megatron's own data-parallel sharding:
  zero 0 -> plain DDP (gradient all-reduce)
  zero 1 -> `--use-distributed-optimizer` (optimizer state sharded, gradients reduce-scattered)
  zero 2 -> Megatron-FSDP, `--data-parallel-sharding-strategy optim_grads`
  zero 3 -> Megatron-FSDP, `--data-parallel-sharding-strategy optim_grads_params`
Megatron-FSDP (`--use-megatron-fsdp`) is chosen over `--use-torch-fsdp2` because FSDP2 refuses
pipeline and expert parallelism in Megatron-LM 0.16; Megatron-FSDP only saves the
`fsdp_dtensor` checkpoint format, hence `--ckpt-format fsdp_dtensor`.

Standard library only: megatron-core needs torch, which tuner/ must not import.
"""

from __future__ import annotations

from cost_models.pipeline import interleaving, stage_split
from cost_models.plan_shapes import check_shapes
from cost_models.specs import Mlp, ModelSpec, Plan, Precision, Recompute, SpecError

# Megatron-LM can lay ranks out in two orders only (innermost first): its default, and the one
# `--use-tp-pp-dp-mapping` selects. ep is carved out of tp*cp*dp in both (ETP = 1).
_ORDER_FLAGS: dict[str, tuple[str, ...]] = {
    "tp-cp-dp-pp": (),
    "tp-cp-pp-dp": ("--use-tp-pp-dp-mapping",),
}
_SHARDING = {2: "optim_grads", 3: "optim_grads_params"}  # Megatron-FSDP strategies
_ACTIVATIONS = {Mlp.GELU: "gelu", Mlp.SWIGLU: "silu", Mlp.RELU2: "squared_relu"}
_DTYPES = {Precision.FP16: "float16", Precision.BF16: "bfloat16", Precision.FP8: "bfloat16"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def check_megatron(model: ModelSpec, plan: Plan) -> None:
    """Raise SpecError for a plan Megatron-LM cannot run but megatron-core's configs accept.

    megatron-core 0.16 `TransformerConfig` itself rejects heads % tp, sequence parallel with
    tp 1 and fp16 with bf16; it lets the checks below through and training fails later.
    """
    where = f"Megatron-LM cannot run plan {plan.name} for model {model.name!r}:"
    _require(plan.vpp == 1 or interleaving(model.num_layers, plan.pp, plan.vpp) is not None,
             f"{where} neither num_layers={model.num_layers} nor num_layers + 2 (the embedding "
             f"and the loss counted as layers) is divisible by pp*vpp={plan.pp}*{plan.vpp} "
             "(interleaving needs equal stages)")
    check_shapes(model, plan, where)
    _require(plan.cp == 1 or model.seq_len % (2 * plan.cp) == 0,
             f"{where} seq_len={model.seq_len} must be a multiple of 2*cp={2 * plan.cp}")
    _require(model.mlp in _ACTIVATIONS,
             f"{where} Megatron-LM has no flag for a {model.mlp.value} MLP "
             "(it has gelu, --swiglu, --squared-relu)")
    _require(plan.order in _ORDER_FLAGS,
             f"{where} order {plan.order!r} is not one Megatron-LM can place; use one of "
             f"{', '.join(_ORDER_FLAGS)}")
    _check_experts(model, plan, where)


def _check_experts(model: ModelSpec, plan: Plan, where: str) -> None:
    if not model.is_moe:
        _require(plan.recompute != Recompute.MOE,
                 f"{where} recompute 'moe' needs an MoE model; use selective")
        return
    _require(plan.recompute != Recompute.MOE or plan.flash_attention,
             f"{where} recompute 'moe' is a module-level mode of flash-attention runs; use "
             "selective or full without flash attention")
    _require(plan.ep == 1 or plan.precision != Precision.FP16,
             f"{where} expert parallelism (ep={plan.ep}) does not support fp16; use bf16")


def moe_layer_pattern(model: ModelSpec) -> str:
    """`--moe-layer-freq` for the model's fraction of MoE layers.

    An integer N means "layer i is MoE when i % N == 0" in Megatron-LM; it is used when it
    gives exactly `model.num_moe_layers`. Otherwise a list spreads the MoE layers evenly.
    """
    layers, moe = model.num_layers, model.num_moe_layers
    every = round(1 / model.moe_layer_freq)
    if layers % every == 0 and layers // every == moe:
        return str(every)
    flags = [(i + 1) * moe // layers - i * moe // layers for i in range(layers)]
    return "[" + ",".join(str(flag) for flag in flags) + "]"


def accounts_embedding_and_loss(model: ModelSpec, plan: Plan) -> bool:
    """Interleaving over layers pp*vpp does not divide: the embedding and the loss count as
    layers (Megatron-Core account_for_{embedding,loss}_in_pipeline_split)."""
    return plan.vpp > 1 and interleaving(
        model.num_layers, plan.pp, plan.vpp) == "embedding_and_loss"


def uneven_stage_layers(model: ModelSpec, plan: Plan) -> tuple[int | None, int | None]:
    """Layers of the first and last stage when pp does not divide the layers or the last
    stage makes room for multi-token prediction, else None (also None when interleaving
    counts the embedding and the loss instead)."""
    split = stage_split(model.num_layers, plan.pp, plan.vpp, model.mtp_layers)
    assert split is not None  # check_megatron refused the plan otherwise
    first, middle, last, _ = split
    if first == middle == last or accounts_embedding_and_loss(model, plan):
        return None, None
    return first, last


def _parallel_args(model: ModelSpec, plan: Plan) -> list[str]:
    args = ["--tensor-model-parallel-size", str(plan.tp),
            "--pipeline-model-parallel-size", str(plan.pp)]
    if accounts_embedding_and_loss(model, plan):
        args += ["--virtual-pipeline-model-parallel-size", str(plan.vpp),
                 "--account-for-embedding-in-pipeline-split",
                 "--account-for-loss-in-pipeline-split"]
    elif plan.vpp > 1:
        per_stage = model.num_layers // (plan.pp * plan.vpp)
        args += ["--num-layers-per-virtual-pipeline-stage", str(per_stage)]
    first, last = uneven_stage_layers(model, plan)
    if first is not None:
        args += ["--decoder-first-pipeline-num-layers", str(first),
                 "--decoder-last-pipeline-num-layers", str(last)]
    args += ["--context-parallel-size", str(plan.cp),
             "--expert-model-parallel-size", str(plan.ep)]
    if model.is_moe:
        args += ["--expert-tensor-parallel-size", "1"]
    if plan.sequence_parallel:
        args.append("--sequence-parallel")
    return args + list(_ORDER_FLAGS[plan.order])


def recompute_modules(model: ModelSpec, plan: Plan) -> list[str]:
    """The modules selective recomputation redoes, as the cost model counts them: with flash
    attention the norms (and the MoE activation, which needs grouped GEMMs); with unfused
    attention Korthikanti's attention core (Megatron's default, core_attn)."""
    if not plan.flash_attention:
        return ["core_attn"]
    if plan.recompute == Recompute.MOE:
        return ["layernorm", "moe"]
    return ["layernorm"] + (["moe_act"] if model.is_moe else [])


def _overlap_args(plan: Plan) -> list[str]:
    """The cost model hides DP gradient reduction behind the last backward and the weight
    all-gather behind the first forward: Megatron-LM does so only when asked."""
    if plan.zero >= 2 or plan.dp * plan.cp == 1:
        return []
    return ["--overlap-grad-reduce"] + (["--overlap-param-gather"] if plan.zero == 1 else [])


def _batch_and_memory_args(model: ModelSpec, plan: Plan) -> list[str]:
    args = ["--micro-batch-size", str(plan.micro_batch_size),
            "--global-batch-size", str(plan.global_batch_size)]
    if plan.recompute in (Recompute.SELECTIVE, Recompute.MOE):
        args += ["--recompute-granularity", "selective",
                 "--recompute-modules", *recompute_modules(model, plan)]
    elif plan.recompute == Recompute.FULL:
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform",
                 "--recompute-num-layers", "1"]
    if plan.zero == 1:
        args.append("--use-distributed-optimizer")
    elif plan.zero >= 2:
        args += ["--use-megatron-fsdp", "--data-parallel-sharding-strategy",
                 _SHARDING[plan.zero], "--ckpt-format", "fsdp_dtensor"]
    return args + _overlap_args(plan)


def _optimizer_state_args(plan: Plan) -> list[str]:
    """bf16 Adam states: Megatron-Core's precision-aware optimizer (TE FusedAdam) with bf16
    moments; the main weights stay fp32, kept as bf16 weight + 16-bit remainder
    (OptimizerConfig.store_param_remainders, True by default with TE >= 2.1; Megatron-LM has
    no flag for it). Gradients reduced in bf16 are read as they are (--main-grads-dtype)."""
    if plan.optimizer_dtype != "bf16":
        return []
    grads = ["--main-grads-dtype", "bf16"] if plan.grad_reduce_in_bf16 else []
    return ["--use-precision-aware-optimizer", "--exp-avg-dtype", "bf16",
            "--exp-avg-sq-dtype", "bf16", *grads]


def _precision_args(plan: Plan) -> list[str]:
    if plan.precision == Precision.FP16:
        return ["--fp16"]
    grads = ["--grad-reduce-in-bf16"] if plan.grad_reduce_in_bf16 else []
    grads += _optimizer_state_args(plan)
    if plan.precision == Precision.FP8:  # FP8 GEMMs through Transformer Engine, bf16 elsewhere
        return ["--bf16", "--fp8-format", "hybrid", *grads]
    return ["--bf16", *grads]


def _model_args(model: ModelSpec) -> list[str]:
    args = ["--num-layers", str(model.num_layers), "--hidden-size", str(model.hidden_size),
            "--ffn-hidden-size", str(model.ffn_hidden_size),
            "--num-attention-heads", str(model.num_heads), "--kv-channels", str(model.head_dim),
            "--seq-length", str(model.seq_len),
            "--max-position-embeddings", str(model.seq_len)]
    if model.num_kv_heads != model.num_heads:
        args += ["--group-query-attention", "--num-query-groups", str(model.num_kv_heads)]
    args += {Mlp.SWIGLU: ["--swiglu"], Mlp.RELU2: ["--squared-relu"]}.get(model.mlp, [])
    if not model.tied_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    if model.mtp_layers:
        args += ["--mtp-num-layers", str(model.mtp_layers)]
    return args + _mla_args(model) + _moe_args(model)


def _mla_fields(model: ModelSpec) -> dict[str, int]:
    """Megatron-Core MLATransformerConfig fields of a multi-head latent attention model
    (q_lora_rank None: queries projected directly)."""
    if not model.is_mla:
        return {}
    return {"q_lora_rank": model.q_lora_rank or None, "kv_lora_rank": model.kv_lora_rank,
            "qk_head_dim": model.head_dim, "qk_pos_emb_head_dim": model.qk_rope_head_dim,
            "v_head_dim": model.v_head_dim or model.head_dim}


def _mla_args(model: ModelSpec) -> list[str]:
    fields = _mla_fields(model)
    if not fields:
        return []
    args = ["--multi-latent-attention"]
    for name, value in fields.items():
        if value is not None:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args


def megatron_config_class(model: ModelSpec) -> str:
    """The megatron-core config class the kwargs below are for (tuner/ cannot import it)."""
    return "MLATransformerConfig" if model.is_mla else "TransformerConfig"


def _moe_args(model: ModelSpec) -> list[str]:
    if not model.is_moe:
        return []
    args = ["--num-experts", str(model.num_experts), "--moe-router-topk", str(model.moe_topk),
            "--moe-ffn-hidden-size", str(model.moe_ffn_hidden_size),
            "--moe-layer-freq", moe_layer_pattern(model), "--moe-grouped-gemm"]
    if model.moe_shared_ffn_hidden_size > 0:
        args += ["--moe-shared-expert-intermediate-size", str(model.moe_shared_ffn_hidden_size)]
    if model.moe_router_groups:
        args += ["--moe-router-num-groups", str(model.moe_router_groups),
                 "--moe-router-group-topk", str(model.moe_router_group_topk)]
    return args


def megatron_args(model: ModelSpec, plan: Plan) -> list[str]:
    """Megatron-LM arguments (for pretrain_gpt.py) that lay out `plan` for `model`.

    Data, tokenizer, optimizer and schedule arguments are the user's: append them.
    """
    _require(plan.zero < 3 or plan.zero3_impl == "fsdp",
             f"plan {plan.name} was predicted for DeepSpeed ZeRO-3 (zero3_impl deepspeed), "
             "not the Megatron-FSDP Megatron-LM runs; launch it with --framework deepspeed, "
             "or re-plan with --zero3-impl fsdp")
    check_megatron(model, plan)
    return (_parallel_args(model, plan) + _batch_and_memory_args(model, plan)
            + _precision_args(plan) + _model_args(model))


def megatron_env(plan: Plan) -> dict[str, str]:
    """Environment Megatron-LM 0.16 asserts on: one CUDA stream queue when tp or cp > 1 orders
    the TP/CP communication before the GEMMs it overlaps; Megatron-FSDP needs more than one."""
    if (plan.tp > 1 or plan.cp > 1) and plan.zero < 2:
        return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    return {}


def megatron_transformer_config_kwargs(model: ModelSpec, plan: Plan) -> dict[str, object]:
    """Keyword arguments of megatron-core's `TransformerConfig` for the same plan
    (`MLATransformerConfig` for a multi-head latent attention model: megatron_config_class).

    tuner/ cannot import torch, so three values are names for the caller to resolve:
    `params_dtype` and `pipeline_dtype` name a `torch` dtype attribute, and `activation_func`
    names a function in `megatron.core.activations` or `torch.nn.functional`.
    """
    check_megatron(model, plan)
    kwargs: dict[str, object] = {
        "tensor_model_parallel_size": plan.tp, "pipeline_model_parallel_size": plan.pp,
        "virtual_pipeline_model_parallel_size": plan.vpp if plan.vpp > 1 else None,
        "context_parallel_size": plan.cp, "expert_model_parallel_size": plan.ep,
        "sequence_parallel": plan.sequence_parallel,
        "num_layers": model.num_layers, "hidden_size": model.hidden_size,
        "ffn_hidden_size": model.ffn_hidden_size, "num_attention_heads": model.num_heads,
        "kv_channels": model.head_dim,
        "num_query_groups": model.num_kv_heads if model.num_kv_heads != model.num_heads else None,
        "gated_linear_unit": model.mlp == Mlp.SWIGLU, "activation_func": _ACTIVATIONS[model.mlp],
        "fp16": plan.precision == Precision.FP16, "bf16": plan.precision != Precision.FP16,
        "fp8": "hybrid" if plan.precision == Precision.FP8 else None,
        "params_dtype": _DTYPES[plan.precision], "pipeline_dtype": _DTYPES[plan.precision],
    }
    first, last = uneven_stage_layers(model, plan)
    if first is not None:
        kwargs |= {"num_layers_in_first_pipeline_stage": first,
                   "num_layers_in_last_pipeline_stage": last}
    if accounts_embedding_and_loss(model, plan):
        kwargs |= {"account_for_embedding_in_pipeline_split": True,
                   "account_for_loss_in_pipeline_split": True}
    kwargs.update(_recompute_kwargs(model, plan))
    kwargs.update(_moe_kwargs(model))
    if model.is_mla:
        kwargs |= {"multi_latent_attention": True, **_mla_fields(model)}
    if model.mtp_layers:
        kwargs["mtp_num_layers"] = model.mtp_layers
    return kwargs


def _recompute_kwargs(model: ModelSpec, plan: Plan) -> dict[str, object]:
    if plan.recompute == Recompute.FULL:
        return {"recompute_granularity": "full", "recompute_method": "uniform",
                "recompute_num_layers": 1}
    if plan.recompute in (Recompute.SELECTIVE, Recompute.MOE):
        return {"recompute_granularity": "selective",
                "recompute_modules": recompute_modules(model, plan)}
    return {}


def _moe_kwargs(model: ModelSpec) -> dict[str, object]:
    if not model.is_moe:
        return {}
    pattern = moe_layer_pattern(model)
    freq = [int(flag) for flag in pattern[1:-1].split(",")] if pattern[0] == "[" else int(pattern)
    return {"num_moe_experts": model.num_experts, "moe_router_topk": model.moe_topk,
            "moe_ffn_hidden_size": model.moe_ffn_hidden_size, "moe_layer_freq": freq,
            "moe_shared_expert_intermediate_size": model.moe_shared_ffn_hidden_size or None,
            "expert_tensor_parallel_size": 1, "moe_grouped_gemm": True,
            "moe_router_num_groups": model.moe_router_groups or None,
            "moe_router_group_topk": model.moe_router_group_topk or None}


def megatron_ddp_config_kwargs(plan: Plan) -> dict[str, object]:
    """Keyword arguments of megatron-core's `DistributedDataParallelConfig` for plan.zero."""
    overlap = _overlap_args(plan)
    return {"use_distributed_optimizer": plan.zero == 1, "use_megatron_fsdp": plan.zero >= 2,
            "data_parallel_sharding_strategy": _SHARDING.get(plan.zero, "no_shard"),
            "overlap_grad_reduce": "--overlap-grad-reduce" in overlap,
            "overlap_param_gather": "--overlap-param-gather" in overlap,
            # Megatron-LM sets it for bf16 unless --grad-reduce-in-bf16; fp16 reduces in fp16
            "grad_reduce_in_fp32": plan.precision != Precision.FP16
            and not plan.grad_reduce_in_bf16}
