"""The compute constants of the cost model, derived from the GPU kernel measurements, and the
model checked against a measured transformer layer.

    python -m cost_models.kernel_fit results/gpu        # the files bench.gemm/bench.kernels wrote

prints FP8_GEMM_SPEEDUP (from the bf16/fp8 products), the attention fraction of peak (from
the attention core), MEMORY_BOUND_FRACTION (from the element-wise passes) and, for every
measured layer, the predicted forward+backward time against the measured one. The constants
in cost_models/compute.py cite the figures this prints for results/gpu/ (one H100 SXM);
tests/cost_models/test_kernel_fit.py re-derives them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cost_models.cli_args import Parser
from cost_models.flops import FLASH_BACKWARD_FACTOR
from cost_models.host_fit import host_fit_lines, read_runs

STREAMING_OPS = ("copy", "add", "gelu", "layer_norm")  # silu_mul reads strided halves
ATTENTION_BACKEND = "cudnn"  # what Transformer Engine runs on Hopper


def fp8_speedup(gemm: pd.DataFrame) -> pd.Series:
    """BF16 time / FP8 time of each shape measured in both precisions."""
    times = gemm.pivot_table(index=["m", "k", "n"], columns="precision", values="time_s")
    return (times["bf16"] / times["fp8"]).dropna()


def attention_fit(attention: pd.DataFrame, peak_flops: float,
                  backend: str = ATTENTION_BACKEND) -> tuple[float, float, np.ndarray]:
    """Least squares (relative error) of fwd+bwd time = (1 + FLASH_BACKWARD_FACTOR) x forward
    FLOPs / (fraction x peak) + fixed_s; returns (fraction, fixed_s, relative errors)."""
    rows = attention[attention["backend"] == backend]
    work = (1 + FLASH_BACKWARD_FACTOR) * rows["fwd_flops"].to_numpy(float) / peak_flops
    t = rows["fwd_bwd_s"].to_numpy(float)
    design = np.column_stack([work / t, 1 / t])
    (inv_fraction, fixed_s), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    return 1 / inv_fraction, fixed_s, design @ [inv_fraction, fixed_s] - 1


def memory_bound_fraction(elementwise: pd.DataFrame, hbm_bytes_per_s: float) -> float:
    """Median achieved share of HBM bandwidth over the streaming element-wise passes."""
    rows = elementwise[elementwise["op"].isin(STREAMING_OPS)]
    return float(np.median(rows["bytes"] / rows["time_s"] / hbm_bytes_per_s))


def grouped_rows_half(grouped: pd.DataFrame, peak_flops: float) -> tuple[float, np.ndarray]:
    """Least squares (relative error) of the model's grouped-kernel time
    (`compute.grouped_gemm_time_s`) over its rows_half, on a 0.5-row grid; returns
    (rows_half, relative errors)."""
    from cost_models.compute import grouped_gemm_time_s
    from cost_models.flops import Gemm
    from cost_models.gemm_curve import H100_BF16_CURVE

    rows = grouped[grouped["how"] == "grouped"]
    g = Gemm(name="experts", m=rows["m_per_expert"].to_numpy(float),
             k=rows["k"].to_numpy(float), n=rows["n"].to_numpy(float),
             count=rows["experts"].to_numpy(float))
    t = rows["time_s"].to_numpy(float)
    fits = [(half, grouped_gemm_time_s(g, peak_flops, H100_BF16_CURVE, half) / t - 1)
            for half in np.arange(0.0, 512.0, 0.5)]
    return min(fits, key=lambda fit: float(np.sum(fit[1] ** 2)))


def with_layer_defaults(layers: pd.DataFrame) -> pd.DataFrame:
    """Files without the kv_heads/ffn/mlp columns hold GPT layers: MHA, GELU MLP of 4h."""
    defaults = {"kv_heads": layers["heads"], "ffn": 4 * layers["hidden"], "mlp": "gelu"}
    out = layers.copy()
    for column, default in defaults.items():
        out[column] = out[column].fillna(default) if column in out else default
    return out


def layer_spec(row, seq: int):
    """The ModelSpec of one layer bench.layer timed."""
    from cost_models.specs import ModelSpec

    return ModelSpec(name=f"layer-h{row.hidden}", num_layers=1, hidden_size=row.hidden,
                     ffn_hidden_size=int(row.ffn), num_heads=row.heads,
                     num_kv_heads=int(row.kv_heads), seq_len=seq, vocab_size=32000,
                     mlp=row.mlp)


def layer_check(layers: pd.DataFrame, cluster) -> pd.DataFrame:
    """Predicted vs measured forward+backward seconds of each measured layer (one TP rank's
    share, no communication, no recompute, flash attention, BF16)."""
    from cost_models.compute import layer_times
    from cost_models.plan_arrays import from_plans
    from cost_models.specs import Plan

    out = []
    for r in with_layer_defaults(layers).itertuples():
        seq = r.tokens // r.micro_batch
        plan = Plan(tp=r.tp, micro_batch_size=r.micro_batch, global_batch_size=r.micro_batch)
        times = layer_times(layer_spec(r, seq), cluster, from_plans([plan]), moe=False)
        pred = float((times.forward_s + times.backward_s)[0])
        out.append({"hidden": r.hidden, "mlp": r.mlp, "tp": r.tp, "seq": seq,
                    "measured_s": r.fwd_bwd_s,
                    "predicted_s": pred, "err_pct": 100 * (pred / r.fwd_bwd_s - 1)})
    return pd.DataFrame(out)


def step_check(steps: pd.DataFrame, cluster) -> pd.DataFrame:
    """Predicted vs measured seconds and peak memory of each measured training step
    (bench.step: one GPU, plan tp = pp = dp = 1, no recompute, zero 0)."""
    from cost_models.analytical import estimate
    from cost_models.specs import ModelSpec, Plan

    out = []
    for r in steps.itertuples():
        model = ModelSpec(name="bench-step", num_layers=r.layers, hidden_size=r.hidden,
                          ffn_hidden_size=r.ffn, num_heads=r.heads, num_kv_heads=r.kv_heads,
                          seq_len=r.seq, vocab_size=r.vocab, mlp=r.mlp)
        est = estimate(model, cluster, Plan(global_batch_size=r.micro_batches))
        out.append({"layers": r.layers, "hidden": r.hidden, "vocab": r.vocab,
                    "micro_batches": r.micro_batches, "measured_s": r.step_s,
                    "predicted_s": est.step_time_s,
                    "err_pct": 100 * (est.step_time_s / r.step_s - 1),
                    "measured_gib": r.peak_memory_bytes / 2**30,
                    "predicted_gib": est.peak_memory_bytes / 2**30,
                    "mem_err_pct": 100 * (est.peak_memory_bytes / r.peak_memory_bytes - 1)})
    return pd.DataFrame(out)


def fused_op_counts(host_ops: pd.DataFrame, runs: dict[str, pd.DataFrame]
                    ) -> dict[bool, tuple[int, int]]:
    """Operators per layer call with a fused attention core, by MoE: (forward + backward, the
    GPU-run count of bench.megatron_layer's slopes, `runs`; forward alone, that scaled by the
    share of forward operators in the CPU count of the same layers, host_ops.csv's *_fused
    rows)."""
    kept = host_ops.set_index("layer")
    cpu = {False: kept.loc["megatron_dense_fused"],
           True: kept.loc["megatron_moe_shared_fused"] + kept.loc["megatron_moe_per_expert_fused"]}
    slopes = pd.concat(runs.values(), ignore_index=True)
    gpu = {False: slopes.loc[slopes.experts_impl == "dense", "ops"].median(),
           True: slopes.loc[slopes.experts_impl == "grouped", "ops"].median()}
    return {moe: (round(gpu[moe]), round(gpu[moe] * cpu[moe].ops_fwd / cpu[moe].ops_fwd_bwd))
            for moe in (False, True)}


def host_lines(folder: Path) -> list[str]:
    ops_path = folder / "host_ops.csv"
    runs = read_runs(folder)
    if not ops_path.exists() or not runs:
        return [f"(skipped: host_ops.csv and megatron_*_layer_*_run*.csv are both needed in "
                f"{folder})"]
    host_ops = pd.read_csv(ops_path)
    counts = ", ".join(f"{r.layer} {r.ops_fwd_bwd}/{r.ops_fwd}" for r in host_ops.itertuples())
    fused = fused_op_counts(host_ops, runs)
    return host_fit_lines(runs) + [
        f"operators per layer (fwd+bwd/fwd) counted on the CPU: {counts}; with a fused "
        f"attention core as the GPU runs them: dense {fused[False][0]}/{fused[False][1]}, "
        f"MoE {fused[True][0]}/{fused[True][1]}"]


def _read_all(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def fp8_lines(frame: pd.DataFrame, cluster) -> list[str]:
    speed = fp8_speedup(frame)
    q1, q3 = speed.quantile([0.25, 0.75])
    return [f"FP8_GEMM_SPEEDUP: median {speed.median():.3f} over {len(speed)} shapes "
            f"(quartiles {q1:.2f}-{q3:.2f})"]


def attention_lines(frame: pd.DataFrame, cluster) -> list[str]:
    fraction, fixed_s, err = attention_fit(frame, cluster.gpu.peak_bf16_flops)
    return [f"attention ({ATTENTION_BACKEND}): fraction of peak {fraction:.3f}, fixed "
            f"{fixed_s * 1e6:.0f} us per layer fwd+bwd; fit error mean "
            f"{100 * np.abs(err).mean():.1f}%, max {100 * np.abs(err).max():.1f}%"]


def memory_lines(frame: pd.DataFrame, cluster) -> list[str]:
    hbm = cluster.gpu.hbm_bandwidth_bytes_per_s
    return [f"MEMORY_BOUND_FRACTION: median {memory_bound_fraction(frame, hbm):.3f} of "
            f"{hbm / 1e12:.2f} TB/s over {', '.join(STREAMING_OPS)}"]


def grouped_lines(frame: pd.DataFrame, cluster) -> list[str]:
    half, err = grouped_rows_half(frame, cluster.gpu.peak_bf16_flops)
    return [f"GROUPED_ROWS_HALF: {half:.1f} rows per expert; grouped products fit within "
            f"{100 * np.abs(err).mean():.1f}% mean, {100 * np.abs(err).max():.1f}% max"]


def layer_lines(frame: pd.DataFrame, cluster) -> list[str]:
    layers = layer_check(frame, cluster)
    err = layers.err_pct.abs()
    return ["layer forward+backward, model vs measured:",
            layers.to_string(index=False, float_format=lambda v: f"{v:.5g}"),
            f"layer error: mean |err| {err.mean():.1f}%, median {err.median():.1f}%, max "
            f"{err.max():.1f}%"]


def step_lines(frame: pd.DataFrame, cluster) -> list[str]:
    return ["whole training step on one GPU (embedding, layers, logits, loss, Adam), model vs "
            "measured:", step_check(frame, cluster).to_string(
                index=False, float_format=lambda v: f"{v:.4g}")]


# (file pattern, report section); {gpu} is the --gpu suffix of the file names.
SECTIONS = (("gemm_{gpu}.csv", fp8_lines), ("attention_{gpu}.csv", attention_lines),
            ("elementwise_{gpu}.csv", memory_lines), ("grouped_{gpu}.csv", grouped_lines),
            ("layer_*.csv", layer_lines), ("step_*.csv", step_lines))


def report(folder: Path, cluster, gpu: str = "h100") -> str:
    """Every section whose files the folder holds; FitError-like ValueError if none."""
    lines, found = [], 0
    for pattern, section in SECTIONS:
        paths = sorted(folder.glob(pattern.format(gpu=gpu)))
        if not paths:
            lines.append(f"(skipped: no {pattern.format(gpu=gpu)} in {folder})")
            continue
        found += 1
        lines += section(_read_all(paths), cluster)
    if not found:
        names = ", ".join(p.format(gpu=gpu) for p, _ in SECTIONS)
        raise ValueError(f"no measurement files ({names}) in {folder}")
    return "\n".join(lines + host_lines(folder))


def checked_gpu(p: Parser, folder: Path, gpu: str | None) -> str:
    """The --gpu suffix to read: h100 when not given; a given one must name files there."""
    if gpu is None:
        return "h100"
    if not re.fullmatch(r"[\w.-]+", gpu):
        p.error(f"--gpu {gpu!r}: give the suffix of the file names, e.g. h100 for gemm_h100.csv")
    names = [pattern.format(gpu=gpu) for pattern, _ in SECTIONS if "{gpu}" in pattern]
    if not any((folder / name).is_file() for name in names):
        p.error(f"--gpu {gpu}: none of {', '.join(names)} is in {folder}; give the suffix of "
                "the files there")
    return gpu


def main(argv: list[str] | None = None) -> int:
    from cost_models.catalog_clusters import cluster_preset

    p = Parser(prog="python -m cost_models.kernel_fit", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="folder of bench.gemm/kernels/step results")
    p.add_argument("--gpu", help="suffix of the file names (gemm_GPU.csv; default h100)")
    args = p.parse_args(argv)
    gpu = checked_gpu(p, args.folder, args.gpu)
    try:
        print(report(args.folder, cluster_preset("dgx-h100"), gpu))
    except KeyError as exc:
        print(f"{p.prog}: error: a results file in {args.folder} lacks the column {exc}; "
              "re-make it with bench.gemm/bench.kernels/bench.step", file=sys.stderr)
        return 2
    except (OSError, ValueError, AttributeError, pd.errors.ParserError) as exc:
        print(f"{p.prog}: error: cannot read the measurements in {args.folder}: {exc}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
