"""Fixtures of the unit tests: a real pseudo-terminal, for what must behave as on a terminal."""

from __future__ import annotations

import os
import pty
from collections.abc import Iterator
from typing import TextIO

import pytest


@pytest.fixture
def tty() -> Iterator[TextIO]:
    """The writing side of a real pseudo-terminal, as a text stream."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    try:
        yield stream
    finally:
        stream.close()
        os.close(master)
