"""Kernel microbenchmarks behind the cost model's compute constants, measured on one GPU:

- `attention`: the causal attention core (torch scaled_dot_product_attention) per backend
  (flash = FlashAttention-2, cudnn = cuDNN fused attention, as Transformer Engine uses on
  Hopper), forward and forward+backward; its share of peak replaces ATTENTION_FRACTION;
- `elementwise`: memory-bound passes (copy, add, layer norm, gelu, swiglu's silu*mul) as
  achieved bytes/s, counting each input read once and each output written once;
- `grouped`: the routed-expert products of an MoE layer, E products of m rows each, as one
  grouped kernel (`torch._grouped_mm`, what Megatron-Core's grouped GEMM runs on Hopper), as
  a loop of E products, and as one product of E*m rows.

    python -m bench.kernels attention -o results/gpu/attention_h100.csv
    python -m bench.kernels elementwise -o results/gpu/elementwise_h100.csv
    python -m bench.kernels grouped -o results/gpu/grouped_h100.csv
    python -m bench.kernels attention --smoke -o /tmp/a.csv   # tiny float32 shapes on a CPU

Timing as bench.gemm: CUDA events, the median of --iters runs after --warmup runs.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from bench.gemm import EXIT_USAGE, checked_outputs, median_time_s, select_device, write_csv
from cost_models.cli_args import Parser
from cost_models.flops import CAUSAL_FRACTION, FLASH_BACKWARD_FACTOR
from cost_models.specs import SpecError

ATTENTION_COLUMNS = ("backend", "batch", "heads", "seq", "head_dim", "fwd_s", "fwd_bwd_s",
                     "fwd_flops", "fwd_tflops", "fwd_bwd_tflops", "rel_err")
ELEMENTWISE_COLUMNS = ("op", "rows", "cols", "bytes", "time_s", "gbps")
GROUPED_COLUMNS = ("experts", "m_per_expert", "k", "n", "how", "time_s", "tflops")
# --backends name -> torch.nn.attention.SDPBackend member
BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
            "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def causal_attention_flops(batch: int, heads: int, seq: int, head_dim: int) -> float:
    """Forward FLOPs of scores and values with a causal mask (as cost_models.flops counts
    them): 4*b*h*s^2*d x CAUSAL_FRACTION."""
    return 4.0 * batch * heads * seq * seq * head_dim * CAUSAL_FRACTION


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, BACKENDS[name])


def attention_row(backend, batch, heads, seq, head_dim, dtype, device, warmup, iters):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    q, k, v = (torch.randn(batch, heads, seq, head_dim, dtype=dtype, device=device,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, heads, seq, head_dim, dtype=dtype, device=device)

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd():
        torch.autograd.grad(forward(), (q, k, v), grad)

    with torch.no_grad():  # reference: float64 through the math backend
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                             is_causal=True)
    with sdpa_kernel(sdpa_backend(backend)), torch.no_grad():
        err = float((forward().double() - ref).norm() / ref.norm())
        fwd = median_time_s(forward, warmup, iters, device)
    with sdpa_kernel(sdpa_backend(backend)):
        both = median_time_s(fwd_bwd, warmup, iters, device)
    flops = causal_attention_flops(batch, heads, seq, head_dim)
    return {"backend": backend, "batch": batch, "heads": heads, "seq": seq,
            "head_dim": head_dim, "fwd_s": fwd, "fwd_bwd_s": both, "fwd_flops": flops,
            "fwd_tflops": round(flops / fwd / 1e12, 3),
            "fwd_bwd_tflops": round(flops * (1 + FLASH_BACKWARD_FACTOR) / both / 1e12, 3),
            "rel_err": round(err, 5)}


def attention_rows(args, dtype, device):
    for backend, heads, seq in itertools.product(args.backends, args.heads, args.seqs):
        try:
            yield attention_row(backend, 1, heads, seq, args.head_dim, dtype, device,
                                args.warmup, args.iters)
        except RuntimeError as exc:  # backend not built for this GPU or shape
            print(f"# skipped {backend} heads={heads} seq={seq}: {str(exc).splitlines()[0]}",
                  flush=True)


def elementwise_ops(rows: int, cols: int, dtype, device):
    """(name, bytes moved, closure) of each memory-bound pass over a rows x cols tensor."""
    import torch
    import torch.nn.functional as F

    x, y = (torch.randn(rows, cols, dtype=dtype, device=device) for _ in range(2))
    gate = torch.randn(rows, 2 * cols, dtype=dtype, device=device)
    size = x.numel() * x.element_size()
    return [("copy", 2 * size, lambda: x.clone()),
            ("add", 3 * size, lambda: x + y),
            ("layer_norm", 2 * size, lambda: F.layer_norm(x, (cols,))),
            ("gelu", 2 * size, lambda: F.gelu(x)),
            ("silu_mul", 3 * size, lambda: F.silu(gate[:, :cols]) * gate[:, cols:])]


def elementwise_rows(args, dtype, device):
    for rows, cols in itertools.product(args.rows, args.cols):
        for op, size_bytes, fn in elementwise_ops(rows, cols, dtype, device):
            t = median_time_s(fn, args.warmup, args.iters, device)
            yield {"op": op, "rows": rows, "cols": cols, "bytes": size_bytes, "time_s": t,
                   "gbps": round(size_bytes / t / 1e9, 2)}


def grouped_fns(experts: int, m: int, k: int, n: int, dtype, device):
    """(how, closure) for E products of m x k @ k x n: grouped kernel, loop, one product."""
    import torch

    a = torch.randn(experts * m, k, dtype=dtype, device=device)
    w = torch.randn(experts, k, n, dtype=dtype, device=device)
    w_col = w.transpose(1, 2).contiguous().transpose(1, 2)  # column-major per expert
    offs = torch.arange(1, experts + 1, dtype=torch.int32, device=device) * m
    chunks = a.split(m)
    fns = [("loop", lambda: [c @ w[i] for i, c in enumerate(chunks)]),
           ("dense", lambda: a @ w[0])]
    if hasattr(torch, "_grouped_mm"):
        for weights in (w, w_col):
            try:
                torch._grouped_mm(a, weights, offs=offs)
            except RuntimeError:
                continue
            fns.insert(0, ("grouped", lambda b=weights: torch._grouped_mm(a, b, offs=offs)))
            break
    return fns


def grouped_rows(args, dtype, device):
    for experts, m, (k, n) in itertools.product(args.experts, args.rows, args.kn):
        for how, fn in grouped_fns(experts, m, k, n, dtype, device):
            t = median_time_s(fn, args.warmup, args.iters, device)
            yield {"experts": experts, "m_per_expert": m, "k": k, "n": n, "how": how,
                   "time_s": t, "tflops": round(2 * experts * m * k * n / t / 1e12, 3)}


KINDS = {"attention": (ATTENTION_COLUMNS, attention_rows),
         "elementwise": (ELEMENTWISE_COLUMNS, elementwise_rows),
         "grouped": (GROUPED_COLUMNS, grouped_rows)}


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.kernels",
               description=__doc__.split("\n\n")[0].rstrip(":") + ".")  # its summary line
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("-o", "--output", required=True, help="CSV to write")
    p.add_argument("--backends", default="flash,cudnn", help="attention: flash,cudnn,...")
    p.add_argument("--heads", default="8,16,32,64", help="attention heads per GPU")
    p.add_argument("--seqs", default="2048,4096,8192")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rows", default="", help="elementwise rows / grouped rows per expert")
    p.add_argument("--cols", default="4096,8192,16384", help="elementwise: hidden sizes")
    p.add_argument("--experts", default="4,16,64", help="grouped: experts per GPU")
    p.add_argument("--kn", default="4096x3072,1536x4096", help="grouped: KxN per expert")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny float32 shapes on the CPU")
    return p


def parse_lists(args) -> None:
    """Turn the comma-list flags into lists in place; ValueError names nothing useful, so the
    caller reports the flags."""
    default_rows = "128,256,512,1024,2048" if args.kind == "grouped" else "4096,16384"
    args.backends = [b for b in args.backends.split(",") if b]
    if any(b not in BACKENDS for b in args.backends):
        raise ValueError(args.backends)
    args.heads, args.seqs = ints(args.heads), ints(args.seqs)
    args.rows, args.cols = ints(args.rows or default_rows), ints(args.cols)
    args.experts = ints(args.experts)
    args.kn = [tuple(int(v) for v in s.split("x")) for s in args.kn.split(",") if s]
    if any(len(kn) != 2 for kn in args.kn):
        raise ValueError(args.kn)


def smoke(args) -> None:
    args.backends, args.heads, args.seqs, args.head_dim = ["math"], [2], [64], 16
    args.rows, args.cols, args.experts, args.kn = [32], [64], [2], [(32, 48)]
    args.warmup, args.iters = 1, 3


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        parse_lists(args)
    except ValueError:
        p.error("--heads/--seqs/--rows/--cols/--experts take comma lists of integers, --kn KxN "
                "items, --backends names from flash,cudnn,efficient,math")
    try:
        checked_outputs([("-o", args.output)])
    except SpecError as exc:
        p.error(str(exc))
    chosen = select_device(p.prog, args.smoke)
    if chosen is None:
        return EXIT_USAGE
    device, dtype = chosen
    if args.smoke:
        smoke(args)
    columns, rows = KINDS[args.kind]
    try:
        write_csv(args.output, columns, rows(args, dtype, device))
    except SpecError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
