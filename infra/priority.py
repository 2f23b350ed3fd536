"""CPU priority inside an actor's process: the thread that answers commands before Ray's own.

Every Ray worker runs about two dozen threads of Ray's (its core worker's main loop, gRPC
pollers, an io service); the main one wakes 100 times a second whatever the actor does
(`CoreWorker.CheckSignal`, a fixed 10 ms timer). At 200 agents on 2 cores that is well over a
core of Ray's waiting, and with every thread at one priority a command's turn comes after
hundreds of such wakeups. An actor calls `favour_this_thread()` from its event loop: every
other thread of the process goes to nice 19, so the kernel runs the event loop (and the
threads it starts for tmux and git, which inherit its priority) first and Ray's timers in
what is left; they are late, never lost.

Ray starts its workers at nice 15 unless told otherwise; fleetd's own Ray is told 0
(`RAY_worker_niceness`, infra/raycluster.py), or else the event loop could not be raised
back without CAP_SYS_NICE, and every tmux server and pane an actor starts would inherit 15.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 19


def favour_this_thread() -> tuple[int, int]:
    """Lower every other thread of this process to nice 19 and keep this one at 0 where the
    process may; returns (threads lowered, this thread's nice value)."""
    me = threading.get_native_id()
    lowered = 0
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        if tid == me:
            continue
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
            lowered += 1
    if os.getpriority(os.PRIO_PROCESS, me) > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, me, 0)
        except PermissionError:
            log.info("the event loop stays at nice %d", os.getpriority(os.PRIO_PROCESS, me))
    return lowered, os.getpriority(os.PRIO_PROCESS, me)
