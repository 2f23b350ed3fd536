"""Write the golden file of every event tag and example command that does not have one yet.

Run by hand after adding an event tag (or command) and its example below:

    .venv/bin/python tests/golden/make_golden.py

Golden files are frozen once shipped: this script never overwrites one, so an encoding that
changed shows up as a failing decode test instead of a silently refreshed file.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from schemas import commands as c
from schemas import events as e
from schemas import tasks as t
from schemas.states import Activity, Lifecycle

HERE = Path(__file__).resolve().parent
AT = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
HEAD = dict(
    agent_id="fix-login-42",
    at=AT,
    actor="user:ada",
    causation="cmd-7f3c9a1e",
    prev_hash="9b2f61c0d4a35e87f1c2b3a4d5e6f708",
)
REPO = "/home/ada/src/shop"
WORKTREE = "/home/ada/.local/state/fleetd/worktrees/fix-login-42"

EVENTS: list[e.Event] = [
    e.AgentCreated(
        event_id="evt-0001",
        name="fix-login-42",
        template="claude",
        repo=REPO,
        base_ref="main",
        branch="fleet/fix-login-42",
        template_version=3,
        capabilities=("git", "network"),
        options={"model": "sonnet", "effort": "high"},
        command="claude --dangerously-skip-permissions",
        **{**HEAD, "prev_hash": ""},
    ),
    e.LifecycleChanged(
        event_id="evt-0002", to=Lifecycle.PAUSED, frm=Lifecycle.RUNNING, reason="pause", **HEAD
    ),
    e.ActivityChanged(
        event_id="evt-0003",
        to=Activity.AWAITING_INPUT,
        frm=Activity.WORKING,
        detail="Do you want to apply this edit to src/login.py? (y/n)",
        **{**HEAD, "actor": "service:activity"},
    ),
    e.WorkspaceReady(
        event_id="evt-0004",
        path=WORKTREE,
        branch="fleet/fix-login-42",
        base_ref="main",
        head="4e7a3531c2f9d0be8a7165f0c3d2e1b0a9f8e7d6",
        **{**HEAD, "actor": "agent"},
    ),
    e.WorkspaceRemoved(
        event_id="evt-0005",
        path=WORKTREE,
        saved_ref="refs/fleet/saved/fix-login-42/1710408413",
        forced=True,
        **HEAD,
    ),
    e.SessionStarted(
        event_id="evt-0006",
        socket="fleetd",
        session="fix-login-42",
        windows=("agent", "shell", "server"),
        recording="/home/ada/.local/state/fleetd/casts/fix-login-42.cast",
        **{**HEAD, "actor": "agent"},
    ),
    e.SessionClosed(
        event_id="evt-0007",
        socket="fleetd",
        session="fix-login-42",
        reason="last window exited",
        **{**HEAD, "actor": "agent"},
    ),
    e.PortsLeased(event_id="evt-0008", ports={"web": 41001, "db": 41002}, **HEAD),
    e.PortsReleased(event_id="evt-0009", ports={"web": 41001, "db": 41002}, **HEAD),
    e.ServiceStarted(
        event_id="evt-0010", service="web", pid=48213, port=41001, **{**HEAD, "actor": "agent"}
    ),
    e.ServiceExited(event_id="evt-0011", service="web", pid=48213, code=None, signal=9, **HEAD),
    e.ServiceHealth(
        event_id="evt-0012",
        service="web",
        healthy=False,
        probe="http://127.0.0.1:41001/healthz",
        detail="connection refused",
        **{**HEAD, "actor": "service:health"},
    ),
    e.ServiceRestarted(
        event_id="evt-0013",
        service="web",
        attempt=2,
        delay_s=1.5,
        **{**HEAD, "actor": "service:health"},
    ),
    e.RecoveryEscalated(
        event_id="evt-0014",
        rung="recreate_session",
        attempt=2,
        reason="service web failed its probe 3 times",
        **{**HEAD, "actor": "service:recovery"},
    ),
    e.CheckpointTaken(
        event_id="evt-0015",
        checkpoint=4,
        log_seq=1337,
        commit="c0ffee1234567890abcdef1234567890abcdef12",
        ref="refs/fleet/checkpoints/fix-login-42/4",
        label="login form validates",
        auto="",
        scrollback="/home/ada/.local/state/fleetd/scrollback/fix-login-42-4.txt",
        **HEAD,
    ),
    e.RolledBack(
        event_id="evt-0016",
        checkpoint=4,
        to_seq=1337,
        commit="c0ffee1234567890abcdef1234567890abcdef12",
        saved_checkpoint=5,
        **HEAD,
    ),
    e.InputSent(event_id="evt-0017", text="run the tests again, please", keys=("Enter",), **HEAD),
    e.UserAttached(event_id="evt-0018", user="ada", session="fix-login-42", readonly=True, **HEAD),
    e.UserDetached(event_id="evt-0019", user="ada", session="fix-login-42", **HEAD),
    e.AgentRemoved(event_id="evt-0020", reason="removed", **HEAD),
    e.ResourcesExceeded(
        event_id="evt-0021",
        resource="memory_mb",
        limit=512,
        value=733.5,
        action="restart",
        enforced_by="cgroup-v1",
        **{**HEAD, "actor": "agent"},
    ),
    e.AgentTaskStarted(
        event_id="evt-0022", task_id="fix-flaky-7", attempt=2, **{**HEAD, "actor": "agent"}
    ),
    e.AgentTaskEnded(
        event_id="evt-0023",
        task_id="fix-flaky-7",
        status="FAILED",
        reason="budget",
        **{**HEAD, "actor": "agent"},
    ),
]

COMMANDS: list[c.Command] = [
    c.Create(
        id="cmd-0001",
        by="user:ada",
        name="fix-login-42",
        template="claude",
        repo=REPO,
        base_ref="main",
        template_version=3,
        capabilities=("git",),
        options={"model": "sonnet"},
        command="claude",
    ),
    c.Pause(id="cmd-0002", by="user:ada"),
    c.Stop(id="cmd-0003", by="user:ada", remove_worktree=True, force=False),
    c.Send(id="cmd-0004", by="user:ada", text="yes", keys=("Enter",), enter=True),
    c.Attach(id="cmd-0005", by="user:ada", user="ada", readonly=True),
    c.ObserveActivity(
        id="cmd-0006",
        by="service:activity",
        activity=Activity.LOGIN_REQUIRED,
        detail="Please run /login",
    ),
    c.Fail(id="cmd-0007", by="agent", reason="tmux session vanished"),
]


# A task's own log (fleet.task.<task_id>): its tags live in tasks/, apart from the agent's.
TASK_HEAD = {k: v for k, v in HEAD.items() if k != "agent_id"} | {"task_id": "fix-flaky-7"}
TASK_RESULT = t.TaskResult(
    message="The test was flaky because of a shared tmp dir; each test now gets its own.",
    files_changed=2,
    insertions=14,
    deletions=3,
    commit="3f9c2a1b7d4e",
    tokens_in=48213,
    tokens_out=2210,
    cost_usd=0.1834,
    duration_s=212.5,
    exit_status=0,
)
TASK_EVENTS: list[t.TaskEvent] = [
    t.TaskCreated(
        event_id="tev-0001",
        spec=t.TaskSpec(
            prompt="Fix the flaky test in tests/test_login.py",
            repo=REPO,
            base_ref="main",
            template="claude",
            capabilities=("python",),
            priority="high",
            timeout_s=900.0,
            max_attempts=2,
            budget_tokens=200000,
            budget_usd=1.5,
            labels=("flaky", "ci"),
            created_by="user:ada",
            depends_on=("setup-ci-3",),
            headless=True,
        ),
        **TASK_HEAD,
    ),
    t.TaskAssigned(event_id="tev-0002", agent="fix-login-42", **TASK_HEAD),
    t.TaskStarted(
        event_id="tev-0003", agent="fix-login-42", attempt=1, base_commit="9a8b7c6d", **TASK_HEAD
    ),
    t.TaskDone(event_id="tev-0004", result=TASK_RESULT, **TASK_HEAD),
    t.TaskFailed(event_id="tev-0005", reason="budget", result=TASK_RESULT, **TASK_HEAD),
    t.TaskTimedOut(event_id="tev-0006", timeout_s=900.0, **TASK_HEAD),
    t.TaskCancelled(
        event_id="tev-0007", frm=t.TaskStatus.RUNNING, reason="not needed", **TASK_HEAD
    ),
    t.TaskRequeued(event_id="tev-0008", frm=t.TaskStatus.TIMED_OUT, reason="retry", **TASK_HEAD),
]


def tag(obj: msgspec.Struct) -> str:
    return str(type(obj).__struct_config__.tag)


def write_missing(
    folder: Path, examples: list[e.Event] | list[c.Command] | list[t.TaskEvent]
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for obj in examples:
        path = folder / f"{tag(obj)}.json"
        if path.exists():
            continue
        raw = msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"
        with path.open("xb") as f:  # "x": never overwrite a shipped golden file
            f.write(raw)
        written.append(path)
    return written


def main() -> int:
    missing = set(e.TAGS) - {tag(ev) for ev in EVENTS}
    if missing:
        print(f"no example for event tag(s) {sorted(missing)}: add one to EVENTS", file=sys.stderr)
        return 1
    missing_tasks = set(t.TASK_TAGS) - {tag(ev) for ev in TASK_EVENTS}
    if missing_tasks:
        print(f"no example for task tag(s) {sorted(missing_tasks)}: add one", file=sys.stderr)
        return 1
    written = write_missing(HERE, EVENTS) + write_missing(HERE / "commands", COMMANDS)
    written += write_missing(HERE / "tasks", TASK_EVENTS)
    for path in written:
        print(f"wrote {path.relative_to(HERE.parent.parent)}")
    if not written:
        print("every golden file exists; nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
