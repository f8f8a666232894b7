"""Specs: the vocabulary every stage speaks (model, cluster, plan, estimate).

Frozen, keyword-only dataclasses validated on construction. A bad value raises `SpecError`
(a `ValueError`) whose message names the field, the value and what is allowed, so the CLI can
print it as the one line a user sees. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class SpecError(ValueError):
    """A spec field holds a value the tool cannot use; the message says which and why."""


class Mlp(StrEnum):
    GELU = "gelu"
    SWIGLU = "swiglu"
    RELU2 = "relu2"
    RELU = "relu"


class Precision(StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"


class Recompute(StrEnum):
    NONE = "none"
    SELECTIVE = "selective"  # the norms (+ MoE activation); unfused: the attention core
    FULL = "full"
    MOE = "moe"  # selective plus the whole MoE block (Megatron-Core: layernorm, moe)


# Parallel axes that occupy distinct GPUs; ep is carved out of tp*cp*dp (Megatron-Core MoE).
AXES = ("tp", "cp", "dp", "pp")
DEFAULT_ORDER = "tp-cp-dp-pp"  # innermost first: TP inside the NVLink domain, PP outermost


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        _require(value > 0, f"{owner}.{name}={value!r} must be > 0")


# Beyond any model trained or planned (the largest published: ~200 layers, hidden 25,600,
# 256 experts, 1M-token contexts): a larger value is a typo, and would make the search run
# for hours on arrays of absurd sizes.
MODEL_LIMITS = {"num_layers": 10_000, "hidden_size": 1_000_000, "ffn_hidden_size": 10_000_000,
                "num_heads": 100_000, "num_kv_heads": 100_000, "seq_len": 100_000_000,
                "vocab_size": 100_000_000, "num_experts": 100_000}


# A plan beyond any cluster (the largest hold ~200k GPUs) or batch (Llama 3: 2,048 sequences)
PLAN_LIMITS = {"tp": 1_000_000, "pp": 1_000_000, "vpp": 1_000_000, "dp": 1_000_000,
               "cp": 1_000_000, "ep": 1_000_000, "micro_batch_size": 10_000_000,
               "global_batch_size": 10_000_000}


def _at_most(owner: str, limits: Mapping[str, int], **values: float) -> None:
    for name, value in values.items():
        _require(value <= limits[name], f"{owner}.{name}={value!r} is over {limits[name]:,}; "
                 "check the value (nothing this size is trained)")


def _enum(owner: str, name: str, value: object, kind: type[StrEnum]) -> StrEnum:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise SpecError(f"{owner}.{name}={value!r} is not one of: {allowed}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A decoder-only transformer. MoE fields stay at their defaults for dense models."""

    name: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int  # dense-layer FFN width
    num_heads: int
    num_kv_heads: int  # == num_heads for MHA, 1 for MQA, in between for GQA
    head_dim: int = 0  # 0: hidden_size // num_heads
    seq_len: int
    vocab_size: int
    mlp: Mlp = Mlp.GELU
    tied_embeddings: bool = False
    num_experts: int = 1  # 1: dense
    moe_topk: int = 0
    moe_ffn_hidden_size: int = 0  # per-expert FFN width
    moe_shared_ffn_hidden_size: int = 0  # shared-expert FFN width, 0: none
    moe_layer_freq: float = 0.0  # fraction of layers that are MoE
    # Group-limited routing (DeepSeek-V3's node-limited routing): the experts form
    # moe_router_groups groups and a token's top-k experts come from moe_router_group_topk
    # of them; 0: unlimited.
    moe_router_groups: int = 0
    moe_router_group_topk: int = 0
    # Multi-head latent attention (DeepSeek-V2/V3, arXiv:2412.19437 Sec. 2.1.1), on when
    # kv_lora_rank > 0: keys and values are up-projected from a kv_lora_rank-wide latent,
    # queries from a q_lora_rank-wide one (0: projected from the hidden state directly).
    # head_dim is then the no-RoPE part of a query/key head (Megatron --qk-head-dim), to which
    # qk_rope_head_dim adds the decoupled RoPE part; values are v_head_dim wide.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Multi-token prediction depth (DeepSeek-V3 Sec. 2.2; Megatron --mtp-num-layers): each
    # depth adds a projection of [hidden; next token's embedding] (2h -> h), one transformer
    # layer of the model's kind and another pass through the shared output head, on the last
    # pipeline stage. 0: none.
    mtp_layers: int = 0

    def __post_init__(self) -> None:
        owner = f"model {self.name!r}"
        _require(isinstance(self.name, str) and self.name.strip() != "",
                 "model.name is empty; name the model (plan files and reports show it)")
        object.__setattr__(self, "mlp", _enum(owner, "mlp", self.mlp, Mlp))
        _positive(owner, num_layers=self.num_layers, hidden_size=self.hidden_size,
                  ffn_hidden_size=self.ffn_hidden_size, num_heads=self.num_heads,
                  num_kv_heads=self.num_kv_heads, seq_len=self.seq_len,
                  vocab_size=self.vocab_size, num_experts=self.num_experts)
        _at_most(owner, MODEL_LIMITS, **{name: getattr(self, name) for name in MODEL_LIMITS})
        if self.head_dim == 0:
            _require(self.hidden_size % self.num_heads == 0,
                     f"{owner}.hidden_size={self.hidden_size} is not divisible by "
                     f"num_heads={self.num_heads}; set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        _positive(owner, head_dim=self.head_dim)
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"{owner}.num_heads={self.num_heads} must be a multiple of "
                 f"num_kv_heads={self.num_kv_heads}")
        self._check_moe(owner)
        self._check_mla(owner)

    def _check_mla(self, owner: str) -> None:
        for name in ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim",
                     "mtp_layers"):
            _require(getattr(self, name) >= 0, f"{owner}.{name} must be >= 0")
        if not self.is_mla:
            _require(self.q_lora_rank == self.qk_rope_head_dim == self.v_head_dim == 0,
                     f"{owner}: q_lora_rank/qk_rope_head_dim/v_head_dim are multi-head latent "
                     "attention fields and need kv_lora_rank > 0")
            return
        _require(self.num_kv_heads == self.num_heads,
                 f"{owner}: multi-head latent attention has one key/value head per query "
                 f"head; set num_kv_heads={self.num_heads}")

    def _check_moe(self, owner: str) -> None:
        if self.num_experts == 1:
            _require(self.moe_layer_freq == 0.0 and self.moe_topk == 0
                     and self.moe_router_groups == self.moe_router_group_topk == 0,
                     f"{owner}: moe_topk/moe_layer_freq/moe_router_groups need num_experts > 1")
            return
        _require(1 <= self.moe_topk <= self.num_experts,
                 f"{owner}.moe_topk={self.moe_topk} must be in 1..num_experts={self.num_experts}")
        _require(0.0 < self.moe_layer_freq <= 1.0,
                 f"{owner}.moe_layer_freq={self.moe_layer_freq} must be in (0, 1]")
        _positive(owner, moe_ffn_hidden_size=self.moe_ffn_hidden_size)
        _require(self.moe_shared_ffn_hidden_size >= 0,
                 f"{owner}.moe_shared_ffn_hidden_size must be >= 0")
        self._check_groups(owner)

    def _check_groups(self, owner: str) -> None:
        groups, picked = self.moe_router_groups, self.moe_router_group_topk
        if groups == picked == 0:
            return
        _require(groups >= 2 and self.num_experts % groups == 0,
                 f"{owner}.moe_router_groups={groups} must be >= 2 and divide "
                 f"num_experts={self.num_experts} (0: no group limit)")
        _require(1 <= picked <= groups and picked * self.num_experts // groups >= self.moe_topk,
                 f"{owner}.moe_router_group_topk={picked} must be in 1..{groups} and its "
                 f"groups must hold moe_topk={self.moe_topk} experts")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def max_moe_load_factor(self) -> float:
        """The most tokens one expert rank can get over the mean: every token's top-k copies
        (experts / top-k; 1 for a dense model). An expert-parallel group of ep ranks caps it
        further, at ep (plan_arrays.busiest_rank_load)."""
        return max(self.num_experts / max(self.moe_topk, 1), 1.0)

    @property
    def num_moe_layers(self) -> int:
        return round(self.num_layers * self.moe_layer_freq) if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def q_dim(self) -> int:
        """Width of the queries (and of the keys each query head meets)."""
        return self.num_heads * (self.head_dim + self.qk_rope_head_dim)

    @property
    def k_dim(self) -> int:
        return self.num_kv_heads * (self.head_dim + self.qk_rope_head_dim)

    @property
    def v_dim(self) -> int:
        return self.num_kv_heads * (self.v_head_dim or self.head_dim)

    @property
    def o_dim(self) -> int:
        """Width of the attention output (the output projection's input)."""
        return self.num_heads * (self.v_head_dim or self.head_dim)

    @property
    def mla_latent_dim(self) -> int:
        """Per-token latents an MLA layer computes on every TP rank (0 without MLA)."""
        return self.q_lora_rank + self.kv_lora_rank + self.qk_rope_head_dim if self.is_mla else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSpec:
    """One accelerator. Peak FLOP/s are dense (no sparsity); 0 means unsupported."""

    name: str
    peak_fp16_flops: float
    peak_bf16_flops: float
    peak_fp8_flops: float = 0.0
    memory_bytes: int
    hbm_bandwidth_bytes_per_s: float
    # Measured GEMM-efficiency curve (cost_models/gemm_curve.py); 0: the H100 measurement.
    gemm_max_fraction: float = 0.0
    gemm_k_half: float = 0.0
    gemm_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        owner = f"gpu {self.name!r}"
        _positive(owner, peak_fp16_flops=self.peak_fp16_flops, memory_bytes=self.memory_bytes,
                  hbm_bandwidth_bytes_per_s=self.hbm_bandwidth_bytes_per_s)
        _require(self.peak_bf16_flops >= 0 and self.peak_fp8_flops >= 0,
                 f"{owner}: peak FLOP/s must be >= 0 (0: not supported)")
        _require(0.0 <= self.gemm_max_fraction <= 1.0,
                 f"{owner}.gemm_max_fraction={self.gemm_max_fraction!r} must be in [0, 1] (a "
                 "fraction of the peak; 0: the H100 measurement)")
        _require(self.gemm_k_half >= 0 and self.gemm_overhead_s >= 0,
                 f"{owner}: gemm_k_half and gemm_overhead_s must be >= 0")

    def dense_peak_flops(self, precision: Precision) -> float:
        """Dense peak FLOP/s at `precision`; 0 when the GPU has no such tensor cores."""
        return {Precision.FP16: self.peak_fp16_flops, Precision.BF16: self.peak_bf16_flops,
                Precision.FP8: self.peak_fp8_flops}[Precision(precision)]

    def peak_flops(self, precision: Precision) -> float:
        peak = self.dense_peak_flops(precision)
        supported = [p.value for p in Precision if self.dense_peak_flops(p) > 0]
        _require(peak > 0, f"gpu {self.name!r} has no {precision} tensor cores; use "
                           f"--precision {' or '.join(supported)}")
        return peak


# What one GPU's link can be: 1 kB/s to 100 TB/s, latency up to 10 s (the range
# cost_models.fit searches). Outside it a profile's value is a typo or a unit mistake, and
# plans priced with it are nonsense (a 1e-300 B/s link prices a pipeline hop at minutes).
LINK_BANDWIDTH_RANGE_BYTES_PER_S = (1e3, 1e14)
MAX_LINK_LATENCY_S = 10.0


def _check_link(owner: str, latency_s: float, bandwidth_bytes_per_s: float) -> None:
    low, high = LINK_BANDWIDTH_RANGE_BYTES_PER_S
    _require(low <= bandwidth_bytes_per_s <= high,
             f"{owner}.bandwidth_bytes_per_s={bandwidth_bytes_per_s!r} must be in "
             f"[{low:g}, {high:g}] (bytes per second per GPU)")
    _require(0 <= latency_s <= MAX_LINK_LATENCY_S,
             f"{owner}.latency_s={latency_s!r} must be in [0, {MAX_LINK_LATENCY_S:g}] seconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectiveLink:
    """A per-collective override of a tier's fitted latency and bandwidth."""

    collective: str
    latency_s: float
    bandwidth_bytes_per_s: float

    def __post_init__(self) -> None:
        _check_link(f"per_collective {self.collective!r}", self.latency_s,
                    self.bandwidth_bytes_per_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkTier:
    """One level of the fabric, innermost first (NVLink domain, leaf, spine).

    `bandwidth_bytes_per_s` is the bus bandwidth one GPU gets through this tier in one
    direction (nccl-tests busbw convention) when every GPU communicates at once;
    `latency_s` is the per-step latency (alpha) of a ring step crossing this tier.
    """

    name: str
    domain_gpus: int  # GPUs reachable inside one domain of this tier (0: unbounded)
    latency_s: float
    bandwidth_bytes_per_s: float
    oversubscription: float = 1.0  # >1: traffic leaving the domain below shares less bandwidth
    per_collective: tuple[CollectiveLink, ...] = ()
    source: str = ""  # datasheet, paper or fitted results file

    def __post_init__(self) -> None:
        owner = f"tier {self.name!r}"
        _check_link(owner, self.latency_s, self.bandwidth_bytes_per_s)
        collectives = [item.collective for item in self.per_collective]
        _require(len(set(collectives)) == len(collectives),
                 f"{owner}: per_collective names a collective twice ({collectives}); keep "
                 "one entry per collective")
        _require(self.domain_gpus >= 0, f"{owner}.domain_gpus must be >= 0")
        _require(self.oversubscription >= 1.0,
                 f"{owner}.oversubscription={self.oversubscription} must be >= 1")

    def link(self, collective: str) -> tuple[float, float]:
        """(latency_s, bandwidth_bytes_per_s) for one collective, override first."""
        for item in self.per_collective:
            if item.collective == collective:
                return item.latency_s, item.bandwidth_bytes_per_s
        return self.latency_s, self.bandwidth_bytes_per_s


MAX_HOST_S_PER_OP = 1e-2  # 400x the slowest host measured: more is a unit mistake


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    """A cluster of identical nodes. tiers[0] is the intra-node (NVLink/NVSwitch) domain."""

    name: str
    gpu: GpuSpec
    gpus_per_node: int
    nics_per_node: int
    nic_bandwidth_bytes_per_s: float  # one NIC, one direction
    tiers: tuple[LinkTier, ...]
    source: str = "preset"
    # Host seconds per PyTorch operator of an eager step on these nodes' CPUs (measured with
    # bench.megatron_layer, folded in by `partune-fit --host-layers`); None: the cost model's
    # default, compute.HOST_S_PER_OP. Lower it for runs that capture layers in CUDA graphs.
    host_s_per_op: float | None = None

    def __post_init__(self) -> None:
        owner = f"cluster {self.name!r}"
        _require(self.host_s_per_op is None or (
            isinstance(self.host_s_per_op, (int, float))
            and not isinstance(self.host_s_per_op, bool)
            and 0 <= self.host_s_per_op < MAX_HOST_S_PER_OP),
                 f"{owner}: host_s_per_op={self.host_s_per_op!r} must be seconds per operator "
                 f"in [0, {MAX_HOST_S_PER_OP:g}) (about 2.6e-05 on H100 nodes) or null for the "
                 "default")
        _positive(owner, gpus_per_node=self.gpus_per_node)
        _require(len(self.tiers) >= 2, f"{owner} needs an intra-node tier and at least one "
                                       f"network tier, got {len(self.tiers)}")
        _require(self.tiers[0].domain_gpus == self.gpus_per_node,
                 f"{owner}: tiers[0].domain_gpus={self.tiers[0].domain_gpus} must equal "
                 f"gpus_per_node={self.gpus_per_node}")
        _require(self.tiers[-1].domain_gpus == 0,
                 f"{owner}: the outermost tier must be unbounded (domain_gpus=0)")
        bounded = [t.domain_gpus for t in self.tiers[:-1]]
        _require(all(a < b for a, b in zip(bounded, bounded[1:])),
                 f"{owner}: tier domains {bounded} must grow outwards (nvlink < leaf < ...)")
        _require(self.nics_per_node >= 1, f"{owner}: nics_per_node={self.nics_per_node} "
                                          "must be >= 1")
        _check_link(owner.replace("cluster", "the NICs of cluster"), 0.0,
                    self.nic_bandwidth_bytes_per_s)


ZERO3_IMPLS = ("fsdp", "deepspeed")
# Adam state precision (Plan.optimizer_dtype): "fp32" (fp32 master weights, m and v) or
# "bf16" (Megatron-Core's precision-aware optimizer: bf16 m and v, and the fp32 master
# weight kept as the bf16 weight plus a 16-bit remainder).
OPTIMIZER_DTYPES = ("fp32", "bf16")


LOAD_FACTOR_RANGE = ("must be a number >= 1 (the busiest expert rank's tokens over the mean; "
                     "1: balanced routing)")


def load_factor_problem(model: ModelSpec, load: float) -> str | None:
    """Why a moe_load_factor cannot describe `model`, or None: it is >= 1, for MoE models
    only, and at most model.max_moe_load_factor."""
    if not (math.isfinite(load) and load >= 1.0):
        return LOAD_FACTOR_RANGE
    if load != 1.0 and not model.is_moe:
        return (f"{model.name} is a dense model; the factor is the expert load imbalance of "
                "MoE models (drop it)")
    most = model.max_moe_load_factor
    if load > most:
        return f"over {most:g} = experts / top-k of {model.name}: no rank can receive more"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How one training job is laid out. num_gpus = tp * pp * dp * cp.

    ep is carved out of the tp*cp*dp ranks of a pipeline stage (Megatron-Core MoE layout,
    expert tensor parallelism 1). Checks that need the model live in `check_plan`.
    """

    tp: int = 1
    pp: int = 1
    vpp: int = 1  # virtual stages per pipeline rank (interleaved 1F1B); 1: plain 1F1B
    dp: int = 1
    cp: int = 1
    ep: int = 1
    micro_batch_size: int = 1  # sequences
    global_batch_size: int  # sequences per optimizer step
    sequence_parallel: bool = False
    recompute: Recompute = Recompute.NONE
    zero: int = 0  # 0 DDP, 1 distributed optimizer / ZeRO-1, 2 ZeRO-2, 3 ZeRO-3 / FSDP
    precision: Precision = Precision.BF16
    flash_attention: bool = True  # False: unfused softmax over a stored score matrix
    order: str = DEFAULT_ORDER  # placement of the axes on the topology, innermost first
    # Megatron-LM --grad-reduce-in-bf16 (what NeMo does for bf16): gradients are kept and
    # reduced in bf16 instead of fp32; False: Megatron-LM's default for bf16 runs
    grad_reduce_in_bf16: bool = False
    # Who shards under zero 3 (ZERO3_IMPLS): "fsdp" (Megatron-FSDP / PyTorch FSDP: a layer is
    # the sharding unit, gathered by NCCL over the group) or "deepspeed" (ZeRO-3's per-module
    # fetch hooks); the cost model's DP terms say how they differ. Ignored below zero 3.
    zero3_impl: str = "fsdp"
    # Tokens the busiest expert-parallel rank processes in an MoE layer over the mean: 1.0
    # when routing is balanced (Megatron-Core --moe-router-force-load-balancing), the capacity
    # factor when experts are padded to capacity (--moe-pad-expert-input-to-capacity), the
    # router's measured imbalance when dropless. Every rank waits for the busiest at the
    # all-to-all, so its expert work and traffic set the pace. Ignored by dense models; the
    # cost model caps it at what routing allows (plan_arrays.busiest_rank_load).
    moe_load_factor: float = 1.0
    # Adam state precision, a numerics choice (OPTIMIZER_DTYPES): "fp32", Megatron-LM's and
    # DeepSpeed's default, or "bf16" (--use-precision-aware-optimizer with bf16 moments;
    # memory.model_state_bytes_per_param says what it saves). Needs zero 1 (the distributed
    # optimizer) and bf16 or fp8 training.
    optimizer_dtype: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "recompute", _enum("plan", "recompute", self.recompute,
                                                    Recompute))
        object.__setattr__(self, "precision", _enum("plan", "precision", self.precision,
                                                    Precision))
        _positive("plan", tp=self.tp, pp=self.pp, vpp=self.vpp, dp=self.dp, cp=self.cp,
                  ep=self.ep, micro_batch_size=self.micro_batch_size,
                  global_batch_size=self.global_batch_size)
        _at_most("plan", PLAN_LIMITS, **{name: getattr(self, name) for name in PLAN_LIMITS})
        _require(self.zero in (0, 1, 2, 3), f"plan.zero={self.zero!r} must be 0, 1, 2 or 3")
        _require(sorted(self.order.split("-")) == sorted(AXES),
                 f"plan.order={self.order!r} must be a permutation of {'-'.join(AXES)}")
        _require(self.vpp == 1 or self.pp > 1, f"plan.vpp={self.vpp} needs pp > 1")
        _require(not self.sequence_parallel or self.tp > 1,
                 "plan.sequence_parallel needs tp > 1")
        _require(self.zero3_impl in ZERO3_IMPLS, f"plan.zero3_impl={self.zero3_impl!r} must "
                 f"be one of {', '.join(ZERO3_IMPLS)}")
        load = self.moe_load_factor
        _require(isinstance(load, (int, float)) and not isinstance(load, bool)
                 and math.isfinite(load) and load >= 1.0,
                 f"plan.moe_load_factor={self.moe_load_factor!r} {LOAD_FACTOR_RANGE}")
        _require(not self.grad_reduce_in_bf16 or self.precision != Precision.FP16,
                 "plan.grad_reduce_in_bf16 needs bf16 or fp8 (fp16 runs reduce in fp16)")
        _require(self.optimizer_dtype in OPTIMIZER_DTYPES,
                 f"plan.optimizer_dtype={self.optimizer_dtype!r} must be one of "
                 f"{', '.join(OPTIMIZER_DTYPES)}")
        _require(self.optimizer_dtype == "fp32" or (self.zero == 1
                                                     and self.precision != Precision.FP16),
                 f"plan.optimizer_dtype={self.optimizer_dtype} needs zero 1 (Megatron-Core's "
                 "precision-aware optimizer runs inside its distributed optimizer) and bf16 "
                 "or fp8 training; use fp32")
        per_step = self.micro_batch_size * self.dp
        _require(self.global_batch_size % per_step == 0,
                 f"plan.global_batch_size={self.global_batch_size} is not divisible by "
                 f"micro_batch_size*dp={per_step}")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    @property
    def name(self) -> str:
        return (f"tp{self.tp}.pp{self.pp}.vpp{self.vpp}.dp{self.dp}.cp{self.cp}.ep{self.ep}"
                f".mb{self.micro_batch_size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """What the cost model predicts for one (model, cluster, plan)."""

    step_time_s: float
    breakdown_s: Mapping[str, float]  # named terms that add up to step_time_s
    model_flops_per_step: float
    model_tflops_per_gpu: float
    mfu: float  # model FLOPs / (step time * GPUs * dense peak at the plan's precision)
    tokens_per_s: float
    peak_memory_bytes: float
    memory_breakdown_bytes: Mapping[str, float]
    memory_capacity_bytes: float
    infeasible_reason: str | None = None  # e.g. "activations: needs 91.2 GB > 80.0 GB"
    notes: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return self.infeasible_reason is None
