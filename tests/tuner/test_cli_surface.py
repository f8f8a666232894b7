"""The CLI surface is a contract with users and with slurm/ scripts: changing it is a choice.

A new flag must be added here on purpose (and documented in the README)."""

from tuner.autotune import build_parser as search_parser
from tuner.cli import SUBCOMMANDS
from tuner.predict_cmd import build_parser as predict_parser
from tuner.validate_cmd import build_parser as validate_parser

SEARCH = {"--cluster", "--cp", "--ep", "--format", "--global-batch", "--global-batch-tokens",
          "--gpus", "--grad-reduce-in-bf16", "--help", "--host-us-per-op", "--max-pp",
          "--max-tp",
          "--memory-headroom", "--micro-batch",
          "--model", "--moe-load-factor", "--no-alternatives", "--no-cp", "--no-sp",
          "--optimizer-dtype", "--out",
          "--plot", "--pp",
          "--precision", "--quiet", "--recompute", "--sampler", "--seed", "--seq-len",
          "--stale-after", "--storage", "--study-name", "--tokens", "--top-k", "--tp",
          "--trials", "--vpp", "--zero", "--zero3-impl", "-h"}
PREDICT = {"--cluster", "--cp", "--dp", "--ep", "--global-batch", "--gpus",
           "--grad-reduce-in-bf16", "--help", "--host-us-per-op", "--json",
           "--micro-batch", "--model", "--moe-load-factor", "--no-flash-attention",
           "--optimizer-dtype", "--order",
           "--plan", "--pp",
           "--precision", "--recompute", "--seq-len", "--sequence-parallel", "--tp", "--vpp",
           "--zero", "--zero3-impl", "-h"}
VALIDATE = {"--out", "--report", "--help", "-h"}


def flags(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_cli_surface_is_pinned():
    assert set(SUBCOMMANDS) == {"search", "predict", "validate", "launch"}
    assert flags(search_parser()) == SEARCH
    assert flags(predict_parser()) == PREDICT
    assert flags(validate_parser()) == VALIDATE
