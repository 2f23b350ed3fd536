"""favour_this_thread: every other thread of the process at nice 19, the caller's at 0, and a
thread the caller starts afterwards inherits the caller's priority (tmux, git)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, os, threading
    from infra import priority

    def nice(tid):
        return os.getpriority(os.PRIO_PROCESS, tid)

    started, stop, tids, later = threading.Event(), threading.Event(), [], []

    def waits():
        tids.append(threading.get_native_id())
        started.set()
        stop.wait()

    other = threading.Thread(target=waits)
    other.start()
    started.wait()
    lowered, mine = priority.favour_this_thread()
    child = threading.Thread(target=lambda: later.append(nice(threading.get_native_id())))
    child.start()
    child.join()
    print(json.dumps({"lowered": lowered, "mine": mine, "other": nice(tids[0]), "later": later[0]}))
    stop.set()
    other.join()
    """
)


def test_other_threads_are_lowered_and_the_caller_is_not() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["lowered"] >= 1, got
    assert got["other"] == 19, f"the other thread should be at nice 19: {got}"
    assert got["mine"] == 0, f"the caller should stay at nice 0: {got}"
    assert got["later"] == 0, f"a thread the caller starts should inherit nice 0: {got}"
