"""Host-side work of one layer call: PyTorch operators per transformer layer, counted.

    python -m bench.host_ops -o results/gpu/host_ops.csv

An eager training step pays host time (Python, the dispatcher, the kernel launch) for every
aten operator it runs. When a layer's GPU work per micro-batch is smaller than that, the GPU
waits on the host, and Megatron-Core's MoE token dispatcher makes it worse: it copies the
token counts to the host and synchronizes once per MoE layer (megatron-core 0.16.1,
`MoEAlltoAllTokenDispatcher._maybe_dtoh_and_synchronize`), so the host cannot run ahead.
This counts the operators of one layer's forward + backward (and forward alone, what full
recomputation repeats), on the CPU with tiny shapes, for:
- `bench_layer_gpt`: the layer `bench.layer` times on a GPU (its host-bound floor on an H100
  divided by this count gives the host seconds per operator: `cost_models.kernel_fit`);
- `megatron_dense`: a megatron-core 0.16.1 GPTModel layer (local spec: RMSNorm, GQA, RoPE,
  SwiGLU), counted as a 2-layer model minus a 1-layer one;
- `megatron_moe_shared` / `megatron_moe_per_expert`: a Qwen3-style MoE layer (QK norm, top-8
  router with auxiliary loss, all-to-all dispatcher), split into the part that does not grow
  with the number of local experts and the part per local expert (models with 8 and 16
  experts). Transformer Engine's grouped GEMM runs all local experts as one such part.

megatron-core's CUDA-only pieces that hold no operators of their own are stood in for on the
CPU: the dispatcher's side stream and event, the model-parallel RNG tracker, the RoPE
table's device, TE's router GEMM (absent without TE; megatron-core falls back to torch).
"""

from __future__ import annotations

import contextlib
import sys
import warnings

from bench.gemm import EXIT_USAGE, checked_outputs, write_csv
from cost_models.cli_args import Parser
from cost_models.specs import ModelSpec, Plan, SpecError

HOST_OPS_COLUMNS = ("layer", "ops_fwd_bwd", "ops_fwd", "source")
TINY = {"hidden_size": 128, "ffn_hidden_size": 256, "num_heads": 8, "num_kv_heads": 2,
        "head_dim": 16, "seq_len": 64, "vocab_size": 512, "mlp": "swiglu"}
MOE_TOPK = 8
EXPERT_COUNTS = (8, 16)


def counting_mode():
    """A TorchDispatchMode that counts the aten operators run under it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    return Count()


def count_ops(run) -> tuple[int, int]:
    """(operators of run(backward=True), of run(backward=False) without autograd), after one
    warm-up call of each."""
    import torch

    run(True)
    full = counting_mode()
    with full:
        run(True)
    with torch.no_grad():
        run(False)
        forward = counting_mode()
        with forward:
            run(False)
    return full.ops, forward.ops


def bench_layer_ops() -> tuple[int, int]:
    import torch

    from bench.layer import gpt_spec, layer_forward, layer_weights

    spec = gpt_spec(256)
    w = layer_weights(spec, 8, torch.float32, "cpu")
    x = torch.randn(1, 64, spec.hidden, requires_grad=True)

    def run(backward: bool) -> None:
        y = layer_forward(spec, 8, w, x)
        if backward:
            y.sum().backward()
    return count_ops(run)


def cpu_stand_ins() -> None:
    """Let megatron-core's layers run forward and backward on the CPU (see the docstring)."""
    import torch
    from megatron.core.tensor_parallel import random as mcore_random
    from megatron.core.transformer.moe import moe_utils

    class Event:
        def synchronize(self) -> None:
            pass

    class Stream:
        def wait_stream(self, other) -> None:
            pass

        def record_event(self, *args) -> Event:
            return Event()

    one = Stream()
    torch.cuda.Stream = lambda *a, **k: one
    torch.cuda.current_stream = lambda *a, **k: one
    torch.cuda.stream = lambda stream: contextlib.nullcontext()
    torch.cuda.current_device = lambda: "cpu"
    mcore_random.CudaRNGStatesTracker.fork = lambda self, name=None: contextlib.nullcontext()
    moe_utils.te_general_gemm = None


def megatron_layer_ops(layers: int, experts: int, fused: bool) -> tuple[int, int]:
    """Operators of a whole tiny GPTModel step (`experts` 0: dense; `fused`: the attention
    core is one fused kernel, as with flash attention or Transformer Engine)."""
    import torch

    from bench.megatron_layer import layer_spec, moe_config
    from bench.megatron_step import build_gpt, fwd_bwd_fn, transformer_config

    moe = {"num_experts": experts, "moe_topk": MOE_TOPK, "moe_ffn_hidden_size": 64,
           "moe_layer_freq": 1.0} if experts else {}
    model = ModelSpec(name="tiny", num_layers=layers, **TINY, **moe)
    config = transformer_config(model, Plan(global_batch_size=1), torch.float32)
    if experts:
        moe_config(config)
    cpu = torch.device("cpu")
    gpt = build_gpt(model, config, cpu, spec=layer_spec(config, "sequential", fused))
    step = fwd_bwd_fn(gpt, model, cpu)
    tokens, positions, mask = step.inputs

    def run(backward: bool) -> None:
        if backward:
            step()
        else:
            gpt(tokens, positions, mask, labels=tokens)
    return count_ops(run)


def per_layer(experts: int, fused: bool) -> tuple[int, int]:
    two, one = (megatron_layer_ops(n, experts, fused) for n in (2, 1))
    return two[0] - one[0], two[1] - one[1]


def moe_rows(fused: bool, mcore: str) -> list[dict]:
    """The MoE layer's operators split into the part that does not grow with the local
    experts and the part per local expert."""
    small, large = (per_layer(e, fused) for e in EXPERT_COUNTS)
    extra = EXPERT_COUNTS[1] - EXPERT_COUNTS[0]
    each = [(b - a) / extra for a, b in zip(small, large)]
    shared = [a - EXPERT_COUNTS[0] * e for a, e in zip(small, each)]
    suffix = "_fused" if fused else ""
    return [{"layer": "megatron_moe_shared" + suffix, "ops_fwd_bwd": round(shared[0]),
             "ops_fwd": round(shared[1]), "source": mcore + ", alltoall dispatcher"},
            {"layer": "megatron_moe_per_expert" + suffix, "ops_fwd_bwd": round(each[0]),
             "ops_fwd": round(each[1]), "source": mcore + ", SequentialMLP"}]


def count_rows() -> list[dict]:
    import megatron.core
    import torch

    from bench.megatron_step import init_single_process

    init_single_process(torch.device("cpu"))
    cpu_stand_ins()
    mcore = f"megatron-core {megatron.core.__version__}, local spec"
    rows = [{"layer": "bench_layer_gpt", "source": "bench.layer.layer_forward"}]
    rows[0]["ops_fwd_bwd"], rows[0]["ops_fwd"] = bench_layer_ops()
    for fused in (False, True):
        dense = per_layer(0, fused)
        rows.append({"layer": "megatron_dense" + ("_fused" if fused else ""),
                     "ops_fwd_bwd": dense[0], "ops_fwd": dense[1],
                     "source": mcore + (", fused attention core" if fused else "")})
        rows.extend(moe_rows(fused, mcore + (", fused attention core" if fused else "")))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.host_ops", description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", required=True, help="CSV to write")
    args = p.parse_args(argv)
    try:
        checked_outputs([("-o", args.output)])
    except SpecError as exc:
        print(f"host_ops: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import megatron.core  # noqa: F401
            import torch  # noqa: F401
    except ImportError as exc:
        print(f"host_ops: error: needs torch and megatron-core ({exc.name} is missing; "
              "pip install -e '.[bench,launchers]')", file=sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = count_rows()
    except Exception as exc:  # another megatron-core than the one pinned, most likely
        print(f"host_ops: error: counting megatron-core's operators failed ({type(exc).__name__}:"
              f" {exc}); the counter is written for megatron-core 0.16.1 (pip install -e "
              "'.[launchers]')", file=sys.stderr)
        return EXIT_USAGE
    write_csv(args.output, HOST_OPS_COLUMNS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
