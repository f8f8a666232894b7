"""Command-line vocabulary shared by `autotune` (search) and `autotune predict`.

Parsers raise SpecError with one line naming the flag, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace

from cost_models.loaders import load_cluster, load_model
from cost_models.specs import (
    MAX_HOST_S_PER_OP,
    ClusterSpec,
    ModelSpec,
    Precision,
    Recompute,
    SpecError,
)

DEFAULT_MODEL = "500b"
DEFAULT_GPUS = 10000
DEFAULT_CLUSTER = "dgx-h100"
# Large runs use ~4M tokens per step (Llama 3 405B: 4M-16M, arXiv:2407.21783 Sec. 3.4.1;
# GPT-3 175B: 3.2M, arXiv:2005.14165 Table 2.1); the default allows +-25% around 4M so that
# the global batch divides evenly across data-parallel ranks of awkward GPU counts.
DEFAULT_BATCH_TOKENS = 4 * 2**20
DEFAULT_BATCH_SLACK = 0.25
TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 (Chinchilla), compute-optimal tokens/parameter
MOE_LOAD_HELP = ("MoE: tokens the busiest expert rank processes over the mean (default 1: "
                 "balanced routing; the capacity factor when padded to capacity; the router's "
                 "imbalance when dropless: 1.5 fits the published dropless Qwen3-235B runs)")
OPTIMIZER_DTYPE_HELP = ("Adam state precision: fp32 (default, Megatron-LM's and DeepSpeed's) or "
                        "bf16 (Megatron-Core's precision-aware optimizer with bf16 moments: 6 "
                        "instead of 12 bytes per parameter; needs --zero 1 and a Transformer "
                        "Engine with FusedAdam master-weight dtypes)")
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def quantity(text: str, flag: str) -> float:
    match = _QUANTITY.match(text)
    if match is None:
        raise SpecError(f"{flag} {text!r} is not a number like 512, 4M or 10T")
    return float(match.group(1)) * _SUFFIX[match.group(2).lower()]


MAX_LIST_VALUE = 1_000_000  # a degree or micro-batch beyond any cluster


def int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SpecError(f"{flag} {text!r} must be an integer or a comma list like 4,8") from None
    if any(not 1 <= v <= MAX_LIST_VALUE for v in values):
        raise SpecError(f"{flag} {text!r}: values must be in 1..{MAX_LIST_VALUE:,}")
    return values


def zero_list(text: str) -> tuple[int, ...]:
    values = tuple(v.strip() for v in text.split(","))
    if not all(v in ("0", "1", "2", "3") for v in values):
        raise SpecError(f"--zero {text!r}: use 0, 1, 2, 3 or a comma list like 1,3")
    return tuple(int(v) for v in values)


def value_range(text: str, flag: str) -> tuple[float, float]:
    """'512' -> (512, 512); '384-640' -> (384, 640); suffixes allowed ('3M-5M')."""
    if text.strip().startswith("-"):
        raise SpecError(f"{flag} {text!r} must be positive (a value or a range LO-HI)")
    parts = text.split("-")
    if len(parts) not in (1, 2):
        raise SpecError(f"{flag} {text!r} must be a value or a range LO-HI")
    lo, hi = (quantity(parts[0], flag), quantity(parts[-1], flag))
    if lo <= 0 or hi < lo:
        raise SpecError(f"{flag} {text!r}: need 0 < LO <= HI")
    return lo, hi


def add_model_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and cluster")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="preset (e.g. llama3-70b), size (500b, 1t), JSON/YAML spec or HF "
                        f"config.json (default {DEFAULT_MODEL})")
    g.add_argument("--cluster", default=None,
                   help="cluster preset (dgx-h100, dgx-a100-80gb, ...) or a profile JSON "
                        f"fitted by the benchmark suite (default {DEFAULT_CLUSTER})")
    g.add_argument("--seq-len", type=int, default=None, help="sequence length (tokens)")
    g.add_argument("--precision", default="bf16", choices=[p.value for p in Precision])
    g.add_argument("--host-us-per-op", type=float, default=None,
                   help="host microseconds per PyTorch operator on your nodes (default: the "
                        "cluster profile's, else 25.9, the median of five H100 machines; "
                        "measure with python -m bench.megatron_layer, lower it for layers "
                        "captured in CUDA graphs)")


def load_inputs(args: argparse.Namespace) -> tuple[ModelSpec, ClusterSpec, bool]:
    """(model, cluster, whether the cluster is the built-in default)."""
    model = load_model(args.model)
    if args.seq_len is not None:
        if args.seq_len < 1:
            raise SpecError(f"--seq-len {args.seq_len} must be >= 1")
        model = replace(model, seq_len=args.seq_len)
    default = args.cluster is None
    cluster = load_cluster(DEFAULT_CLUSTER if default else args.cluster)
    cluster.gpu.peak_flops(Precision(args.precision))  # clear error if unsupported
    return model, with_host_flag(cluster, args), default


def with_host_flag(cluster: ClusterSpec, args: argparse.Namespace) -> ClusterSpec:
    """The cluster with --host-us-per-op applied, if given."""
    host_us = getattr(args, "host_us_per_op", None)
    if host_us is None:
        return cluster
    if not 0 <= host_us * 1e-6 < MAX_HOST_S_PER_OP:  # also refuses nan
        raise SpecError(f"--host-us-per-op {host_us} must be microseconds in "
                        f"[0, {MAX_HOST_S_PER_OP * 1e6:g}) (about 26 on H100 nodes; 0: no host "
                        "cost)")
    return replace(cluster, host_s_per_op=host_us * 1e-6)


def recompute_list(text: str) -> tuple[Recompute, ...]:
    try:
        return tuple(Recompute(v) for v in text.split(","))
    except ValueError:
        raise SpecError(f"--recompute {text!r}: use none, selective, full, moe or a comma "
                        "list") from None


def fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
