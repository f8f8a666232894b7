"""Model presets: one small function per published architecture, each citing its source.

`MODELS` maps a lower-case preset name to the function that builds it; `model_preset(name)`
looks a name up. Clusters live in `catalog_clusters`, size strings ("500b") in
`catalog_sizes`. Variants are derived from a base preset with `dataclasses.replace`.

Conventions for every preset:
  * vocab_size is the size of the embedding table as trained (padded where the framework pads);
  * seq_len is the pre-training sequence length, not the longest context the model supports;
  * biases, position embeddings and QK-norm weights are not ModelSpec fields (each < 0.1%).

DeepSeek-V3's multi-head latent attention is expressed with the MLA fields of ModelSpec
(q_lora_rank, kv_lora_rank, qk_rope_head_dim, v_head_dim), its multi-token prediction with
mtp_layers (see `deepseek_v3`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import replace

from cost_models.specs import Mlp, ModelSpec, SpecError

GPT2_VOCAB_PADDED = 51200  # GPT-2 BPE (50257 tokens) padded by Megatron-LM to a multiple of
#                            128 x TP (--make-vocab-size-divisible-by 128, TP 8): 51200.
LLAMA3_VOCAB = 128256  # arXiv:2407.21783 Sec. 3.2.1 / Table 3: 128K tokens (HF config: 128256)


def _megatron_gpt(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """The Megatron-LM GPT shape: GELU MLP of 4h, MHA, tied embeddings, seq 2048."""
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden,
                     ffn_hidden_size=4 * hidden, num_heads=heads, num_kv_heads=heads,
                     seq_len=2048, vocab_size=GPT2_VOCAB_PADDED, mlp=Mlp.GELU,
                     tied_embeddings=True)


def gpt3_175b() -> ModelSpec:
    """GPT-3 175B: Brown et al. 2020 (arXiv:2005.14165) Table 2.1: 96 layers, d_model 12288,
    96 heads of 128, context 2048. Vocabulary 50257 padded to 51200 as Megatron-LM does
    (Narayanan et al. 2021 count this model as 174.6B with that padding)."""
    return _megatron_gpt("gpt3-175b", 96, 12288, 96)


# Narayanan et al. 2021 (SC'21, arXiv:2104.04473) Table 1: the weak-scaling GPT family.
# (label, layers, hidden, heads); heads from examples/sc21/run_table_1.sh, as copied into
# /work/shared/validation/published_runs_dev.csv.
_NARAYANAN_TABLE1 = (
    ("1.7b", 24, 2304, 24), ("3.6b", 30, 3072, 32), ("7.5b", 36, 4096, 32),
    ("18.4b", 40, 6144, 48), ("39.1b", 48, 8192, 64), ("76.1b", 60, 10240, 80),
    ("145.6b", 80, 12288, 96), ("310.1b", 96, 16384, 128), ("529.6b", 105, 20480, 128),
    ("1008b", 128, 25600, 160),
)


def narayanan_gpt(label: str) -> ModelSpec:
    """One row of Narayanan et al. 2021 Table 1, e.g. narayanan_gpt("39.1b")."""
    for row_label, layers, hidden, heads in _NARAYANAN_TABLE1:
        if row_label == label:
            return _megatron_gpt(f"gpt-{label}", layers, hidden, heads)
    allowed = ", ".join(row[0] for row in _NARAYANAN_TABLE1)
    raise SpecError(f"no Narayanan et al. Table 1 model {label!r}; known: {allowed}")


def mt_nlg_530b() -> ModelSpec:
    """Megatron-Turing NLG 530B: Smith et al. 2022 (arXiv:2201.11990), model config: 105 layers,
    hidden 20480, 128 heads, sequence 2048, GPT-2 BPE vocabulary (padded to 51200)."""
    return _megatron_gpt("mt-nlg-530b", 105, 20480, 128)


def _llama3(name: str, layers: int, hidden: int, ffn: int, heads: int) -> ModelSpec:
    """Llama 3 (arXiv:2407.21783 Table 3): SwiGLU, RoPE, GQA with 8 KV heads, untied
    embeddings, vocabulary 128256, pre-training sequence 8192 (Sec. 3.4.1)."""
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn,
                     num_heads=heads, num_kv_heads=8, seq_len=8192, vocab_size=LLAMA3_VOCAB,
                     mlp=Mlp.SWIGLU, tied_embeddings=False)


def llama3_8b() -> ModelSpec:
    """arXiv:2407.21783 Table 3: 32 layers, model dim 4096, FFN 14336, 32 heads."""
    return _llama3("llama3-8b", 32, 4096, 14336, 32)


def llama3_70b() -> ModelSpec:
    """arXiv:2407.21783 Table 3: 80 layers, model dim 8192, FFN 28672, 64 heads."""
    return _llama3("llama3-70b", 80, 8192, 28672, 64)


def llama3_405b() -> ModelSpec:
    """arXiv:2407.21783 Table 3: 126 layers, model dim 16384, FFN 53248, 128 heads."""
    return _llama3("llama3-405b", 126, 16384, 53248, 128)


def _llama31(base: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
    """Llama 3.1 keeps the Llama 3 shapes (same paper); only RoPE scaling for 128K differs,
    which does not change training cost at the 8192 pre-training length."""
    def preset() -> ModelSpec:
        model = base()
        return replace(model, name=model.name.replace("llama3-", "llama3.1-"))
    preset.__doc__ = f"Llama 3.1 variant of {base.__name__} (same shape)."
    return preset


def _nemotron4(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """Nemotron-4 (arXiv:2402.16819 Sec. 2): squared-ReLU MLP of 4h, no bias, RoPE, GQA with
    8 KV heads, untied input/output embeddings, SentencePiece vocabulary 256000, seq 4096."""
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden,
                     ffn_hidden_size=4 * hidden, num_heads=heads, num_kv_heads=8,
                     seq_len=4096, vocab_size=256000, mlp=Mlp.RELU2, tied_embeddings=False)


def nemotron4_15b() -> ModelSpec:
    """arXiv:2402.16819 Table 1: 32 layers, hidden 6144, 48 heads, 8 KV heads.
    ASSUMPTION: FFN 4h = 24576 (not tabulated); it reproduces the paper's 12.5B
    non-embedding + 3.2B embedding parameters."""
    return _nemotron4("nemotron4-15b", 32, 6144, 48)


def nemotron4_340b() -> ModelSpec:
    """arXiv:2406.11704 Table 1: 96 layers, hidden 18432, 96 heads, 8 KV heads, seq 4096;
    FFN 73728 (= 4h, the released NeMo config's ffn_hidden_size)."""
    return _nemotron4("nemotron4-340b", 96, 18432, 96)


def qwen3_235b_a22b() -> ModelSpec:
    """Qwen3-235B-A22B, HF model card and config.json (Qwen/Qwen3-235B-A22B): 94 layers,
    hidden 4096, 64 query / 4 KV heads of head_dim 128 (q width 8192 > hidden), all 94 layers
    MoE with 128 experts, top-8, expert FFN 1536, no shared expert, vocab 151936, untied;
    235B total / 22B activated. seq 4096: the first pre-training stage of the Qwen3 report
    (arXiv:2505.09388; 4K, then 32K long-context) and the Megatron-MoE-ModelZoo benchmark."""
    return ModelSpec(name="qwen3-235b-a22b", num_layers=94, hidden_size=4096,
                     ffn_hidden_size=12288, num_heads=64, num_kv_heads=4, head_dim=128,
                     seq_len=4096, vocab_size=151936, mlp=Mlp.SWIGLU, tied_embeddings=False,
                     num_experts=128, moe_topk=8, moe_ffn_hidden_size=1536,
                     moe_layer_freq=1.0)


def mixtral_8x22b() -> ModelSpec:
    """Mixtral 8x22B, HF config (mistralai/Mixtral-8x22B-v0.1 config.json): 56 layers,
    hidden 6144, 48 heads, 8 KV heads, 8 experts top-2 of FFN 16384 in every layer, vocab
    32768, untied. The model supports a 65536-token context; ASSUMPTION: seq_len 4096 is
    used as the training default (Mistral did not publish the pre-training length)."""
    return ModelSpec(name="mixtral-8x22b", num_layers=56, hidden_size=6144,
                     ffn_hidden_size=16384, num_heads=48, num_kv_heads=8, seq_len=4096,
                     vocab_size=32768, mlp=Mlp.SWIGLU, tied_embeddings=False, num_experts=8,
                     moe_topk=2, moe_ffn_hidden_size=16384, moe_layer_freq=1.0)


def deepseek_v3() -> ModelSpec:
    """DeepSeek-V3, arXiv:2412.19437 Sec. 4.2 and HF config.json (deepseek-ai/DeepSeek-V3):
    61 layers, hidden 7168, 128 heads; MLA with query latent 1536, KV latent 512, no-RoPE
    head dim 128 + RoPE 64, value head dim 128; the first 3 layers dense (FFN 18432), the
    other 58 MoE with 1 shared and 256 routed experts of FFN 2048, top-8; vocab 129280,
    untied; seq 4096 (pre-training before context extension); group-limited routing over 8
    expert groups, 4 picked per token (HF n_group / topk_group; the report's node-limited
    routing, Sec. 2.1.2). 671B total / 37B activated as published (this spec: 671.0B /
    37.6B), plus the depth-1 multi-token-prediction module trained with it (Sec. 2.2;
    11.6B weights here, 14B in the release with its own embedding and head copies). Not
    modelled: the dense layers' placement first (the cost model spreads MoE layers evenly
    over the stages)."""
    return ModelSpec(name="deepseek-v3", num_layers=61, hidden_size=7168,
                     ffn_hidden_size=18432, num_heads=128, num_kv_heads=128, head_dim=128,
                     seq_len=4096, vocab_size=129280, mlp=Mlp.SWIGLU, tied_embeddings=False,
                     num_experts=256, moe_topk=8, moe_ffn_hidden_size=2048,
                     moe_shared_ffn_hidden_size=2048, moe_layer_freq=58 / 61,
                     moe_router_groups=8, moe_router_group_topk=4, mtp_layers=1,
                     q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64, v_head_dim=128)


def _narayanan_entries() -> dict[str, Callable[[], ModelSpec]]:
    return {f"gpt-{row[0]}": (lambda label=row[0]: narayanan_gpt(label))
            for row in _NARAYANAN_TABLE1}


MODELS: dict[str, Callable[[], ModelSpec]] = {
    "gpt3-175b": gpt3_175b,
    **_narayanan_entries(),
    "mt-nlg-530b": mt_nlg_530b,
    "llama3-8b": llama3_8b,
    "llama3-70b": llama3_70b,
    "llama3-405b": llama3_405b,
    "llama3.1-8b": _llama31(llama3_8b),
    "llama3.1-70b": _llama31(llama3_70b),
    "llama3.1-405b": _llama31(llama3_405b),
    "nemotron4-15b": nemotron4_15b,
    "nemotron4-340b": nemotron4_340b,
    "qwen3-235b-a22b": qwen3_235b_a22b,
    "mixtral-8x22b": mixtral_8x22b,
    "deepseek-v3": deepseek_v3,
}


def closest_names(name: str, names: list[str] | tuple[str, ...]) -> str:
    """'did you mean' text for an unknown name: difflib's closest matches, else all names."""
    close = difflib.get_close_matches(name.lower(), names, n=4, cutoff=0.5)
    return f"closest: {', '.join(close)}" if close else f"known: {', '.join(names)}"


def model_preset(name: str) -> ModelSpec:
    """The preset called `name` (case-insensitive); SpecError listing the closest names."""
    builder = MODELS.get(name.strip().lower())
    if builder is None:
        raise SpecError(f"unknown model preset {name!r}; {closest_names(name, list(MODELS))}")
    return builder()
