"""Shared Optuna storages: several real `autotune` processes on one study, and a search killed
with SIGKILL that resumes from its journal with no layout lost.

Workers run the unmodified CLI through search_worker.py, which only records which layouts a
process scored, slows trials down a little so workers interleave, or stalls one trial so the
kill leaves it RUNNING in the storage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_cases import autotune, autotune_popen

from cost_models.specs import SpecError
from tuner.autotune import build_parser, build_request
from tuner.search import STALE_ENV, make_sampler, recover_stale_trials, stale_threshold_s
from tuner.space import layouts
from tuner.storage import open_storage, open_study

HERE = Path(__file__).resolve().parent
SPACE = ("--model", "gpt3-175b", "--gpus", "128")  # 23 layouts
BIG_SPACE = ("--model", "mixtral-8x22b", "--gpus", "4096")  # 64 layouts, MoE
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def worker(record: Path, *args: str, go: Path | None = None, delay_s: float = 0.0,
           stall_at: int = 0, env: dict | None = None) -> subprocess.Popen:
    hooks = [str(record), "--delay-s", str(delay_s), "--stall-at", str(stall_at)]
    if go is not None:
        hooks += ["--go", str(go)]
    argv = [sys.executable, str(HERE / "search_worker.py"), *hooks, "--", *args]
    return autotune_popen(argv=argv, env=env)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def load(url: str, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def layouts_by_state(study: optuna.Study) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.state.name, set()).add(t.user_attrs.get("layout", str(t.params)))
    return out


def reference(*space: str) -> tuple[str, dict]:
    """The plan name and plan document of a single-process, in-memory search."""
    quiet = autotune(*space, "--quiet")
    doc = autotune(*space, "--format", "json", "--no-alternatives")
    assert quiet.returncode == 0 and doc.returncode == 0, quiet.stderr + doc.stderr
    return quiet.stdout.strip(), json.loads(doc.stdout)


def expected_layouts(*space: str) -> set[str]:
    """Every layout of the space the CLI builds from these flags."""
    request = build_request(build_parser().parse_args(list(space)))
    return {x.key for x in layouts(request.space)}


def wait_for(predicate, timeout_s: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# sqlite commits (fsync) several times per trial: ~0.5 s a trial on a slow disk
@pytest.mark.parametrize("kind", ["journal", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_two_workers_share_one_study(tmp_path, kind):
    url = (f"journal:{tmp_path / 'study.log'}" if kind == "journal"
           else f"sqlite:///{tmp_path / 'study.db'}")
    go = tmp_path / "go"
    shared = (*SPACE, "--storage", url, "--study-name", "s", "--quiet")
    records = [tmp_path / f"worker{i}.txt" for i in range(2)]
    # sqlite's per-trial commits already interleave the workers; the journal needs a delay
    procs = [worker(r, *shared, go=go, delay_s=0.05 if kind == "journal" else 0.0)
             for r in records]
    wait_for(lambda: all(r.exists() for r in records), what="both workers ready")
    go.touch()
    answers = [finish(proc)[0].strip() for proc in procs]
    per_worker = [Counter(line.split()[1] for line in r.read_text().splitlines()[1:])
                  for r in records]  # line 0: "PID ready"
    assert all(per_worker), f"a worker scored no layout: {per_worker}"
    study = load(url)
    assert "RUNNING" not in layouts_by_state(study)
    finished = {t.user_attrs["layout"] for t in study.trials if t.state in FINISHED}
    assert finished == expected_layouts(*SPACE)
    assert set(per_worker[0]) | set(per_worker[1]) == finished
    name, doc = reference(*SPACE)
    assert answers == [name, name]  # each worker waited for the other's last trials
    again = autotune(*shared[:-1], "--format", "json", "--no-alternatives")
    assert again.returncode == 0, again.stderr  # reads the finished study, adds no trial
    assert json.loads(again.stdout)["plan"] == doc["plan"]
    assert len(load(url).trials) == len(study.trials)


def test_sigkilled_search_resumes_from_its_journal_with_no_layout_lost(tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    record = tmp_path / "worker.txt"
    args = (*BIG_SPACE, "--storage", url, "--study-name", "s", "--quiet")
    stall_at = 12
    proc = worker(record, *args, stall_at=stall_at)
    wait_for(lambda: record.exists() and "stalled" in record.read_text(), what="the stall")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    study = load(url)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.RUNNING] == 1 and sum(states[s] for s in FINISHED) == stall_at - 1
    stalled = record.read_text().split("stalled ")[1].split()[0]
    assert layouts_by_state(study)["RUNNING"] == {stalled}

    resumed = autotune(*args, env={STALE_ENV: "0"})
    assert resumed.returncode == 0, resumed.stderr
    study = load(url)
    by_state = layouts_by_state(study)
    assert by_state["FAIL"] == {stalled}  # the killed trial, recovered
    assert "RUNNING" not in by_state and "WAITING" not in by_state
    finished = {t.user_attrs["layout"] for t in study.trials if t.state in FINISHED}
    assert finished == expected_layouts(*BIG_SPACE)  # the stalled layout ran again
    assert sum(t.state in FINISHED for t in study.trials) >= len(finished)
    name, doc = reference(*BIG_SPACE)
    assert resumed.stdout.strip() == name
    again = autotune(*args[:-1], "--format", "json", "--no-alternatives")
    assert json.loads(again.stdout)["plan"] == doc["plan"]


def test_surviving_worker_scores_the_layout_of_a_dead_one(tmp_path):
    """A Slurm array task dies mid-trial; another task recovers the layout and still returns
    the optimum over every layout."""
    url = f"journal:{tmp_path / 'study.log'}"
    shared = (*SPACE, "--storage", url, "--study-name", "s", "--quiet")
    stuck = worker(tmp_path / "stuck.txt", *shared, stall_at=1)
    try:
        wait_for(lambda: (tmp_path / "stuck.txt").exists(), what="the stalled trial")
        # 5 s: longer than the survivor's start-up, so it recovers the trial only after it
        # has scored every other layout and waited (not in its start-up recovery)
        survivor = autotune(*shared, env={STALE_ENV: "5"})
        assert survivor.returncode == 0, survivor.stderr
        assert stuck.poll() is None  # still stalled: its trial was recovered, not finished
    finally:
        stuck.kill()
        stuck.communicate()
    study = load(url)
    by_state = layouts_by_state(study)
    stalled = (tmp_path / "stuck.txt").read_text().split()[-1]
    assert by_state["FAIL"] == {stalled}
    assert study.trials[-1].user_attrs["layout"] == stalled  # scored last, after the wait
    assert by_state["COMPLETE"] | by_state.get("PRUNED", set()) == expected_layouts(*SPACE)
    assert survivor.stdout.strip() == reference(*SPACE)[0]


def test_a_study_refuses_a_different_space(tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    first = autotune(*SPACE, "--storage", url, "--study-name", "s", "--quiet")
    other = autotune("--model", "gpt3-175b", "--gpus", "256", "--storage", url,
                     "--study-name", "s", "--quiet")
    assert first.returncode == 0 and other.returncode == 2
    assert other.stdout == "" and len(other.stderr.splitlines()) == 1
    assert "own --study-name" in other.stderr and "128" in other.stderr


def test_recover_requeues_a_dead_workers_layout_once(tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    study = open_study(url, "s", make_sampler("brute", 0))
    trial = study.ask()
    trial.suggest_categorical("tp", [1, 2, 4])
    assert recover_stale_trials(study, older_than_s=120.0) == 0  # too young: a live worker
    assert study.trials[0].state == TrialState.RUNNING
    other = open_study(url, "s", make_sampler("brute", 0))  # a second worker, same storage
    assert recover_stale_trials(study, older_than_s=0.0) == 1
    assert recover_stale_trials(other, older_than_s=0.0) == 0  # already recovered
    trials = load(url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["fixed_params"] == trials[0].params


def test_stale_threshold_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(STALE_ENV, raising=False)
    assert stale_threshold_s() == 120.0
    monkeypatch.setenv(STALE_ENV, "2.5")
    assert stale_threshold_s() == 2.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv(STALE_ENV, bad)
        with pytest.raises(SpecError, match=STALE_ENV):
            stale_threshold_s()


def test_finished_study_is_not_searched_again(tmp_path):
    url = f"journal:{tmp_path / 'study.log'}"
    first = autotune(*SPACE, "--storage", url, "--study-name", "s", "--quiet")
    trials = len(load(url).trials)
    second = autotune(*SPACE, "--storage", url, "--study-name", "s", "--quiet")
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert len(load(url).trials) == trials == len(expected_layouts(*SPACE))
