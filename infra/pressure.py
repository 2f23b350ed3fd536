"""Whether a process is starved of CPU rather than hung: the kernel's pressure stall figures.

A health probe that times out on a machine whose CPU is wanted by more than it has says little
about the service: it is waiting its turn. Restarting it then is what turns an overload into a
spiral (the service starts again from nothing, and adds to the load that made it slow). So a
timed-out probe is excused while the CPU is under pressure (Linux 4.20+ `/proc/pressure/cpu`:
the share of the last 10 s in which some runnable task waited for a CPU) and something in the
service's process tree is runnable. A stopped or sleeping service is not excused: it is not
waiting for the CPU. Where the kernel has no pressure figures nothing is excused.
"""

from __future__ import annotations

import psutil

from infra import procs

PSI_CPU = "/proc/pressure/cpu"
STARVED_SOME_PCT = 25.0  # some task waited for a CPU a quarter of the last 10 s, or more


def parse_some_avg10(text: str) -> float | None:
    """`some avg10` of a pressure file's text, in percent; None when it has none."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "some":
            for field in fields[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def cpu_some_avg10() -> float | None:
    try:
        with open(PSI_CPU) as f:
            return parse_some_avg10(f.read())
    except OSError:  # Linux before 4.20, or psi=0 on its command line
        return None


def under_pressure() -> bool:
    """Some runnable task waited for a CPU at least `STARVED_SOME_PCT` of the last 10 s."""
    pressure = cpu_some_avg10()
    return pressure is not None and pressure >= STARVED_SOME_PCT


def starved(pid: int | None) -> bool:
    """The CPU is under pressure and a process of `pid`'s tree is runnable (waiting for it)."""
    pressure = cpu_some_avg10()
    if pid is None or pressure is None or pressure < STARVED_SOME_PCT:
        return False
    for proc in procs.tree([pid]):
        try:
            if proc.status() == psutil.STATUS_RUNNING:
                return True
        except psutil.Error:
            continue
    return False
