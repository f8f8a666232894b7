"""Write a file so that readers see the old content or the new, never a part of it.

Every output of the tools goes through `replace_atomically` (or `staged_file` + `commit`
where several outputs must appear together): the content is written to a temporary file
beside the target and renamed over it. The target is checked first (`output_target`): a
symbolic link is followed to the file it names, and anything that is not a regular file (a
folder, a device such as /dev/null, a pipe) is refused, since a rename would replace it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cost_models.specs import SpecError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_target(path: str | os.PathLike[str]) -> Path:
    """The regular file a write to `path` lands in (a link's target); SpecError for an empty
    path, a folder, or an existing path that is not a regular file."""
    text = str(path)
    if not text.strip():
        raise SpecError("an output path is empty; give a file name")
    target = Path(os.path.realpath(text))
    if target.is_dir():
        raise SpecError(f"{text!r} is a folder; give a file name")
    if target.exists() and not target.is_file():
        raise SpecError(f"{text!r} is not a regular file (a device, pipe or socket) and "
                        "writing would replace it; give a file path")
    return target


def staged_file(path: str | os.PathLike[str], write: Callable[[str], None],
                mode: int | None = None) -> Path:
    """Run `write(temp_name)` on a new temporary file beside `path`'s target and return it,
    for `commit` once the run's other outputs are written; on failure it is removed.
    `mode` defaults to 0o666 less the umask (mkstemp makes 0600)."""
    target = output_target(path)
    ensure_folder(target.parent)
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                             dir=target.parent)
    except OSError as error:
        raise SpecError(f"{path}: cannot write ({error.strerror})") from None
    os.close(handle)
    try:
        os.chmod(temp_name, (0o666 & ~_umask()) if mode is None else mode)
        write(temp_name)
        with open(temp_name, "rb+") as stream:
            os.fsync(stream.fileno())
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise SpecError(f"{path}: cannot write ({error.strerror or error})") from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return Path(temp_name)


def commit(temp: Path, path: str | os.PathLike[str]) -> None:
    """Rename a `staged_file` over `path`'s target; the temporary file never stays."""
    try:
        os.replace(temp, output_target(path))
    except OSError as error:
        raise SpecError(f"{path}: cannot write ({error.strerror})") from None
    finally:
        temp.unlink(missing_ok=True)


def replace_atomically(path: str | os.PathLike[str], write: Callable[[str], None],
                       mode: int | None = None) -> None:
    """`write(temp_name)` then rename over `path`: on any failure `path` is untouched and no
    temporary file remains. An unwritable place is one SpecError line."""
    commit(staged_file(path, write, mode), path)


def write_text_atomic(path: str | os.PathLike[str], text: str, mode: int | None = None) -> None:
    """UTF-8 text written atomically (`replace_atomically`)."""
    def write(name: str) -> None:
        with open(name, "w", encoding="utf-8") as stream:
            stream.write(text)

    replace_atomically(path, write, mode)


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


def distinct_files(outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
                   inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
    """SpecError when two outputs name one file, or an output names an input: one would
    silently replace the other. Pairs are (what the user typed, e.g. '-o', and the path);
    None paths are skipped; links and relative paths are resolved before comparing."""
    seen: dict[str, str] = {}
    for flag, path in inputs:
        if path is not None and str(path).strip():
            seen.setdefault(os.path.realpath(str(path)), f"{flag} {path}")
    for flag, path in outputs:
        if path is None or not str(path).strip():
            continue
        key = os.path.realpath(str(path))
        if key in seen:
            raise SpecError(f"{flag} {path} is also {seen[key]}: writing it would replace that "
                            "file; give the output another name")
        seen[key] = f"{flag} {path}"


def write_json_atomic(path: str | os.PathLike[str], document: Mapping[str, object]) -> None:
    """JSON (no NaN or infinity, which JSON cannot hold) written atomically."""
    try:
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise SpecError(f"cannot write {str(path)!r}: {error}") from None
    write_text_atomic(path, text)
