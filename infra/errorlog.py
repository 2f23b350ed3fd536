"""The internal error log, `<state dir>/fleet-errors.log`: every traceback, by its error id.

A bug anywhere in fleetd (an actor, a service, `fleet up`, the CLI) ends in a short sentence
with an error id for the person who met it ("unexpected error (id 3f2a...)") and in this file
with the traceback under that id, whichever process it happened in. Every entry point that
answers a request (the gateway, the bus services, the actors) goes through one boundary:
`reply_to(exc, log, what)` (or `unexpected` where the answer is not a bus reply), so the id,
the logged traceback and the sentence are made in one place. Each process installs
`ErrorLog` on its root logger once (`install`), so every `log.exception` and every error
asyncio logs for a task that failed unseen lands here, not only in a Ray worker's stderr.

An entry is one `write` to a file opened with O_APPEND: entries of several processes do not
interleave. The file is bounded: past MAX_BYTES it is renamed to `fleet-errors.log.1` (the
one before is dropped), since a hostile agent could provoke errors without end.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

from schemas import replies
from schemas.errors import FleetError

FILE_NAME = "fleet-errors.log"
MAX_BYTES = 8 * 1024 * 1024
# Messages that name their id say so in these words ("... (error id 3f2a9c01b7d4)").
_NAMED_ID = re.compile(r"error id ([0-9a-f]{6,32})")
_installed: dict[Path, ErrorLog] = {}
_lock = threading.Lock()


def new_error_id() -> str:
    return uuid.uuid4().hex[:12]


def unexpected(log: logging.Logger, what: str, exc: BaseException) -> str:
    """A bug met at an entry point: a new error id, `exc`'s traceback logged under it (so in
    the error log of a process that `install`ed it); returns the id for the caller's sentence
    (`replies.unexpected(id)` on the wire)."""
    error_id = new_error_id()
    log.error("%s failed (error id %s)", what, error_id, exc_info=exc, extra={"error_id": error_id})
    return error_id


def reply_to(exc: BaseException, log: logging.Logger, what: str) -> bytes:
    """The one error boundary of a request: a `FleetError` is its own reply (its sentence and
    code); anything else is a bug, answered with one sentence naming the id its traceback is
    logged under (`unexpected`)."""
    if isinstance(exc, FleetError):
        return replies.error(exc)
    return replies.unexpected(unexpected(log, what, exc))


def path_in(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE_NAME


def error_id_of(record: logging.LogRecord) -> str:
    """The id a record names (`extra={"error_id": ...}` or "error id X" in its message)."""
    given = getattr(record, "error_id", None)
    if isinstance(given, str) and given:
        return given
    found = _NAMED_ID.search(record.getMessage())
    return found.group(1) if found else ""


def entry(error_id: str, what: str, exc: BaseException | None, tb_text: str = "") -> bytes:
    """One entry: a header line with the id, the time and the process, then the traceback."""
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    if exc is not None and not tb_text:
        tb_text = "".join(traceback.format_exception(exc))
    head = f"--- error {error_id} at {at} pid {os.getpid()}: {what}\n"
    return (head + tb_text.rstrip("\n") + "\n").encode(errors="replace")


def append(path: Path, data: bytes) -> None:
    """Append one entry (one write); rotate first if the file has grown past MAX_BYTES."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size + len(data) > MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write(state_dir: str | Path, exc: BaseException, what: str, error_id: str = "") -> str:
    """Log `exc`'s traceback under `error_id` (a new one if empty); returns the id."""
    error_id = error_id or new_error_id()
    append(path_in(state_dir), entry(error_id, what, exc))
    return error_id


class ErrorLog(logging.Handler):
    """Writes every record that carries a traceback to the error log, under its id: the one
    the message names, or a new one (added to the header, since no one quoted it yet)."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info or record.exc_info[1] is None:
            return
        try:
            error_id = error_id_of(record) or new_error_id()
            tb_text = "".join(traceback.format_exception(*record.exc_info))
            what = f"{record.name}: {record.getMessage()}"
            append(self.path, entry(error_id, what, None, tb_text))
        except Exception:
            self.handleError(record)


def install(state_dir: str | Path, *, create: bool = False) -> ErrorLog:
    """Put this process's tracebacks in `<state_dir>/fleet-errors.log` (once per process);
    with `create`, the file is made now, empty, so that it is there before any error is."""
    path = path_in(state_dir)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    with _lock:
        handler = _installed.get(path)
        if handler is None:
            handler = ErrorLog(path)
            root = logging.getLogger()
            if not root.handlers:
                # With no handler at all, Python prints warnings through its `lastResort`;
                # one handler (this one, errors only) would silence them.
                root.addHandler(logging.lastResort or logging.StreamHandler())
            root.addHandler(handler)
            _installed[path] = handler
    return handler
