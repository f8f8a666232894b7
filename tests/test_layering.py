"""Planning must work on a laptop: cost_models and tuner never import torch or mpi4py."""

import subprocess
import sys

CODE = """
import sys
sys.modules['torch'] = None
sys.modules['mpi4py'] = None
import bench.records, cost_models.analytical, cost_models.validate, cost_models.loaders
import tuner.cli, tuner.autotune, tuner.search, tuner.plan_io, tuner.launch
from tuner.cli import main
assert main(['--model', '70b', '--gpus', '64', '--quiet', '--no-alternatives']) == 0
"""


def test_planning_imports_without_torch_or_mpi4py():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
