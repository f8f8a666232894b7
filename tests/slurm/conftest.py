"""A real single-node Slurm for the tests in this folder.

The session fixture `slurm` starts munged, slurmctld and slurmd with scripts/slurm-up.sh and
stops them with scripts/slurm-down.sh afterwards (unless a Slurm with the same config was
already up: then it is reused and left running). Tests are skipped only when this is not
root or the Slurm binaries are missing; scripts/test.sh installs them, so CI runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuner.slurm_env import JobState, gpus_from_scontrol, wait_job

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = Path(os.environ.get("PARTUNE_SLURM_DIR", "/tmp/partune-slurm"))
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "srun")
JOB_TIMEOUT_S = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class Slurm:
    conf: Path
    gpus: int  # placeholder GPUs the node advertises (slurm-up.sh: 4)

    def sbatch(self, *args: str, cwd: Path | None = None) -> str:
        """Submit; returns the job id (sbatch --parsable)."""
        proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                              timeout=60, cwd=cwd)
        assert proc.returncode == 0, f"sbatch {args} failed: {proc.stderr.strip()}"
        return proc.stdout.strip().split(";")[0]

    def run(self, *args: str, cwd: Path | None = None,
            timeout_s: float = JOB_TIMEOUT_S) -> list[JobState]:
        """Submit and wait (bounded) for every record of the job to finish."""
        return wait_job(self.sbatch(*args, cwd=cwd), timeout_s)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the Slurm tests start munged/slurmctld/slurmd and need root"
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return (f"Slurm binaries missing ({', '.join(absent)}): apt-get install slurmctld "
                "slurmd slurm-client munge (scripts/test.sh does)")
    return None


def _ping(conf: Path) -> bool:
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                             timeout=15, env=env).stdout
    except subprocess.TimeoutExpired:
        return False
    return conf.exists() and " is UP" in out


@pytest.fixture(scope="session")
def slurm():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    conf = SLURM_DIR / "slurm.conf"
    reused = _ping(conf)
    env = dict(os.environ, PARTUNE_SLURM_DIR=str(SLURM_DIR))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], capture_output=True,
                          text=True, timeout=300, env=env)
    if proc.returncode != 0:
        logs = "".join(_tail(SLURM_DIR / name) for name in ("slurmctld.log", "slurmd.log"))
        _down(env)
        pytest.fail(f"scripts/slurm-up.sh failed:\n{proc.stderr}\n{logs}", pytrace=False)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    yield Slurm(conf=conf, gpus=gpus_from_scontrol("localhost"))
    _restore("SLURM_CONF", old)
    if not reused:
        _down(env)


def _down(env: dict) -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "slurm-down.sh")], timeout=300, env=env,
                   capture_output=True)


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return f"--- {path} ---\n" + "\n".join(path.read_text().splitlines()[-lines:]) + "\n"


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A folder for one test's scripts, logs and outputs. pytest's tmp_path lives under
    /tmp, which the (single) node shares with the submitting process."""
    return tmp_path


@pytest.fixture
def gpu_slurm(slurm: Slurm) -> Slurm:
    """The cluster, for tests that ask for --gpus-per-node (up to 4)."""
    if slurm.gpus < 4:
        pytest.skip(f"the test node advertises {slurm.gpus} GPUs, not 4: slurm-up.sh could not "
                    "mknod its placeholder GPU devices (see its log line)")
    return slurm
