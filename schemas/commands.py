"""Commands to one agent (`fleet.cmd.<agent_id>`), a tagged union: `{"type": "pause"}` on the wire.

Every command may carry `id` (becomes the events' `causation`, and makes a retried command
recognisable) and `by` (who sends it; becomes the events' `actor`).
"""

from __future__ import annotations

import typing

import msgspec

from schemas import validation as v
from schemas.states import Activity


class Command(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    id: str = ""
    by: str = ""

    def __post_init__(self) -> None:
        v.sender(self.by, self.id)
        self._check()

    def _check(self) -> None:
        """The command's own fields (schemas.validation); refuses before anything is decided."""


class Create(Command, frozen=True, tag="create"):
    """Sent by the supervisor to a new agent actor: record the agent and start spawning."""

    name: str
    template: str = "shell"
    repo: str = ""
    base_ref: str = "HEAD"
    template_version: int = 0
    capabilities: tuple[str, ...] = ()
    options: dict[str, str] = {}
    command: str = ""
    template_spec: str = ""  # the resolved template as JSON, recorded in agent.created

    def _check(self) -> None:
        v.name(self.name, "agent name")
        v.name(self.template, "template name")
        if self.repo:
            v.absolute_path(self.repo, "repo path")
        v.git_ref(self.base_ref)
        v.names(self.capabilities, "capability")
        v.options(self.options)
        v.text(self.command, "assistant command", v.MAX_COMMAND)


class Show(Command, frozen=True, tag="show"):
    pass


class Pause(Command, frozen=True, tag="pause"):
    pass


class Resume(Command, frozen=True, tag="resume"):
    pass


class Stop(Command, frozen=True, tag="stop"):
    remove_worktree: bool = False
    force: bool = False  # remove a worktree even with unsaved work (saved to a ref first)


class Kill(Command, frozen=True, tag="kill"):
    pass


class Restart(Command, frozen=True, tag="restart"):
    pass


class Send(Command, frozen=True, tag="send"):
    text: str = ""
    keys: tuple[str, ...] = ()
    enter: bool = True

    def _check(self) -> None:
        v.typed(self.text, "send text")
        v.keys(self.keys)


class Output(Command, frozen=True, tag="output"):
    lines: int = 200
    window: str = "agent"

    def _check(self) -> None:
        v.name(self.window, "window name")


class ProbeSandbox(Command, frozen=True, tag="probe_sandbox"):
    """Try, from inside the agent's sandbox, each way out of it; read-only (`fleet doctor
    --sandbox`)."""


class Attach(Command, frozen=True, tag="attach"):
    user: str
    readonly: bool = False

    def _check(self) -> None:
        v.name(self.user, "user")


class Detach(Command, frozen=True, tag="detach"):
    user: str

    def _check(self) -> None:
        v.name(self.user, "user")


class Remove(Command, frozen=True, tag="remove"):
    force: bool = False


class Checkpoint(Command, frozen=True, tag="checkpoint"):
    """Save the worktree (and scrollback) as a point in the log that a rollback can return to."""

    label: str = ""
    auto: str = ""  # "" for a person's checkpoint; else why: rollback, stop, interval, unhealthy

    def _check(self) -> None:
        v.line(self.label, "checkpoint label")
        if self.auto:
            v.name(self.auto, "checkpoint reason (auto)")


class Rollback(Command, frozen=True, tag="rollback"):
    checkpoint: int


# Rungs of the recovery ladder, sent by the health service.


class RestartService(Command, frozen=True, tag="restart_service"):
    service: str

    def _check(self) -> None:
        v.name(self.service, "service name")


class RecreateSession(Command, frozen=True, tag="recreate_session"):
    pass


class NewPorts(Command, frozen=True, tag="new_ports"):
    pass


class Escalate(Command, frozen=True, tag="escalate"):
    """Record that recovery climbed a rung (or reached a person)."""

    rung: str
    attempt: int = 1
    reason: str = ""

    def _check(self) -> None:
        v.name(self.rung, "recovery rung")


# Commands the actor and the services send as they observe the world.


class ReportHealth(Command, frozen=True, tag="report_health"):
    service: str
    healthy: bool
    probe: str = ""
    detail: str = ""

    def _check(self) -> None:
        v.name(self.service, "service name")


class MarkRunning(Command, frozen=True, tag="mark_running"):
    pass


class MarkStopped(Command, frozen=True, tag="mark_stopped"):
    reason: str = ""


class Fail(Command, frozen=True, tag="fail"):
    reason: str


class ObserveActivity(Command, frozen=True, tag="observe_activity"):
    activity: Activity
    detail: str = ""
    source: typing.Literal["screen", "hook"] = "screen"  # "hook": its own hooks (schemas/hooks.py)


AgentCommand = (
    Create
    | Show
    | Pause
    | Resume
    | Stop
    | Kill
    | Restart
    | Send
    | Output
    | ProbeSandbox
    | Attach
    | Detach
    | Remove
    | Checkpoint
    | Rollback
    | RestartService
    | RecreateSession
    | NewPorts
    | Escalate
    | ReportHealth
    | MarkRunning
    | MarkStopped
    | Fail
    | ObserveActivity
)

COMMAND_TYPES: tuple[type[Command], ...] = typing.get_args(AgentCommand)
