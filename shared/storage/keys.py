"""Object keys: validation and the layout every service agrees on.

A key is a relative, '/'-separated path inside one store (a bucket or a local root). Keys come from job
ids, run ids and user-chosen file names, so they are validated before they reach a backend: a `..`
segment or an absolute path would let a request escape its prefix on the local store, and control
characters or backslashes make keys that S3 and POSIX disagree about.

Layout (DESIGN.md §4): a worker writes under `jobs/<job_id>/t<fencing_token>/...`; only the coordinator
promotes to `runs/<run_id>/<phase>/...`, so a stale lease holder's output is never visible there.
"""

from __future__ import annotations

import unicodedata

from shared.errors import InvalidSpecError

# S3 allows 1024 bytes; the margin leaves room for a store-level prefix and temp-file suffixes.
MAX_KEY_BYTES = 900


def _refuse(key: str, rule: str, field: str) -> InvalidSpecError:
    return InvalidSpecError(f"storage key {key!r} is refused: {rule}", field=field)


def _check_chars(key: str, field: str) -> None:
    if "\\" in key:
        raise _refuse(key, "backslashes are not allowed (use '/' as the separator)", field)
    for ch in key:
        if unicodedata.category(ch) == "Cc":
            raise _refuse(key, f"control character U+{ord(ch):04X} is not allowed", field)


def validate_key(key: str, *, field: str = "key") -> str:
    """Return `key` in NFC form, or raise InvalidSpecError naming the key and the rule it breaks.

    NFC normalisation makes visually identical names (composed vs decomposed accents) one object.
    """
    if not isinstance(key, str):
        raise InvalidSpecError(f"storage key must be a string, got {type(key).__name__}", field=field)
    if not key:
        raise _refuse(key, "it is empty", field)
    key = unicodedata.normalize("NFC", key)
    _check_chars(key, field)
    if key.startswith("/") or (len(key) >= 2 and key[1] == ":" and key[0].isalpha()):
        raise _refuse(key, "absolute paths are not allowed; keys are relative to the store root", field)
    for segment in key.split("/"):
        if segment == "":
            raise _refuse(key, "empty path segments ('//' or a trailing '/') are not allowed", field)
        if segment in (".", ".."):
            raise _refuse(key, f"'{segment}' segments are not allowed", field)
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise _refuse(key, f"it is {size} bytes long; the limit is {MAX_KEY_BYTES} bytes", field)
    return key


def validate_prefix(prefix: str, *, field: str = "prefix") -> str:
    """Like validate_key, but "" (the whole store) and one trailing '/' are allowed."""
    if prefix == "":
        return ""
    if prefix.endswith("/"):
        return validate_key(prefix[:-1], field=field) + "/"
    return validate_key(prefix, field=field)


def join_key(*parts: str) -> str:
    """Join key parts with '/' and validate the result (no silent stripping: a bad part is refused)."""
    return validate_key("/".join(parts))


def _segment(value: object, field: str) -> str:
    """One path segment built from an id: it may not contain '/' (it would change the layout)."""
    text = str(value)
    if "/" in text:
        raise InvalidSpecError(f"{text!r} may not contain '/'", field=field)
    validate_key(text, field=field)
    return text


def staging_key(job_id: str, fencing_token: int, name: str) -> str:
    """Where a worker writes: `jobs/<job_id>/t<fencing_token>/<name>`."""
    if isinstance(fencing_token, bool) or not isinstance(fencing_token, int) or fencing_token < 0:
        raise InvalidSpecError(f"must be a non-negative integer, got {fencing_token!r}", field="fencing_token")
    return join_key("jobs", _segment(job_id, "job_id"), f"t{fencing_token}", validate_key(name, field="name"))


def staging_folder(key: str) -> str | None:
    """`jobs/<job_id>/t<token>` when `key` lies in a job's staging area (see staging_key), else None."""
    parts = key.split("/")
    if len(parts) > 3 and parts[0] == "jobs" and parts[2][:1] == "t" and parts[2][1:].isdigit():
        return "/".join(parts[:3])
    return None


def published_key(run_id: str, phase: str, name: str) -> str:
    """Where the coordinator publishes: `runs/<run_id>/<phase>/<name>`."""
    return join_key("runs", _segment(run_id, "run_id"), _segment(phase, "phase"), validate_key(name, field="name"))


def published_prefix(run_id: str) -> str:
    """Prefix of everything the coordinator published for a run: `runs/<run_id>/`."""
    return join_key("runs", _segment(run_id, "run_id")) + "/"


def checkpoint_prefix(request_id: str) -> str:
    """Prefix for a job's resumable checkpoints: `checkpoints/<request_id>/`."""
    return join_key("checkpoints", _segment(request_id, "request_id")) + "/"
