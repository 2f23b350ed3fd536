"""The gateway's one table from error code to HTTP status (services/gateway/httpstatus.py).

Every code the project can put on the wire has a row: the `code` of each FleetError class in
schemas/errors.py, and every code written anywhere in schemas/, infra/, actors/ and services/
(a class's `code = "..."`, a `code="..."` argument, a `RemoteError("<code>", ...)`, what
replies.py rewords msgspec's errors into). So a new error cannot fall through to a status
nobody chose.
"""

from __future__ import annotations

import ast
import inspect
import logging
from pathlib import Path

import pytest

from schemas import errors
from services.gateway.httpstatus import STATUS, UNMAPPED, status_for
from services.gateway.openapi import ERROR_STATUSES

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "infra", "actors", "services")


def _fleet_error_codes() -> dict[str, str]:
    """class name -> code, for every FleetError class of schemas/errors.py."""
    return {
        name: cls.code
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.FleetError)
    }


def _written_codes() -> dict[str, str]:
    """code -> where it is first written, read with `ast` from the project's source."""
    found: dict[str, str] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                for code in _codes_in(node):
                    found.setdefault(code, f"{where}:{node.lineno}")  # type: ignore[attr-defined]
    return found


def _codes_in(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "code" for t in node.targets
    ):
        value = node.value
        return (
            [value.value]
            if isinstance(value, ast.Constant) and isinstance(value.value, str)
            else []
        )
    if isinstance(node, ast.Call):
        codes = [
            kw.value.value
            for kw in node.keywords
            if kw.arg == "code"
            and isinstance(kw.value, ast.Constant)
            and isinstance(kw.value.value, str)
        ]
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        first = node.args[0] if node.args else None
        if (
            name == "RemoteError"
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            codes.append(first.value)
        return codes
    if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and node.value.elts:
        head = node.value.elts[0]  # replies._reword: `return "<code>", sentence`
        text = head.value if isinstance(head, ast.Constant) else None
        if isinstance(text, str) and text.islower() and "_" in text and " " not in text:
            return [text]
    return []


def test_every_fleet_error_of_schemas_errors_has_a_status() -> None:
    codes = _fleet_error_codes()
    assert len(codes) > 30, "schemas/errors.py's classes were not found"
    missing = {name: code for name, code in codes.items() if code not in STATUS}
    assert not missing, f"add these codes to services/gateway/httpstatus.py STATUS: {missing}"


def test_every_code_written_in_the_project_has_a_status() -> None:
    written = _written_codes()
    for known in ("git_failed", "invalid_field", "no_responders", "by_not_accepted", "no_worktree"):
        assert known in written, f"the scan did not find {known!r}: it reads too little"
    missing = {code: where for code, where in written.items() if code not in STATUS}
    assert not missing, f"add these codes to services/gateway/httpstatus.py STATUS: {missing}"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("bad_request", 400),
        ("invalid_json", 400),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("unknown_agent", 404),
        ("not_a_repository", 404),
        ("agent_exists", 409),
        ("invalid_transition", 409),
        ("worktree_has_work", 409),
        ("payload_too_large", 413),
        ("rate_limited", 429),
        ("internal", 500),
        ("git_failed", 502),
        ("tmux_failed", 502),
        ("busy", 503),
        ("store_unavailable", 503),
        ("timeout", 504),
    ],
)
def test_what_each_kind_of_error_is_answered_with(code: str, status: int) -> None:
    assert status_for(code) == status


def test_a_code_with_no_row_is_a_logged_500_not_a_400(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.gateway.httpstatus"):
        assert status_for("a_code_from_a_newer_peer") == UNMAPPED == 500
    assert "a_code_from_a_newer_peer" in caplog.text


def test_every_status_in_the_table_is_documented_in_the_openapi_document() -> None:
    assert set(STATUS.values()) <= set(ERROR_STATUSES), (
        "each status needs its sentence in openapi.py"
    )
