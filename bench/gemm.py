"""Compute microbenchmark: bf16 GEMMs at tensor-parallel transformer shapes, and one
transformer layer forward + backward. Feeds the cost model's compute-efficiency curve
(cost_models/gemm_curve.py reads the GEMM CSV: columns m,k,n,what,hidden,tp,tflops,time_s).

    python -m bench.gemm -o results/bench/gemm_h100.csv --layer-output results/bench/layer_h100.csv
    python -m bench.gemm --smoke -o /tmp/gemm.csv     # tiny shapes, runs on a CPU

The four linear layers of a GPT block split by tensor parallelism tp (Shoeybi et al. 2019,
arXiv:1909.08053 Sec. 3): qkv h -> 3h/tp, proj h/tp -> h, fc1 h -> 4h/tp, fc2 4h/tp -> h,
each a product C[m,n] = A[m,k] @ B[k,n] with m = tokens. Timing: CUDA events around each
run, the median of --iters runs after --warmup runs (perf_counter on CPU);
tflops = 2*m*k*n / time. `--precision fp8` times the same shapes as FP8 (e4m3) products with
per-tensor scales and a bf16 output (`torch._scaled_mm`, the kernel Transformer Engine's
per-tensor scaling uses on Hopper); `--shapes` adds explicit m x k x n products (e.g. the
small per-expert products of MoE layers). Each product's relative error against a float32
product of the same inputs is kept in `rel_err` (bf16 ~1e-3, fp8 ~5e-2).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time

from bench.layer import LAYER_COLUMNS, layer_row, parse_layer_specs
from cost_models.atomic import distinct_files, ensure_folder, output_target, replace_atomically
from cost_models.cli_args import Parser
from cost_models.specs import MODEL_LIMITS, SpecError

EXIT_USAGE = 2
MAX_SIZE = MODEL_LIMITS["ffn_hidden_size"]  # no layer has a wider product: a larger one is a typo
GEMM_COLUMNS = ("m", "k", "n", "what", "hidden", "tp", "tflops", "time_s", "precision",
                "rel_err")


def block_gemms(hidden: int, tp: int) -> list[tuple[str, int, int]]:
    """(what, k, n) of the four linear layers of one GPT block on one TP rank."""
    return [("qkv", hidden, 3 * hidden // tp), ("proj", hidden // tp, hidden),
            ("fc1", hidden, 4 * hidden // tp), ("fc2", 4 * hidden // tp, hidden)]


def median_time_s(fn, warmup: int, iters: int, device) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def shape_list(hiddens, tps, tokens, extra) -> list[tuple]:
    """(what, hidden, tp, m, k, n) of every product to time: the block GEMMs, then `extra`."""
    shapes = [(what, h, tp, m, k, n) for h, tp, m in itertools.product(hiddens, tps, tokens)
              for what, k, n in block_gemms(h, tp)]
    return shapes + [("custom", "", "", m, k, n) for m, k, n in extra]


def product_fn(a, b, precision: str):
    """A closure running one product a @ b in `precision` (fp8: e4m3 inputs, bf16 output)."""
    import torch

    if precision == "fp8":
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.t().contiguous().to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
        one = torch.ones((), dtype=torch.float32, device=a.device)
        return lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one,
                                        out_dtype=torch.bfloat16)
    return lambda: torch.matmul(a, b)


def relative_error(out, a, b) -> float:
    """||out - ref|| / ||ref|| against a float32 product of the same inputs."""
    ref = a.float() @ b.float()
    return float((out.float() - ref).norm() / ref.norm())


def gemm_rows(shapes, precisions, dtype, device, warmup, iters):
    import torch

    for what, h, tp, m, k, n in shapes:
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        for precision in precisions:  # the same inputs in every precision
            fn = product_fn(a, b, precision)
            err = relative_error(fn(), a, b)
            t = median_time_s(fn, warmup, iters, device)
            yield {"m": m, "k": k, "n": n, "what": what, "hidden": h, "tp": tp,
                   "tflops": round(2 * m * k * n / t / 1e12, 3), "time_s": t,
                   "precision": precision, "rel_err": round(err, 5)}


def write_csv(path: str, columns, rows) -> int:
    """Write rows (printing each) through `replace_atomically`: never a half-written CSV, and
    never over a folder, device or pipe (SpecError). Returns the number of rows."""
    count = 0

    def write(name: str) -> None:
        nonlocal count
        with open(name, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=columns)
            out.writeheader()
            for row in rows:
                out.writerow(row)
                count += 1
                print(" ".join(f"{k}={row[k]}" for k in columns), flush=True)

    replace_atomically(path, write)
    return count


def checked_outputs(outputs: list[tuple[str, str | None]]) -> None:
    """SpecError unless every given (flag, path) names a distinct, writable regular file:
    checked before anything is measured."""
    distinct_files(outputs)
    for flag, path in outputs:
        if path is not None:
            if not path.strip():
                raise SpecError(f"{flag} is empty; name a .csv file")
            ensure_folder(output_target(path).parent)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.gemm", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="GEMM CSV to write")
    p.add_argument("--layer-output", default=None, help="transformer-layer CSV to write")
    p.add_argument("--hidden", default="4096,8192,12288,16384,25600")
    p.add_argument("--tp", default="1,2,4,8")
    p.add_argument("--tokens", default="2048,4096,8192")
    p.add_argument("--shapes", default="", help="extra products: MxKxN[,MxKxN...]")
    p.add_argument("--precision", default="bf16", help="bf16, fp8 or both: bf16,fp8")
    p.add_argument("--layer-seq", type=int, default=0,
                   help="sequence length of the layer benchmark (default: smallest --tokens)")
    p.add_argument("--layer-specs", default="",
                   help="layers to time instead of GPT ones (h x 128-dim heads, GELU 4h): "
                        "HIDDEN/HEADS/KV_HEADS/FFN/MLP[,...], MLP gelu or swiglu")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny float32 shapes on the CPU")
    return p


def parse_inputs(args, smoke: bool) -> tuple:
    """(hiddens, tps, tokens, extra shapes, precisions, layer specs); ValueError(message)."""
    try:
        hiddens, tps, tokens = (tuple(int(v) for v in s.split(",") if v)
                                for s in (args.hidden, args.tp, args.tokens))
        extra = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    except ValueError:
        raise ValueError("--hidden/--tp/--tokens take comma lists of integers, --shapes a "
                         "comma list of MxKxN") from None
    sizes = [*hiddens, *tps, *tokens, *itertools.chain(*extra)]
    if not (hiddens and tps and tokens) or not all(1 <= v <= MAX_SIZE for v in sizes):
        raise ValueError(f"--hidden/--tp/--tokens/--shapes take integers 1..{MAX_SIZE:,}, "
                         "and --hidden/--tp/--tokens at least one each")
    if any(h % tp for h in hiddens for tp in tps):
        raise ValueError("every --hidden must be divisible by every --tp")
    if args.warmup < 0 or args.iters < 1 or args.layer_seq < 0:
        raise ValueError("--iters takes a count >= 1, --warmup and --layer-seq >= 0")
    precisions = [p for p in args.precision.split(",") if p]
    if not precisions or any(p not in ("bf16", "fp8") for p in precisions) or any(
            len(e) != 3 for e in extra):
        raise ValueError("--precision takes bf16 and/or fp8; --shapes items are MxKxN")
    if "fp8" in precisions and smoke:
        raise ValueError("fp8 products need a CUDA GPU (Hopper or newer)")
    try:
        specs = parse_layer_specs(args.layer_specs, hiddens)
    except ValueError:
        raise ValueError("--layer-specs items are HIDDEN/HEADS/KV_HEADS/FFN/gelu|swiglu") \
            from None
    if any(v < 1 for s in specs for v in (s.hidden, s.heads, s.kv_heads, s.ffn)):
        raise ValueError("--layer-specs sizes must be >= 1")
    if args.layer_output and not (args.layer_seq or tokens):
        raise ValueError("the layer benchmark needs --layer-seq or --tokens")
    return hiddens, tps, tokens, extra, precisions, specs


def select_device(prog: str, smoke: bool):
    """(device, dtype) to benchmark on: float32 on the CPU for --smoke, else bf16 on the GPU;
    None (after one line on stderr) where torch or a GPU is missing."""
    try:
        import torch
    except ImportError:
        print(f"{prog}: error: needs torch (pip install -e '.[bench]')", file=sys.stderr)
        return None
    if smoke:
        return torch.device("cpu"), torch.float32
    if not torch.cuda.is_available():
        print(f"{prog}: error: no CUDA GPU here; use --smoke for a CPU check", file=sys.stderr)
        return None
    return torch.device("cuda"), torch.bfloat16


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        parsed = parse_inputs(args, args.smoke)  # the flags as given
        if args.smoke:  # then --smoke's fixed shapes replace them
            args.hidden, args.tp, args.tokens, args.warmup, args.iters = "256", "1,2", "128", 1, 3
            parsed = parse_inputs(args, args.smoke)
        hiddens, tps, tokens, extra, precisions, specs = parsed
        checked_outputs([("-o", args.output), ("--layer-output", args.layer_output)])
    except ValueError as exc:  # SpecError too
        p.error(str(exc))
    chosen = select_device(p.prog, args.smoke)
    if chosen is None:
        return EXIT_USAGE
    device, dtype = chosen
    try:
        write_csv(args.output, GEMM_COLUMNS,
                  gemm_rows(shape_list(hiddens, tps, tokens, extra), precisions, dtype, device,
                            args.warmup, args.iters))
        if args.layer_output:
            seq = args.layer_seq or min(tokens)
            rows = (layer_row(spec, tp, seq, 1, dtype, device, args.warmup, args.iters)
                    for spec in specs for tp in tps if spec.divisible_by(tp))
            write_csv(args.layer_output, LAYER_COLUMNS, rows)
    except SpecError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
