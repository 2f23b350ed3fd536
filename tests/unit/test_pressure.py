"""infra.pressure: the CPU pressure figure, and which processes count as starved."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infra import pressure

SAMPLE = "some avg10=42.50 avg60=30.00 avg300=10.00 total=123\nfull avg10=0.00 avg60=0.00 total=0\n"


def test_some_avg10_is_read_from_the_kernels_format() -> None:
    assert pressure.parse_some_avg10(SAMPLE) == 42.5
    assert pressure.parse_some_avg10("full avg10=3.00\n") is None
    assert pressure.parse_some_avg10("some avg10=lots\n") is None
    assert pressure.parse_some_avg10("") is None


@pytest.fixture
def pressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The pressure file read from `tmp_path`, at 90% (a machine past its cores)."""
    path = tmp_path / "cpu"
    path.write_text(SAMPLE.replace("42.50", "90.00"))
    monkeypatch.setattr(pressure, "PSI_CPU", str(path))
    yield path


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def _until_status(proc: subprocess.Popen[bytes], want: str) -> None:
    deadline = time.monotonic() + 60
    while psutil.Process(proc.pid).status() != want:
        assert time.monotonic() < deadline, f"process {proc.pid} never {want}"
        time.sleep(0.01)


def test_a_runnable_process_under_pressure_is_starved_a_stopped_one_is_not(pressed: Path) -> None:
    busy = _child("while True: pass")
    try:
        _until_status(busy, psutil.STATUS_RUNNING)
        assert pressure.starved(busy.pid)
        busy.send_signal(signal.SIGSTOP)  # hung, as a stopped service is: not waiting for a CPU
        _until_status(busy, psutil.STATUS_STOPPED)
        assert not pressure.starved(busy.pid)
        pressed.write_text(SAMPLE.replace("42.50", "3.00"))  # a quiet machine: nothing excused
        busy.send_signal(signal.SIGCONT)
        _until_status(busy, psutil.STATUS_RUNNING)
        assert not pressure.starved(busy.pid)
    finally:
        busy.kill()
        busy.wait()


def test_a_sleeping_process_is_never_starved(pressed: Path) -> None:
    idle = _child("import time; time.sleep(600)")
    try:
        _until_status(idle, psutil.STATUS_SLEEPING)
        assert not pressure.starved(idle.pid)
        assert not pressure.starved(None)
    finally:
        idle.kill()
        idle.wait()
