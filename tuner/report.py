"""Text a person reads: the chosen plan, its prediction, the runners-up and why they lose."""

from __future__ import annotations

import textwrap

from cost_models.goodput import goodput
from cost_models.params import count_parameters, mtp_params
from cost_models.pipeline import EMBEDDING_AND_LOSS_SLOTS, interleaving, stage_split
from cost_models.specs import ClusterSpec, ModelSpec, Plan
from tuner.alternatives import Alternative
from tuner.plan_io import train_days
from tuner.search import Ranked, best_per_layout

GB = 1e9
GIB = 2**30


def plan_line(plan: Plan) -> str:
    """Two lines: the parallel degrees, then the knobs."""
    deepspeed_zero3 = plan.zero == 3 and plan.zero3_impl == "deepspeed"
    return (f"tp {plan.tp}  pp {plan.pp}  vpp {plan.vpp}  cp {plan.cp}  dp {plan.dp}  "
            f"ep {plan.ep}  ({plan.num_gpus:,} GPUs, order {plan.order})\n        "
            f"micro-batch {plan.micro_batch_size}  global batch {plan.global_batch_size}  "
            f"seq-parallel {'on' if plan.sequence_parallel else 'off'}  recompute "
            f"{plan.recompute}  zero {plan.zero}  {plan.precision}"
            f"{'  grads bf16' if plan.grad_reduce_in_bf16 else ''}"
            f"{'  Adam states bf16' if plan.optimizer_dtype == 'bf16' else ''}"
            f"{f'  MoE load x{plan.moe_load_factor:g}' if plan.moe_load_factor != 1 else ''}"
            f"{'  (DeepSpeed ZeRO-3)' if deepspeed_zero3 else ''}")


WIDTH = 100
INDENT = " " * 8


def wrap(text: str) -> str:
    """Wrap a report line at WIDTH, continuation lines under the value column."""
    return textwrap.fill(text, width=WIDTH, subsequent_indent=INDENT,
                         break_long_words=False, break_on_hyphens=False)


def breakdown_line(breakdown_s: dict[str, float], step_s: float) -> str:
    parts = [f"{name} {value:.2f}s ({100 * value / step_s:.0f}%)"
             for name, value in breakdown_s.items() if value >= 0.0005 * step_s]
    return " | ".join(parts)


def memory_line(r: Ranked, capacity_bytes: float) -> str:
    top = sorted(r.memory_bytes.items(), key=lambda kv: -kv[1])[:4]
    terms = ", ".join(f"{k} {v / GIB:.1f}" for k, v in top)
    return (f"{r.peak_memory_bytes / GIB:.1f} of {capacity_bytes / GIB:.1f} GiB per GPU "
            f"({terms} GiB)")


def why_loses(other: Ranked, best: Ranked) -> str:
    """The term that grew the most against the best plan, per token."""
    if other.plan.global_batch_size != best.plan.global_batch_size:
        scale = best.plan.global_batch_size / other.plan.global_batch_size
    else:
        scale = 1.0
    deltas = {k: other.breakdown_s[k] * scale - best.breakdown_s.get(k, 0.0)
              for k in other.breakdown_s}
    name, delta = max(deltas.items(), key=lambda kv: kv[1])
    return f"+{delta:.2f}s of {name} per step (at the best plan's batch)"


def header(model: ModelSpec, cluster: ClusterSpec, num_gpus: int, default_cluster: bool) -> str:
    params = count_parameters(model) / 1e9
    where = "built-in default cluster" if default_cluster else f"cluster {cluster.source}"
    mtp = (f" (+{mtp_params(model) / 1e9:,.1f}B in {model.mtp_layers} MTP depth"
           f"{'s' if model.mtp_layers > 1 else ''})" if model.mtp_layers else "")
    host = ("" if cluster.host_s_per_op is None
            else f", host {cluster.host_s_per_op * 1e6:.1f} us/op")
    return (f"Model   {model.name}: {params:,.1f}B parameters{mtp}, {model.num_layers} layers, "
            f"hidden {model.hidden_size}, seq {model.seq_len}\n"
            f"Cluster {num_gpus:,} x {cluster.gpu.name} ({cluster.gpus_per_node} per node, "
            f"{cluster.name}: {where}{host})")


ZERO3_NOTE = ("Note    ZeRO-3/FSDP plans are the least validated: the dev set's 7 ZeRO-3 runs "
              "are predicted\n        within -16% to +13% (results/validation); pin --zero "
              "0,1 to compare.")


def failures_line(best: Ranked, days: float, num_params: float) -> str:
    g = goodput(best.plan.num_gpus, num_params)
    return wrap(f"{INDENT}with failures at Llama 3's rate: {days / g.goodput:.1f} days (a "
                f"failure every {g.job_mtbf_s / 3600:.1f} h, checkpoint every "
                f"{g.checkpoint_interval_s / 60:.0f} min, goodput {100 * g.goodput:.1f}%)")


def stages_line(plan: Plan, num_layers: int, mtp_layers: int = 0) -> str | None:
    """How the layers split over the stages, where pp does not divide them or the last
    stage makes room for multi-token prediction (else None)."""
    first, middle, last, extra = stage_split(num_layers, plan.pp, plan.vpp, mtp_layers)
    if plan.pp == 1 or (num_layers % (plan.pp * plan.vpp) == 0 and extra == 0):
        return None
    if plan.vpp > 1 and interleaving(num_layers, plan.pp, plan.vpp) == "embedding_and_loss":
        slots = (num_layers + EMBEDDING_AND_LOSS_SLOTS) // (plan.pp * plan.vpp)
        plural = "s" if slots > 1 else ""
        return wrap(f"Stages  {num_layers} layers + embedding + loss = {plan.pp} stages x "
                    f"{plan.vpp} chunks of {slots} slot{plural} (first and last stage {first} "
                    f"layers, others {middle}; Megatron-LM "
                    "--account-for-embedding-in-pipeline-split "
                    "--account-for-loss-in-pipeline-split)")
    mtp = f" + {extra} MTP" if extra else ""
    return wrap(f"Stages  {num_layers} layers over {plan.pp} stages: first {first}, last "
                f"{last}{mtp}, others {middle} (Megatron-LM --decoder-first/last-pipeline-num-"
                "layers)")


def best_block(best: Ranked, cluster: ClusterSpec, seq_len: int, batch_note: str,
               tokens_budget: float, num_params: float, num_layers: int | None = None,
               mtp_layers: int = 0) -> str:
    days = train_days(tokens_budget, best.tokens_per_s)
    gpu_hours = days * 24 * best.plan.num_gpus
    note = [ZERO3_NOTE] if best.plan.zero == 3 else []
    stages = stages_line(best.plan, num_layers, mtp_layers) if num_layers else None
    lines = [
        f"Best    {plan_line(best.plan)}",
        *([stages] if stages else []),
        f"Batch   {batch_note}",
        f"Step    {best.step_time_s:.2f} s   MFU {100 * best.mfu:.1f}%   "
        f"{best.tokens_per_s / 1e6:.2f} M tokens/s",
        wrap(f"Memory  {memory_line(best, cluster.gpu.memory_bytes)}"),
        wrap(f"Time    {breakdown_line(best.breakdown_s, best.step_time_s)}"),
        f"Train   {tokens_budget / 1e12:.2f}T tokens: {days:.1f} days, "
        f"{gpu_hours / 1e6:.2f}M GPU-hours at full speed",
        failures_line(best, days, num_params),
    ]
    return "\n".join(note + lines)


def runners_up(ranked: list[Ranked], top_k: int) -> str:
    """The best plan of each of the next layouts, with the term that makes it lose."""
    best = ranked[0]
    others = best_per_layout(ranked)[1:top_k]
    if not others:
        return "Next best layouts: none; every other layout is infeasible or outside the space."
    lines = ["Next best layouts:"]
    for r in others:
        lines.append(f"  MFU {100 * r.mfu:5.1f}%  step {r.step_time_s:6.2f}s  {r.plan.name} "
                     f"gbs {r.plan.global_batch_size} {r.plan.recompute} zero{r.plan.zero} "
                     f"sp{int(r.plan.sequence_parallel)} {r.plan.order}\n"
                     f"{INDENT}loses by {why_loses(r, best)}")
    return "\n".join(lines)


def alternatives_block(alts: list[Alternative], num_gpus: int, best_days: float) -> str:
    if not alts:
        return f"Fewer GPUs: no count in 90-100% of {num_gpus:,} trains the budget sooner."
    lines = ["Fewer GPUs would train sooner (ask for one of these):"]
    for a in alts[:3]:
        lines.append(f"  {a.num_gpus:,} GPUs: {a.best.plan.name} MFU {100 * a.best.mfu:.1f}%, "
                     f"{a.days:.1f} days ({best_days / a.days:.2f}x sooner), "
                     f"{a.gpu_hours / 1e6:.2f}M GPU-hours")
    return "\n".join(lines)


def batch_block(found, seq_len: int, best_days: float) -> str:
    if found is None:
        return "Batch: halving or doubling the global-batch range would not train sooner."
    (lo, hi), r, days = found
    return wrap(f"Another batch would train sooner: {r.plan.global_batch_size} sequences "
                f"({r.plan.global_batch_size * seq_len / 1e6:.1f}M tokens, searched {lo}-{hi})"
                f" with {r.plan.name}: MFU {100 * r.mfu:.1f}%, {days:.1f} days "
                f"({best_days / days:.2f}x sooner) -- if the model converges at that batch.")
