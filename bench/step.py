"""One whole training step of a small decoder on one GPU, timed, with its peak memory;
`python -m cost_models.kernel_fit` compares both with the cost model's prediction for the
same model and plan (`cost_models.analytical.estimate`, the code path of `autotune predict`).

    python -m bench.step --layers 4 --hidden 4096 --heads 32 --kv-heads 8 --ffn 14336 \
        --seq 8192 --vocab 128256 -o results/gpu/step_h100.csv

The model: token embedding, `--layers` layers of bench.layer (RMSNorm, GQA, SwiGLU for
`--mlp swiglu`), a final norm, an untied output layer and the cross-entropy loss, in bf16.
The step: forward and backward of `--micro-batches` micro-batches of one sequence, then
Megatron-LM's mixed-precision Adam (fp32 main weights and gradients, fused AdamW, bf16
weights copied back). No parallelism, no recompute (plan tp=pp=dp=1, zero 0). Timing: CUDA
events, median of --iters steps after --warmup; peak memory from torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import sys

from bench.gemm import EXIT_USAGE, checked_outputs, median_time_s, select_device, write_csv
from bench.layer import LayerSpec, layer_forward, layer_weights, norm
from cost_models.cli_args import Parser
from cost_models.specs import SpecError

STEP_COLUMNS = ("layers", "hidden", "heads", "kv_heads", "ffn", "mlp", "seq", "vocab",
                "micro_batches", "step_s", "peak_memory_bytes")


def build_model(spec: LayerSpec, layers: int, vocab: int, dtype, device) -> dict:
    import torch

    def weight(*shape):
        return (torch.randn(*shape, dtype=dtype, device=device) * 0.02).requires_grad_()

    return {"embedding": weight(vocab, spec.hidden), "output": weight(spec.hidden, vocab),
            "layers": [layer_weights(spec, 1, dtype, device) for _ in range(layers)]}


def parameters(model: dict) -> list:
    return [model["embedding"], model["output"],
            *(w for layer in model["layers"] for w in layer.values())]


def loss_of(spec: LayerSpec, model: dict, tokens):
    import torch.nn.functional as F

    x = model["embedding"][tokens]
    for w in model["layers"]:
        x = layer_forward(spec, 1, w, x)
    logits = norm(spec, x) @ model["output"]
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def make_step(spec: LayerSpec, model: dict, tokens, micro_batches: int):
    """A closure running one training step with fp32 main weights and gradients."""
    import torch

    params = parameters(model)
    main = [p.detach().float().requires_grad_() for p in params]
    optimizer = torch.optim.AdamW(main, lr=1e-5, fused=True)

    def step():
        for _ in range(micro_batches):
            loss_of(spec, model, tokens).backward()
        with torch.no_grad():
            for p, m in zip(params, main):
                m.grad = p.grad.float()
                p.grad = None
            optimizer.step()
            for p, m in zip(params, main):
                p.copy_(m)
    return step


def row(args, device, dtype) -> dict:
    import torch

    spec = LayerSpec(hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                     ffn=args.ffn, mlp=args.mlp)
    model = build_model(spec, args.layers, args.vocab, dtype, device)
    tokens = torch.randint(0, args.vocab, (1, args.seq), device=device)
    step = make_step(spec, model, tokens, args.micro_batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_s = median_time_s(step, args.warmup, args.iters, device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
            "kv_heads": args.kv_heads, "ffn": args.ffn, "mlp": args.mlp, "seq": args.seq,
            "vocab": args.vocab, "micro_batches": args.micro_batches, "step_s": step_s,
            "peak_memory_bytes": peak}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.step", description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", required=True, help="CSV to write")
    for name, default in (("layers", 4), ("hidden", 4096), ("heads", 32), ("kv-heads", 8),
                          ("ffn", 14336), ("seq", 8192), ("vocab", 128256),
                          ("micro-batches", 1), ("warmup", 3), ("iters", 10)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--mlp", choices=("gelu", "swiglu"), default="swiglu")
    p.add_argument("--smoke", action="store_true", help="a tiny float32 model on the CPU")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, args.seq,
           args.vocab, args.micro_batches, args.iters) < 1 or args.heads % args.kv_heads:
        print("step: error: sizes must be positive and --heads a multiple of --kv-heads",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        checked_outputs([("-o", args.output)])
    except SpecError as exc:
        print(f"step: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    chosen = select_device("step", args.smoke)
    if chosen is None:
        return EXIT_USAGE
    device, dtype = chosen
    if args.smoke:
        args.layers, args.hidden, args.heads, args.kv_heads, args.ffn = 2, 256, 4, 2, 512
        args.seq, args.vocab, args.warmup, args.iters = 64, 1000, 1, 2
    write_csv(args.output, STEP_COLUMNS, [row(args, device, dtype)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
