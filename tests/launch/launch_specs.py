"""Shared specs for the launch tests: three model shapes, one cluster, hand-made estimates.

Imported by name (`from launch_specs import ...`): pytest puts tests/launch on sys.path.

The models are written out here (not taken from cost_models.catalog) so these tests pin the
launch layer alone. Estimates are built by hand: the numbers are arbitrary but consistent.
"""

from __future__ import annotations

import os
from pathlib import Path

from cost_models.specs import ClusterSpec, Estimate, GpuSpec, LinkTier, ModelSpec, Plan
from tuner.plan_io import make_provenance, plan_document

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# GPT-3 175B shape (Brown et al. 2020, Table 2.1), MHA, GELU, tied embeddings.
GPT3 = ModelSpec(name="gpt3-like", num_layers=96, hidden_size=12288, ffn_hidden_size=49152,
                 num_heads=96, num_kv_heads=96, seq_len=2048, vocab_size=51200,
                 mlp="gelu", tied_embeddings=True)
# Llama 3 70B shape (arXiv:2407.21783 Table 3): GQA with 8 KV heads, SwiGLU, untied.
LLAMA = ModelSpec(name="llama-like", num_layers=80, hidden_size=8192, ffn_hidden_size=28672,
                  num_heads=64, num_kv_heads=8, seq_len=8192, vocab_size=128256, mlp="swiglu")
# Qwen3-235B-A22B shape (Qwen3 report, arXiv:2505.09388 Table 2): 128 experts, top-8.
QWEN3 = ModelSpec(name="qwen3-like", num_layers=94, hidden_size=4096, ffn_hidden_size=12288,
                  num_heads=64, num_kv_heads=4, head_dim=128, seq_len=4096, vocab_size=151936,
                  mlp="swiglu", num_experts=128, moe_topk=8, moe_ffn_hidden_size=1536,
                  moe_layer_freq=1.0)
# DeepSeek-V3 shape (arXiv:2412.19437 Sec. 4.2): multi-head latent attention, 3 dense layers
# then 58 MoE layers of 1 shared + 256 routed experts, top-8.
DEEPSEEK_V3 = ModelSpec(name="deepseek-v3-like", num_layers=61, hidden_size=7168,
                        ffn_hidden_size=18432, num_heads=128, num_kv_heads=128, head_dim=128,
                        seq_len=4096, vocab_size=129280, mlp="swiglu", num_experts=256,
                        moe_topk=8, moe_ffn_hidden_size=2048, moe_shared_ffn_hidden_size=2048,
                        moe_layer_freq=58 / 61, moe_router_groups=8,
                        moe_router_group_topk=4, mtp_layers=1, q_lora_rank=1536,
                        kv_lora_rank=512,
                        qk_rope_head_dim=64, v_head_dim=128)
# A small model whose plans fit the 2-4 CPU ranks of the process-group tests.
TINY = ModelSpec(name="tiny", num_layers=8, hidden_size=256, ffn_hidden_size=1024,
                 num_heads=8, num_kv_heads=4, seq_len=512, vocab_size=1024, mlp="swiglu")
TINY_MOE = ModelSpec(name="tiny-moe", num_layers=8, hidden_size=256, ffn_hidden_size=1024,
                     num_heads=8, num_kv_heads=8, seq_len=512, vocab_size=1024, mlp="swiglu",
                     num_experts=4, moe_topk=2, moe_ffn_hidden_size=128, moe_layer_freq=0.5,
                     moe_shared_ffn_hidden_size=256)

H100 = GpuSpec(name="H100-SXM", peak_fp16_flops=989e12, peak_bf16_flops=989e12,
               peak_fp8_flops=1979e12, memory_bytes=80 * 2**30,
               hbm_bandwidth_bytes_per_s=3.35e12)
CLUSTER = ClusterSpec(
    name="test-h100", gpu=H100, gpus_per_node=8, nics_per_node=8,
    nic_bandwidth_bytes_per_s=50e9,
    tiers=(LinkTier(name="nvlink", domain_gpus=8, latency_s=3e-6,
                    bandwidth_bytes_per_s=360e9, source="datasheet"),
           LinkTier(name="ib", domain_gpus=0, latency_s=8e-6, bandwidth_bytes_per_s=45e9,
                    source="datasheet")))


def estimate(step_time_s: float = 10.0, tokens_per_s: float = 1e6) -> Estimate:
    return Estimate(step_time_s=step_time_s,
                    breakdown_s={"compute": 0.8 * step_time_s, "pp_bubble": 0.1 * step_time_s,
                                 "dp_comm_exposed": 0.1 * step_time_s},
                    model_flops_per_step=1.5e18, model_tflops_per_gpu=400.0, mfu=0.42,
                    tokens_per_s=tokens_per_s, peak_memory_bytes=6.5e10,
                    memory_breakdown_bytes={"weights": 2e10, "activations": 4.5e10},
                    memory_capacity_bytes=80 * 2**30, notes=("hand-made for tests",))


def document(model: ModelSpec, plan: Plan, *, tokens_budget: float = 1e12,
             alternatives=()) -> dict:
    provenance = make_provenance(cost_model="analytical",
                                 parameters={"gemm_efficiency": 0.7}, preset="h100-ib")
    return plan_document(model, CLUSTER, plan, estimate(), tokens_budget=tokens_budget,
                         provenance=provenance, alternatives=alternatives)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without Slurm/rendezvous variables, plus `extra`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLURM_") and key not in ("MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DS_ACCELERATOR"] = "cpu"
    return env | extra
