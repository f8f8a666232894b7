"""JSON text read with every failure as one line: what Python's reader raises besides
JSONDecodeError (RecursionError for nesting deeper than the interpreter allows, ValueError
for integers over sys.get_int_max_str_digits() digits) is a malformed file too.
Standard library only."""

from __future__ import annotations

import json

from cost_models.specs import SpecError


class DuplicateKey(ValueError):
    """A key given twice in one object: JSON and YAML readers keep the last silently."""

    def __init__(self, key: object) -> None:
        super().__init__(key)
        self.key = key

    def line(self, where: str, hint: str) -> str:
        return (f"{where}: key {self.key!r} appears twice in one object (only one value can "
                f"count); keep one; {hint}")


def unique_keys(pairs: list[tuple[object, object]]) -> dict:
    """dict(pairs), refusing a key given twice (json.loads' object_pairs_hook)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str, where: str, hint: str) -> object:
    """The JSON value of `text`; SpecError '<where>: <what is wrong>; <hint>' otherwise."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as error:
        raise SpecError(error.line(where, hint)) from None
    except json.JSONDecodeError as error:
        raise SpecError(f"{where}: not valid JSON ({error.msg} at line {error.lineno} column "
                        f"{error.colno}); {hint}") from None
    except (RecursionError, ValueError):
        raise SpecError(f"{where}: nested too deeply or a number too large to read; "
                        f"{hint}") from None
