"""Write a file so that readers see the old content or the new, never a part of it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cost_models.specs import SpecError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write through a temp file in the same folder and os.replace; on any failure the temp
    file is removed and `path` is untouched. An unwritable place is one SpecError line."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                             dir=target.parent)
    except OSError as error:
        raise SpecError(f"{target}: cannot write ({error.strerror})") from None
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], document: Mapping[str, object]) -> None:
    """JSON (no NaN or infinity, which JSON cannot hold) written atomically."""
    try:
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise SpecError(f"cannot write {str(path)!r}: {error}") from None
    write_text_atomic(path, text)
