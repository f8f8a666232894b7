"""The command-line parser every partune command uses: a bad flag is one line on stderr
and exit code 2, with no usage dump (`--help` still prints the whole usage)."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
