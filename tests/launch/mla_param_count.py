"""Run as a script by test_megatron_model.py: build megatron-core 0.16.1's MLASelfAttention
(local layer spec) for a tiny multi-head latent attention model on the CPU and print the
parameters of one layer's attention block, then the cost model's count of the same weights.

Three stand-ins let the block build without CUDA or Transformer Engine; none of them holds a
parameter: the core attention (the local DotProductAttention has no MLA support; softmax
and products have no weights), megatron-core's TE check (its TELinear is None without TE)
and the RoPE table's device (megatron-core puts it on the current CUDA device).
"""

import warnings

import torch

warnings.simplefilter("ignore")

from bench.megatron_step import init_single_process, transformer_config  # noqa: E402
from cost_models.params import attention_replicated_params, attention_sharded_params  # noqa: E402
from cost_models.specs import ModelSpec, Plan  # noqa: E402

MODEL = ModelSpec(name="tiny-mla", num_layers=1, hidden_size=256, ffn_hidden_size=512,
                  num_heads=4, num_kv_heads=4, head_dim=32, seq_len=64, vocab_size=1000,
                  mlp="swiglu", q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16,
                  v_head_dim=24)


class NoWeights(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()


def main() -> None:
    import megatron.core.transformer.multi_latent_attention as mla
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = transformer_config(MODEL, Plan(global_batch_size=1), torch.float32)
    config.rope_type = "rope"
    init_single_process(torch.device("cpu"))
    torch.cuda.current_device = lambda: "cpu"
    mla.HAVE_TE = False
    spec = get_gpt_layer_local_spec(normalization=config.normalization,
                                    multi_latent_attention=True)
    spec.submodules.self_attention.submodules.core_attention = NoWeights
    gpt = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=MODEL.vocab_size,
                   max_sequence_length=MODEL.seq_len, position_embedding_type="rope")
    attention = gpt.decoder.layers[0].self_attention
    print(sum(w.numel() for w in attention.parameters()))
    # the local spec leaves the latents' RMSNorms out (IdentityOp); DeepSeek-V3 has them
    norms = MODEL.q_lora_rank + MODEL.kv_lora_rank
    print(attention_sharded_params(MODEL) + attention_replicated_params(MODEL) - norms)


if __name__ == "__main__":
    main()
