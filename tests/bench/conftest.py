"""Helpers for the benchmark-suite tests: run `python -m bench` ranks as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_module(*args: str, env: dict | None = None, timeout: float = 120.0):
    """Run `python -m <args>` from the repository root; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def bench_ranks():
    """bench_ranks(n, *bench_args, env=...) runs n local ranks through bench.launch."""
    def run(n: int, *args: str, env: dict | None = None, timeout: float = 120.0):
        return run_module("bench.launch", "-n", str(n), "--timeout", str(timeout - 10), "--",
                          *args, env=env, timeout=timeout)
    return run
