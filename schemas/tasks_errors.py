"""The errors of tasks (schemas/tasks.py, schemas/tasks_decider.py), beside the rest of the
hierarchy in schemas/errors.py: each keeps its facts as fields and writes its own sentence.
"""

from __future__ import annotations

from schemas.errors import FleetError


class InvalidTask(FleetError):
    """A task field that cannot be used (schemas/tasks.py): the field and what is allowed."""

    code = "invalid_task"

    def __init__(self, field: str, why: str) -> None:
        self.field, self.why = field, why
        super().__init__(f"invalid task {field}: {why}")


class TaskTransition(FleetError):
    """A task command that the task's state table does not allow from its current state."""

    code = "invalid_task_transition"

    def __init__(self, task_id: str, verb: str, current: str, needs: str, why: str = "") -> None:
        self.task_id, self.verb, self.current, self.needs = task_id, verb, current, needs
        tail = f" ({why})" if why else ""
        super().__init__(f"cannot {verb} task {task_id}: it is {current}, not {needs}{tail}")


class UnknownTask(FleetError):
    code = "unknown_task"

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"there is no task {task_id!r}")


class TaskExists(FleetError):
    code = "task_exists"

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"a task with id {task_id!r} already exists")


class DependenciesNotDone(FleetError):
    """An assignment of a task whose `depends_on` are not all DONE yet."""

    code = "dependencies_not_done"

    def __init__(self, task_id: str, pending: dict[str, str]) -> None:
        self.task_id, self.pending = task_id, pending
        listed = ", ".join(f"{k} ({v})" for k, v in sorted(pending.items()))
        super().__init__(f"cannot assign task {task_id}: it depends on {listed}, not yet DONE")


class NoAttemptsLeft(FleetError):
    code = "no_attempts_left"

    def __init__(self, task_id: str, attempts: int, max_attempts: int) -> None:
        self.task_id, self.attempts, self.max_attempts = task_id, attempts, max_attempts
        super().__init__(
            f"cannot retry task {task_id}: it has used {attempts} of its {max_attempts} "
            "attempt(s) (add it again to run it once more)"
        )


class NotYourTask(FleetError):
    """An agent acting on a task that another agent or a person created."""

    code = "not_your_task"

    def __init__(self, task_id: str, who: str, verb: str) -> None:
        self.task_id, self.who, self.verb = task_id, who, verb
        super().__init__(f"{who} cannot {verb} task {task_id}: an agent acts only on its own tasks")


class StaleTaskReport(FleetError):
    """A report (started, done, failed, timed out) from an agent or attempt that no longer runs
    the task: a late word of an earlier run, which must not end the current one."""

    code = "stale_report"

    def __init__(self, task_id: str, agent: str, attempt: int, holder: str, current: int) -> None:
        self.task_id, self.agent, self.attempt = task_id, agent, attempt
        self.holder, self.current = holder, current
        said = f"agent {agent or holder}'s report" + (f" on attempt {attempt}" if attempt else "")
        now = f"attempt {current} is held by {holder}" if holder else "no agent holds it"
        super().__init__(f"{said} of task {task_id} is stale ({now}); nothing was recorded")
