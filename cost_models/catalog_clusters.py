"""Cluster presets from datasheets: GPUs, node recipes, and the ClusterSpec built from them.

A preset is a `NodeRecipe` (one node type plus the fabric it sits in) turned into a ClusterSpec
by `build_cluster`. Three tiers, innermost first (see cost_models/comm.py for how they are used):

  nvlink  domain = one node. Bandwidth: the NCCL all-reduce bus bandwidth one GPU achieves on
          NVLink/NVSwitch, i.e. the per-direction NVLink bandwidth x NVLINK_EFFICIENCY unless a
          measured figure is cited.
  leaf    domain = one scalable unit (SU) of the DGX SuperPOD reference architectures, whose
          rail-optimized leaf switches join the same-rail NICs of every node of the SU.
  spine   unbounded; non-blocking fat tree (oversubscription 1.0) as in the SuperPOD designs.
  Network bandwidth per GPU = nics_per_node x NIC line rate / gpus_per_node x NET_EFFICIENCY.

Numbers are datasheet peaks for dense math (no 2:4 sparsity). Fitted cluster profiles written by
the benchmark suite replace all of this with measurements (cost_models/loaders.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from cost_models.catalog import closest_names
from cost_models.specs import ClusterSpec, GpuSpec, LinkTier, SpecError

TERA = 1e12
GIB = 2**30

# Fraction of the per-direction NVLink bandwidth that NCCL all-reduce reaches as bus bandwidth.
# Sources: NCCL src/graph/tuning.cc caps the sm80 (A100) bus bandwidth at 235 GB/s of 300 GB/s
# (0.78); DeepSeek-V3 (arXiv:2412.19437 Sec. 3.2.2) reports 160 GB/s achievable NVLink on H800
# nodes whose NVLink gives 200 GB/s per direction (0.80).
NVLINK_EFFICIENCY = 0.8
# ASSUMPTION: NCCL reaches 90% of the InfiniBand line rate for large messages (NCCL's own tuning
# model applies 0.92 = 120/128 to LL128 ring bandwidth, src/graph/tuning.cc).
NET_EFFICIENCY = 0.9
# Per-step latency (alpha) of one ring step: NCCL src/graph/tuning.cc hwLat, Ring/LL128:
# NVLink 1.9 us, network 4.0 us. ASSUMPTION: crossing the spine adds 0.5 us (two more switch
# hops of ~130 ns plus longer cables).
NVLINK_LATENCY_S = 1.9e-6
LEAF_LATENCY_S = 4.0e-6
SPINE_LATENCY_S = 4.5e-6

# --- GPUs (dense peaks; memory as marketed, read as GiB) -------------------------------------

# NVIDIA A100 datasheet (2021): FP16/BF16 tensor 312 TF dense (624 with sparsity), no FP8;
# 40GB HBM2 1,555 GB/s; 80GB HBM2e 2,039 GB/s (SXM).
A100_40GB = GpuSpec(name="A100-SXM4-40GB", peak_fp16_flops=312 * TERA,
                    peak_bf16_flops=312 * TERA, memory_bytes=40 * GIB,
                    hbm_bandwidth_bytes_per_s=1555e9)
A100_80GB = replace(A100_40GB, name="A100-SXM4-80GB", memory_bytes=80 * GIB,
                    hbm_bandwidth_bytes_per_s=2039e9)
# NVIDIA H100 datasheet, SXM5: BF16/FP16 1,979 TF with sparsity = 989.4 dense, FP8 1,979 dense,
# 80GB HBM3 3.35 TB/s.
H100_SXM = GpuSpec(name="H100-SXM5-80GB", peak_fp16_flops=989.4 * TERA,
                   peak_bf16_flops=989.4 * TERA, peak_fp8_flops=1978.9 * TERA,
                   memory_bytes=80 * GIB, hbm_bandwidth_bytes_per_s=3.35e12)
# H800 SXM5: the export variant of H100 with the same compute and memory; only NVLink is cut
# to 400 GB/s (both directions) per GPU (DeepSeek-V3, arXiv:2412.19437 Sec. 3.2.2).
H800_SXM = replace(H100_SXM, name="H800-SXM5-80GB")
# NVIDIA H200 datasheet, SXM: same tensor cores as H100; 141GB HBM3e at 4.8 TB/s.
H200_SXM = replace(H100_SXM, name="H200-SXM5-141GB", memory_bytes=141 * GIB,
                   hbm_bandwidth_bytes_per_s=4.8e12)
# NVIDIA HGX B200 (1000 W) spec: FP16/BF16 2.25 PF dense (4.5 sparse), FP8 4.5 PF dense.
# DGX B200 datasheet: 1,440 GB HBM3e and 64 TB/s for 8 GPUs -> 180 GB and 8 TB/s each.
B200 = GpuSpec(name="B200-180GB", peak_fp16_flops=2250 * TERA, peak_bf16_flops=2250 * TERA,
               peak_fp8_flops=4500 * TERA, memory_bytes=180 * GIB,
               hbm_bandwidth_bytes_per_s=8e12)
# NVIDIA V100 datasheet / DGX-2 datasheet (2 PFLOPS tensor for 16 GPUs): 125 TF FP16 tensor,
# 32GB HBM2 at 900 GB/s. V100 has no BF16 tensor cores: peak_bf16_flops 0 (unsupported).
V100_32GB = GpuSpec(name="V100-SXM3-32GB", peak_fp16_flops=125 * TERA,
                    peak_bf16_flops=0.0, memory_bytes=32 * GIB,
                    hbm_bandwidth_bytes_per_s=900e9)
# Moore Threads MTT S4000 launch specification (Dec 2023, as reported by Tom's Hardware and
# io-tech.fi): FP16/BF16 100 TF, INT8 200 TOPS (no FP8 listed), 48GB GDDR6 at 768 GB/s.
# ASSUMPTION: the 100 TF figure is dense (no sparsity is mentioned by the vendor).
MTT_S4000 = GpuSpec(name="MTT-S4000-48GB", peak_fp16_flops=100 * TERA,
                    peak_bf16_flops=100 * TERA, memory_bytes=48 * GIB,
                    hbm_bandwidth_bytes_per_s=768e9)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecipe:
    """One node type and the fabric around it; build_cluster turns it into a ClusterSpec."""

    name: str
    gpu: GpuSpec
    gpus_per_node: int
    nvlink_busbw_bytes_per_s: float  # achievable all-reduce bus bandwidth inside the node
    nics_per_node: int
    nic_gbit_per_s: float  # one NIC, one direction, line rate
    su_nodes: int  # nodes under one set of rail-optimized leaf switches
    source: str


def network_busbw_bytes_per_s(recipe: NodeRecipe) -> float:
    """Per-GPU network bus bandwidth: the node's NIC line rate shared by its GPUs."""
    node_bytes_per_s = recipe.nics_per_node * recipe.nic_gbit_per_s * 1e9 / 8
    return node_bytes_per_s / recipe.gpus_per_node * NET_EFFICIENCY


def build_cluster(recipe: NodeRecipe) -> ClusterSpec:
    """nvlink / leaf (one scalable unit) / spine tiers for a node recipe."""
    net_bw = network_busbw_bytes_per_s(recipe)
    tiers = (
        LinkTier(name="nvlink", domain_gpus=recipe.gpus_per_node, latency_s=NVLINK_LATENCY_S,
                 bandwidth_bytes_per_s=recipe.nvlink_busbw_bytes_per_s, source=recipe.source),
        LinkTier(name="leaf", domain_gpus=recipe.su_nodes * recipe.gpus_per_node,
                 latency_s=LEAF_LATENCY_S, bandwidth_bytes_per_s=net_bw,
                 source=f"{recipe.nics_per_node}x{recipe.nic_gbit_per_s:g}G x {NET_EFFICIENCY}"),
        LinkTier(name="spine", domain_gpus=0, latency_s=SPINE_LATENCY_S,
                 bandwidth_bytes_per_s=net_bw, oversubscription=1.0,
                 source="non-blocking fat tree (DGX SuperPOD reference architecture)"),
    )
    return ClusterSpec(name=recipe.name, gpu=recipe.gpu, gpus_per_node=recipe.gpus_per_node,
                       nics_per_node=recipe.nics_per_node,
                       nic_bandwidth_bytes_per_s=recipe.nic_gbit_per_s * 1e9 / 8,
                       tiers=tiers, source=f"preset {recipe.name}: {recipe.source}")


# --- Node recipes ----------------------------------------------------------------------------

# DGX A100 datasheet: 8 GPUs on 6 NVSwitches, NVLink3 600 GB/s per GPU (300 per direction),
# 8x single-port ConnectX-6 HDR 200 Gb/s for the compute fabric. NVLink bus bandwidth: NCCL's
# sm80 cap of 235 GB/s (src/graph/tuning.cc). DGX SuperPOD (A100) reference architecture
# (RA-09950-001, 2020): SUs of 20 nodes, one leaf switch per rail. Selene (Narayanan et al.
# 2021 Sec. 5): 8x200G HDR per node, fat tree.
DGX_A100_80GB = NodeRecipe(
    name="dgx-a100-80gb", gpu=A100_80GB, gpus_per_node=8, nvlink_busbw_bytes_per_s=235e9,
    nics_per_node=8, nic_gbit_per_s=200, su_nodes=20,
    source="DGX A100 datasheet; NCCL tuning.cc sm80 busbw cap; SuperPOD A100 RA (SU=20)")
DGX_A100_40GB = replace(DGX_A100_80GB, name="dgx-a100-40gb", gpu=A100_40GB)
# DGX H100 datasheet: NVLink4 900 GB/s per GPU (450 per direction) through 4 NVSwitches,
# 8x ConnectX-7 400 Gb/s NDR. DGX SuperPOD (H100) reference architecture: SUs of 32 nodes.
DGX_H100 = NodeRecipe(
    name="dgx-h100", gpu=H100_SXM, gpus_per_node=8,
    nvlink_busbw_bytes_per_s=450e9 * NVLINK_EFFICIENCY, nics_per_node=8, nic_gbit_per_s=400,
    su_nodes=32, source="DGX H100 datasheet; SuperPOD H100 RA (SU=32)")
# DGX H200 datasheet: the DGX H100 chassis (NVLink4, 8x ConnectX-7 400G) with H200 GPUs.
DGX_H200 = replace(DGX_H100, name="h200", gpu=H200_SXM,
                   source="DGX H200 datasheet; SuperPOD H100/H200 RA (SU=32)")
# H800 HGX nodes: NVLink 400 GB/s per GPU; DeepSeek-V3 (arXiv:2412.19437 Sec. 3.2.2) measures
# 160 GB/s NVLink and uses one 400G IB NIC (50 GB/s) per GPU. ASSUMPTION: 32 nodes per leaf,
# the 64-port switch of DeepSeek's two-layer fat tree (Zhao et al., ISCA'25) with half its
# ports facing nodes.
H800 = NodeRecipe(
    name="h800", gpu=H800_SXM, gpus_per_node=8, nvlink_busbw_bytes_per_s=160e9,
    nics_per_node=8, nic_gbit_per_s=400, su_nodes=32,
    source="DeepSeek-V3 report Sec. 3.2.2 (NVLink 160 GB/s, IB 50 GB/s per GPU)")
# DGX B200 datasheet: NVLink5 1.8 TB/s per GPU (900 per direction) through 2 NVSwitch chips,
# 8x ConnectX-7 400 Gb/s. DGX SuperPOD (B200) reference architecture: 4 SUs = 128 nodes, so
# 32 nodes per SU, 8 leaf switches (one per rail) per SU.
DGX_B200 = NodeRecipe(
    name="b200", gpu=B200, gpus_per_node=8, nvlink_busbw_bytes_per_s=900e9 * NVLINK_EFFICIENCY,
    nics_per_node=8, nic_gbit_per_s=400, su_nodes=32,
    source="DGX B200 datasheet; SuperPOD B200 RA (SU=32)")
# DGX-2 datasheet: 16 V100 on 12 NVSwitches, NVLink2 300 GB/s per GPU (150 per direction),
# 8x 100 Gb/s EDR InfiniBand. ASSUMPTION: 32 nodes per leaf (no SU size published for DGX-2).
DGX2_V100 = NodeRecipe(
    name="dgx2-v100", gpu=V100_32GB, gpus_per_node=16,
    nvlink_busbw_bytes_per_s=150e9 * NVLINK_EFFICIENCY, nics_per_node=8, nic_gbit_per_s=100,
    su_nodes=32, source="DGX-2 datasheet")
# Moore Threads KUAE: MCCX D800 servers with 8 MTT S4000 joined by MTLink 1.0 at 240 GB/s
# (vendor launch figures, Dec 2023). ASSUMPTION: 240 GB/s counts both directions (120 per
# direction) and every GPU pair reaches it. ASSUMPTION: 2x 400 Gb/s InfiniBand per node and 32
# nodes per leaf; neither is published. Replace with a fitted profile before trusting it.
KUAE_S4000 = NodeRecipe(
    name="kuae-s4000", gpu=MTT_S4000, gpus_per_node=8,
    nvlink_busbw_bytes_per_s=120e9 * NVLINK_EFFICIENCY, nics_per_node=2, nic_gbit_per_s=400,
    su_nodes=32, source="Moore Threads KUAE/MCCX D800 launch figures; network assumed")

_RECIPES = (DGX_A100_40GB, DGX_A100_80GB, DGX_H100, H800, DGX_H200, DGX_B200, DGX2_V100,
            KUAE_S4000)


# Preset name -> recipe; `cluster_preset` builds the ClusterSpec.
CLUSTERS = {recipe.name: recipe for recipe in _RECIPES}


def cluster_preset(name: str) -> ClusterSpec:
    """The preset called `name` (case-insensitive); SpecError listing the closest names."""
    recipe = CLUSTERS.get(name.strip().lower())
    if recipe is None:
        raise SpecError(f"unknown cluster preset {name!r}; "
                        f"{closest_names(name, list(CLUSTERS))}")
    return build_cluster(recipe)


_NICS_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+(?:\.\d+)?)\s*[gG](?:b|bit|bps)?\s*$")


def parse_nics(text: str) -> tuple[int, float]:
    """'8x200G' -> (8 NICs, 200 Gbit/s each)."""
    match = _NICS_RE.match(text)
    if match is None or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
        raise SpecError(f"inter_node_nics={text!r} is not like '8x200G' "
                        "(NICs per node x Gbit/s per NIC)")
    return int(match.group(1)), float(match.group(2))


# GPU families the catalog knows, as written in papers and tables ("H100", "A100 80GB",
# "H100-SXM5-80GB"); PCIe and NVL cards run at other clocks and links, so they are not aliases.
_FAMILY_RE = re.compile(r"(?<![A-Z])(V100|A100|H100|H800|H200|B200|S4000)(?![A-Z0-9])")
_MEMORY_RE = re.compile(r"(\d+)\s*GB")
_OTHER_FORM_RE = re.compile(r"PCIE|NVL\b|NVL\d")


def recipe_for_gpu(gpu: str) -> NodeRecipe:
    """The node recipe of a GPU named exactly as the catalog does, or by family and memory
    (`H100`, `A100 80GB`, `h100-sxm-80gb`); SpecError when unknown or ambiguous."""
    by_name = {recipe.gpu.name.lower(): recipe for recipe in _RECIPES}
    exact = by_name.get(gpu.strip().lower())
    if exact is not None:
        return exact
    known = ", ".join(sorted(r.gpu.name for r in _RECIPES))
    text = gpu.upper()
    family = _FAMILY_RE.search(text)
    if family is None or _OTHER_FORM_RE.search(text):
        raise SpecError(f"unknown gpu {gpu!r}; known: {known}")
    matches = [r for r in _RECIPES if family.group(1) in r.gpu.name.upper()]
    memory = _MEMORY_RE.search(text)
    if memory:
        matches = [r for r in matches if f"{memory.group(1)}GB" in r.gpu.name.upper()]
    if not matches:
        raise SpecError(f"unknown gpu {gpu!r}; known: {known}")
    if len(matches) > 1:
        raise SpecError(f"gpu {gpu!r} is ambiguous: name one of "
                        f"{', '.join(r.gpu.name for r in matches)}")
    return matches[0]


def cluster_for_run(gpu: str, gpus_per_node: int, inter_node_nics: str | None) -> ClusterSpec:
    """The cluster of a published run (validation CSV columns gpu, gpus_per_node,
    inter_node_nics). Empty NICs mean the standard node of that GPU (e.g. DGX A100 8x200G).
    A node with another GPU count keeps each GPU's NVLink and network share
    (ASSUMPTION: e.g. an 8-GPU V100 node as the DGX-2's links per GPU)."""
    recipe = recipe_for_gpu(gpu)
    if gpus_per_node < 1:
        raise SpecError(f"gpus_per_node={gpus_per_node} must be >= 1")
    if gpus_per_node != recipe.gpus_per_node:
        nics = max(1, round(recipe.nics_per_node * gpus_per_node / recipe.gpus_per_node))
        recipe = replace(recipe, name=f"{recipe.name}-{gpus_per_node}gpn",
                         gpus_per_node=gpus_per_node, nics_per_node=nics)
    if inter_node_nics and inter_node_nics.strip():
        nics, gbit = parse_nics(inter_node_nics)
        if (nics, gbit) != (recipe.nics_per_node, recipe.nic_gbit_per_s):
            recipe = replace(recipe, name=f"{recipe.name}-{nics}x{gbit:g}g",
                             nics_per_node=nics, nic_gbit_per_s=gbit)
    return build_cluster(recipe)
