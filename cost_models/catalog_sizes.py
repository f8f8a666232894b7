"""A dense model shape for a bare parameter count: `model_from_size("70b")`.

The rule (deterministic; the same size string always gives the same shape):

  * Family: Llama-3-like (arXiv:2407.21783 Table 3): SwiGLU MLP, RoPE, grouped-query attention
    with head_dim 128 and 8 KV heads, untied embeddings, vocabulary 128256, sequence 8192.
  * Width: hidden_size is a multiple of 1024, so num_heads = hidden/128 is a multiple of the
    8 KV heads and of a tensor-parallel degree of 8 (as in every Llama 3 model).
  * FFN: a multiple of 256 between 3.0x and 4.0x hidden (Llama 3 uses 3.25x-3.5x).
  * Depth: the aspect ratio hidden/num_layers is kept close to 128. Kaplan et al. 2020
    (arXiv:2001.08361 Sec. 3.1, Fig. 5) find loss nearly flat for aspect ratios ~20-200 at
    fixed parameter count; Llama 3 8B (4096/32 = 128) and 405B (16384/126 = 130) sit at 128.
  * Search: for every hidden size and depth whose aspect ratio is within 4x of 128, the FFN
    width that brings the count (cost_models.params.count_parameters) closest to the target
    is computed; shapes whose count lands within 0.5% of the target are kept, and the one with
    the aspect ratio closest to 128 (then FFN closest to 3.5x hidden) wins. If no shape lands
    within 0.5% (very small targets, where the embeddings dominate), the closest count wins.

Size strings: a number followed by m, b or t (million, billion, trillion; case-insensitive),
e.g. "500b", "7.5b", "1t", "1.5T", "530B". Supported range: 500m to 20t.
"""

from __future__ import annotations

import math
import re

from cost_models.catalog import LLAMA3_VOCAB
from cost_models.params import count_parameters, mlp_matrices
from cost_models.specs import Mlp, ModelSpec, SpecError

HEAD_DIM = 128
KV_HEADS = 8
HIDDEN_STEP = 1024  # = HEAD_DIM * KV_HEADS
FFN_STEP = 256
FFN_RATIO_RANGE = (3.0, 4.0)
FFN_RATIO_TARGET = 3.5  # Llama 3 8B and 70B: 14336/4096 = 28672/8192 = 3.5
ASPECT_TARGET = 128.0  # hidden / num_layers
ASPECT_SPREAD = 4.0  # search aspect ratios in [128/4, 128*4]
ACCEPT_ERROR = 0.005  # relative parameter-count error for a shape to be "on target"
SIZE_RANGE = (5e8, 2e13)  # below 0.5B the 128256-token embeddings alone exceed it
_UNITS = {"m": 1e6, "b": 1e9, "t": 1e12}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mbt])\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """Parameter count of a size string ("70b" -> 7e10); SpecError if it is not one."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise SpecError(f"size {text!r} is not a parameter count like 7b, 500b, 1.5t")
    count = float(match.group(1)) * _UNITS[match.group(2).lower()]
    lo, hi = SIZE_RANGE
    if not lo <= count <= hi:
        raise SpecError(f"size {text!r} = {count:.3g} parameters is outside the supported "
                        f"range {lo:.0e}..{hi:.0e}")
    return count


def is_size(text: str) -> bool:
    return _SIZE_RE.match(text) is not None


def _shape(name: str, layers: int, hidden: int, ffn: int) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn,
                     num_heads=hidden // HEAD_DIM, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                     seq_len=8192, vocab_size=LLAMA3_VOCAB, mlp=Mlp.SWIGLU,
                     tied_embeddings=False)


def _count_terms(hidden: int) -> tuple[float, float, float]:
    """(fixed, per_layer, per_layer_per_ffn): count = fixed + layers*(per_layer + k*ffn).

    The count is affine in layers and in ffn, so two probes through count_parameters give the
    exact coefficients without restating its formula."""
    one = count_parameters(_shape("probe", 1, hidden, FFN_STEP))
    per_layer_at_step = count_parameters(_shape("probe", 2, hidden, FFN_STEP)) - one
    per_ffn = float(mlp_matrices(Mlp.SWIGLU) * hidden)
    return one - per_layer_at_step, per_layer_at_step - per_ffn * FFN_STEP, per_ffn


def _candidates(target: float):
    """(layers, hidden, ffn, count) for every shape the rule allows, nearest FFN each."""
    # A layer holds >= 11 h^2 weights (2h^2 attention, 9h^2 MLP at 3h) and there are
    # >= h / (ASPECT_TARGET * ASPECT_SPREAD) layers, which bounds the hidden size.
    top_hidden = (target * ASPECT_TARGET * ASPECT_SPREAD / 11.0) ** (1 / 3)
    for hidden in range(HIDDEN_STEP, HIDDEN_STEP * math.ceil(top_hidden / HIDDEN_STEP) + 1,
                        HIDDEN_STEP):
        fixed, per_layer, per_ffn = _count_terms(hidden)
        lo_ffn, hi_ffn = (ratio * hidden for ratio in FFN_RATIO_RANGE)
        lo = max(1, math.floor(hidden / (ASPECT_TARGET * ASPECT_SPREAD)))
        for layers in range(lo, math.ceil(hidden * ASPECT_SPREAD / ASPECT_TARGET) + 1):
            exact = ((target - fixed) / layers - per_layer) / per_ffn
            ffn = round(exact / FFN_STEP) * FFN_STEP
            if lo_ffn <= ffn <= hi_ffn:
                yield layers, hidden, ffn, fixed + layers * (per_layer + per_ffn * ffn)


def _score(target: float, layers: int, hidden: int, ffn: int, count: float) -> tuple:
    error = abs(count - target) / target
    aspect_miss = abs(math.log(hidden / layers / ASPECT_TARGET))
    ffn_miss = abs(ffn / hidden - FFN_RATIO_TARGET)
    if error <= ACCEPT_ERROR:
        return (0.0, aspect_miss, ffn_miss, error)
    return (1.0, error, aspect_miss, ffn_miss)


def model_from_size(size: str) -> ModelSpec:
    """A documented Llama-3-like dense shape with `size` parameters (see module docstring)."""
    target = parse_size(size)
    best = min(_candidates(target), key=lambda shape: _score(target, *shape), default=None)
    if best is None:
        raise SpecError(f"size {size!r}: no shape satisfies the width/depth rule")
    label = size.strip().lower()
    layers, hidden, ffn, _ = best
    return _shape(f"dense-{label}", layers, hidden, ffn)
