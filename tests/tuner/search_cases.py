"""Shared pieces of the search tests: small declared spaces, an independent enumerator, and
a helper that runs the real `autotune` command as a subprocess.

`every_plan` re-derives the declared space from its written rules (tuner/space.py docstring,
the issue) with plain loops over integers. It calls nothing in tuner.space, so a wrong
constraint there shows up as a different set of plans, not as the same mistake twice.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from cost_models.analytical import estimate
from cost_models.loaders import load_cluster, load_model
from cost_models.specs import Plan, Precision, Recompute
from tuner.space import CP_MIN_SEQ_LEN, Knobs, Space

REPO = Path(__file__).resolve().parents[2]
R = Recompute


def make_space(model: str, cluster: str, gpus: int, gbs: tuple[int, int],
               seq_len: int | None = None, **knobs) -> Space:
    spec = load_model(model)
    if seq_len is not None:
        spec = replace(spec, seq_len=seq_len)
    return Space(model=spec, cluster=load_cluster(cluster), num_gpus=gpus,
                 global_batch_range=gbs, precision=Precision.BF16, knobs=Knobs(**knobs))


# Small enough that the scalar estimate() of every plan stays within a few seconds, but each
# keeps several tp/pp (and cp or ep) degrees, interleaving and both ZeRO families.
SMALL_SPACES = {
    "llama3-8b/64xH100": dict(
        model="llama3-8b", cluster="dgx-h100", gpus=64, gbs=(512, 512),
        micro_batch_size=(1, 2), recompute=(R.NONE, R.FULL), zero=(1, 3), vpp=(1, 2),
        orders=("tp-cp-dp-pp",)),
    "gpt3-175b/256xA100": dict(
        model="gpt3-175b", cluster="dgx-a100-80gb", gpus=256, gbs=(1530, 1540),
        micro_batch_size=(1,), recompute=(R.SELECTIVE, R.FULL), zero=(1, 3), vpp=(1, 2)),
    "qwen3-235b-a22b/256xH100 (ep)": dict(
        model="qwen3-235b-a22b", cluster="dgx-h100", gpus=256, gbs=(1020, 1030),
        micro_batch_size=(1,), recompute=(R.SELECTIVE, R.FULL), zero=(1,), vpp=(1, 2),
        orders=("tp-cp-dp-pp",)),
    "llama3-70b/128xH100 seq 32768 (cp)": dict(
        model="llama3-70b", cluster="dgx-h100", gpus=128, gbs=(64, 64), seq_len=32768,
        micro_batch_size=(1,), recompute=(R.SELECTIVE, R.FULL), zero=(1, 3), vpp=(1, 2),
        orders=("tp-cp-dp-pp",)),
}


def small_space(name: str) -> Space:
    return make_space(**SMALL_SPACES[name])


def _pinned(value: int, pins: tuple[int, ...] | None, cap: int | None = None) -> bool:
    return (pins is None or value in pins) and (cap is None or value <= cap)


def splits_over(layers: int, pp: int) -> bool:
    """Megatron-LM's uneven split: equal middle stages of ceil(L/pp), the rest shared by the
    first and last stage, each holding 1..ceil(L/pp) layers (written independently here)."""
    if pp > layers:
        return False
    if layers % pp == 0 or pp <= 2:
        return True
    middle = -(-layers // pp)
    rest = layers - (pp - 2) * middle
    return 1 <= rest // 2 and rest - rest // 2 <= middle


def _degrees(space: Space):
    """(tp, pp, cp, ep, dp) by plain loops over 1..num_gpus."""
    m, k, n = space.model, space.knobs, space.num_gpus
    seq = m.seq_len
    for tp, pp, cp in itertools.product(range(1, space.cluster.gpus_per_node + 1),
                                        range(1, m.num_layers + 1), range(1, n + 1)):
        if (n % (tp * pp * cp) or m.num_heads % tp or m.num_kv_heads % tp
                or not splits_over(m.num_layers, pp)):
            continue
        if cp > 1 and (seq < CP_MIN_SEQ_LEN or seq % (2 * cp) or seq // cp < 2048):
            continue
        if not (_pinned(tp, k.tp, k.max_tp) and _pinned(pp, k.pp, k.max_pp)
                and _pinned(cp, k.cp)):
            continue
        dp = n // (tp * pp * cp)
        for ep in range(1, m.num_experts + 1):
            if m.num_experts % ep == 0 and (tp * cp * dp) % ep == 0 and _pinned(ep, k.ep):
                yield tp, pp, cp, ep, dp


def every_plan(space: Space) -> list[Plan]:
    """Every plan of the declared space (no global-batch thinning: keep ranges narrow)."""
    k, lo, hi = space.knobs, *space.global_batch_range
    plans = []
    for tp, pp, cp, ep, dp in _degrees(space):
        layers = space.model.num_layers
        # interleaving: equal virtual stages of the layers, or of the layers plus the
        # embedding and the loss (Megatron-Core account_for_*_in_pipeline_split)
        vpps = [v for v in range(1, layers + 3) if _pinned(v, k.vpp) and (v == 1 or (
                pp > 1 and (layers % (pp * v) == 0 or (layers + 2) % (pp * v) == 0)))]
        gbss = [g for g in range(lo, hi + 1) if g % dp == 0]
        assert len(gbss) <= 12, "range too wide: the space would thin it (MAX_GBS_CHOICES)"
        for vpp, gbs, mbs, sp, rec, zero, order in itertools.product(
                vpps, gbss, k.micro_batch_size, k.sequence_parallel, k.recompute, k.zero,
                k.orders):
            micro, rest = divmod(gbs, mbs * dp)
            if rest or micro < 1 or (vpp > 1 and micro % pp) or (sp and tp == 1):
                continue
            if zero >= 2 and pp > 1:
                continue
            plans.append(Plan(tp=tp, pp=pp, vpp=vpp, dp=dp, cp=cp, ep=ep, micro_batch_size=mbs,
                              global_batch_size=gbs, sequence_parallel=sp, recompute=rec,
                              zero=zero, precision=space.precision, order=order))
    return plans


def scalar_scores(space: Space, headroom: float) -> dict[Plan, tuple[float, bool]]:
    """plan -> (MFU, fits in memory) by the scalar estimate(), one plan at a time."""
    limit = space.cluster.gpu.memory_bytes * (1.0 - headroom)
    out = {}
    for plan in every_plan(space):
        est = estimate(space.model, space.cluster, plan)
        out[plan] = (est.mfu, est.peak_memory_bytes <= limit)
    return out


def autotune_argv(*args: str) -> list[str]:
    """The installed `autotune` console script, else the same entry point via python -m."""
    script = shutil.which("autotune")
    return [script, *args] if script else [sys.executable, "-m", "tuner", *args]


def autotune(*args: str, env: dict | None = None, timeout: float = 120.0, **kwargs):
    """Run `autotune ARGS` as a real process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(autotune_argv(*args), cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def autotune_popen(*args: str, env: dict | None = None, argv: list[str] | None = None):
    """Start `autotune ARGS` (or `argv`) without waiting; stdout/stderr piped."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.Popen(argv or autotune_argv(*args), cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
