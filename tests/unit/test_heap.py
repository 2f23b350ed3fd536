"""Giving freed heap back: glibc's malloc_trim where it exists, nothing where it does not."""

from __future__ import annotations

import ctypes

import pytest

from infra import heap


def test_give_back_trims_the_heap() -> None:
    garbage = [bytes(4096) for _ in range(2_000)]
    del garbage
    heap.give_back()


def test_give_back_without_malloc_trim_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:  # a C library without malloc_trim
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Musl())
    heap.give_back()
