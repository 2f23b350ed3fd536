"""Fleet-wide requests (`fleet.ctl.<verb>`) and the view of an agent that replies carry.

Replies use the one shape of `schemas.replies`: `{"ok": true, "agent": AgentView}` for a
command to one agent (`fleet.cmd.<id>`), `{"ok": true, "agents": [...]}` for `list`,
`{"ok": true, "output": "..."}` for `output`, `{"ok": true, "session": ..., "argv": [...]}`
for `attach`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas import validation as v
from schemas.agent import AgentState, ServiceState
from schemas.states import Activity, Lifecycle


class SpawnRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`fleet.ctl.spawn`: make a new agent from a template in a git repository."""

    repo: str
    name: str = ""  # the agent id; a short one is generated when empty
    template: str = "shell"
    base_ref: str = "HEAD"
    capabilities: tuple[str, ...] = ()
    options: dict[str, str] = {}
    command: str = ""  # overrides the template's assistant command
    env: dict[str, str] = {}  # more environment for the agent; values never reach the log
    by: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        v.absolute_path(self.repo, "repo path")
        if self.name:
            v.name(self.name, "agent name")
        v.name(self.template, "template name")
        v.git_ref(self.base_ref)
        v.names(self.capabilities, "capability")
        v.options(self.options)
        v.text(self.command, "assistant command", v.MAX_COMMAND)
        v.env(self.env, "spawn env")
        v.sender(self.by, self.id)


class ListRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`fleet.ctl.list`: every agent the log knows, removed ones only when asked."""

    removed: bool = False
    by: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        v.sender(self.by, self.id)


class TmuxView(msgspec.Struct, frozen=True):
    socket: str = ""
    session: str = ""


class ActorView(msgspec.Struct, frozen=True):
    node: str = ""
    pid: int = 0


class AgentView(msgspec.Struct, frozen=True, kw_only=True):
    """What `fleet show --json` prints and every command's reply carries."""

    id: str
    name: str
    template: str
    lifecycle: str
    activity: str
    activity_detail: str = ""
    reason: str = ""
    repo: str = ""
    worktree: str = ""
    branch: str = ""
    tmux: TmuxView = TmuxView()
    actor: ActorView = ActorView()
    services: dict[str, ServiceState] = {}
    ports: dict[str, int] = {}
    users: tuple[str, ...] = ()
    checkpoints: int = 0
    events: int = 0
    seq: int = 0  # stream sequence of the last event
    created_at: datetime | None = None
    updated_at: datetime | None = None


def state_of(shown: AgentView) -> AgentState:
    """`view`'s way back: the part of an agent's state a view carries, as a state that
    `evolve` can go on from (the live views fold events onto it)."""
    return AgentState(
        agent_id=shown.id,
        name=shown.name,
        template=shown.template,
        repo=shown.repo,
        branch=shown.branch,
        lifecycle=Lifecycle(shown.lifecycle),
        activity=Activity(shown.activity),
        activity_detail=shown.activity_detail,
        reason=shown.reason,
        worktree=shown.worktree,
        tmux_socket=shown.tmux.socket,
        tmux_session=shown.tmux.session,
        ports=shown.ports,
        services=shown.services,
        users=shown.users,
        created_at=shown.created_at,
        updated_at=shown.updated_at,
        events=shown.events,
    )


def view(state: AgentState, *, seq: int = 0, node: str = "", pid: int = 0) -> AgentView:
    return AgentView(
        id=state.agent_id,
        name=state.name,
        template=state.template,
        lifecycle=state.lifecycle.value,
        activity=state.activity.value,
        activity_detail=state.activity_detail,
        reason=state.reason,
        repo=state.repo,
        worktree=state.worktree,
        branch=state.branch,
        tmux=TmuxView(state.tmux_socket, state.tmux_session),
        actor=ActorView(node, pid),
        services=state.services,
        ports=state.ports,
        users=state.users,
        checkpoints=len(state.checkpoints),
        events=state.events,
        seq=seq,
        created_at=state.created_at,
        updated_at=state.updated_at,
    )
