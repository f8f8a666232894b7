"""FLOPs of a decoder-only transformer, counted from its matrix products.

Every forward matrix product of a layer is listed once, with its shape on one tensor-parallel
rank (`layer_gemms`). Model FLOPs and per-GPU compute time are both derived from that list,
so the count and the time cannot disagree.

Conventions (one place):
- A product C[m,n] = A[m,k] @ B[k,n] costs 2*m*k*n FLOPs.
- Backward costs twice the forward (input and weight gradients): Narayanan et al. 2021,
  arXiv:2104.04473 Sec. 5.1 (the factor 3 = 1 forward + 2 backward).
- Attention scores and values cost 2*s_q*s_kv*(q_dim + o_dim) forward (4*s_q*s_kv*q_dim
  when values are as wide as queries); causal masking halves it, as
  flash attention skips masked blocks (Megatron-Core `num_floating_point_operations` counts it
  the same way). Flash attention's backward does 5 products to the forward's 2 (it recomputes
  the scores): Dao 2023, arXiv:2307.08691 Sec. 3.
- MFU (`model_flops_per_token`): the model FLOPs of PaLM, Chowdhery et al. 2022, arXiv:2204.02311
  Appendix B (6 x parameters touched + attention), counted exactly from the products above,
  with causal attention halved; recomputation is excluded; multi-token-prediction depths
  count (they are part of the training objective).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_models.params import mlp_matrices
from cost_models.specs import ModelSpec

BACKWARD_FACTOR = 2.0  # backward / forward FLOPs of a matrix product
FLASH_BACKWARD_FACTOR = 2.5  # flash-attention backward / forward (5 products vs 2)
CAUSAL_FRACTION = 0.5  # share of the score matrix a causal mask leaves


@dataclass(frozen=True, slots=True, kw_only=True)
class Gemm:
    """One forward product per layer: C[m,n] = A[m,k] @ B[k,n], repeated `count` times."""

    name: str
    m: np.ndarray
    k: np.ndarray
    n: np.ndarray
    count: np.ndarray | float = 1.0

    @property
    def flops(self) -> np.ndarray:
        return 2.0 * self.m * self.k * self.n * self.count


def attention_gemms(model: ModelSpec, tokens, tp) -> list[Gemm]:
    """QKV and output projections of one layer on one TP rank, `tokens` rows. Multi-head
    latent attention: the down-projections to the latents run whole on every TP rank, the
    up-projections from them are split by heads (Megatron-Core MLA)."""
    h = model.hidden_size
    proj = Gemm(name="proj", m=tokens, k=model.o_dim / tp, n=h)
    if not model.is_mla:
        qkv = (model.q_dim + model.k_dim + model.v_dim) / tp
        return [Gemm(name="qkv", m=tokens, k=h, n=qkv), proj]
    kv_up = (model.num_heads * model.head_dim + model.v_dim) / tp
    gemms = [Gemm(name="kv_down", m=tokens, k=h, n=model.kv_lora_rank + model.qk_rope_head_dim),
             Gemm(name="kv_up", m=tokens, k=model.kv_lora_rank, n=kv_up)]
    if model.q_lora_rank:
        gemms += [Gemm(name="q_down", m=tokens, k=h, n=model.q_lora_rank),
                  Gemm(name="q_up", m=tokens, k=model.q_lora_rank, n=model.q_dim / tp)]
    else:
        gemms.append(Gemm(name="q", m=tokens, k=h, n=model.q_dim / tp))
    return gemms + [proj]


def mlp_gemms(model: ModelSpec, tokens, tp, width: float, prefix: str = "") -> list[Gemm]:
    """An MLP of `width`: fc1 (gate and up fused for gated MLPs) then fc2."""
    fc1_out = (mlp_matrices(model.mlp) - 1) * width / tp
    return [Gemm(name=f"{prefix}fc1", m=tokens, k=model.hidden_size, n=fc1_out),
            Gemm(name=f"{prefix}fc2", m=tokens, k=width / tp, n=model.hidden_size)]


def expert_gemms(model: ModelSpec, tokens, tp, ep, load=1.0) -> list[Gemm]:
    """Routed experts of one MoE layer on one rank (expert tensor parallelism 1).

    Tokens are split over the TP ranks (sequence parallel), each is sent to top-k experts,
    and a rank holds num_experts/ep experts: with balanced routing each local expert sees
    tokens/tp * topk * ep / num_experts rows; `load` times that on the busiest rank
    (Plan.moe_load_factor; model FLOPs are counted at 1).
    """
    local_experts = model.num_experts / ep
    rows = tokens / tp * model.moe_topk * load / local_experts
    gemms = mlp_gemms(model, rows, 1, model.moe_ffn_hidden_size, prefix="expert_")
    router = Gemm(name="router", m=tokens / tp, k=model.hidden_size, n=model.num_experts)
    out = [router] + [Gemm(name=g.name, m=g.m, k=g.k, n=g.n, count=local_experts)
                      for g in gemms]
    if model.moe_shared_ffn_hidden_size:
        out += mlp_gemms(model, tokens, tp, model.moe_shared_ffn_hidden_size, "shared_")
    return out


def ffn_gemms(model: ModelSpec, tokens, tp, ep, moe: bool, load=1.0) -> list[Gemm]:
    """The feed-forward block's products: routed experts in an MoE layer, else the MLP."""
    return (expert_gemms(model, tokens, tp, ep, load) if moe
            else mlp_gemms(model, tokens, tp, model.ffn_hidden_size))


def layer_gemms(model: ModelSpec, tokens, tp, ep, moe: bool) -> list[Gemm]:
    return attention_gemms(model, tokens, tp) + ffn_gemms(model, tokens, tp, ep, moe)


def mtp_projection_gemm(model: ModelSpec, tokens, tp) -> Gemm:
    """A multi-token-prediction depth's projection of [hidden; embedding] (2h) to h."""
    return Gemm(name="mtp_proj", m=tokens, k=2 * model.hidden_size, n=model.hidden_size / tp)


def logits_gemm(model: ModelSpec, tokens, tp) -> Gemm:
    return Gemm(name="logits", m=tokens, k=model.hidden_size, n=model.vocab_size / tp)


def attention_core_flops(model: ModelSpec, tokens, seq_len, tp) -> np.ndarray:
    """Forward FLOPs of scores (q_dim wide) and values (o_dim wide) for `tokens` queries
    against `seq_len` keys."""
    widths = model.q_dim + model.o_dim
    return 2.0 * tokens * seq_len * widths / tp * CAUSAL_FRACTION


def model_flops_per_token(model: ModelSpec) -> float:
    """Forward + backward model FLOPs per token, no recomputation (the MFU numerator)."""
    s = model.seq_len
    dense = sum(float(np.sum(g.flops)) for g in layer_gemms(model, 1.0, 1, 1, moe=False))
    attn = float(attention_core_flops(model, 1.0, s, 1))
    logits = float(logits_gemm(model, 1.0, 1).flops)
    fwd = (dense + attn) * model.num_dense_layers + logits
    moe = 0.0
    if model.is_moe:
        moe = sum(float(np.sum(g.flops)) for g in layer_gemms(model, 1.0, 1, 1, moe=True))
        fwd += (moe + attn) * model.num_moe_layers
    # multi-token prediction: per depth a projection, a layer of the model's kind, the head
    mtp_layer = (moe if model.is_moe else dense) + attn
    mtp = float(mtp_projection_gemm(model, 1.0, 1).flops) + mtp_layer + logits
    return (1.0 + BACKWARD_FACTOR) * (fwd + model.mtp_layers * mtp)
