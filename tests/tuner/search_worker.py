"""Run the real `autotune` entry point with fault-injection hooks (a test helper, not a mock).

    python search_worker.py RECORD [--go FILE] [--delay-s S] [--stall-at K] -- AUTOTUNE_ARGS

It wraps tuner.search.score_layout, which every trial's objective calls once, to
  * append "PID LAYOUT" to RECORD for each layout this process scores (who did what),
  * sleep --delay-s before scoring (so concurrent workers interleave),
  * at the K-th layout (--stall-at), append "PID stalled LAYOUT" and block: the trial stays
    RUNNING in the storage until the test kills the process with SIGKILL.
--go FILE: append "PID ready", then wait for FILE to exist, so several workers start together.
Everything else (argument parsing, storage, Optuna, report) is the unmodified CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import tuner.search
from tuner.cli import main


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("record")
    p.add_argument("--go")
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--stall-at", type=int, default=0)
    return p.parse_args(argv[:split]), argv[split + 1:]


def install_hooks(opts: argparse.Namespace) -> None:
    original = tuner.search.score_layout
    scored = []

    def note(text: str) -> None:
        with open(opts.record, "a") as f:
            f.write(f"{os.getpid()} {text}\n")

    def score_layout(space, layout, headroom, keep=tuner.search.KEEP_PER_LAYOUT):
        scored.append(layout.key)
        if len(scored) == opts.stall_at:
            note(f"stalled {layout.key}")
            while True:
                time.sleep(60)
        time.sleep(opts.delay_s)
        result = original(space, layout, headroom, keep)
        note(layout.key)
        return result

    tuner.search.score_layout = score_layout


if __name__ == "__main__":
    options, autotune_args = parse(sys.argv[1:])
    install_hooks(options)
    if options.go:
        with open(options.record, "a") as record:
            record.write(f"{os.getpid()} ready\n")
        while not os.path.exists(options.go):
            time.sleep(0.01)
    sys.exit(main(autotune_args))
