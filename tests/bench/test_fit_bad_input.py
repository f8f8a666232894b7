"""partune-fit on bad input: one line `partune-fit: error: ...` naming what is wrong, exit 2,
no traceback, no numpy warning, and no output written or changed."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cost_models.fit
from bench.records import Collective
from cost_models.fit import main
from cost_models.host_layers import with_measured_host
from cost_models.loaders import load_cluster
from cost_models.specs import SpecError
from tests.bench.test_bench_fit import synthetic

REPO = Path(__file__).resolve().parents[2]
MOE_RUN3 = REPO / "results" / "gpu" / "megatron_moe_layer_h100_run3.csv"
BASE = load_cluster("dgx-h100")


def fit_cli(capsys, *argv):
    """main() in this process with every warning an error: (exit code, stderr lines)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.jsonl"
    synthetic(path, [Collective.ALL_REDUCE])
    return path


# --- outputs that would replace an input: refused before any work (A2) ---------------------


@pytest.fixture
def no_fit(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fitted although an output names an input")

    monkeypatch.setattr(cost_models.fit, "build_profile", refuse)


@pytest.mark.parametrize("flags, words", [
    (["-o", "{good}"], "-o {good} is also the results file {good}"),
    (["-o", "{tmp}/c.json", "--plot", "{good}"], "--plot {good} is also the results file"),
    (["-o", "{tmp}/layers.csv", "--host-layers", "{tmp}/layers.csv"],
     "-o {tmp}/layers.csv is also --host-layers {tmp}/layers.csv"),
    (["-o", "{tmp}/gemm.csv", "--gemm", "{tmp}/gemm.csv"], "-o {tmp}/gemm.csv is also --gemm"),
    (["-o", "{tmp}/c.json", "--plot", "{tmp}/gemm.csv", "--gemm", "{tmp}/gemm.csv"],
     "--plot {tmp}/gemm.csv is also --gemm"),
])
def test_an_output_that_names_an_input_is_refused_before_fitting(tmp_path, good, capsys, no_fit,
                                                                 flags, words):
    for name in ("layers.csv", "gemm.csv"):
        (tmp_path / name).write_text("kept\n")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    flags = [f.format(tmp=tmp_path, good=good) for f in flags]
    code, err = fit_cli(capsys, good, *flags)
    assert code == 2 and len(err) == 1 and words.format(tmp=tmp_path, good=good) in err[0], err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_output_inside_a_results_folder_given_is_refused(tmp_path, good, capsys, no_fit):
    """A folder stands for its .jsonl files: -o naming one of them would replace it."""
    code, err = fit_cli(capsys, tmp_path, "-o", good)
    assert code == 2 and err == [f"partune-fit: error: -o {good} is also the results file "
                                 f"{good}: writing it would replace that file; give the output "
                                 "another name"]


def test_a_plot_drawing_failure_leaves_no_file(tmp_path, good, capsys, monkeypatch):
    """The plot goes through atomic.staged_file: its temporary file is removed and no
    profile is written when drawing fails."""
    import cost_models.fit_plot

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cost_models.fit_plot, "plot_fit", full)
    plots = tmp_path / "plots"
    code, err = fit_cli(capsys, good, "-o", tmp_path / "c.json", "--plot", plots / "fit.png")
    assert code == 2 and err == [f"partune-fit: error: {plots / 'fit.png'}: cannot write (No "
                                 "space left on device)"]
    assert list(plots.iterdir()) == [] and not (tmp_path / "c.json").exists()


# --- results files: corrupt, contradictory or too little data (B3, B4, E2, E3) --------------


def edit_records(src: Path, dst: Path, **fields) -> None:
    """dst: src with `fields` set in every record."""
    header, *records = src.read_text().splitlines()
    dst.write_text("\n".join([header] + [json.dumps(json.loads(r) | fields)
                                         for r in records]) + "\n")


def test_a_size_too_large_for_a_float_is_one_line(tmp_path, good, capsys):
    bad = tmp_path / "huge.jsonl"
    lines = good.read_text().splitlines()
    lines[1] = json.dumps(json.loads(lines[1]) | {"size_bytes": 10 ** 400,
                                                  "count": 10 ** 400 // 4})
    bad.write_text("\n".join(lines) + "\n")
    code, err = fit_cli(capsys, bad, "-o", tmp_path / "c.json")
    assert code == 2 and err == [f"partune-fit: error: {bad}:2: field 'size_bytes' is out of "
                                 f"range (must be below 2**63), got 1{'0' * 36}...; repair or "
                                 "delete that line, or measure again"]
    assert not (tmp_path / "c.json").exists()


def test_deep_nesting_is_one_line(tmp_path, good, capsys):
    bad = tmp_path / "deep.jsonl"
    header, *records = good.read_text().splitlines()
    bad.write_text("\n".join([header, "[" * 100_000, *records]) + "\n")
    code, err = fit_cli(capsys, bad, "-o", tmp_path / "c.json")
    assert code == 2 and err == [f"partune-fit: error: {bad}:2: nested too deeply or a number "
                                 "too long to read; repair or delete that line, or measure again"]


def test_records_spanning_more_nodes_than_the_run_are_one_line(tmp_path, capsys):
    """A one-node run whose records claim two nodes would fit an inter-node tier from
    single-host data."""
    src = REPO / "results" / "bench" / "local_gloo_4r.jsonl"
    bad = tmp_path / "nodes2.jsonl"
    edit_records(src, bad, nodes=2, ranks_per_node=2)
    code, err = fit_cli(capsys, bad, "-o", tmp_path / "c.json")
    assert code == 2 and err == [f"partune-fit: error: {bad}:2: the record's group spans 2 "
                                 "nodes, more than the header's 1; repair the header or that "
                                 "line, or measure again"]


def test_every_measurement_wrong_says_so(tmp_path, good, capsys):
    bad = tmp_path / "wrong.jsonl"
    edit_records(good, bad, wrong=3)
    code, err = fit_cli(capsys, bad, "-o", tmp_path / "c.json")
    assert code == 2 and len(err) == 1
    assert "every measurement failed its correctness check" in err[0]
    assert "re-run the benchmark" in err[0] and "single rank" not in err[0]


def test_one_size_per_tier_is_refused(tmp_path, good, capsys):
    same = tmp_path / "same.jsonl"
    header, *records = good.read_text().splitlines()
    one = [r for r in records if json.loads(r)["size_bytes"] == 4096]
    same.write_text("\n".join([header, *one]) + "\n")
    code, err = fit_cli(capsys, same, "-o", tmp_path / "c.json")
    assert code == 2 and err == [
        "partune-fit: error: the intra_node measurements to fit are of 1 message size; latency "
        "and bandwidth need 2 or more distinct sizes; measure a range: partune-bench -b 8 -e 64M"]
    assert not (tmp_path / "c.json").exists()


def test_a_holdout_that_leaves_one_size_is_refused(tmp_path, good, capsys):
    code, err = fit_cli(capsys, good, "-o", tmp_path / "c.json", "--holdout", "size_bytes > 1024")
    assert code == 2 and len(err) == 1
    assert err[0].endswith("need 2 or more distinct sizes; hold out less")


def test_sizes_that_do_not_determine_the_bandwidth_are_refused(tmp_path, good, capsys):
    """Two small sizes take the latency's time alone: the bandwidth fit runs to its bound."""
    local = REPO / "results" / "bench" / "local_gloo_4r.jsonl"
    code, err = fit_cli(capsys, local, "-o", tmp_path / "c.json", "--holdout", "size_bytes > 16")
    assert code == 2 and err == [
        "partune-fit: error: the intra_node measurements (8-16 B) do not determine its "
        "bandwidth (the fit ends at its bound, 1e+14 B/s); fit a wider range of sizes "
        "(partune-bench -b 8 -e 64M, or hold out less)"]


# --- --host-layers CSVs (B1, B2, C1, E1) -----------------------------------------------------


def _col(frame, column, values):
    out = frame.copy()
    out[column] = values
    return out


def _scaled(column, factor, where=lambda f: f.index >= 0):
    def edit(f):
        out = f.copy()
        out[column] = out[column].astype(object)
        out.loc[where(out), column] = out.loc[where(out), column] * factor
        return out
    return edit


def _alternate_wall(f):
    """Every other token count three times slower: no one host time fits them all."""
    return _scaled("wall_s", 3, lambda g: g.tokens.isin([512, 2048, 4096, 8192]))(f)


def _busy_grows_faster(f):
    """Each row has gpu_busy_s <= wall_s, but the busy time grows 4x faster per layer."""
    out = f.copy()
    one = out.layers == 1
    out.loc[one, "gpu_busy_s"] = out.loc[one, "wall_s"] * 0.1
    out.loc[~one, "gpu_busy_s"] = out.loc[~one, "wall_s"]
    return out


HOST_CASES = [
    ("header_only", lambda f: f.iloc[:0], "no rows (only a header)"),
    ("empty_impl", lambda f: _col(f, "experts_impl", ""), "row 1: experts_impl is empty"),
    ("ops_10e400", lambda f: _col(f, "ops", [10 ** 400] + list(f.ops[1:])),
     "row 1: ops must be a whole number >= 1"),
    ("inf_wall", lambda f: _col(f, "wall_s", np.inf), "row 1: wall_s must be 1e-06-3600 seconds"),
    ("nan_wall", lambda f: _col(f, "wall_s", np.nan), "row 1: wall_s must be"),
    ("tiny_times", lambda f: _col(_col(f, "wall_s", 1e-300), "gpu_busy_s", 1e-300),
     "row 1: wall_s must be 1e-06-3600 seconds"),
    ("fractional_layers", lambda f: _col(f, "layers", f.layers + 0.5),
     "row 1: layers must be a whole number >= 1"),
    ("gpu_above_wall", _scaled("gpu_busy_s", 100), "row 1: gpu_busy_s is above wall_s"),
    ("busy_grows_faster", _busy_grows_faster, "gpu_busy_s grows faster with the layer count"),
    ("wall_falls", lambda f: _col(f, "layers", np.where(f.layers == 1, 5, 1)),
     "grouped layers at 512 tokens: wall_s and gpu_busy_s must grow by 1e-06-3600 s per "
     "layer, got -0.00623"),
    ("gpu_falls", _scaled("gpu_busy_s", 0.01, lambda f: f.layers == 5),
     "must grow by 1e-06-3600 s per layer, got 0.00623 and -0.00255 s"),
    ("kinds_mixed", lambda f: _col(f, "experts_impl", "grouped"),
     "rows of one experts_impl, token and layer count differ in ops"),
    ("ops_absurd", _scaled("ops", 10 ** 6), "ops grow by 3.32e+08 per layer, not 10-100,000"),
    ("ops_constant", lambda f: _col(f, "ops", 10 ** 25), "ops grow by"),
    ("wall_is_busy", lambda f: _col(f, "wall_s", f.gpu_busy_s),
     "the timings of the grouped layers do not determine the host time (the fit ends at 0.1 "
     "ms per layer call, an end of its 0.1-60 ms range)"),
    ("wall_x1000", _scaled("wall_s", 1000), "do not determine the host time (the fit ends at "
                                            "60 ms"),
    ("inconsistent", _alternate_wall, "the host-and-GPU model misses the grouped layers' "
                                      "timings by 40% on average (more than 25%)"),
]


@pytest.mark.parametrize("name, edit, words", HOST_CASES, ids=[c[0] for c in HOST_CASES])
def test_impossible_layer_timings_are_refused_naming_the_csv(tmp_path, name, edit, words):
    path = tmp_path / f"{name}.csv"
    edit(pd.read_csv(MOE_RUN3)).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SpecError) as raised:
            with_measured_host(BASE, [str(path)])
    assert str(raised.value).startswith(f"{path}: ") and words in str(raised.value)


def test_repeated_measurements_of_one_layer_are_kept(tmp_path):
    """The same (kind, tokens, layers) measured twice, same ops (results/gpu has such runs),
    is no conflict."""
    path = tmp_path / "twice.csv"
    frame = pd.read_csv(MOE_RUN3)
    pd.concat([frame, _scaled("wall_s", 1.01)(frame)]).to_csv(path, index=False)
    _, summary = with_measured_host(BASE, [str(path)])
    assert set(summary["layers"]) == {"grouped", "sequential"}


@pytest.mark.parametrize("text", ["", "grouped,512,1,0.01,0.005,1" + "0" * 400 + "\n"],
                         ids=["header_only", "ops_10e400"])
def test_a_layer_csv_without_usable_rows_is_one_line_and_writes_nothing(tmp_path, good, capsys,
                                                                       text):
    csv = tmp_path / "layers.csv"
    csv.write_text("experts_impl,tokens,layers,wall_s,gpu_busy_s,ops\n" + text)
    out = tmp_path / "c.json"
    out.write_text("old\n")
    code, err = fit_cli(capsys, good, "-o", out, "--host-layers", csv)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"partune-fit: error: {csv}: ")
    assert out.read_text() == "old\n"


@pytest.mark.parametrize("flag, header", [
    ("--host-layers", "experts_impl,tokens,layers,wall_s,gpu_busy_s,ops,wall_s"),
    ("--gemm", "m,k,n,time_s,m"),
])
def test_a_measurement_csv_with_a_column_twice_is_one_line(tmp_path, good, capsys, flag,
                                                           header):
    """pandas would rename the second column ('wall_s.1') and fit the first, silently."""
    csv = tmp_path / "twice.csv"
    csv.write_text(header + "\n")
    code, err = fit_cli(capsys, good, "-o", tmp_path / "c.json", flag, csv)
    twice = header.rsplit(",", 1)[1]
    assert code == 2 and err == [f"partune-fit: error: {csv}: column {twice} appears twice in "
                                 "the header (only one can count); keep one"]
    assert not (tmp_path / "c.json").exists()
