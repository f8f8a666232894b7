"""`autotune` as Slurm jobs: a 2-task job array of workers sharing one Optuna study through a
journal file, checked against a single-process search; and a search inside an allocation,
which plans for that allocation's GPUs by default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from tuner import slurm_gen

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slurm

MODEL = ["--model", "llama3-8b", "--no-alternatives", "--quiet"]


def _study(journal, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(
        str(journal))))


def _layouts(study: optuna.Study) -> set[str]:
    done = optuna.trial.TrialState.COMPLETE
    return {t.user_attrs["layout"] for t in study.trials if t.state == done}


def _reference(tmp_path, gpus: int) -> tuple[optuna.Study, dict]:
    """The single-process search of the same space (brute force: every layout once)."""
    journal, plan = tmp_path / "ref.log", tmp_path / "ref.json"
    proc = subprocess.run([sys.executable, "-m", "tuner", "search", *MODEL, "--gpus", str(gpus),
                           "--storage", f"journal:{journal}", "--study-name", "ref",
                           "--out", str(plan)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return _study(journal, "ref"), json.loads(plan.read_text())


def test_search_array_workers_share_one_study_and_match_a_single_search(slurm, tmp_path):
    ref_study, ref_plan = _reference(tmp_path, gpus=4)
    every_layout = _layouts(ref_study)
    # Each worker may run one trial less than there are layouts, so only the two together
    # can visit every one: full coverage of the shared study proves both tasks wrote to it.
    per_worker = len(every_layout) - 1
    journal, plan = tmp_path / "shared search.log", tmp_path / "plans" / "arr.json"
    script = tmp_path / "search.sbatch"
    code = slurm_gen.main([
        "search-array", "--workers", "2", "--storage", f"journal:{journal}",
        "--study-name", "arr", "--trials", str(per_worker), "--plan", str(plan),
        "--log-dir", str(tmp_path), "--workdir", str(tmp_path), "-o", str(script),
        "--", *MODEL, "--gpus", "4"])
    assert code == 0
    states = slurm.run(str(script), cwd=tmp_path)
    assert len(states) == 2 and all(s.ok for s in states), \
        [open(s.stdout_path).read() for s in states]

    study = _study(journal, "arr")
    assert _layouts(study) == every_layout
    assert len(study.trials) <= 2 * per_worker
    assert study.best_value == pytest.approx(ref_study.best_value, rel=1e-12)
    docs = [json.loads((tmp_path / "plans" / f"arr-task{i}.json").read_text()) for i in (0, 1)]
    best = max(docs, key=lambda d: d["prediction"]["mfu"])
    assert best["plan"] == ref_plan["plan"]
    assert best["prediction"]["mfu"] == pytest.approx(ref_plan["prediction"]["mfu"], rel=1e-12)


def test_search_in_an_allocation_plans_for_its_gpus(gpu_slurm, tmp_path):
    """No --gpus: autotune reads the job's allocation (1 node x 2 GPUs)."""
    plan, script = tmp_path / "alloc.json", tmp_path / "search.sbatch"
    code = slurm_gen.main([
        "search", "--gpus-per-node", "2", "--storage", f"journal:{tmp_path / 's.log'}",
        "--study-name", "alloc", "--trials", "50", "--plan", str(plan),
        "--log-dir", str(tmp_path), "-o", str(script), "--", *MODEL])
    assert code == 0
    (state,) = gpu_slurm.run(str(script), cwd=tmp_path)
    assert state.ok, open(state.stdout_path).read()
    doc = json.loads(plan.read_text())
    p = doc["plan"]
    assert p["tp"] * p["pp"] * p["dp"] * p["cp"] == 2


def test_the_example_search_script_in_the_repo_runs_as_is(slurm, tmp_path):
    """slurm/search.sbatch, submitted unchanged from an empty folder (the job writes its
    journal and plan under results/ there)."""
    (state,) = slurm.run(str(REPO / "slurm" / "search.sbatch"), cwd=tmp_path)
    log = (tmp_path / f"search-{state.job_id}.out").read_text()
    assert state.ok, log
    doc = json.loads((tmp_path / "results" / "plans" / "llama3-8b-64.json").read_text())
    p = doc["plan"]
    assert p["tp"] * p["pp"] * p["dp"] * p["cp"] == 64
    assert _study(tmp_path / "results" / "search.log", "llama3-8b-64").best_value > 0
