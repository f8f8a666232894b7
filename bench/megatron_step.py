"""Forward + backward of a real megatron-core GPTModel built from the tuner's own
TransformerConfig arguments (`tuner.megatron.megatron_transformer_config_kwargs`), on one GPU.

    python -m bench.megatron_step --model llama3-8b --layers 2 -o results/gpu/megatron_h100.csv

The model is the preset with `--layers` layers, built with megatron-core's local layer spec
(no Transformer Engine: the attention core is megatron-core's unfused DotProductAttention,
the path of Megatron-LM before flash attention), plan tp = pp = dp = 1, one sequence per
micro-batch. `cost_models.kernel_fit` compares the time with the cost model's compute time of
the same plan with `flash_attention=False`, and megatron-core's parameter count with
`cost_models.params.count_parameters`. `--smoke` builds a tiny model on the CPU and counts its
parameters only (megatron-core's attention and rotary embeddings run on CUDA alone).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import replace

from bench.gemm import EXIT_USAGE, checked_outputs, median_time_s, select_device, write_csv
from cost_models.catalog import model_preset
from cost_models.cli_args import Parser
from cost_models.specs import Plan, SpecError

SMOKE_SHAPE = {"hidden_size": 256, "ffn_hidden_size": 512, "num_heads": 4, "num_kv_heads": 2,
               "head_dim": 64, "seq_len": 64, "vocab_size": 1000}
MEGATRON_COLUMNS = ("model", "layers", "hidden", "seq", "vocab", "parameters", "fwd_bwd_s",
                    "megatron_core")


def model_and_plan(name: str, layers: int, seq: int, overrides: dict | None = None):
    """The preset with `layers` layers (and `overrides`), and the one-GPU plan timed."""
    preset = model_preset(name)
    fields = {"num_layers": layers, "seq_len": seq or preset.seq_len, **(overrides or {})}
    return replace(preset, **fields), Plan(global_batch_size=1, flash_attention=False)


def resolved_config_kwargs(model, plan) -> dict:
    """The tuner's TransformerConfig kwargs with the names it must leave as strings (tuner/
    cannot import torch) resolved: dtypes to torch dtypes, the activation to its function."""
    import torch
    from megatron.core import activations

    from tuner.megatron import megatron_transformer_config_kwargs

    kwargs = megatron_transformer_config_kwargs(model, plan)
    for name in ("params_dtype", "pipeline_dtype"):
        kwargs[name] = getattr(torch, kwargs[name])
    name = kwargs["activation_func"]
    kwargs["activation_func"] = getattr(activations, name, None) or getattr(
        torch.nn.functional, name)
    return kwargs


def transformer_config(model, plan, dtype):
    """megatron-core's TransformerConfig from the tuner's kwargs in `dtype`; fusions that
    need Transformer Engine or apex are switched off."""
    import torch
    from megatron.core.transformer import transformer_config as configs

    from tuner.megatron import megatron_config_class

    kwargs = resolved_config_kwargs(model, plan)
    kwargs["params_dtype"] = kwargs["pipeline_dtype"] = dtype
    if dtype == torch.float32:
        kwargs["bf16"] = False
    kwargs |= {"normalization": "RMSNorm" if model.mlp.value == "swiglu" else "LayerNorm",
               "masked_softmax_fusion": False, "gradient_accumulation_fusion": False,
               "apply_rope_fusion": False, "bias_activation_fusion": False,
               "persist_layer_norm": False, "add_bias_linear": False,
               "hidden_dropout": 0.0, "attention_dropout": 0.0,
               "use_cpu_initialization": dtype == torch.float32}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(configs, megatron_config_class(model))(**kwargs)


def init_single_process(device) -> None:
    import torch
    from megatron.core import parallel_state

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    if device.type == "cuda":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(1234)


def build_gpt(model, config, device, spec=None):
    """megatron-core's GPTModel with `spec`, by default the local layer spec."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = spec or get_gpt_layer_local_spec(normalization=config.normalization)
        gpt = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=model.vocab_size,
                       max_sequence_length=model.seq_len, position_embedding_type="rope",
                       share_embeddings_and_output_weights=model.tied_embeddings)
    return gpt.to(device=device, dtype=config.params_dtype)  # as Megatron's Float16Module


def fwd_bwd_fn(gpt, model, device):
    import torch

    tokens = torch.randint(0, model.vocab_size, (1, model.seq_len), device=device)
    positions = torch.arange(model.seq_len, device=device).unsqueeze(0)
    mask = torch.ones(1, 1, model.seq_len, model.seq_len, dtype=torch.bool,
                      device=device).triu(1)  # True = masked (future tokens)

    def step():
        loss = gpt(tokens, positions, mask, labels=tokens)
        loss.float().mean().backward()
    step.inputs = (tokens, positions, mask)
    return step


def megatron_core_or_none(prog: str):
    """megatron.core, imported quietly (it warns that TE and apex are absent); None after one
    line on stderr where it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import megatron.core
    except ImportError:
        print(f"{prog}: error: needs megatron-core (pip install -e '.[launchers]')",
              file=sys.stderr)
        return None
    return megatron.core


def device_and_megatron(prog: str, smoke: bool):
    """(device, dtype, megatron.core) to run on (bench.gemm.select_device); None after one
    line on stderr where torch, a GPU (unless `smoke`) or megatron-core is missing."""
    chosen = select_device(prog, smoke)
    mcore = megatron_core_or_none(prog) if chosen else None
    return None if mcore is None else (*chosen, mcore)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.megatron_step",
                                description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", default="llama3-8b", help="model preset")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=0, help="sequence length (default: the preset's)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU")
    args = p.parse_args(argv)
    try:
        checked_outputs([("-o", args.output)])
    except SpecError as exc:
        print(f"megatron_step: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ready = device_and_megatron("megatron_step", args.smoke)
    if ready is None:
        return EXIT_USAGE
    device, dtype, mcore = ready
    if args.smoke:
        args.warmup, args.iters = 1, 2
    try:
        model, plan = model_and_plan(args.model, args.layers, args.seq,
                                     SMOKE_SHAPE if args.smoke else None)
        config = transformer_config(model, plan, dtype)
    except (SpecError, KeyError, ValueError) as exc:
        print(f"megatron_step: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    init_single_process(device)
    gpt = build_gpt(model, config, device)
    t = float("nan")
    if device.type == "cuda":
        t = median_time_s(fwd_bwd_fn(gpt, model, device), args.warmup, args.iters, device)
    write_csv(args.output, MEGATRON_COLUMNS,
              [{"model": args.model, "layers": model.num_layers, "hidden": model.hidden_size,
                "seq": model.seq_len, "vocab": model.vocab_size,
                "parameters": sum(w.numel() for w in gpt.parameters()), "fwd_bwd_s": t,
                "megatron_core": mcore.__version__}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
