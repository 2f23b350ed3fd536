"""The clock and the ids an agent's events and commands get: passed to `decide`, never inside it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)
