"""JSON text read with every failure as one line: what Python's reader raises besides
JSONDecodeError (RecursionError for nesting deeper than the interpreter allows, ValueError
for integers over sys.get_int_max_str_digits() digits) is a malformed file too.
Standard library only."""

from __future__ import annotations

import json

from cost_models.specs import SpecError


def parse_json(text: str, where: str, hint: str) -> object:
    """The JSON value of `text`; SpecError '<where>: <what is wrong>; <hint>' otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"{where}: not valid JSON ({error.msg} at line {error.lineno} column "
                        f"{error.colno}); {hint}") from None
    except (RecursionError, ValueError):
        raise SpecError(f"{where}: nested too deeply or a number too large to read; "
                        f"{hint}") from None
