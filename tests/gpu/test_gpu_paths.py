"""The GPU paths, run for real where a GPU is present: `pytest -m gpu` on a GPU machine.

Skipped (not failed) without CUDA, so they stay out of the CPU-only CI run; on the device
machine they exercise NCCL through the same command line users run, and the GEMM benchmark
whose output replaces the cost model's compute-efficiency curve.
"""

import subprocess
import sys

import pytest

from bench.records import read_results
from cost_models.gemm_curve import fit_gemm_curve
from tests.bench.conftest import REPO

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_nccl_collectives_on_every_local_gpu(tmp_path):
    gpus = torch.cuda.device_count()
    out = tmp_path / "nccl.jsonl"
    subprocess.run(["torchrun", "--standalone", f"--nproc-per-node={gpus}", "-m", "bench",
                    "all_reduce,all_gather,reduce_scatter,send_recv", "-b", "8", "-e", "64M",
                    "-f", "8", "--backend", "nccl", "-o", str(out)], cwd=REPO, check=True,
                   timeout=600)
    results = read_results(out)
    assert results.header["backend"] == "nccl"
    assert results.measurements and all(m.wrong == 0 for m in results.measurements)


def test_gemm_benchmark_feeds_the_compute_curve(tmp_path):
    out = tmp_path / "gemm.csv"
    subprocess.run([sys.executable, "-m", "bench.gemm", "-o", str(out), "--hidden", "4096,8192",
                    "--tp", "1,8", "--tokens", "2048,8192"], cwd=REPO, check=True, timeout=600)
    peak = 989.4e12 if "H100" in torch.cuda.get_device_name() else None
    curve, errors = fit_gemm_curve(out, peak or 1e15)
    assert 0.05 < curve.max_fraction < 1.5
    assert abs(errors).mean() < 0.25


def test_fp8_products_are_faster_and_close_to_bf16(tmp_path):
    import pandas as pd

    out = tmp_path / "gemm.csv"
    subprocess.run([sys.executable, "-m", "bench.gemm", "-o", str(out), "--hidden", "8192",
                    "--tp", "1", "--tokens", "8192", "--precision", "bf16,fp8"], cwd=REPO,
                   check=True, timeout=600)
    rows = pd.read_csv(out).pivot_table(index=["m", "k", "n"], columns="precision",
                                        values=["time_s", "rel_err"])
    assert (rows["rel_err"]["bf16"] < 1e-2).all() and (rows["rel_err"]["fp8"] < 0.1).all()
    assert (rows["time_s"]["fp8"] < rows["time_s"]["bf16"]).all()


def test_attention_backends_run_and_match_float64(tmp_path):
    import pandas as pd

    out = tmp_path / "attention.csv"
    subprocess.run([sys.executable, "-m", "bench.kernels", "attention", "-o", str(out),
                    "--backends", "flash,cudnn", "--heads", "16", "--seqs", "4096"], cwd=REPO,
                   check=True, timeout=600)
    rows = pd.read_csv(out)
    assert set(rows["backend"]) == {"flash", "cudnn"}
    assert (rows["rel_err"] < 2e-2).all()
    assert ((rows["fwd_bwd_tflops"] > 50) & (rows["fwd_bwd_tflops"] < 1000)).all()


def test_training_step_is_close_to_the_model(tmp_path):
    import pandas as pd

    from cost_models.catalog_clusters import cluster_preset
    from cost_models.kernel_fit import step_check

    out = tmp_path / "step.csv"
    subprocess.run([sys.executable, "-m", "bench.step", "--layers", "2", "-o", str(out)],
                   cwd=REPO, check=True, timeout=600)
    check = step_check(pd.read_csv(out), cluster_preset("dgx-h100"))
    assert check.err_pct.abs().max() < 25 and check.mem_err_pct.abs().max() < 15


def test_megatron_core_model_runs_forward_and_backward(tmp_path):
    import pandas as pd

    pytest.importorskip("megatron.core")
    out = tmp_path / "megatron.csv"
    subprocess.run([sys.executable, "-m", "bench.megatron_step", "--model", "llama3-8b",
                    "--layers", "1", "--seq", "2048", "-o", str(out)], cwd=REPO, check=True,
                   timeout=600)
    row = pd.read_csv(out).iloc[0]
    assert 0 < row.fwd_bwd_s < 10


def test_megatron_moe_layer_is_timed_with_its_gpu_busy_time(tmp_path):
    import pandas as pd

    pytest.importorskip("megatron.core")
    out = tmp_path / "moe.csv"
    subprocess.run([sys.executable, "-m", "bench.megatron_layer", "--tokens", "1024",
                    "--iters", "3", "-o", str(out)], cwd=REPO, check=True, timeout=600)
    rows = pd.read_csv(out)
    assert (rows.gpu_busy_s > 0).all() and (rows.gpu_busy_s <= rows.wall_s * 1.05).all()
    by_impl = rows.groupby("experts_impl").ops.max()
    assert by_impl["grouped"] < by_impl["sequential"]  # one grouped kernel, not 16 MLPs
