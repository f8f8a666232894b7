"""The DeepSpeed config: its values, and DeepSpeed 0.19.8's own parsers accepting it.

The batch check at the real world size runs in test_launch.py (ranks started by torchrun);
here DeepSpeed's config classes parse each block in-process.
"""

from __future__ import annotations

import os
import warnings

import pytest
from launch_specs import GPT3, LLAMA, QWEN3, TINY

from cost_models.specs import Plan, SpecError
from tuner.deepspeed_config import deepspeed_config

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from deepspeed.module_inject.auto_ep_config import parse_autoep_config, validate_autoep_config
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.tensor_parallel.config import get_tensor_parallel_config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

CASES = {
    "gpt3-pp-zero1": (GPT3, Plan(tp=8, pp=8, dp=16, micro_batch_size=1, global_batch_size=1536,
                                 sequence_parallel=True, recompute="full", zero=1)),
    "llama-zero3-fp16": (LLAMA, Plan(tp=8, dp=32, cp=2, micro_batch_size=2,
                                     global_batch_size=512, zero=3, precision="fp16",
                                     zero3_impl="deepspeed")),
    "qwen3-ep": (QWEN3, Plan(tp=4, dp=16, ep=16, micro_batch_size=1, global_batch_size=256,
                             zero=2, precision="fp8")),
    "tiny-dp": (TINY, Plan(dp=1, micro_batch_size=4, global_batch_size=32)),
}


@pytest.mark.parametrize("case", CASES)
def test_batch_sizes_follow_deepspeeds_formula(case):
    model, plan = CASES[case]
    config = deepspeed_config(model, plan)
    mbs, ga = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    assert config["train_batch_size"] == mbs * ga * plan.dp == plan.global_batch_size
    assert mbs == plan.micro_batch_size
    assert config["zero_optimization"]["stage"] == plan.zero


@pytest.mark.parametrize("case", CASES)
def test_deepspeed_parsers_accept_every_block(case):
    model, plan = CASES[case]
    config = deepspeed_config(model, plan)
    zero = DeepSpeedZeroConfig(**config["zero_optimization"])  # pydantic: unknown keys fail
    assert int(zero.stage) == plan.zero
    assert get_tensor_parallel_config(config).autotp_size == (plan.tp if plan.tp > 1 else 0)
    autoep = parse_autoep_config(config.get("expert_parallel", {}))
    validate_autoep_config(autoep, plan.num_gpus, plan.pp, plan.tp, plan.cp, zero_stage=plan.zero)
    assert autoep.autoep_size == plan.ep and autoep.enabled == (plan.ep > 1)
    assert config.get("sequence_parallel_size", 1) == plan.cp
    assert config.get("pipeline", {"stages": 1})["stages"] == plan.pp


def test_precision_blocks():
    plan = Plan(dp=2, global_batch_size=8)
    assert deepspeed_config(TINY, plan)["bf16"] == {"enabled": True}
    fp16 = deepspeed_config(TINY, Plan(dp=2, global_batch_size=8, precision="fp16"))
    assert fp16["fp16"]["enabled"] and "bf16" not in fp16
    fp8 = deepspeed_config(TINY, Plan(dp=2, global_batch_size=8, precision="fp8"))
    assert fp8["bf16"] == {"enabled": True}  # FP8 GEMMs come from Transformer Engine layers
    bf16_grads = deepspeed_config(TINY, Plan(dp=2, global_batch_size=8, zero=1,
                                             grad_reduce_in_bf16=True))
    parsed = DeepSpeedConfig(dict(bf16_grads, train_batch_size=4))  # world size 1 here
    assert parsed.communication_data_type is not None
    assert str(parsed.communication_data_type).endswith("bfloat16")
    assert bf16_grads["data_types"] == {"grad_accum_dtype": "bf16"}


def test_bf16_adam_states_are_refused_deepspeed_keeps_fp32_states():
    plan = Plan(dp=2, global_batch_size=8, zero=1, optimizer_dtype="bf16")
    with pytest.raises(SpecError, match="keeps fp32 Adam states.*--framework megatron"):
        deepspeed_config(TINY, plan)


def test_full_recompute_checkpoints_every_pipeline_layer():
    config = deepspeed_config(GPT3, CASES["gpt3-pp-zero1"][1])
    assert config["pipeline"] == {"stages": 8, "activation_checkpoint_interval": 1}
    assert config["activation_checkpointing"]["partition_activations"] is True
    assert "activation_checkpointing" not in deepspeed_config(*CASES["tiny-dp"])


def test_pipeline_with_zero2_or_3_is_refused():
    for zero in (2, 3):
        with pytest.raises(SpecError, match="pipeline engine supports ZeRO stage 0 or 1 only"):
            deepspeed_config(LLAMA, Plan(tp=2, pp=2, dp=2, global_batch_size=8, zero=zero))


def test_interleaved_and_moe_block_recompute_plans_are_refused():
    """DeepSpeed's pipeline engine has no interleaved schedule, and the MoE-block recompute is
    a Megatron-Core module list: one line each, and the plan file keeps the reason."""
    from tuner.plan_io import launch_block

    interleaved = Plan(pp=2, vpp=2, dp=1, micro_batch_size=1, global_batch_size=4, zero=1)
    with pytest.raises(SpecError, match="1F1B without interleaving, so vpp=2") as caught:
        deepspeed_config(TINY, interleaved)
    assert "\n" not in str(caught.value)
    block = launch_block(TINY, interleaved)
    assert block["deepspeed_config"] is None and "vpp=2" in block["unsupported"]["deepspeed"]
    with pytest.raises(SpecError, match="recompute 'moe'"):
        deepspeed_config(TINY, Plan(dp=2, global_batch_size=4, recompute="moe"))


def test_without_a_process_group_deepspeed_assumes_world_size_1():
    # Why the batch check must run on real ranks: in-process, DeepSpeed checks dp=2 configs
    # against a world of 1 and rejects the right one while accepting a dp=1 config.
    right_for_dp2 = deepspeed_config(TINY, Plan(dp=2, micro_batch_size=2, global_batch_size=8))
    with pytest.raises(AssertionError, match="8 != 2 \\* 2 \\* 1"):
        DeepSpeedConfig(right_for_dp2)
    right_for_dp1 = deepspeed_config(*CASES["tiny-dp"])
    assert DeepSpeedConfig(right_for_dp1).train_batch_size == 32


def test_zero3_plans_launch_only_with_the_implementation_they_were_predicted_for():
    """ZeRO-3 is priced per implementation (cost_models/comm_terms.py): a plan predicted for
    Megatron-FSDP is not handed to DeepSpeed, and the other way round, with one line each."""
    from tuner.megatron import megatron_args
    from tuner.plan_io import launch_block

    fsdp = Plan(tp=2, dp=2, global_batch_size=8, zero=3)
    ds = Plan(tp=2, dp=2, global_batch_size=8, zero=3, zero3_impl="deepspeed")
    with pytest.raises(SpecError, match="predicted for Megatron-FSDP.*--zero3-impl deepspeed"):
        deepspeed_config(LLAMA, fsdp)
    assert deepspeed_config(LLAMA, ds)["zero_optimization"]["stage"] == 3
    with pytest.raises(SpecError, match="predicted for DeepSpeed ZeRO-3.*--framework deepspeed"):
        megatron_args(LLAMA, ds)
    assert "--use-megatron-fsdp" in megatron_args(LLAMA, fsdp)
    block = launch_block(LLAMA, ds)
    assert block["megatron_args"] is None and "zero3_impl" in block["unsupported"]["megatron"]
    zero1 = Plan(tp=2, dp=2, global_batch_size=8, zero=1, zero3_impl="deepspeed")
    assert deepspeed_config(LLAMA, zero1) and megatron_args(LLAMA, zero1)  # ignored below 3
