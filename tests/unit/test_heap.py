"""Giving freed heap back: glibc's malloc_trim where it exists, nothing where it does not."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap

import pytest

from infra import heap

PROBE = textwrap.dedent(
    """
    import json, psutil
    from infra import heap
    me = psutil.Process()
    blocks = [bytearray(4000) for _ in range(50_000)]  # 200 MB in blocks under mmap's threshold
    keep = blocks[-1]  # the top of the heap stays in use: only a trim can give the rest back
    del blocks
    before = me.memory_info().rss
    trimmed = heap.give_back()
    print(json.dumps({"trimmed": trimmed, "before": before, "after": me.memory_info().rss}))
    """
)


def test_give_back_returns_freed_pages() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["trimmed"] is True, got
    freed_mb = (got["before"] - got["after"]) / 2**20
    assert freed_mb > 100, f"the trim gave back only {freed_mb:.0f} MB of 200: {got}"


def test_give_back_without_malloc_trim_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:  # a C library without malloc_trim
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Musl())
    assert heap.give_back() is False
