"""`autotune predict`: the cost model's prediction for one plan, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from cost_models.analytical import estimate
from cost_models.cli_args import Parser
from cost_models.plan_arrays import busiest_rank_load, from_plans
from cost_models.specs import (
    DEFAULT_ORDER,
    OPTIMIZER_DTYPES,
    ZERO3_IMPLS,
    Estimate,
    ModelSpec,
    Plan,
    SpecError,
)
from tuner import options as opt
from tuner.plan_io import load_plan
from tuner.space import check_load_factor


def build_parser(prog: str = "autotune predict") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Predict step time, MFU and memory of one plan.")
    opt.add_model_cluster_args(p)
    g = p.add_argument_group("plan (or --plan FILE)")
    g.add_argument("--plan", help="a plan JSON written by autotune --out")
    for name in ("tp", "pp", "vpp", "dp", "cp", "ep"):
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--gpus", type=int, help="derive dp = gpus / (tp*pp*cp)")
    g.add_argument("--micro-batch", type=int, default=1)
    g.add_argument("--global-batch", type=int, help="sequences per step")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--recompute", default="none", choices=("none", "selective", "full", "moe"),
                   help="moe: selective plus the whole MoE block (Megatron-Core "
                        "--recompute-modules layernorm moe)")
    g.add_argument("--zero", type=int, default=1, choices=(0, 1, 2, 3))
    g.add_argument("--order", default=DEFAULT_ORDER)
    g.add_argument("--no-flash-attention", action="store_true")
    g.add_argument("--grad-reduce-in-bf16", action="store_true",
                   help="gradients kept and reduced in bf16 (Megatron-LM --grad-reduce-in-bf16)")
    g.add_argument("--moe-load-factor", type=float, default=1.0, help=opt.MOE_LOAD_HELP)
    g.add_argument("--optimizer-dtype", choices=OPTIMIZER_DTYPES, default="fp32",
                   help=opt.OPTIMIZER_DTYPE_HELP)
    g.add_argument("--zero3-impl", choices=ZERO3_IMPLS, default="fsdp",
                   help="who shards under --zero 3: fsdp (Megatron-FSDP) or deepspeed")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _dp(args: argparse.Namespace) -> int:
    if args.dp is not None and args.gpus is not None:
        ranks = (args.tp or 1) * (args.pp or 1) * (args.cp or 1) * args.dp
        if ranks != args.gpus:
            raise SpecError(f"--gpus {args.gpus} but tp*pp*cp*dp = {ranks}; give one of "
                            "--gpus and --dp")
    if args.dp is not None:
        return args.dp
    if args.gpus is None:
        return 1
    if args.gpus < 1:
        raise SpecError(f"--gpus {args.gpus} must be >= 1")
    model_ranks = max((args.tp or 1) * (args.pp or 1) * (args.cp or 1), 1)
    if args.gpus % model_ranks:
        raise SpecError(f"--gpus {args.gpus} is not divisible by tp*pp*cp={model_ranks}")
    return args.gpus // model_ranks


def plan_from_args(args: argparse.Namespace) -> Plan:
    dp = _dp(args)
    gbs = args.micro_batch * dp if args.global_batch is None else args.global_batch

    def degree(value: int | None) -> int:
        return 1 if value is None else value

    return Plan(tp=degree(args.tp), pp=degree(args.pp), vpp=degree(args.vpp), dp=dp,
                cp=degree(args.cp), ep=degree(args.ep), micro_batch_size=args.micro_batch,
                global_batch_size=gbs,
                sequence_parallel=args.sequence_parallel, recompute=args.recompute,
                zero=args.zero, precision=args.precision, order=args.order,
                flash_attention=not args.no_flash_attention,
                grad_reduce_in_bf16=args.grad_reduce_in_bf16, zero3_impl=args.zero3_impl,
                moe_load_factor=args.moe_load_factor, optimizer_dtype=args.optimizer_dtype)


def table(model: ModelSpec, plan: Plan, est: Estimate) -> str:
    gib = 2**30
    rows = [("plan", plan.name)]
    if plan.moe_load_factor != 1.0:
        used = float(busiest_rank_load(model, from_plans([plan]))[0])
        capped = f", {used:g} used: at most ep={plan.ep}" if used < plan.moe_load_factor else ""
        rows.append(("MoE load factor", f"{plan.moe_load_factor:g} (busiest expert rank"
                                        f"{capped})"))
    if plan.optimizer_dtype != "fp32":
        rows.append(("Adam states", f"{plan.optimizer_dtype} (precision-aware optimizer)"))
    rows += [("step time", f"{est.step_time_s:.3f} s"),
            ("MFU", f"{100 * est.mfu:.1f} %"),
            ("model TFLOP/s per GPU", f"{est.model_tflops_per_gpu:.1f}"),
            ("tokens/s", f"{est.tokens_per_s:,.0f}"),
            ("peak memory", f"{est.peak_memory_bytes / gib:.1f} of "
                            f"{est.memory_capacity_bytes / gib:.1f} GiB")]
    rows += [(f"  time: {k}", f"{v:.3f} s") for k, v in est.breakdown_s.items()]
    rows += [(f"  memory: {k}", f"{v / gib:.2f} GiB")
             for k, v in est.memory_breakdown_bytes.items()]
    if est.infeasible_reason:
        rows.append(("DOES NOT FIT", est.infeasible_reason))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def typed_option(token: str, options: list[str]) -> str:
    """The option a typed flag names: argparse accepts a unique prefix (--prec for
    --precision), so a prefix of exactly one option is that option."""
    if token in options or not token.startswith("--"):
        return token
    matches = [o for o in options if o.startswith(token)]
    return matches[0] if len(matches) == 1 else token


def plan_file_conflicts(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        argv: list[str]) -> None:
    """A plan file fixes the model and the plan: a flag that would change them is refused
    rather than ignored, also when given at its default value (--cluster may name another
    cluster, --host-us-per-op another host speed)."""
    options = [o for action in parser._actions for o in action.option_strings]
    typed = {typed_option(token.split("=", 1)[0], options)
             for token in argv if token.startswith("-")}
    for action in parser._actions:
        if action.dest in ("plan", "cluster", "host_us_per_op", "json", "help") or \
                not action.option_strings:
            continue
        if getattr(args, action.dest) != action.default or typed & set(action.option_strings):
            raise SpecError(f"{action.option_strings[0]} cannot be combined with --plan (the "
                            "plan file fixes it); drop it, or edit the plan file")


def run(argv: list[str], prog: str = "autotune predict") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.plan is not None and not args.plan.strip():
        raise SpecError("--plan is empty; name a plan JSON written by autotune --out, or "
                        "give the plan as flags")
    if args.plan:  # the plan file's model and cluster, unless --cluster names another
        plan_file_conflicts(parser, args, argv)
        loaded = load_plan(args.plan)
        model, plan, cluster = loaded.model, loaded.plan, loaded.cluster
        if args.cluster is not None:
            _, cluster, _ = opt.load_inputs(args)
        cluster = opt.with_host_flag(cluster, args)
    else:
        model, cluster, _ = opt.load_inputs(args)
        plan = plan_from_args(args)
    from tuner.megatron import check_megatron

    check_megatron(model, plan)
    check_load_factor(model, plan.moe_load_factor)
    est = estimate(model, cluster, plan)
    if args.json:
        doc = {"plan": plan.name, "step_time_s": est.step_time_s, "mfu": est.mfu,
               "model_tflops_per_gpu": est.model_tflops_per_gpu,
               "tokens_per_s": est.tokens_per_s, "peak_memory_bytes": est.peak_memory_bytes,
               "memory_capacity_bytes": est.memory_capacity_bytes,
               "breakdown_s": dict(est.breakdown_s),
               "memory_breakdown_bytes": dict(est.memory_breakdown_bytes),
               "infeasible_reason": est.infeasible_reason}
        print(json.dumps(doc, indent=2))
    else:
        print(table(model, plan, est))
    return 0
