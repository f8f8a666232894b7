"""`autotune`: search the plan with the highest predicted MFU and write it as a plan file."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass

from cost_models.analytical import estimate
from cost_models.atomic import distinct_files, ensure_folder, output_target
from cost_models.cli_args import Parser
from cost_models.gemm_curve import curve_for
from cost_models.params import count_parameters
from cost_models.specs import (
    OPTIMIZER_DTYPES,
    ZERO3_IMPLS,
    ClusterSpec,
    ModelSpec,
    Precision,
    SpecError,
)
from tuner import options as opt
from tuner.alternatives import faster_gpu_counts, other_batch
from tuner.plan_io import make_provenance, plan_document, save_plan, train_days
from tuner.report import alternatives_block, batch_block, best_block, header, runners_up
from tuner.search import Ranked, collect, make_sampler, recover_stale_trials, run_study
from tuner.space import Knobs, Space, check_space, layouts
from tuner.storage import open_study, storage_file

PROGRESS_MIN_LAYOUTS = 200
MAX_GPUS = 1_000_000  # the largest clusters hold ~200k GPUs; more is a typo
MAX_BATCH_SEQUENCES = 10_000_000
MAX_TRIALS = 1_000_000


def build_parser(prog: str = "autotune") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Search the training plan with the highest "
                   "predicted MFU. Subcommands: predict, validate, launch (see "
                   f"'{prog} SUBCOMMAND --help').")
    opt.add_model_cluster_args(p)
    p.add_argument("--gpus", type=int, default=None,
                   help=f"GPU count (default: the Slurm allocation, else {opt.DEFAULT_GPUS})")
    b = p.add_argument_group("batch and budget")
    b.add_argument("--global-batch", help="sequences per step, or a range LO-HI to choose in")
    b.add_argument("--global-batch-tokens", help="tokens per step, or a range (e.g. 3M-5M); "
                   "default 4M +-25%%")
    b.add_argument("--tokens", help="training budget in tokens (default 20 per parameter)")
    k = p.add_argument_group("pins and exclusions")
    for name in ("tp", "pp", "cp", "ep", "vpp", "zero"):
        k.add_argument(f"--{name}", help=f"allowed {name} values, e.g. 8 or 4,8")
    k.add_argument("--micro-batch", help="allowed micro-batch sizes, e.g. 1,2")
    k.add_argument("--recompute", help="allowed recompute modes: none,selective,full,moe "
                   "(moe: selective plus the whole MoE block; default all)")
    k.add_argument("--max-pp", type=int)
    k.add_argument("--max-tp", type=int)
    k.add_argument("--no-cp", action="store_true", help="no context parallelism")
    k.add_argument("--no-sp", action="store_true", help="no sequence parallelism")
    k.add_argument("--grad-reduce-in-bf16", action="store_true",
                   help="keep and reduce gradients in bf16 (Megatron-LM --grad-reduce-in-bf16, "
                        "NeMo's choice; default fp32 as Megatron-LM)")
    k.add_argument("--moe-load-factor", type=float, default=1.0, help=opt.MOE_LOAD_HELP)
    k.add_argument("--optimizer-dtype", choices=OPTIMIZER_DTYPES, default="fp32",
                   help=opt.OPTIMIZER_DTYPE_HELP + "; bf16 searches zero 1 plans only")
    k.add_argument("--zero3-impl", choices=ZERO3_IMPLS, default="fsdp",
                   help="who shards ZeRO-3 plans: fsdp (Megatron-FSDP, the Megatron-LM "
                        "launcher; default) or deepspeed (DeepSpeed ZeRO-3, whose gathers the "
                        "cost model prices as measured in 2021)")
    k.add_argument("--memory-headroom", type=float, default=0.05,
                   help="fraction of GPU memory kept free (default 0.05)")
    s = p.add_argument_group("search")
    s.add_argument("--sampler", default="brute", help="brute (exact, default), tpe, random")
    s.add_argument("--trials", type=int, help="trial budget (default: every layout)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--storage", help="shared Optuna storage: journal:PATH or sqlite:///db")
    s.add_argument("--study-name", default="autotune")
    s.add_argument("--stale-after", type=float, default=None,
                   help="seconds after which a RUNNING trial of a shared study counts as lost "
                        "with its worker and is re-run (default 120)")
    o = p.add_argument_group("output")
    o.add_argument("--top-k", type=int, default=5)
    o.add_argument("--out", help="write the plan JSON here")
    o.add_argument("--format", default="text", choices=("text", "json", "megatron",
                                                        "deepspeed"))
    o.add_argument("--plot", help="write PNG figures into this folder")
    o.add_argument("--quiet", action="store_true", help="only the plan (and errors)")
    o.add_argument("--no-alternatives", action="store_true",
                   help="skip scoring nearby GPU counts")
    return p


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    model: ModelSpec
    cluster: ClusterSpec
    default_cluster: bool
    space: Space
    tokens_budget: float
    batch_note: str


def _knobs(args: argparse.Namespace) -> Knobs:
    def pins(flag: str):
        value = getattr(args, flag.replace("-", "_"))
        return None if value is None else opt.int_list(value, f"--{flag}")

    fields = {name: pins(name) for name in ("tp", "pp", "cp", "ep", "vpp")}
    if args.no_cp:
        if fields["cp"] not in (None, (1,)):
            raise SpecError("--no-cp contradicts --cp; keep one of them")
        fields["cp"] = (1,)
    extra = {}
    if args.zero is not None:
        extra["zero"] = opt.zero_list(args.zero)
    if args.micro_batch is not None:
        extra["micro_batch_size"] = opt.int_list(args.micro_batch, "--micro-batch")
    if args.recompute is not None:
        extra["recompute"] = opt.recompute_list(args.recompute)
    if args.no_sp:
        extra["sequence_parallel"] = (False,)
    return Knobs(**fields, **extra, max_pp=args.max_pp, max_tp=args.max_tp,
                 grad_reduce_in_bf16=args.grad_reduce_in_bf16, zero3_impl=args.zero3_impl,
                 moe_load_factor=args.moe_load_factor, optimizer_dtype=args.optimizer_dtype)


def _batch_range(args: argparse.Namespace, seq_len: int) -> tuple[tuple[int, int], str]:
    if args.global_batch is not None and args.global_batch_tokens is not None:
        raise SpecError("--global-batch and --global-batch-tokens contradict; give one")
    if args.global_batch is not None:
        lo, hi = opt.value_range(args.global_batch, "--global-batch")
        return (int(lo), int(hi)), f"{args.global_batch} sequences (requested)"
    if args.global_batch_tokens is not None:
        lo, hi = opt.value_range(args.global_batch_tokens, "--global-batch-tokens")
        note = f"{args.global_batch_tokens} tokens (requested)"
    else:
        target = opt.DEFAULT_BATCH_TOKENS
        lo, hi = target * (1 - opt.DEFAULT_BATCH_SLACK), target * (1 + opt.DEFAULT_BATCH_SLACK)
        note = "default ~4M tokens +-25%"
    if hi < seq_len:
        raise SpecError(f"--global-batch-tokens {args.global_batch_tokens}: less than one "
                        f"sequence of {seq_len} tokens")
    seqs = (max(int(lo // seq_len), 1), max(int(hi // seq_len), 1))
    return seqs, f"{note} = {seqs[0]}-{seqs[1]} sequences of {seq_len}"


def _check_batch(gbs_range: tuple[int, int]) -> None:
    if gbs_range[1] > MAX_BATCH_SEQUENCES:
        raise SpecError(f"global batch of {gbs_range[1]:,} sequences is over "
                        f"{MAX_BATCH_SEQUENCES:,}; give a smaller --global-batch")


def _gpus(args: argparse.Namespace) -> int:
    if args.gpus is not None:
        if not 1 <= args.gpus <= MAX_GPUS:
            raise SpecError(f"--gpus {args.gpus} must be in 1..{MAX_GPUS:,}")
        return args.gpus
    from tuner.slurm_env import SlurmEnvError, current_allocation

    try:
        allocation = current_allocation()
    except SlurmEnvError as exc:
        raise SpecError(f"{exc}; or pass --gpus") from None
    if allocation is not None and allocation.gpus_per_node > 0:
        return allocation.num_nodes * allocation.gpus_per_node
    return opt.DEFAULT_GPUS


def check_flags(args: argparse.Namespace) -> None:
    """Range checks argparse cannot express, before anything is loaded or searched."""
    if args.top_k < 0:
        raise SpecError(f"--top-k {args.top_k} must be >= 0")
    for flag, value in (("--max-tp", args.max_tp), ("--max-pp", args.max_pp)):
        if value is not None and value < 1:
            raise SpecError(f"{flag} {value} must be >= 1")


def build_request(args: argparse.Namespace) -> Request:
    check_flags(args)
    model, cluster, default = opt.load_inputs(args)
    gbs_range, note = _batch_range(args, model.seq_len)
    _check_batch(gbs_range)
    space = Space(model=model, cluster=cluster, num_gpus=_gpus(args),
                  global_batch_range=gbs_range, precision=Precision(args.precision),
                  knobs=_knobs(args))
    check_space(space)
    tokens = (opt.quantity(args.tokens, "--tokens") if args.tokens
              else opt.TOKENS_PER_PARAM * count_parameters(model))
    if not 0 < tokens < math.inf:
        raise SpecError(f"--tokens {args.tokens} must be a positive number of tokens (15T)")
    if not 0.0 <= args.memory_headroom < 1.0:
        raise SpecError(f"--memory-headroom {args.memory_headroom} must be in [0, 1)")
    return Request(model=model, cluster=cluster, default_cluster=default, space=space,
                   tokens_budget=tokens, batch_note=note)


def search(req: Request, args: argparse.Namespace) -> tuple[list[Ranked], dict[str, str]]:
    if args.trials is not None and not 1 <= args.trials <= MAX_TRIALS:
        raise SpecError(f"--trials {args.trials} must be in 1..{MAX_TRIALS:,}")
    if args.stale_after is not None and not 0 < args.stale_after < math.inf:
        raise SpecError(f"--stale-after {args.stale_after} must be > 0 seconds")
    if not 0 <= args.seed < 2**32:
        raise SpecError(f"--seed {args.seed} must be in 0..{2**32 - 1}")
    sampler = make_sampler(args.sampler, args.seed, shared=args.storage is not None)
    study = open_study(args.storage, args.study_name, sampler)
    recover_stale_trials(study, args.stale_after)
    # A bar when the search can take more than a moment: many layouts, or a storage whose
    # trials cost round trips (sqlite ~0.5 s each); never when output is not a terminal.
    slow = len(layouts(req.space)) >= PROGRESS_MIN_LAYOUTS or args.storage is not None
    progress = not args.quiet and sys.stderr.isatty() and slow
    run_study(study, req.space, headroom=args.memory_headroom, n_trials=args.trials,
              progress=progress, stale_after_s=args.stale_after)
    return collect(study)


def closest_reason(reasons) -> list[str]:
    """The reason of the layout closest to fitting: the smallest "needs at least X GB"
    (compared as numbers: 167.0 before 1213.2), else the first other reason."""
    def need_gb(text: str) -> float:
        found = re.search(r"needs at least ([0-9.]+) GB", text)
        return float(found.group(1)) if found else math.inf
    return sorted(set(reasons), key=lambda text: (need_gb(text), text))[:1]


def no_plan_message(req: Request, infeasible: dict[str, str]) -> str:
    reasons = closest_reason(infeasible.values())
    lo, hi = req.space.global_batch_range
    if not any("needs at least" in r for r in reasons):  # no batch divides: not memory
        return (f"no plan of {req.model.name} on {req.space.num_gpus} GPUs: {'; '.join(reasons)}"
                f" (global batch {lo}-{hi} sequences of {req.model.seq_len} tokens); give a "
                f"wider range, e.g. --global-batch {int(lo * 0.9)}-{int(hi * 1.1) + 1}, or a "
                "count divisible by the data-parallel sizes")
    return (f"no plan of {req.model.name} fits {req.space.num_gpus} x {req.cluster.gpu.name}: "
            f"{'; '.join(reasons)}; use more GPUs, a larger-memory GPU, --zero 3 with "
            "--pp 1, or a smaller model")


def plan_doc(req: Request, best: Ranked, ranked: list[Ranked], args) -> dict:
    measured = " sha256:" in req.cluster.source  # loaders stamp profile files this way
    provenance = make_provenance(
        cost_model="cost_models.analytical", preset=None if measured else req.cluster.name,
        parameters={"gemm_curve": curve_for(req.cluster.gpu).source,
                    "memory_headroom": args.memory_headroom, "sampler": args.sampler},
        profile_path=req.cluster.source.split(" sha256:")[0] if measured else None)
    alternatives = [(r.plan, estimate(req.model, req.cluster, r.plan))
                    for r in ranked[1:args.top_k]]
    return plan_document(req.model, req.cluster, best.plan,
                         estimate(req.model, req.cluster, best.plan),
                         tokens_budget=req.tokens_budget, provenance=provenance,
                         alternatives=alternatives)


def check_format(doc: dict, fmt: str) -> None:
    """A framework that cannot run the plan is one line with the reason, before any output."""
    reason = (doc["launch"].get("unsupported") or {}).get(fmt)
    if reason:
        raise SpecError(f"--format {fmt}: {reason}")


def emit(doc: dict, fmt: str) -> None:
    """The plan in the format asked for (check_format has passed)."""
    if fmt == "json":
        print(json.dumps(doc, indent=2))
        return
    launch = doc["launch"]
    if fmt == "megatron":
        print(shlex.join(launch["megatron_args"] or []))
    elif fmt == "deepspeed":
        print(json.dumps(launch["deepspeed_config"], indent=2))


def text_report(req: Request, ranked: list[Ranked], args) -> str:
    best = ranked[0]
    parts = [header(req.model, req.cluster, req.space.num_gpus, req.default_cluster),
             best_block(best, req.cluster, req.model.seq_len, req.batch_note,
                        req.tokens_budget, count_parameters(req.model),
                        req.model.num_layers, req.model.mtp_layers)]
    if args.top_k > 1 and len(ranked) > 1:
        parts.append(runners_up(ranked, args.top_k))
    if not args.no_alternatives:
        days = train_days(req.tokens_budget, best.tokens_per_s)
        alts = faster_gpu_counts(req.space, args.memory_headroom, req.tokens_budget, best)
        parts.append(alternatives_block(alts, req.space.num_gpus, days))
        batch = other_batch(req.space, args.memory_headroom, req.tokens_budget, best)
        parts.append(batch_block(batch, req.model.seq_len, days))
    return "\n".join(parts)


def _input_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The files the run reads that an output must not replace."""
    files = [(f"--{flag}", getattr(args, flag)) for flag in ("model", "cluster")
             if getattr(args, flag) and os.path.isfile(getattr(args, flag))]
    return files + [("--storage", storage_file(args.storage))]


def check_outputs(args: argparse.Namespace) -> None:
    """Outputs checked before the search: not empty, a writable place, none naming another
    output or an input (a model or cluster file, the study's journal), the plot folder
    made. A plot that fails after this leaves the complete plan file."""
    from tuner.plots import plot_targets

    for flag, what in (("out", "the plan JSON file"), ("plot", "a folder for the figures")):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise SpecError(f"--{flag} is empty; name {what}, or leave --{flag} out")
    plots = plot_targets(args.plot) if args.plot else []
    if args.out:
        output_target(args.out)
    distinct_files([("--out", args.out)] + [("--plot", p) for p in plots],
                   inputs=_input_files(args))
    if args.plot:
        ensure_folder(args.plot)


def run(argv: list[str], prog: str = "autotune") -> int:
    args = build_parser(prog).parse_args(argv)
    req = build_request(args)
    check_outputs(args)
    ranked, infeasible = search(req, args)
    if not ranked:
        raise SpecError(no_plan_message(req, infeasible))
    doc = plan_doc(req, ranked[0], ranked, args)
    check_format(doc, args.format)
    if args.out:
        save_plan(doc, args.out)
    if args.plot:
        from tuner.plots import write_plots

        write_plots(args.plot, req, ranked, args)
    if args.format != "text":
        emit(doc, args.format)
    elif args.quiet:
        print(ranked[0].plan.name)
    else:
        print(text_report(req, ranked, args))
        if args.out:
            print(f"Plan    written to {args.out}")
    return 0
