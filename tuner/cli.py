"""`autotune`: the one entry point. `autotune [flags]` searches; subcommands do the rest.

Every user error (a bad flag, an unknown preset, a malformed file, an impossible plan) ends
as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from cost_models.specs import SpecError
from tuner.options import fail


def _search(argv: list[str]) -> int:
    from tuner.autotune import run

    return run(argv)


def _predict(argv: list[str]) -> int:
    from tuner.predict_cmd import run

    return run(argv)


def _validate(argv: list[str]) -> int:
    from tuner.validate_cmd import run

    return run(argv)


def _launch(argv: list[str]) -> int:
    from tuner.launch import main

    return main(argv, prog="autotune launch")


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "search": _search, "predict": _predict, "validate": _validate, "launch": _launch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = args[0] if args and args[0] in SUBCOMMANDS else "search"
    rest = args[1:] if args and args[0] == name else args
    prog = "autotune" if name == "search" else f"autotune {name}"
    try:
        return SUBCOMMANDS[name](rest)
    except SpecError as exc:
        return fail(prog, str(exc))
    except BrokenPipeError:  # output piped into `head` and cut: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        return fail(prog, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
