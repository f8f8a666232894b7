"""One transformer layer, forward and forward+backward, on one GPU: what one tensor-parallel
rank computes (widths divided by tp, no communication). Run through `python -m bench.gemm
--layer-output ...`; `cost_models.kernel_fit` compares these times with the cost model.

GPT layers (Narayanan et al. 2021): LayerNorm, multi-head attention, GELU MLP of width 4h.
Llama-style layers (`swiglu`): RMSNorm, grouped-query attention (the key/value heads are
repeated to the query heads before the attention kernel), SwiGLU MLP with gate and up
projections fused in one product, as Megatron-LM lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYER_COLUMNS = ("hidden", "heads", "kv_heads", "ffn", "mlp", "tp", "tokens", "micro_batch",
                 "fwd_s", "fwd_bwd_s", "flops", "tflops")
HEAD_DIM = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerSpec:
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    mlp: str  # gelu or swiglu

    def divisible_by(self, tp: int) -> bool:
        return self.heads % tp == 0 and self.kv_heads % tp == 0 and self.ffn % tp == 0


def gpt_spec(hidden: int) -> LayerSpec:
    heads = max(hidden // HEAD_DIM, 8)
    return LayerSpec(hidden=hidden, heads=heads, kv_heads=heads, ffn=4 * hidden, mlp="gelu")


def parse_layer_specs(text: str, hiddens) -> list[LayerSpec]:
    """'H/HEADS/KV/FFN/MLP,...' -> specs; empty: GPT layers of the given hidden sizes."""
    if not text:
        return [gpt_spec(h) for h in hiddens]
    specs = []
    for item in text.split(","):
        h, heads, kv, ffn, mlp = item.split("/")
        if mlp not in ("gelu", "swiglu"):
            raise ValueError(mlp)
        specs.append(LayerSpec(hidden=int(h), heads=int(heads), kv_heads=int(kv), ffn=int(ffn),
                               mlp=mlp))
    return specs


def layer_flops(spec: LayerSpec, tp: int, tokens: int, seq: int) -> float:
    """Forward + backward FLOPs on one TP rank, 3x the forward: the four products
    2*t*h*(q + 2kv + q + ffn*(1 + gated)) and attention 4*t*seq*q (no causal halving, the
    convention of Narayanan et al. 2021 eq. 3, so GPT layers give its 24th^2 + 4tsh)."""
    h = q = spec.hidden  # head dim hidden/heads
    kv = spec.kv_heads * h // spec.heads
    mats = 3 if spec.mlp == "swiglu" else 2
    products = 2 * tokens * h * (2 * q + 2 * kv + mats * spec.ffn)
    return 3 * (products + 4 * tokens * seq * q) / tp


def layer_weights(spec: LayerSpec, tp: int, dtype, device) -> dict:
    import torch

    h, hd = spec.hidden, spec.hidden // spec.heads
    q, kv, f = spec.heads * hd // tp, spec.kv_heads * hd // tp, spec.ffn // tp
    fc1 = 2 * f if spec.mlp == "swiglu" else f
    shapes = {"qkv": (h, q + 2 * kv), "proj": (q, h), "fc1": (h, fc1), "fc2": (f, h)}
    return {name: (torch.randn(*shape, dtype=dtype, device=device) * 0.02).requires_grad_()
            for name, shape in shapes.items()}


def norm(spec: LayerSpec, x):
    """RMSNorm for Llama-style (swiglu) layers, LayerNorm for GPT ones, over the last dim."""
    import torch.nn.functional as F

    fn = F.rms_norm if spec.mlp == "swiglu" else F.layer_norm
    return fn(x, (x.shape[-1],))


def layer_forward(spec: LayerSpec, tp: int, w: dict, x):
    """The layer's forward on one TP rank: x [batch, seq, hidden] -> same shape."""
    import torch.nn.functional as F

    b, s, h = x.shape
    hd = h // spec.heads
    hq, hkv = spec.heads // tp, spec.kv_heads // tp
    q, k, v = (norm(spec, x) @ w["qkv"]).split([hq * hd, hkv * hd, hkv * hd], dim=-1)
    q, k, v = (t.view(b, s, -1, hd).transpose(1, 2) for t in (q, k, v))
    if hq != hkv:
        k, v = (t.repeat_interleave(hq // hkv, dim=1) for t in (k, v))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    z = x + a.transpose(1, 2).reshape(b, s, hq * hd) @ w["proj"]
    y = norm(spec, z) @ w["fc1"]
    if spec.mlp == "swiglu":
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    else:
        y = F.gelu(y)
    return z + y @ w["fc2"]


def layer_row(spec: LayerSpec, tp, seq, micro_batch, dtype, device, warmup, iters) -> dict:
    import torch

    from bench.gemm import median_time_s

    w = layer_weights(spec, tp, dtype, device)
    x = torch.randn(micro_batch, seq, spec.hidden, dtype=dtype, device=device,
                    requires_grad=True)

    def fwd_bwd():
        layer_forward(spec, tp, w, x).sum().backward()

    with torch.no_grad():
        fwd = median_time_s(lambda: layer_forward(spec, tp, w, x), warmup, iters, device)
    both = median_time_s(fwd_bwd, warmup, iters, device)
    flops = layer_flops(spec, tp, micro_batch * seq, seq)
    return {"hidden": spec.hidden, "heads": spec.heads, "kv_heads": spec.kv_heads,
            "ffn": spec.ffn, "mlp": spec.mlp, "tp": tp, "tokens": micro_batch * seq,
            "micro_batch": micro_batch, "fwd_s": fwd, "fwd_bwd_s": both, "flops": flops,
            "tflops": round(flops / both / 1e12, 3)}
