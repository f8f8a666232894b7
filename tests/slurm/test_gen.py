"""The sbatch generator: every value stays one word, odd names cannot inject, bad input is one
line. Rendering tests need only bash; the submission test runs on the real Slurm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuner import slurm_gen
from tuner.slurm_gen import Job, build_job, parse_args, render, setup_lines

REPO = Path(__file__).resolve().parents[2]
NASTY = [
    "plain",
    "with space",
    "it's 'single'",
    'say "double"',
    "$(touch CANARY)",
    "`touch CANARY`",
    "a; touch CANARY",
    "a && touch CANARY",
    "${HOME} $HOME $((1+1))",
    "back\\slash \\\" end\\",
    "#not-a-comment % %j",
    "*glob? [x]",
    "-dash --flag",
]


def _args(kind: str, value: str) -> list[str]:
    """Arguments for `kind` with `value` in every free-text parameter."""
    def opts(*names: str) -> list[str]:  # --name=VALUE: a value may start with "-"
        return [f"--{n}={value}" for n in names]

    common = opts("job-name", "log-dir", "python") + [
        f"--env=PARTUNE_X={value}", f"--sbatch-arg=--comment={value}"]
    own = {"bench": opts("results", "profile", "base-cluster", "collectives", "mpi")
           + ["--backend", "mpi"],
           "search": opts("storage", "study-name", "plan") + ["--trials", "3"],
           "search-array": opts("storage", "study-name", "plan")
           + ["--trials", "3", "--workers", "2"],
           "launch": opts("plan") + ["--framework", "megatron", "--dry-run"]}[kind]
    return [kind, *common, *own, "--", value, "x" + value]


@pytest.mark.parametrize("kind", slurm_gen.KINDS)
@pytest.mark.parametrize("value", NASTY)
def test_rendered_script_parses_and_keeps_every_value(kind, value, tmp_path):
    args, tool_args = parse_args(_args(kind, value))
    job = build_job(args, tool_args)
    script = tmp_path / "job.sbatch"
    script.write_text(render(job))
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    names = ["python", "PARTUNE_X"] + [n for n, _ in job.params]
    show = "".join(f'printf "%s\\0" "${n}"; ' for n in names) + 'printf "%s\\0" "${tool_args[@]}"'
    out = subprocess.run(["bash", "-c", "\n".join(setup_lines(job)) + "\n" + show],
                         capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert out.returncode == 0, out.stderr
    values = out.stdout.split("\0")[:-1]
    expected = [value, value] + [v for _, v in job.params] + [value, "x" + value]
    assert values == expected
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("value", NASTY)
def test_directives_reach_sbatch_as_one_argument(value):
    line = slurm_gen.directive("--job-name", value)
    assert line.startswith('#SBATCH --job-name="') and line.endswith('"')
    inner = line[len('#SBATCH --job-name="'):-1]
    # sbatch's reading: a backslash takes the next character literally; " toggles quoting.
    decoded, i = [], 0
    while i < len(inner):
        if inner[i] == "\\":
            i += 1
        elif inner[i] == '"':
            pytest.fail(f"unescaped quote in {line!r}")
        decoded.append(inner[i])
        i += 1
    assert "".join(decoded) == value


def test_log_pattern_doubles_percent_and_names_the_array_task():
    job = Job(kind="search-array", job_name="x", log_dir="/logs/50%", array="0-1")
    assert slurm_gen.log_pattern(job) == "/logs/50%%/search-array-%A_%a.out"


@pytest.mark.parametrize("argv, message", [
    (["bench", "--results", "r", "--profile", "p"], "--base-cluster"),
    (["launch", "--plan", "p", "--framework", "megatron", "--job-name", "a\nb"],
     "control character"),
    (["launch", "--plan", "p", "--framework", "megatron", "--env", "1X=2"],
     "not a variable name"),
    (["launch", "--plan", "p", "--framework", "megatron", "--env", "NOEQUALS"], "NAME=VALUE"),
    (["launch", "--plan", "p", "--framework", "megatron", "--ntasks-per-node", "8"],
     "one torchrun per node"),
    (["search-array", "--storage", "s", "--study-name", "n", "--plan", "p", "--trials", "2",
      "--workers", "0"], "--workers 0 is out of range"),
    (["launch", "--plan", "p", "--framework", "megatron", "--submit"], "needs -o FILE"),
    (["launch", "--plan", "p", "--framework", "megatron", "--wait", "9"], "add --submit"),
    (["launch", "--plan", "p", "--framework", "tensorflow"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "tuner.slurm_gen", *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_writing_a_script_is_atomic_and_creates_the_log_folder(tmp_path):
    out = tmp_path / "deep" / "job.sbatch"
    out.parent.mkdir()
    logs = tmp_path / "new logs"
    code = slurm_gen.main(["launch", "--plan", "p.json", "--framework", "deepspeed",
                           "--log-dir", str(logs), "-o", str(out)])
    assert code == 0 and logs.is_dir()
    assert out.read_text().startswith("#!/bin/bash\n") and list(out.parent.iterdir()) == [out]


def test_example_scripts_in_the_repo_are_current():
    for name, text in slurm_gen.example_scripts().items():
        path = REPO / "slurm" / name
        assert path.read_text() == text, \
            f"{path} is stale: run `python -m tuner.slurm_gen examples slurm/`"


@pytest.mark.slurm
def test_odd_job_name_and_paths_run_without_injection(slurm, tmp_path):
    """A real job whose name, log folder, results/profile paths, env value and bench args
    are hostile: it completes, keeps the exact name and writes where it was told; nothing
    named CANARY appears."""
    odd = "odd $(touch CANARY) `touch CANARY` ; touch CANARY 'q' \"d\" %j $HOME"
    out_dir = tmp_path / odd
    script = tmp_path / "odd.sbatch"
    setup = tmp_path / f"setup {odd}.sh"
    setup.write_text('echo "sourced: $PARTUNE_ODD"\n')
    code = slurm_gen.main([
        "bench", "--source", str(setup), "--job-name", odd, "--log-dir", str(out_dir),
        "--workdir", str(tmp_path),
        "--ntasks-per-node", "2", "--backend", "mpi", "--collectives", "all_reduce",
        "--results", str(out_dir / "r.jsonl"), "--profile", str(out_dir / "p.json"),
        "--base-cluster", "dgx-h100", "--env", f"PARTUNE_ODD={odd}",
        "--env", f"PYTHONPATH={REPO}", "-o", str(script), "--",
        "-b", "8", "-e", "8M", "-n", "3", "-w", "1"])  # to 8 MB: bandwidth fits
    assert code == 0
    (state,) = slurm.run(str(script), cwd=tmp_path)
    log = out_dir / f"bench-{state.job_id}.out"
    assert log.exists(), f"no log at {log}: {list(tmp_path.rglob('*.out'))}"
    assert state.ok, log.read_text()
    assert state.name == odd
    assert (out_dir / "r.jsonl").stat().st_size > 0 and (out_dir / "p.json").exists()
    assert f"sourced: {odd}\n" in log.read_text()
    assert [p for p in tmp_path.rglob("CANARY")] == []


@pytest.mark.slurm
def test_failed_generated_job_names_its_id_and_log(slurm, tmp_path):
    """The job's own report (in its log) and the submitter's report (--submit --wait) both
    give the job id and the log path."""
    script = tmp_path / "fail.sbatch"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.slurm_gen", "launch", "--plan", str(tmp_path / "none.json"),
         "--framework", "megatron", "--dry-run", "--log-dir", str(tmp_path / "my logs"),
         "--env", f"PYTHONPATH={REPO}", "-o", str(script), "--submit", "--wait", "120"],
        capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert proc.returncode == 1, proc.stderr
    job_id = proc.stdout.split("submitted Slurm job ")[1].split()[0]
    log = tmp_path / "my logs" / f"launch-{job_id}.out"
    assert f"Slurm job {job_id} (partune-launch) FAILED" in proc.stderr
    assert proc.stderr.strip().endswith(f"log: {log}")
    report = [x for x in log.read_text().splitlines() if x.startswith("partune: Slurm job")]
    assert len(report) == 1 and report[0].startswith(f"partune: Slurm job {job_id} failed")
    assert report[0].endswith(f"log: {log}")



@pytest.mark.parametrize("value", NASTY)
def test_bench_job_can_also_measure_the_host_and_fit_it(value, tmp_path):
    """--host-layers adds bench.megatron_layer on one GPU and passes its CSV, named after the
    results file, to the fit; without it the job is unchanged."""
    argv = ["bench", f"--results={value}.jsonl", "--profile=p.json", "--base-cluster=dgx-h100"]
    plain = render(build_job(*parse_args(argv)))
    script = render(build_job(*parse_args(argv[:1] + ["--host-layers"] + argv[1:])))
    assert "megatron_layer" not in plain and "--host-layers" not in plain
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0
    lines = script.splitlines()
    step = next(i for i, line in enumerate(lines) if "-m bench.megatron_layer" in line)
    fit = next(i for i, line in enumerate(lines) if "-m cost_models.fit" in line)
    assert step < fit and lines[fit].endswith('--host-layers "$host_layers"')
    setup = "\n".join(setup_lines(build_job(*parse_args(argv))))
    named = next(line for line in lines if line.startswith("host_layers="))
    out = subprocess.run(["bash", "-c", f'{setup}\n{named}\nprintf "%s" "$host_layers"'],
                         capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert out.stdout == f"{value}-host-layers.csv"
