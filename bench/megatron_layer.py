"""Where a layer call's time goes on one GPU: megatron-core's own layers (Qwen3 MoE or Llama
dense shapes), timed whole, with the GPU's busy time and the host's operators beside the wall
time.

    python -m bench.megatron_layer -o results/gpu/megatron_layer_h100.csv
    python -m bench.megatron_layer --model llama3-8b -o results/gpu/megatron_dense_h100.csv
    python -m bench.megatron_layer --smoke -o /tmp/moe.csv        # tiny shapes on the CPU

For each token count (one sequence per micro-batch) it builds megatron-core's GPTModel from
the model preset (Qwen3-235B-A22B by default) with each of `--layers` layer counts (1 and 3)
and times forward + backward; the slope over the layer count is one layer call without the
embedding and the output head. `--experts` is the number of experts one GPU holds in an MoE
preset (16: 128 experts over expert-parallel 8), so each local expert gets as many rows as on
a rank of the expert-parallel run (top-8 of T tokens: about 8T/16 rows per local expert at
EP 1, as at EP 8). Each row of the CSV is one model:
- `wall_s`: forward + backward, CUDA events, median of `--iters` after `--warmup`;
- `gpu_busy_s`: the union of the CUDA kernels' intervals in one profiled step (torch
  profiler): the time the GPU had work. wall - busy is the time it waited on the host;
- `ops`: aten operators the step issues (TorchDispatchMode), `host_syncs`: the step's
  device-to-host waits (cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize,
  aten::_local_scalar_dense in the profile) and `host_blocked_s` the time the host spent in
  them (the union of their intervals). megatron-core's all-to-all dispatcher copies
  the token counts to the host and waits once per MoE layer.

The layers use megatron-core's local spec (RMSNorm, GQA, RoPE; for MoE presets QK norm, a
top-k router with auxiliary loss, the all-to-all dispatcher) with two stand-ins for
Transformer Engine, which the GPU image lacks: the attention core is torch's fused
scaled_dot_product_attention (cuDNN first, as Transformer Engine on Hopper), and
`--experts-impl grouped` runs the local experts as two `torch._grouped_mm` products (as
Transformer Engine's grouped GEMM does) where `sequential` is megatron-core's SequentialMLP
(one MLP call per expert).
`cost_models.kernel_fit` compares these rows with the cost model.
"""

from __future__ import annotations

import itertools
import sys

from bench.gemm import EXIT_USAGE, checked_outputs, median_time_s, write_csv
from bench.kernels import ints
from cost_models.catalog import model_preset
from cost_models.cli_args import Parser
from cost_models.specs import SpecError

LAYER_COLUMNS = ("model", "tokens", "layers", "experts", "experts_impl", "wall_s", "gpu_busy_s",
                 "host_blocked_s", "ops", "host_syncs", "megatron_core")
KERNEL_COLUMNS = ("model", "tokens", "layers", "experts_impl", "kernel", "calls", "total_s")
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize",
               "aten::_local_scalar_dense")
SMOKE = {"hidden_size": 128, "ffn_hidden_size": 256, "num_heads": 8, "num_kv_heads": 2,
         "head_dim": 16, "vocab_size": 512, "moe_ffn_hidden_size": 64}


def sdpa_attention_class():
    """A core-attention module for megatron-core's spec: torch's fused causal attention."""
    import torch
    from megatron.core.transformer.module import MegatronModule
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    class SdpaAttention(MegatronModule):
        def __init__(self, config, layer_number, attn_mask_type, attention_type, **_):
            super().__init__(config=config)

        def forward(self, query, key, value, attention_mask, **_):
            # megatron-core hands [s, b, heads, dim]; sdpa wants [b, heads, s, dim]
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            groups = q.shape[1] // k.shape[1]
            k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
            with sdpa_kernel(order, set_priority=True):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            s, b = query.shape[0], query.shape[1]
            return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    return SdpaAttention


def grouped_experts_class():
    """An experts module for megatron-core's MoE spec: all local experts' SwiGLU MLPs as two
    grouped products (torch._grouped_mm), the router's probabilities applied after the
    activation as megatron-core does."""
    import torch
    from megatron.core.transformer.module import MegatronModule

    class GroupedExperts(MegatronModule):
        def __init__(self, num_local_experts, config, pg_collection=None, **_):
            super().__init__(config=config)
            h, f, e = config.hidden_size, config.moe_ffn_hidden_size, num_local_experts
            # stored (experts, out, in): the transposed view is column-major per expert
            self.fc1 = torch.nn.Parameter(torch.randn(e, 2 * f, h) * 0.02)
            self.fc2 = torch.nn.Parameter(torch.randn(e, h, f) * 0.02)

        def forward(self, x, tokens_per_expert, probs):
            offs = tokens_per_expert.to(x.device, torch.int32).cumsum(0, dtype=torch.int32)
            gate, up = torch._grouped_mm(x, self.fc1.transpose(1, 2), offs=offs).chunk(2, -1)
            act = (torch.nn.functional.silu(gate) * up * probs.unsqueeze(-1)).to(x.dtype)
            return torch._grouped_mm(act, self.fc2.transpose(1, 2), offs=offs), None

    return GroupedExperts


def layer_spec(config, experts_impl: str, fused_attention: bool = True):
    """megatron-core's local layer spec with the stand-ins above."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import ModuleSpec

    moe = bool(config.num_moe_experts)
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=False,
                                    qk_layernorm=moe, normalization=config.normalization)
    if fused_attention:
        spec.submodules.self_attention.submodules.core_attention = sdpa_attention_class()
    if moe and experts_impl == "grouped":
        spec.submodules.mlp.submodules.experts = ModuleSpec(module=grouped_experts_class())
    return spec


def moe_config(config):
    """The MoE settings of the runs measured (all-to-all dispatcher, auxiliary loss, QK norm),
    with megatron-core's MoE module state made ready for a new model."""
    from megatron.core.transformer.moe import moe_utils

    config.moe_token_dispatcher_type = "alltoall"
    config.moe_router_load_balancing_type = "aux_loss"
    config.moe_aux_loss_coeff = 1e-3
    config.qk_layernorm = True
    moe_utils.get_moe_layer_wise_logging_tracker().clear()  # the last model's aux losses
    if not hasattr(moe_utils, "te_general_gemm"):  # megatron-core 0.16.1 without TE names it
        moe_utils.te_general_gemm = None  # only inside a failed import
    return config


def layer_model(name: str, tokens: int, layers: int, experts: int, smoke: bool):
    """(ModelSpec, Plan) of the preset with `layers` layers at `tokens` tokens (`experts`
    local experts if MoE); SpecError where the spec's checks or limits refuse them."""
    from bench.megatron_step import model_and_plan

    fields = {"num_experts": experts} if model_preset(name).is_moe else {}
    return model_and_plan(name, layers, tokens, fields | (SMOKE if smoke else {}))


def build_model(name: str, tokens: int, layers: int, experts: int, experts_impl: str, device,
                dtype, smoke: bool):
    """The preset's GPTModel with `layers` layers (of `experts` local experts if MoE)."""
    from bench.megatron_step import build_gpt, transformer_config

    model, plan = layer_model(name, tokens, layers, experts, smoke)
    config = transformer_config(model, plan, dtype)
    if model.is_moe:
        moe_config(config)
    spec = layer_spec(config, experts_impl, fused_attention=device.type == "cuda")
    return model, build_gpt(model, config, device, spec=spec)


def profiled(step, device) -> tuple[float, float, int, dict]:
    """(seconds some CUDA kernel ran, seconds the host sat in a wait for the GPU, waits,
    {kernel name: [calls, seconds]}) in one profiled call of `step`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    waits = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.name in SYNC_EVENTS)
    on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list] = {}
    for e in on_gpu:
        entry = by_name.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += (e.time_range.end - e.time_range.start) / 1e6
    kernels = sorted((e.time_range.start, e.time_range.end) for e in on_gpu)
    return (union_length_us(kernels) / 1e6, union_length_us(waits) / 1e6, len(waits),
            by_name)


def union_length_us(intervals) -> float:
    """Total length covered by sorted (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in intervals:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def measure(tokens, layers, experts, impl, device, dtype, args) -> dict:
    """One row of the CSV: the model with `layers` layers at `tokens` tokens, timed."""
    from bench.host_ops import counting_mode
    from bench.megatron_step import fwd_bwd_fn

    model, gpt = build_model(args.model, tokens, layers, experts, impl, device, dtype,
                             args.smoke)
    step = fwd_bwd_fn(gpt, model, device)
    wall_s = median_time_s(step, args.warmup, args.iters, device)
    busy_s, blocked_s, syncs, by_kernel = profiled(step, device)
    counter = counting_mode()
    with counter:
        step()
    if not model.is_moe:
        experts = 0
    return {"model": args.model, "tokens": tokens, "layers": layers, "experts": experts,
            "experts_impl": impl,
            "wall_s": wall_s, "gpu_busy_s": busy_s if device.type == "cuda" else float("nan"),
            "host_blocked_s": blocked_s, "ops": counter.ops, "host_syncs": syncs,
            "kernels": by_kernel}


def checked_args(p: Parser, args) -> list[str]:
    """The experts implementations to time; every bad flag is p.error's one line, before
    anything is built or measured: also an output that could not be written at the end, and
    a token, layer or expert count the model spec refuses (its limits, cost_models.specs)."""
    impls = [s for s in args.experts_impl.split(",") if s]
    if not impls or set(impls) - {"grouped", "sequential"} or args.experts < 2:
        p.error("--experts-impl takes grouped and/or sequential, --experts at least 2")
    if len(set(args.layers)) < 2 or min(args.layers) < 1:
        p.error("--layers needs two or more different layer counts, each at least 1")
    if args.tokens == []:  # given, but only commas or nothing
        p.error("--tokens is empty; give token counts, e.g. 1024,2048")
    args.tokens = args.tokens or ([64, 128] if args.smoke else [1024, 2048, 4096, 8192])
    if min(args.tokens) < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--tokens and --iters take counts >= 1, --warmup >= 0")
    try:
        checked_outputs([("-o", args.output), ("--kernels", args.kernels)])
        if not model_preset(args.model).is_moe:
            impls = ["dense"]  # one layer kind: no experts to implement
    except SpecError as exc:
        p.error(str(exc))
    for tokens, layers in itertools.product(args.tokens, args.layers):
        try:
            layer_model(args.model, tokens, layers, args.experts, args.smoke)
        except SpecError as exc:
            p.error(f"--tokens {tokens} --layers {layers} --experts {args.experts}: {exc}")
    return impls


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.megatron_layer", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="CSV to write")
    p.add_argument("--model", default="qwen3-235b-a22b", help="model preset")
    p.add_argument("--tokens", type=ints, default=None,
                   help="tokens per layer call (default 1024,2048,4096,8192; --smoke: 64,128)")
    p.add_argument("--kernels", help="also write each CUDA kernel's calls and seconds here")
    p.add_argument("--layers", type=ints, default=[1, 3],
                   help="layer counts of the models timed (the per-layer time is the slope)")
    p.add_argument("--experts", type=int, default=16, help="local experts per GPU")
    p.add_argument("--experts-impl", default="grouped,sequential",
                   help="grouped, sequential or both (comma-separated)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = p.parse_args(argv)
    impls = checked_args(p, args)
    from bench.host_ops import cpu_stand_ins
    from bench.megatron_step import device_and_megatron, init_single_process

    ready = device_and_megatron(p.prog, args.smoke)
    if ready is None:
        return EXIT_USAGE
    device, dtype, mcore = ready
    if args.smoke:
        args.warmup, args.iters = 1, 1
    init_single_process(device)
    if args.smoke:
        cpu_stand_ins()
    rows = []
    for tokens in args.tokens:
        for impl in impls:
            for layers in args.layers:
                row = measure(tokens, layers, args.experts, impl, device, dtype, args)
                rows.append(row | {"megatron_core": mcore.__version__})
                shown = {k: v for k, v in rows[-1].items() if k != "kernels"}
                print(f"measured: {shown}", file=sys.stderr, flush=True)
    try:
        write_csv(args.output, LAYER_COLUMNS, [{k: r[k] for k in LAYER_COLUMNS} for r in rows])
        if args.kernels:
            write_csv(args.kernels, KERNEL_COLUMNS, kernel_rows(rows))
    except SpecError as exc:  # the place became unwritable during the run
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def kernel_rows(rows: list[dict]) -> list[dict]:
    """One row per (model timed, CUDA kernel name): calls and seconds in the profiled step."""
    keys = ("model", "tokens", "layers", "experts_impl")
    return [{**{k: r[k] for k in keys}, "kernel": name, "calls": calls, "total_s": total_s}
            for r in rows for name, (calls, total_s) in sorted(r["kernels"].items())]


if __name__ == "__main__":
    sys.exit(main())
