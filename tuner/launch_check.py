"""A plan file's stored launch section against the one its `model` and `plan` give now.

`autotune launch` regenerates the Megatron-LM arguments and environment and the DeepSpeed
config from the file's `model` and `plan` sections (tuner.plan_io.launch_block) and refuses
the file, with one line naming the first difference, when the stored entries it would use
differ: a plan edited by hand from tp 1 to tp 8 whose `launch` section still says
`--tensor-model-parallel-size 1` is refused rather than launched with either half of an
inconsistent file (its `prediction` is stale too). The fix is to re-create the file with
`autotune ... --out`; training arguments of your own go after `--`. Only the entries the
chosen framework uses are compared; arguments listed in another order count as the same, and
an absent (optional) `megatron_env` gets the regenerated one.
Standard library only.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence

from cost_models.specs import SpecError
from tuner.plan_io import RECREATE_HINT, LoadedPlan, launch_block

_FRAMEWORK_OF = {"megatron_args": "megatron", "megatron_env": "megatron",
                 "deepspeed_config": "deepspeed"}


def used_entries(framework: str, with_megatron_args: bool = False) -> tuple[str, ...]:
    """The launch entries a launch with `framework` reads."""
    if framework == "megatron":
        return ("megatron_args", "megatron_env")
    return ("deepspeed_config", "megatron_args") if with_megatron_args else ("deepspeed_config",)


def _json(value: object, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _flag_groups(args: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Arguments as (flag, its values) pairs: `--recompute-modules layernorm moe_act`."""
    groups: list[tuple[str, tuple[str, ...]]] = []
    for arg in args:
        if arg.startswith("--") or not groups:
            groups.append((arg, ()))
        else:
            flag, values = groups[-1]
            groups[-1] = (flag, (*values, arg))
    return groups


def _args_difference(where: str, stored: Sequence[str], fresh: Sequence[str]) -> str | None:
    old_groups, new_groups = _flag_groups(stored), _flag_groups(fresh)
    old, new = dict(old_groups), dict(new_groups)
    for flag, values in new.items():
        if flag not in old:
            return f"{where} lacks {shlex.join((flag, *values))}, which the plan gives"
        if old[flag] != values:
            return (f"{where} has {shlex.join((flag, *old[flag]))} where the plan gives "
                    f"{shlex.join((flag, *values))}")
    for flag, values in old.items():
        if flag not in new:
            return f"{where} has {shlex.join((flag, *values))}, which the plan does not give"
    if len(old_groups) != len(new_groups):
        return f"{where} repeats arguments the plan gives once"
    return None


def _same(stored: object, fresh: object) -> bool:
    return stored == fresh and isinstance(stored, bool) == isinstance(fresh, bool)


def _value_difference(where: str, stored: object, fresh: object) -> str | None:
    """The first place a stored JSON value differs from the fresh one, or None."""
    if not (isinstance(stored, Mapping) and isinstance(fresh, Mapping)):
        return None if _same(stored, fresh) else (
            f"{where} is {_json(stored)} where the plan gives {_json(fresh)}")
    for key, value in fresh.items():
        if key not in stored:
            return f"{where}.{key} is missing where the plan gives {_json(value)}"
        found = _value_difference(f"{where}.{key}", stored[key], value)
        if found:
            return found
    extra = [key for key in stored if key not in fresh]
    if extra:
        return f"{where}.{extra[0]}={_json(stored[extra[0]])} is not in what the plan gives"
    return None


def _difference(key: str, stored: object, fresh: object) -> str | None:
    where = f"launch.{key}"
    if key == "megatron_args" and isinstance(stored, list):
        return _args_difference(where, stored, fresh)
    return _value_difference(where, stored, fresh)


def checked_launch(loaded: LoadedPlan, framework: str, *,
                   with_megatron_args: bool = False) -> dict[str, object]:
    """The launch block the file's model and plan give now; SpecError (one line) where the
    framework cannot run the plan, or where a stored entry the launch uses differs."""
    fresh = launch_block(loaded.model, loaded.plan)
    stored = loaded.raw["launch"]
    for key in used_entries(framework, with_megatron_args):
        if fresh[key] is None:
            raise SpecError(fresh["unsupported"][_FRAMEWORK_OF[key]])
        if key not in stored:  # megatron_env is optional: nothing stored, nothing stale
            continue
        difference = _difference(key, stored[key], fresh[key])
        if difference:
            raise SpecError(f"the launch section does not match plan {loaded.plan.name}: "
                            f"{difference}; {RECREATE_HINT} (training arguments of your own "
                            "go after --)")
    return fresh
