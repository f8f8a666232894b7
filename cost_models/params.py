"""Parameter counts of a decoder-only transformer, exact for the architecture.

Per layer (Narayanan et al. 2021, arXiv:2104.04473 Sec. 5.1 for the dense GPT case, generalized
to grouped-query attention, separate head_dim and gated MLPs as in Llama 3, arXiv:2407.21783):
  attention: h*(q + 2kv) for Q, K, V  +  q*h for the output projection   (q = heads*head_dim,
             kv = kv_heads*head_dim; biases and norms are counted separately below);
             multi-head latent attention: down- and up-projections through the latents
             (`attention_sharded_params`, `attention_replicated_params`)
  MLP:       gelu/relu/relu2: 2*h*f      swiglu: 3*h*f   (gate, up, down)
  MoE layer: router h*E + E experts of the MLP above with width f_e + the shared expert
  norms:     2*h per layer (+ h final norm); biases are ignored (<0.01% at these sizes)
Embeddings: V*h, doubled when input and output embeddings are untied.
"""

from __future__ import annotations

from cost_models.specs import Mlp, ModelSpec


def mlp_matrices(mlp: Mlp) -> int:
    """Weight matrices of one MLP of width f: gated (SwiGLU) MLPs have three, others two."""
    return 3 if mlp == Mlp.SWIGLU else 2


def attention_params(model: ModelSpec) -> int:
    """All attention weights of one layer: the ones TP shards plus the replicated ones."""
    return attention_sharded_params(model) + attention_replicated_params(model)


def attention_sharded_params(model: ModelSpec) -> int:
    """Weights TP splits by heads: Q, K, V and output projections; with multi-head latent
    attention (arXiv:2412.19437 Eqs. 1-9) the up-projections from the latents (queries to
    q_dim, keys' no-RoPE part and values from the KV latent) and the output projection."""
    h = model.hidden_size
    if not model.is_mla:
        return h * (model.q_dim + model.k_dim + model.v_dim) + model.o_dim * h
    q_in = model.q_lora_rank or h
    kv_up = model.kv_lora_rank * (model.num_heads * model.head_dim + model.v_dim)
    return q_in * model.q_dim + kv_up + model.o_dim * h


def attention_replicated_params(model: ModelSpec) -> int:
    """MLA's down-projections to the query and KV latents (the KV one also yields the shared
    RoPE key) and the latents' norms: Megatron-Core builds them unsplit on every TP rank."""
    if not model.is_mla:
        return 0
    h = model.hidden_size
    q_down = (h + 1) * model.q_lora_rank  # weight and norm
    kv_down = h * (model.kv_lora_rank + model.qk_rope_head_dim) + model.kv_lora_rank
    return q_down + kv_down


def dense_mlp_params(model: ModelSpec) -> int:
    return mlp_matrices(model.mlp) * model.hidden_size * model.ffn_hidden_size


def expert_params(model: ModelSpec) -> int:
    """Weights of one routed expert."""
    return mlp_matrices(model.mlp) * model.hidden_size * model.moe_ffn_hidden_size


def moe_mlp_params(model: ModelSpec) -> int:
    h = model.hidden_size
    shared = mlp_matrices(model.mlp) * h * model.moe_shared_ffn_hidden_size
    return h * model.num_experts + model.num_experts * expert_params(model) + shared


def embedding_params(model: ModelSpec) -> int:
    tables = 1 if model.tied_embeddings else 2
    return tables * model.vocab_size * model.hidden_size


def layer_norm_params(model: ModelSpec) -> int:
    return 2 * model.hidden_size * model.num_layers + model.hidden_size


def count_parameters(model: ModelSpec) -> int:
    """Total parameters, embeddings included."""
    per_layer_attn = attention_params(model) * model.num_layers
    mlps = (dense_mlp_params(model) * model.num_dense_layers
            + moe_mlp_params(model) * model.num_moe_layers)
    return per_layer_attn + mlps + embedding_params(model) + layer_norm_params(model)


def mtp_module_params(model: ModelSpec) -> tuple[int, int]:
    """(projection, norms): what one multi-token-prediction depth adds besides its layer,
    the 2h -> h projection (split by TP) and its two input norms and final norm (h each)."""
    h = model.hidden_size
    return 2 * h * h, 3 * h


def mtp_params(model: ModelSpec) -> int:
    """Weights of the multi-token-prediction modules (not in the published model sizes): per
    depth the projection and norms (`mtp_module_params`) and one layer (MoE if the model has
    MoE layers); embedding and output head are shared with the model."""
    mlp = moe_mlp_params(model) if model.is_moe else dense_mlp_params(model)
    layer = attention_params(model) + mlp + 2 * model.hidden_size
    return model.mtp_layers * (sum(mtp_module_params(model)) + layer)


def count_active_parameters(model: ModelSpec) -> int:
    """Parameters one token passes through: top-k experts instead of all of them."""
    if not model.is_moe:
        return count_parameters(model)
    inactive = (model.num_experts - model.moe_topk) * expert_params(model)
    return count_parameters(model) - inactive * model.num_moe_layers
