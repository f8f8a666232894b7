"""Megatron-LM arguments: megatron-core 0.16.1's own config classes accept the values, and
check_megatron rejects what megatron-core lets through."""

from __future__ import annotations

import argparse
import re
import warnings

import pytest
from launch_specs import DEEPSEEK_V3, GPT3, LLAMA, QWEN3, TINY_MOE

from bench.megatron_step import resolved_config_kwargs
from cost_models.specs import ModelSpec, Plan, SpecError
from tuner.megatron import (
    check_megatron,
    megatron_args,
    megatron_config_class,
    megatron_ddp_config_kwargs,
    megatron_env,
    megatron_transformer_config_kwargs,
    moe_layer_pattern,
)

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer import transformer_config as configs

# Megatron-LM 0.16 `megatron/training/arguments.py`: every flag megatron_args may emit, with
# its type (None: store_true). Unknown flags make parse_args fail, so a misspelt flag fails.
MEGATRON_LM_FLAGS = {
    "--tensor-model-parallel-size": int, "--pipeline-model-parallel-size": int,
    "--num-layers-per-virtual-pipeline-stage": int, "--context-parallel-size": int,
    "--virtual-pipeline-model-parallel-size": int,
    "--account-for-embedding-in-pipeline-split": None,
    "--account-for-loss-in-pipeline-split": None,
    "--decoder-first-pipeline-num-layers": int, "--decoder-last-pipeline-num-layers": int,
    "--expert-model-parallel-size": int, "--expert-tensor-parallel-size": int,
    "--sequence-parallel": None, "--use-tp-pp-dp-mapping": None,
    "--micro-batch-size": int, "--global-batch-size": int,
    "--recompute-granularity": ("full", "selective"), "--recompute-method": ("uniform", "block"),
    "--recompute-num-layers": int, "--use-distributed-optimizer": None,
    "--recompute-modules": ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe",
                            "shared_experts"),
    "--overlap-grad-reduce": None, "--overlap-param-gather": None, "--moe-grouped-gemm": None,
    "--use-megatron-fsdp": None,
    "--data-parallel-sharding-strategy": ("no_shard", "optim", "optim_grads",
                                          "optim_grads_params"),
    "--ckpt-format": ("torch", "torch_dist", "zarr", "torch_dcp", "fsdp_dtensor"),
    "--fp16": None, "--bf16": None, "--fp8-format": ("e4m3", "hybrid"),
    "--grad-reduce-in-bf16": None, "--use-precision-aware-optimizer": None,
    "--main-grads-dtype": ("fp32", "bf16"), "--exp-avg-dtype": ("fp32", "fp16", "bf16", "fp8"),
    "--exp-avg-sq-dtype": ("fp32", "fp16", "bf16", "fp8"),
    "--num-layers": int, "--hidden-size": int, "--ffn-hidden-size": int,
    "--num-attention-heads": int, "--kv-channels": int, "--group-query-attention": None,
    "--num-query-groups": int, "--seq-length": int, "--max-position-embeddings": int,
    "--swiglu": None, "--squared-relu": None, "--untie-embeddings-and-output-weights": None,
    "--num-experts": int, "--moe-router-topk": int, "--moe-ffn-hidden-size": int,
    "--moe-layer-freq": str, "--moe-shared-expert-intermediate-size": int,
    "--moe-router-num-groups": int, "--moe-router-group-topk": int,
    "--mtp-num-layers": int, "--multi-latent-attention": None, "--q-lora-rank": int,
    "--kv-lora-rank": int,
    "--qk-head-dim": int, "--qk-pos-emb-head-dim": int, "--v-head-dim": int,
}


def parse_megatron(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    for flag, kind in MEGATRON_LM_FLAGS.items():
        if kind is None:
            parser.add_argument(flag, action="store_true")
        elif flag == "--recompute-modules":  # Megatron-LM: nargs="*"
            parser.add_argument(flag, nargs="*", choices=kind)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind)
        else:
            parser.add_argument(flag, type=kind)
    return parser.parse_args(args)


def transformer_config(model: ModelSpec, plan: Plan) -> TransformerConfig:
    """megatron-core's TransformerConfig (MLATransformerConfig for MLA models) from the
    tuner's kwargs, names resolved to objects."""
    kwargs = resolved_config_kwargs(model, plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(configs, megatron_config_class(model))(**kwargs)


ACCEPTED = {
    "gpt3-dense-vpp": (GPT3, Plan(tp=8, pp=8, vpp=3, dp=16, micro_batch_size=1,
                                  global_batch_size=1536, sequence_parallel=True,
                                  recompute="selective", zero=1)),
    "llama-gqa-cp": (LLAMA, Plan(tp=8, pp=4, dp=4, cp=2, global_batch_size=512,
                                 sequence_parallel=True, recompute="full")),
    "llama-fp8-fsdp": (LLAMA, Plan(tp=4, dp=64, global_batch_size=1024, precision="fp8",
                                   zero=3, sequence_parallel=True)),
    "llama-fp16-tp-pp-dp-order": (LLAMA, Plan(tp=2, pp=2, dp=2, global_batch_size=16,
                                             precision="fp16", zero=2,
                                             order="tp-cp-pp-dp")),
    "qwen3-moe-ep": (QWEN3, Plan(tp=4, pp=2, dp=32, ep=32, micro_batch_size=1,
                                 global_batch_size=1024, sequence_parallel=True, zero=1)),
    "tiny-moe-shared": (TINY_MOE, Plan(tp=1, pp=2, vpp=2, dp=2, ep=2, global_batch_size=8)),
    "qwen3-moe-selective": (QWEN3, Plan(tp=2, pp=2, dp=16, ep=8, micro_batch_size=1,
                                        global_batch_size=64, sequence_parallel=True,
                                        recompute="selective", zero=1)),
    "llama-uneven-pp3": (LLAMA, Plan(tp=8, pp=3, dp=2, global_batch_size=16,
                                     sequence_parallel=True, zero=1)),
    # 94 layers + embedding + loss = 96 slots = 8 stages x 4 chunks x 3 (the ModelZoo's runs)
    "llama-bf16-grads": (LLAMA, Plan(tp=8, pp=2, dp=4, global_batch_size=64, zero=1,
                                     sequence_parallel=True, grad_reduce_in_bf16=True)),
    "llama-bf16-adam-states": (LLAMA, Plan(tp=8, pp=2, dp=4, global_batch_size=64, zero=1,
                                           sequence_parallel=True, grad_reduce_in_bf16=True,
                                           optimizer_dtype="bf16")),
    "llama-bf16-adam-fp32-grads": (LLAMA, Plan(tp=8, pp=2, dp=4, global_batch_size=64, zero=1,
                                               optimizer_dtype="bf16")),
    "deepseek-v3-mla": (DEEPSEEK_V3, Plan(tp=4, pp=8, dp=8, ep=32, global_batch_size=256,
                                          sequence_parallel=True, zero=1)),
    "qwen3-interleaved-embedding-and-loss": (QWEN3, Plan(
        tp=4, pp=8, vpp=4, dp=8, ep=8, global_batch_size=256, sequence_parallel=True,
        recompute="moe", zero=1)),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_megatron_core_accepts_the_values(case):
    model, plan = ACCEPTED[case]
    config = transformer_config(model, plan)
    assert config.tensor_model_parallel_size == plan.tp
    assert config.pipeline_model_parallel_size == plan.pp
    assert config.virtual_pipeline_model_parallel_size == (plan.vpp if plan.vpp > 1 else None)
    assert config.context_parallel_size == plan.cp
    assert config.expert_model_parallel_size == plan.ep
    assert config.num_query_groups == model.num_kv_heads
    assert config.kv_channels == model.head_dim
    assert config.num_moe_experts == (model.num_experts if model.is_moe else None)
    ddp = DistributedDataParallelConfig(**megatron_ddp_config_kwargs(plan))
    assert ddp.grad_reduce_in_fp32 == (plan.precision != "fp16" and not plan.grad_reduce_in_bf16)
    assert ddp.use_distributed_optimizer == (plan.zero == 1)
    assert ddp.use_megatron_fsdp == (plan.zero >= 2)


@pytest.mark.parametrize("case", ACCEPTED)
def test_arguments_are_megatron_lm_flags_with_the_same_values(case):
    model, plan = ACCEPTED[case]
    parsed = parse_megatron(megatron_args(model, plan))
    kwargs = megatron_transformer_config_kwargs(model, plan)
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "context_parallel_size", "expert_model_parallel_size", "num_layers",
                 "hidden_size", "ffn_hidden_size", "kv_channels", "sequence_parallel",
                 "fp16", "bf16"):
        assert getattr(parsed, name) == kwargs[name], name
    assert parsed.num_attention_heads == kwargs["num_attention_heads"]
    assert parsed.micro_batch_size * plan.dp * plan.num_microbatches == \
        parsed.global_batch_size
    assert parsed.seq_length == parsed.max_position_embeddings == model.seq_len
    accounted = kwargs.get("account_for_embedding_in_pipeline_split", False)
    assert parsed.account_for_embedding_in_pipeline_split == accounted
    assert parsed.account_for_loss_in_pipeline_split == accounted
    if accounted:
        assert parsed.virtual_pipeline_model_parallel_size == plan.vpp
        assert (parsed.num_layers + 2) % (plan.pp * plan.vpp) == 0
    elif plan.vpp > 1:  # Megatron-LM: vpp = (num_layers / pp) / layers per virtual stage
        per_stage = parsed.num_layers // parsed.pipeline_model_parallel_size
        assert per_stage // parsed.num_layers_per_virtual_pipeline_stage == plan.vpp
    else:
        assert parsed.num_layers_per_virtual_pipeline_stage is None
    assert parsed.group_query_attention == (model.num_kv_heads != model.num_heads)
    assert parsed.swiglu == (model.mlp == "swiglu")
    assert parsed.untie_embeddings_and_output_weights == (not model.tied_embeddings)
    assert parsed.recompute_granularity == kwargs.get("recompute_granularity")
    assert parsed.recompute_modules == kwargs.get("recompute_modules")
    ddp = megatron_ddp_config_kwargs(plan)
    assert parsed.overlap_grad_reduce == ddp["overlap_grad_reduce"]
    assert parsed.overlap_param_gather == ddp["overlap_param_gather"]
    assert parsed.use_tp_pp_dp_mapping == (plan.order == "tp-cp-pp-dp")
    assert parsed.grad_reduce_in_bf16 == plan.grad_reduce_in_bf16
    bf16_states = plan.optimizer_dtype == "bf16"
    assert parsed.use_precision_aware_optimizer == bf16_states
    assert parsed.use_distributed_optimizer or not bf16_states  # Megatron-Core requires it
    assert parsed.exp_avg_dtype == parsed.exp_avg_sq_dtype == (
        "bf16" if bf16_states else None)
    assert parsed.main_grads_dtype == ("bf16" if bf16_states and plan.grad_reduce_in_bf16
                                       else None)  # None: Megatron-LM's default fp32
    assert parsed.decoder_first_pipeline_num_layers == kwargs.get(
        "num_layers_in_first_pipeline_stage")
    assert parsed.decoder_last_pipeline_num_layers == kwargs.get(
        "num_layers_in_last_pipeline_stage")


def test_precision_recompute_and_zero_flags():
    base = Plan(tp=2, pp=2, dp=2, global_batch_size=8)
    args = megatron_args(LLAMA, base)
    assert "--bf16" in args and "--fp16" not in args and "--fp8-format" not in args
    assert not any(flag.startswith("--recompute") for flag in args)
    assert "--use-distributed-optimizer" not in args and "--use-megatron-fsdp" not in args
    fp8 = megatron_args(LLAMA, Plan(tp=2, pp=2, dp=2, global_batch_size=8, precision="fp8"))
    assert fp8[fp8.index("--bf16"):fp8.index("--bf16") + 3] == ["--bf16", "--fp8-format",
                                                                "hybrid"]
    full = megatron_args(LLAMA, Plan(tp=2, pp=2, dp=2, global_batch_size=8, recompute="full"))
    i = full.index("--recompute-granularity")
    assert full[i:i + 6] == ["--recompute-granularity", "full", "--recompute-method", "uniform",
                             "--recompute-num-layers", "1"]
    moe = megatron_args(QWEN3, Plan(tp=2, dp=2, ep=4, global_batch_size=8, recompute="moe"))
    i = moe.index("--recompute-granularity")
    assert moe[i:i + 5] == ["--recompute-granularity", "selective", "--recompute-modules",
                            "layernorm", "moe"]
    zero3 = megatron_args(LLAMA, Plan(tp=2, dp=2, global_batch_size=8, zero=3))
    i = zero3.index("--use-megatron-fsdp")
    assert zero3[i:i + 5] == ["--use-megatron-fsdp", "--data-parallel-sharding-strategy",
                              "optim_grads_params", "--ckpt-format", "fsdp_dtensor"]
    assert megatron_env(base) == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert megatron_env(Plan(tp=2, dp=2, global_batch_size=8, zero=3)) == {}
    assert megatron_env(Plan(dp=4, global_batch_size=8)) == {}


def test_moe_layer_pattern_matches_the_model_count():
    assert moe_layer_pattern(QWEN3) == "1"
    assert moe_layer_pattern(TINY_MOE) == "2"  # layers 0, 2, 4, 6: 4 of 8
    odd = ModelSpec(name="odd", num_layers=10, hidden_size=64, ffn_hidden_size=256, num_heads=4,
                    num_kv_heads=4, seq_len=128, vocab_size=256, num_experts=4, moe_topk=1,
                    moe_ffn_hidden_size=64, moe_layer_freq=0.3)
    pattern = moe_layer_pattern(odd)
    flags = [int(flag) for flag in pattern.strip("[]").split(",")]
    assert len(flags) == 10 and sum(flags) == odd.num_moe_layers == 3


# Plans megatron-core 0.16.1 constructs without complaint but Megatron-LM cannot train.
REJECTED = {
    "layers % (pp*vpp)": (GPT3, Plan(tp=8, pp=8, vpp=5, dp=1, global_batch_size=8),
                          "neither num_layers=96 nor num_layers + 2 (the embedding and the "
                          "loss counted as layers) is divisible by pp*vpp=8*5"),
    "layers over pp": (LLAMA, Plan(pp=79, dp=1, global_batch_size=8),
                       "num_layers=80 cannot be split over pp=79 stages"),
    "query groups % tp": (QWEN3, Plan(tp=8, dp=1, global_batch_size=8),
                          "num_kv_heads=4 (query groups) is not divisible by tp=8"),
    "experts % ep": (QWEN3, Plan(tp=2, dp=12, ep=12, global_batch_size=24),
                     "num_experts=128 is not divisible by ep=12"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_check_megatron_rejects_what_megatron_core_lets_through(case):
    model, plan, expected = REJECTED[case]
    kwargs = {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
              "num_attention_heads": model.num_heads, "num_query_groups": model.num_kv_heads,
              "tensor_model_parallel_size": plan.tp, "pipeline_model_parallel_size": plan.pp,
              "virtual_pipeline_model_parallel_size": plan.vpp if plan.vpp > 1 else None,
              "pipeline_dtype": torch.bfloat16, "expert_model_parallel_size": plan.ep}
    if model.is_moe:
        kwargs |= {"num_moe_experts": model.num_experts, "moe_router_topk": model.moe_topk,
                   "moe_ffn_hidden_size": model.moe_ffn_hidden_size,
                   "expert_tensor_parallel_size": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TransformerConfig(**kwargs)  # megatron-core: no error
    for build in (check_megatron, megatron_args, megatron_transformer_config_kwargs):
        with pytest.raises(SpecError, match=re.escape(expected)):
            build(model, plan)


@pytest.mark.parametrize(("model", "plan", "expected"), [
    (LLAMA, Plan(tp=2, dp=1, ep=2, global_batch_size=8), "ep=2 needs an MoE model"),
    (LLAMA, Plan(tp=2, dp=1, global_batch_size=8, recompute="moe"),
     "recompute 'moe' needs an MoE model"),
    (QWEN3, Plan(tp=4, dp=2, ep=16, global_batch_size=8), "ep=16 must divide tp*cp*dp=8"),
    (QWEN3, Plan(tp=2, dp=2, ep=2, global_batch_size=8, precision="fp16"),
     "does not support fp16"),
    (LLAMA, Plan(tp=8, cp=3, dp=1, global_batch_size=8),
     "seq_len=8192 must be a multiple of 2*cp=6"),
    (ModelSpec(name="opt-like", num_layers=4, hidden_size=64, ffn_hidden_size=256, num_heads=4,
               num_kv_heads=4, seq_len=128, vocab_size=256, mlp="relu"),
     Plan(dp=2, global_batch_size=8), "no flag for a relu MLP"),
    (LLAMA, Plan(tp=2, pp=2, dp=2, global_batch_size=8, order="pp-dp-cp-tp"),
     "order 'pp-dp-cp-tp' is not one Megatron-LM can place"),
])
def test_check_megatron_other_rejections(model, plan, expected):
    with pytest.raises(SpecError, match=re.escape(expected)) as caught:
        check_megatron(model, plan)
    assert "\n" not in str(caught.value)


def test_plan_itself_rejects_vpp_without_pp_and_a_ragged_global_batch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # megatron-core takes vpp with pp 1 ...
        TransformerConfig(num_layers=8, hidden_size=64, num_attention_heads=4,
                          virtual_pipeline_model_parallel_size=2)
    with pytest.raises(SpecError, match="vpp=2 needs pp > 1"):  # ... the Plan does not
        Plan(vpp=2, global_batch_size=8)
    with pytest.raises(SpecError, match="not divisible by micro_batch_size\\*dp=6"):
        Plan(dp=3, micro_batch_size=2, global_batch_size=8)


def test_uneven_pipeline_split_names_first_and_last_stage():
    plan = Plan(pp=3, dp=1, global_batch_size=8)
    args = megatron_args(LLAMA, plan)
    first = args[args.index("--decoder-first-pipeline-num-layers") + 1]
    last = args[args.index("--decoder-last-pipeline-num-layers") + 1]
    assert (int(first), int(last)) == (26, 27)  # middle stage 27: 26 + 27 + 27 = 80
    kwargs = megatron_transformer_config_kwargs(LLAMA, plan)
    assert kwargs["num_layers_in_first_pipeline_stage"] == 26
    assert kwargs["num_layers_in_last_pipeline_stage"] == 27
    config = transformer_config(LLAMA, plan)  # megatron-core accepts the split
    assert config.num_layers_in_first_pipeline_stage == 26


def test_multi_latent_attention_reaches_megatron_as_mla_fields():
    """DeepSeek-V3's MLA: MLATransformerConfig takes the same ranks and head dims the
    arguments carry, and the queries are 192 wide per head (128 + 64 RoPE)."""
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    model, plan = ACCEPTED["deepseek-v3-mla"]
    config = transformer_config(model, plan)
    assert isinstance(config, MLATransformerConfig) and config.multi_latent_attention
    assert (config.q_lora_rank, config.kv_lora_rank, config.qk_head_dim,
            config.qk_pos_emb_head_dim, config.v_head_dim) == (1536, 512, 128, 64, 128)
    parsed = parse_megatron(megatron_args(model, plan))
    assert parsed.multi_latent_attention and not parsed.group_query_attention
    assert (parsed.q_lora_rank, parsed.kv_lora_rank, parsed.qk_head_dim,
            parsed.qk_pos_emb_head_dim, parsed.v_head_dim) == (1536, 512, 128, 64, 128)
    assert (config.moe_router_num_groups, config.moe_router_group_topk) == (8, 4)
    assert (parsed.moe_router_num_groups, parsed.moe_router_group_topk) == (8, 4)
    assert parsed.mtp_num_layers == config.mtp_num_layers == 1
    assert megatron_config_class(LLAMA) == "TransformerConfig"
    assert "--multi-latent-attention" not in megatron_args(LLAMA, ACCEPTED["llama-gqa-cp"][1])
