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
    if not str(path).strip() or target.is_dir():
        raise SpecError(f"{str(path)!r} is a folder or empty; give a file name")
    ensure_folder(target.parent)
    try:
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
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise SpecError(f"{target}: cannot write ({error.strerror})") from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def ensure_folder(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and its parents) if needed; one SpecError line if it cannot hold files.
    Called for every output folder before the first output is written, so that a bad
    --plot or --report folder leaves no other file behind."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SpecError(f"{folder}: a file is in the way of this folder; choose another path"
                        ) from None
    except OSError as error:
        raise SpecError(f"{folder}: cannot create the folder ({error.strerror})") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"{folder}: not a writable folder; choose another path")
    return folder


def write_json_atomic(path: str | os.PathLike[str], document: Mapping[str, object]) -> None:
    """JSON (no NaN or infinity, which JSON cannot hold) written atomically."""
    try:
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise SpecError(f"cannot write {str(path)!r}: {error}") from None
    write_text_atomic(path, text)
