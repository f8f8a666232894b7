"""Parameter counts of a decoder-only transformer, exact for the architecture.

Per layer (Narayanan et al. 2021, arXiv:2104.04473 Sec. 5.1 for the dense GPT case, generalized
to grouped-query attention, separate head_dim and gated MLPs as in Llama 3, arXiv:2407.21783):
  attention: h*(q + 2kv) for Q, K, V  +  q*h for the output projection   (q = heads*head_dim,
             kv = kv_heads*head_dim; biases and norms are counted separately below)
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
    h = model.hidden_size
    return h * (model.q_dim + 2 * model.kv_dim) + model.q_dim * h


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


def count_active_parameters(model: ModelSpec) -> int:
    """Parameters one token passes through: top-k experts instead of all of them."""
    if not model.is_moe:
        return count_parameters(model)
    inactive = (model.num_experts - model.moe_topk) * expert_params(model)
    return count_parameters(model) - inactive * model.num_moe_layers
