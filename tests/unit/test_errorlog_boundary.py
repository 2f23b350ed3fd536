"""The one error boundary (infra/errorlog.py `reply_to`, `unexpected`): a FleetError is its own
reply; anything else is a bug answered with one sentence naming the id whose traceback is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from infra import errorlog
from schemas.errors import UnknownAgent


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path]]:
    """A logger whose tracebacks go to an error log in tmp_path (removed after the test)."""
    path = errorlog.path_in(tmp_path)
    handler = errorlog.ErrorLog(path)
    logger = logging.getLogger("test.errorlog.boundary")
    logger.addHandler(handler)
    yield logger, path
    logger.removeHandler(handler)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:
        return e


def test_a_fleet_error_is_its_own_reply_and_logs_nothing(
    logged: tuple[logging.Logger, Path],
) -> None:
    logger, path = logged
    reply = msgspec.json.decode(errorlog.reply_to(_raised(UnknownAgent("a1")), logger, "test"))
    assert reply == {
        "ok": False,
        "error": {"code": "unknown_agent", "message": "there is no agent 'a1'", "error_id": ""},
    }
    assert not path.exists(), "a FleetError is not a bug: nothing goes to the error log"


def test_a_bug_is_one_sentence_with_the_id_its_traceback_is_logged_under(
    logged: tuple[logging.Logger, Path],
) -> None:
    logger, path = logged
    bug = _raised(RuntimeError("a bug in a handler"))
    reply = msgspec.json.decode(errorlog.reply_to(bug, logger, "test: a request"))
    error = reply["error"]
    assert reply["ok"] is False and error["code"] == "internal"
    assert error["error_id"] and error["error_id"] in error["message"]
    assert "a bug in a handler" not in error["message"], "the caller gets no traceback"
    text = path.read_text()
    assert f"--- error {error['error_id']} " in text
    assert "test: a request failed (error id" in text
    assert "RuntimeError: a bug in a handler" in text


def test_each_bug_gets_its_own_id(logged: tuple[logging.Logger, Path]) -> None:
    logger, _ = logged
    ids = {errorlog.unexpected(logger, "test", _raised(ValueError("x"))) for _ in range(5)}
    assert len(ids) == 5
