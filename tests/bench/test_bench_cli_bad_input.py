"""Bad input to the GPU benchmark commands (bench.gemm, bench.kernels, bench.megatron_layer,
bench.fabric, bench.fabric_link, cost_models.kernel_fit): one line on stderr naming the
command as it was run, exit code 2, no output file, and nothing built or measured first.
The commands run in-process with their work replaced by a failing stand-in, so these tests
also fail if a check comes too late."""

import csv
import os
import shutil
from pathlib import Path

import pytest

from bench import fabric, fabric_link, gemm, kernels, megatron_layer
from bench import megatron_step as mstep
from cost_models import kernel_fit

GPU_RESULTS = Path(__file__).resolve().parents[2] / "results" / "gpu"


def _never(*args, **kwargs):
    raise AssertionError("ran past the flag checks")


@pytest.fixture
def refused(capsys):
    """refused(main, argv, prog) -> the one error line; asserts exit code 2."""
    def run(main, argv, prog):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
        return err
    return run


@pytest.fixture
def no_runs(monkeypatch):
    """Every benchmark's device set-up and measuring fails the test."""
    for module, name in ((gemm, "select_device"), (gemm, "gemm_rows"),
                         (kernels, "select_device"), (mstep, "device_and_megatron"),
                         (megatron_layer, "measure"), (fabric, "sh"),
                         (fabric, "netem_available"), (fabric, "run_on_fabric"),
                         (fabric_link, "open_tap")):
        monkeypatch.setattr(module, name, _never)


# B7, E5: megatron_layer refuses what the model spec would refuse, and empty values
@pytest.mark.parametrize("flags, says", [
    (["--tokens", "99999999999999999999"], "seq_len"),
    (["--tokens", "1000000000000"], "--tokens 1000000000000"),
    (["--layers", "1,100000", "--tokens", "64", "--experts-impl", "grouped"], "num_layers"),
    (["--experts", "1000000000"], "num_experts"),
    (["--experts", "4"], "moe_topk"),
    (["--model", "llama3-8b", "--layers", "1,20000"], "num_layers"),
    (["--tokens", ""], "--tokens is empty"),
    (["--tokens", ",,,"], "--tokens is empty"),
    (["--kernels", ""], "--kernels is empty"),
    (["-o", ""], "-o is empty"),
])
def test_megatron_layer_checks_limits_and_empty_values_first(tmp_path, refused, no_runs,
                                                            flags, says):
    out = tmp_path / "x.csv"
    err = refused(megatron_layer.main, ["--smoke", "-o", out, *flags],
                  "python -m bench.megatron_layer")
    assert says in err and not out.exists()


# A2: two outputs naming one file (also through a link or another spelling)
def test_megatron_layer_refuses_one_file_for_both_outputs(tmp_path, refused, no_runs):
    out = tmp_path / "x.csv"
    err = refused(megatron_layer.main, ["--smoke", "-o", out, "--kernels", out],
                  "python -m bench.megatron_layer")
    assert "--kernels" in err and not out.exists()
    (tmp_path / "link.csv").symlink_to(out)
    out.write_text("kept\n")
    refused(megatron_layer.main, ["--smoke", "-o", tmp_path / "link.csv", "--kernels",
                                  tmp_path / "sub" / ".." / "x.csv"],
            "python -m bench.megatron_layer")
    assert out.read_text() == "kept\n"


def test_gemm_refuses_one_file_for_both_outputs(tmp_path, refused, no_runs):
    out = tmp_path / "g.csv"
    err = refused(gemm.main, ["--smoke", "-o", out, "--layer-output", out],
                  "python -m bench.gemm")
    assert "--layer-output" in err and not out.exists()


# B8, A1: folders, devices and pipes are refused before measuring
@pytest.mark.parametrize("main, prog, head", [
    (gemm.main, "python -m bench.gemm", ["--smoke"]),
    (kernels.main, "python -m bench.kernels", ["grouped", "--smoke"]),
    (megatron_layer.main, "python -m bench.megatron_layer", ["--smoke"]),
])
def test_outputs_that_are_not_files_are_refused_first(tmp_path, refused, no_runs, main, prog,
                                                      head):
    os.mkfifo(tmp_path / "pipe")
    assert "is a folder" in refused(main, [*head, "-o", tmp_path], prog)
    assert "not a regular file" in refused(main, [*head, "-o", tmp_path / "pipe"], prog)
    assert "-o is empty" in refused(main, [*head, "-o", ""], prog)


# E11: --smoke checks the flags as given
@pytest.mark.parametrize("flags", [["--hidden", "abc"], ["--hidden", "0"], ["--tp", "0"],
                                   ["--iters", "0"], ["--warmup", "-1"], ["--hidden", ""],
                                   ["--tokens", ",,"], ["--tp", "3"], ["--shapes", "0x2x3"],
                                   ["--precision", ""], ["--layer-seq", "-1"],
                                   ["--hidden", "99999999999999999999"]])
def test_gemm_smoke_checks_its_flags(tmp_path, refused, no_runs, flags):
    out = tmp_path / "g.csv"
    refused(gemm.main, ["--smoke", "-o", out, *flags], "python -m bench.gemm")
    assert not out.exists()


# A1: write_csv goes through replace_atomically
def test_write_csv_keeps_links_mode_and_refuses_special_files(tmp_path, capsys):
    from cost_models.specs import SpecError

    target, link = tmp_path / "t.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    link.symlink_to(target)
    rows = [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert gemm.write_csv(str(link), ("a", "b"), iter(rows)) == 2
    assert link.is_symlink() and list(csv.DictReader(target.open())) == [
        {"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    assert capsys.readouterr().out == "a=1 b=2\na=3 b=4\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SpecError, match="not a regular file"):
        gemm.write_csv(str(tmp_path / "pipe"), ("a",), [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "pipe", "t.csv"]


# E10: every numeric flag of the fabric is checked before any namespace
@pytest.mark.parametrize("flags, says", [
    (["--nodes", "2", "--delay-us", "-5"], "--delay-us"),
    (["--delay-us", "nan"], "--delay-us"), (["--delay-us", "1e9"], "--delay-us"),
    (["--timeout", "-1"], "--timeout"), (["--timeout", "0"], "--timeout"),
    (["--timeout", "inf"], "--timeout"), (["--timeout", "nan"], "--timeout"),
    (["--nodes", "0"], "--nodes"), (["--nodes", "201"], "--nodes"),
    (["--ranks-per-node", "0"], "--ranks-per-node"),
    (["--ranks-per-node", "100000"], "--ranks-per-node"),
    (["--rate", "0gbit"], "--rate"), (["--rate", "100000gbit"], "--rate"),
    (["--rate", "fast"], "--rate"),
])
def test_fabric_checks_numbers_before_any_namespace(refused, no_runs, flags, says):
    assert says in refused(fabric.main, [*flags, "--", "all_reduce"], "python -m bench.fabric")


def test_fabric_errors_name_the_console_script(refused, no_runs, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/partune-fabric"])
    refused(fabric.main, ["--timeout", "-1", "--", "all_reduce"], "partune-fabric")


@pytest.mark.parametrize("argv", [["--delay-us", "-1", "a:b"], ["--delay-us", "nan", "a:b"],
                                  ["--delay-us", "5", "ab"], ["--delay-us", "5", "a:a"],
                                  ["--delay-us", "5", "a:"], ["--delay-us", "5", "a:b:c"],
                                  ["--delay-us", "5", "a" * 16 + ":b"]])
def test_fabric_link_checks_its_arguments_before_any_device(refused, no_runs, argv):
    refused(fabric_link.main, argv, "python -m bench.fabric_link")


# E12: a --gpu that names no files
@pytest.mark.parametrize("gpu", ["a100", "", "*", "../h100"])
def test_kernel_fit_refuses_a_gpu_without_files(refused, gpu):
    err = refused(kernel_fit.main, [GPU_RESULTS, "--gpu", gpu],
                  "python -m cost_models.kernel_fit")
    assert "--gpu" in err


def test_kernel_fit_default_gpu_is_h100(tmp_path, capsys):
    shutil.copy(GPU_RESULTS / "elementwise_h100.csv", tmp_path)
    assert kernel_fit.main([str(tmp_path)]) == 0
    default = capsys.readouterr().out
    assert kernel_fit.main([str(tmp_path), "--gpu", "h100"]) == 0
    assert capsys.readouterr().out == default and "MEMORY_BOUND_FRACTION" in default


# G: whole first sentences in --help
@pytest.mark.parametrize("main, ends", [
    (megatron_layer.main, "beside the wall time."),
    (gemm.main, "columns m,k,n,what,hidden,tp,tflops,time_s)."),
    (kernels.main, "measured on one GPU."),
    (kernel_fit.main, "against a measured transformer layer."),
    (fabric_link.main, "joined by a forwarder."),
])
def test_help_keeps_the_whole_first_paragraph(capsys, main, ends):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert ends in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module_name, prog", [("bench.step", "step"),
                                               ("bench.megatron_step", "megatron_step"),
                                               ("bench.host_ops", "host_ops")])
def test_other_benchmarks_check_their_output_before_running(tmp_path, monkeypatch, capsys,
                                                            module_name, prog):
    """A folder or a pipe as -o is one line before any device or model is touched."""
    import importlib

    module = importlib.import_module(module_name)
    for name in ("select_device", "device_and_megatron", "count_rows"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _never)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for target, says in ((tmp_path, "is a folder"), (pipe, "is not a regular file")):
        assert module.main(["-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and says in err
