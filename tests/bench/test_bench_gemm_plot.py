import csv

from tests.bench.conftest import run_module


def test_gemm_smoke_writes_the_gemm_curve_columns(tmp_path):
    gemm, layer = tmp_path / "g.csv", tmp_path / "l.csv"
    done = run_module("bench.gemm", "--smoke", "-o", str(gemm), "--layer-output", str(layer))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(gemm.open()))
    assert list(rows[0]) == ["m", "k", "n", "what", "hidden", "tp", "tflops", "time_s",
                             "precision", "rel_err"]
    assert all(float(r["rel_err"]) < 1e-4 for r in rows)  # float32 on the CPU
    assert {r["what"] for r in rows} == {"qkv", "proj", "fc1", "fc2"} and len(rows) == 8
    for r in rows:  # tflops is 2mkn / time (rounded to 3 decimals)
        flops = 2 * int(r["m"]) * int(r["k"]) * int(r["n"]) / float(r["time_s"]) / 1e12
        assert abs(flops - float(r["tflops"])) <= 5e-4
    assert [r["tp"] for r in csv.DictReader(layer.open())] == ["1", "2"]


def test_gemm_extra_shapes_and_bad_lists(tmp_path):
    out = tmp_path / "g.csv"
    done = run_module("bench.gemm", "--smoke", "-o", str(out), "--shapes", "64x32x48")
    assert done.returncode == 0, done.stderr
    custom = [r for r in csv.DictReader(out.open()) if r["what"] == "custom"]
    assert [(r["m"], r["k"], r["n"]) for r in custom] == [("64", "32", "48")]
    for bad in (["--shapes", "64x32"], ["--precision", "fp4"], ["--shapes", "64xAx3"]):
        done = run_module("bench.gemm", "--smoke", "-o", str(tmp_path / "x.csv"), *bad)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "x.csv").exists()


def test_llama_style_layer_smoke(tmp_path):
    layer = tmp_path / "l.csv"
    done = run_module("bench.gemm", "--smoke", "-o", str(tmp_path / "g.csv"), "--layer-output",
                      str(layer), "--layer-specs", "256/4/2/512/swiglu")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(layer.open()))
    assert [(r["mlp"], r["kv_heads"], r["tp"]) for r in rows] == [("swiglu", "2", "1"),
                                                                   ("swiglu", "2", "2")]
    done = run_module("bench.gemm", "--smoke", "-o", str(tmp_path / "g.csv"), "--layer-output",
                      str(tmp_path / "x.csv"), "--layer-specs", "256/4/2/512/relu")
    assert done.returncode == 2 and "--layer-specs" in done.stderr


def test_training_step_smoke(tmp_path):
    out = tmp_path / "s.csv"
    done = run_module("bench.step", "--smoke", "-o", str(out))
    assert done.returncode == 0, done.stderr
    (row,) = list(csv.DictReader(out.open()))
    assert row["layers"] == "2" and float(row["step_s"]) > 0
    done = run_module("bench.step", "--smoke", "--heads", "6", "--kv-heads", "4", "-o",
                      str(tmp_path / "x.csv"))
    assert done.returncode == 2 and "--kv-heads" in done.stderr
    assert not (tmp_path / "x.csv").exists()


def test_kernel_benchmarks_smoke(tmp_path):
    expected = {"attention": "fwd_bwd_tflops", "elementwise": "gbps", "grouped": "tflops"}
    for kind, column in expected.items():
        out = tmp_path / f"{kind}.csv"
        done = run_module("bench.kernels", kind, "--smoke", "-o", str(out))
        assert done.returncode == 0, done.stderr
        rows = list(csv.DictReader(out.open()))
        assert rows and all(float(r[column]) >= 0 for r in rows)
    grouped = list(csv.DictReader((tmp_path / "grouped.csv").open()))
    assert {r["how"] for r in grouped} >= {"loop", "dense"}
    done = run_module("bench.kernels", "attention", "-o", str(tmp_path / "x.csv"), "--backends",
                      "fast")
    assert done.returncode == 2 and "--backends" in done.stderr
    done = run_module("bench.kernels", "elementwise", "-o", str(tmp_path / "x.csv"))
    assert done.returncode == 2 and "--smoke" in done.stderr


def test_gemm_without_gpu_says_so():
    done = run_module("bench.gemm", "-o", "/tmp/never.csv")
    assert done.returncode == 2 and "--smoke" in done.stderr


def test_plot_writes_one_png_per_collective(tmp_path, bench_ranks):
    out = tmp_path / "r.jsonl"
    done = bench_ranks(2, "all_reduce,all_gather", "-b", "1K", "-e", "4K", "-n", "2", "-w",
                       "0", "--backend", "gloo", "-o", str(out))
    assert done.returncode == 0, done.stderr
    plots = tmp_path / "plots"
    done = run_module("bench.plot", str(out), "-o", str(plots))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in plots.iterdir()) == ["busbw_all_gather.png",
                                                       "busbw_all_reduce.png"]
