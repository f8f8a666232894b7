"""Optuna storages a search can share: in memory, a journal file, or an RDB URL.

`--storage journal:PATH` uses Optuna's JournalFileBackend (an append-only log that several
processes on a shared filesystem write safely); any other URL (`sqlite:///study.db`,
`postgresql://...`) is an RDBStorage. A study is created once (load_if_exists) and every
worker loads the same one; `recover_stale_trials` (tuner.search) re-queues the layouts of a
worker that was killed.
"""

from __future__ import annotations

import json
import time

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from cost_models.specs import SpecError

JOURNAL_PREFIX = "journal:"
# What reading a damaged journal line raises: bad JSON or bytes, nesting deeper than Python's
# recursion limit, an integer over its digit limit (ValueError covers JSONDecodeError and
# UnicodeDecodeError too).
JOURNAL_DECODE_ERRORS = (ValueError, RecursionError)
RDB_ATTEMPTS = 5


SQLITE_PREFIX = "sqlite:///"


def storage_file(url: str | None) -> str | None:
    """The local file a storage URL keeps the study in (a journal or an SQLite database;
    None for other URLs): an output must not replace it."""
    if url and url.startswith(JOURNAL_PREFIX):
        return url[len(JOURNAL_PREFIX):].removeprefix("//")
    if url and url.startswith(SQLITE_PREFIX):
        return url[len(SQLITE_PREFIX):]
    return None


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    if url is None:
        return None
    if url.startswith(JOURNAL_PREFIX):
        path = storage_file(url)
        if not path:
            raise SpecError("--storage journal: needs a file path, e.g. journal:/shared/s.log")
        _check_journal(path, url)
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise SpecError(f"--storage {url!r}: cannot open the journal file: {exc}") from None
        except JOURNAL_DECODE_ERRORS as exc:  # replays the log on open
            raise _not_a_journal(url, exc) from None
    if "://" not in url:
        raise SpecError(f"--storage {url!r} is not a storage URL; use journal:PATH or an RDB "
                        "URL such as sqlite:///study.db")
    for attempt in range(RDB_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # sqlalchemy raises many kinds; one line is what users need
            # Workers of a job array start together: two may create the schema of a new
            # database at once, and the loser sees "already exists" or a UNIQUE violation
            # (sqlalchemy OperationalError / IntegrityError). Retrying loads the schema.
            racing = type(exc).__name__ in ("OperationalError", "IntegrityError")
            if racing and attempt + 1 < RDB_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise SpecError(f"--storage {url!r}: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def _check_journal(path: str, url: str) -> None:
    """An existing journal starts with a JSON operation on its first line; anything else is
    refused before Optuna appends to it."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SpecError(f"--storage {url!r}: cannot open the journal file: {exc}") from None
    if not first.strip():
        return
    try:
        ok = isinstance(json.loads(first), dict)
    except JOURNAL_DECODE_ERRORS:
        ok = False
    if not ok:
        raise _not_a_journal(url)


def _not_a_journal(url: str | None, exc: Exception | None = None) -> SpecError:
    why = f" ({type(exc).__name__})" if exc else ""
    return SpecError(f"--storage {url!r} holds something other than an Optuna journal{why}; "
                     "point it at a new file")


def open_study(storage_url: str | None, study_name: str,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                   direction="maximize", load_if_exists=storage is not None)
    except JOURNAL_DECODE_ERRORS as exc:  # a corrupt line further on
        raise _not_a_journal(storage_url, exc) from None
