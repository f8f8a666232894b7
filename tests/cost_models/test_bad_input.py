"""Bad input: exit code 2 and one clear line, never a traceback, nothing half-written."""

import subprocess
import sys

import pytest


def autotune(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True,
                          text=True, cwd=cwd)


def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0]


def test_unknown_preset():
    assert_one_line_error(autotune("predict", "--model", "gpt-9000"), "unknown model")


def test_unknown_cluster():
    assert_one_line_error(autotune("predict", "--cluster", "dgx-z100"), "dgx-z100")


def test_plan_that_does_not_divide_the_model():
    assert_one_line_error(autotune("predict", "--model", "llama3-70b", "--tp", "3"),
                          "not divisible by tp=3")


def test_bad_flag():
    assert_one_line_error(autotune("predict", "--tpp", "8"), "unrecognized arguments")


def test_malformed_json_model(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text('{"num_layers": 4, ')
    assert_one_line_error(autotune("predict", "--model", str(bad)), str(bad))


@pytest.mark.parametrize("content,needle", [
    ("id,source\nx,y\n", "missing columns"),
    ("", "missing columns"),
    ("id,tp,source,tp\nx,1,y,2\n", "column tp appears twice in the header"),
])
def test_malformed_runs_csv(tmp_path, content, needle):
    runs, out = tmp_path / "runs.csv", tmp_path / "out.csv"
    runs.write_text(content)
    assert_one_line_error(autotune("validate", str(runs), "--out", str(out)), needle)
    assert not out.exists()


def test_missing_runs_file(tmp_path):
    proc = autotune("validate", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.csv"))
    assert_one_line_error(proc, "nope.csv")


def test_row_that_cannot_be_modelled_is_skipped_with_reason(tmp_path):
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "cost_models" / "data" / "published_runs_dev.csv"
    lines = src.read_text().splitlines()
    broken = lines[1].split(",")
    broken[3] = "many"  # num_layers
    runs = tmp_path / "runs.csv"
    runs.write_text("\n".join([lines[0], ",".join(broken), lines[2]]) + "\n")
    proc = autotune("validate", str(runs), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0, proc.stderr
    assert "skipped narayanan21-t1-gpt-1p7b: column num_layers='many' is not a number" in \
        proc.stdout


def test_cells_written_as_other_tables_write_them_are_read(tmp_path):
    """Upper-case precision, true/false switches, HF-style MLP names and GPU families are
    read as the schema's values; a cell that means nothing is skipped naming the cell."""
    import csv
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "cost_models" / "data" / "published_runs_dev.csv"
    rows = list(csv.DictReader(src.open()))
    base = next(r for r in rows if r["id"] == "dgxc-llama31-70b-bf16-64g")
    variants = {"as-published": {}, "upper": {"precision": "BF16", "recompute": "None"},
                "words": {"sequence_parallel": "True", "mlp": "silu", "gpu": "H100"},
                "bad-precision": {"precision": "tf32"}, "bad-switch": {"sequence_parallel": "?"}}
    runs = tmp_path / "runs.csv"
    with runs.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(base))
        writer.writeheader()
        for rid, cells in variants.items():
            writer.writerow({**base, **cells, "id": rid})
    out = tmp_path / "o.csv"
    proc = autotune("validate", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    preds = {r["id"]: float(r["pred_iter_time_s"]) for r in csv.DictReader(out.open())}
    assert preds["upper"] == preds["words"] == preds["as-published"]
    assert ("skipped bad-precision: no plan is consistent with the printed knobs "
            "(plan.precision='tf32' is not one of: fp16, bf16, fp8)") in proc.stdout
    assert "skipped bad-switch: column sequence_parallel='?' must be 1 or 0" in proc.stdout


def _runs_with(tmp_path, *edits):
    """The dev file's first row once per edit (a dict of cells, or a callable on the line)."""
    import csv
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "cost_models" / "data" / "published_runs_dev.csv"
    rows = list(csv.DictReader(src.open()))
    runs = tmp_path / "runs.csv"
    with runs.open("w", newline="") as handle:
        extra = [c for cells in edits for c in cells if c not in rows[0]]
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) + extra)
        writer.writeheader()
        for i, cells in enumerate(edits):
            writer.writerow({**rows[0], "id": f"r{i}", **cells})
    return runs


@pytest.mark.parametrize("cells, reason", [
    ({"ref_iter_time_s": "0"}, "ref_iter_time_s=0 must be 0.001-86400 seconds"),
    ({"ref_iter_time_s": "1e-300"}, "ref_iter_time_s=1e-300 must be 0.001-86400 seconds"),
    ({"ref_iter_time_s": "nan"}, "ref_iter_time_s='nan' is not a finite number"),
    ({"dp": "0"}, "column dp=0 must be >= 1"),
    ({"num_layers": "inf"}, "num_layers='inf' is not a finite number"),
    ({"micro_batch_size": "inf"}, "micro_batch_size='inf' is not a finite number"),
    ({"num_gpus": "7"}, "num_gpus=7 but tp*pp*dp*cp=32"),
    ({"gpus_per_node": "-8"}, "gpus_per_node=-8 must be >= 1"),
    ({"flash_attention": "maybe"}, "flash_attention='maybe' must be 1 or 0"),
    ({"num_layers": "1e30"}, "is over 10,000"),
    ({"precision": "bf16", "gpu": "V100-SXM3-32GB", "gpus_per_node": "16"},
     "precision=bf16 but V100-SXM3-32GB has no bf16 tensor cores"),
    ({"gpu": "H100X"}, "unknown gpu 'H100X'"),
    ({"global_batch_size": "1e30"}, "is over 10,000,000"),
    ({"sequence_parallel": "2"}, "column sequence_parallel='2' must be 1 or 0"),
    ({"ep": "4"}, "ep=4 needs an MoE model (num_experts > 1)"),
    ({"tp": "5", "dp": "32", "num_gpus": "160"}, "is not divisible by tp=5"),
])
def test_bad_cells_skip_the_row_with_the_reason(tmp_path, cells, reason):
    runs = _runs_with(tmp_path, cells, {})
    proc = autotune("validate", str(runs), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "skipped r0: " in proc.stdout and reason in proc.stdout, proc.stdout
    assert "predicted 1 runs, skipped 1" in proc.stdout


def test_short_rows_duplicate_and_empty_ids_are_skipped_not_crashed(tmp_path):
    runs = _runs_with(tmp_path, {}, {"id": "r0"}, {"id": ""})
    lines = runs.read_text().splitlines()
    runs.write_text("\n".join(lines + ["r9,Narayanan,GPT,24"]) + "\n")  # a short row
    proc = autotune("validate", str(runs), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "skipped r0: duplicate id" in proc.stdout
    assert "skipped line 4: id is empty" in proc.stdout
    assert "skipped r9: the row has 4 of " in proc.stdout and "(cut short?)" in proc.stdout


def test_an_unwritable_report_folder_leaves_no_predictions_file(tmp_path):
    runs = _runs_with(tmp_path, {})
    (tmp_path / "taken").write_text("")
    out = tmp_path / "o.csv"
    proc = autotune("validate", str(runs), "--out", str(out), "--report",
                    str(tmp_path / "taken" / "report"))
    assert_one_line_error(proc, "a file is in the way of this folder")
    assert not out.exists()


def test_outputs_never_replace_the_runs_file_or_each_other(tmp_path):
    runs = _runs_with(tmp_path, {})
    before = runs.read_text()
    (tmp_path / "blocked" / "validation.png").mkdir(parents=True)
    cases = [(["--out", str(runs)], "is also the runs file"),
             (["--out", str(tmp_path / "rep" / "validation.md"), "--report",
               str(tmp_path / "rep")], "is also --out"),
             (["--out", str(tmp_path / "o.csv"), "--report", str(tmp_path / "blocked")],
              "validation.png' is a folder"),
             (["--out", ""], "--out is empty"),
             (["--out", str(tmp_path / "o.csv"), "--report", ""], "--report is empty")]
    for flags, needle in cases:
        assert_one_line_error(autotune("validate", str(runs), *flags), needle)
    assert runs.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "runs.csv"]


def test_ids_with_spaces_around_them_are_the_same_ids(tmp_path):
    runs = _runs_with(tmp_path, {"id": " r0 "}, {"id": "r1", "dp": "16", "num_gpus": "16",
                                                 "ref_iter_time_s": "2.0"})
    proc = autotune("validate", str(runs), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "predicted 2 runs" in proc.stdout
