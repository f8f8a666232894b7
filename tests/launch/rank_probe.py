"""A training-script stand-in that `python -m tuner.launch` starts through the real torchrun.

Each rank joins a gloo process group from torchrun's environment, then checks what a real
training script would meet:
- Megatron arguments (if any): megatron-core's parallel_state builds the plan's TP/PP/CP/EP/DP
  groups over the actual world, and TransformerConfig accepts the parsed sizes;
- `--deepspeed_config PATH` (if given): DeepSpeed's own DeepSpeedConfig parses the file at the
  real world size (megatron's parallel_state as the mpu when Megatron arguments came too),
  and a copy with a wrong train_batch_size is rejected.
Each rank writes what it saw to $PROBE_OUT/rank<N>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch.distributed as dist  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                 "--context-parallel-size", "--expert-model-parallel-size", "--num-layers",
                 "--hidden-size", "--num-attention-heads", "--num-query-groups",
                 "--micro-batch-size", "--global-batch-size"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--use-tp-pp-dp-mapping", action="store_true")
    parser.add_argument("--deepspeed", action="store_true")
    parser.add_argument("--deepspeed_config")
    parser.add_argument("--probe-tag")
    return parser.parse_known_args(argv)[0]


def megatron_groups(args: argparse.Namespace, seen: dict) -> object:
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig

    order = "tp-cp-ep-pp-dp" if args.use_tp_pp_dp_mapping else "tp-cp-ep-dp-pp"
    ep = args.expert_model_parallel_size
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size, expert_model_parallel_size=ep,
        expert_tensor_parallel_size=1 if ep > 1 else None, order=order)
    seen |= {"tp": parallel_state.get_tensor_model_parallel_world_size(),
             "pp": parallel_state.get_pipeline_model_parallel_world_size(),
             "cp": parallel_state.get_context_parallel_world_size(),
             "ep": parallel_state.get_expert_model_parallel_world_size(),
             "dp": parallel_state.get_data_parallel_world_size()}
    TransformerConfig(num_layers=args.num_layers, hidden_size=args.hidden_size,
                      num_attention_heads=args.num_attention_heads,
                      num_query_groups=args.num_query_groups,
                      tensor_model_parallel_size=args.tensor_model_parallel_size)
    return parallel_state


def deepspeed_check(path: str, mpu: object, seen: dict) -> None:
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    # DeepSpeed asks its own communication layer for the world size; until it is attached to
    # the process group it silently assumes world size 1. Attaching it on the CPU accelerator
    # JIT-compiles a shared-memory all-reduce kernel (about a minute on 2 cores) that nothing
    # here uses; DeepSpeed takes the same no-kernel path itself where the op cannot be built.
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    config = json.loads(Path(path).read_text())
    parsed = DeepSpeedConfig(config, mpu=mpu)
    seen |= {"ds_world_size": parsed.world_size, "ds_train_batch_size": parsed.train_batch_size,
             "ds_zero_stage": parsed.zero_optimization_stage}
    wrong = dict(config, train_batch_size=config["train_batch_size"] + 1)
    try:
        DeepSpeedConfig(wrong, mpu=mpu)
        seen["ds_wrong_batch_error"] = None
    except AssertionError as error:
        seen["ds_wrong_batch_error"] = str(error)


def main() -> int:
    args = parse(sys.argv[1:])
    dist.init_process_group("gloo")
    seen = {"rank": dist.get_rank(), "world": dist.get_world_size(), "argv": sys.argv[1:],
            "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}
    mpu = megatron_groups(args, seen) if args.tensor_model_parallel_size else None
    if args.deepspeed_config:
        deepspeed_check(args.deepspeed_config, mpu, seen)
    out = Path(os.environ["PROBE_OUT"]) / f"rank{seen['rank']}.json"
    out.write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
