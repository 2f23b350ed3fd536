"""Which queued task goes to which agent, and what to spawn: a pure plan, decided in one pass.

Tasks are taken in order (priority, then the time they entered the queue, then id). Each goes to
a ready agent whose template it names (if it names one) and whose capabilities cover its own,
with room under its template's `max_concurrent_tasks` (the fewest running first); else it waits
for an agent already spawning that would fit; else, within the template's `max_agents` (and the
fleet's room), a new agent of the first fitting template is asked for. A task whose dependencies
are not all DONE is skipped. Greedy in that order, so no task is passed over for a later one
that an agent it fits took.

The plan is only a proposal: each assignment is then a checked append to the task's log
(decide `Assign` on its current state), so two dispatchers never both claim one task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC

import msgspec

from schemas.tasks import PRIORITY_RANK, S, TaskStatus
from schemas.tasks_decider import TaskState, pending_dependencies


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """An agent as the dispatcher sees it (from the agents' folded states and the task logs)."""

    agent_id: str
    template: str
    capabilities: tuple[str, ...] = ()
    ready: bool = False  # RUNNING and READY: it can take a task now
    spawning: bool = False  # asked for and not ready yet: it will take one
    running: int = 0  # tasks it holds (ASSIGNED or RUNNING)


class TemplateLimits(msgspec.Struct, frozen=True, kw_only=True):
    capabilities: tuple[str, ...] = ()  # what an agent spawned from it will have
    max_agents: int = 0  # 0: never spawn for tasks
    max_concurrent_tasks: int = 1  # per agent


class Assignment(msgspec.Struct, frozen=True):
    task_id: str
    agent_id: str


class SpawnOrder(msgspec.Struct, frozen=True):
    template: str
    task_id: str  # the task it is spawned for (it is assigned once the agent is ready)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    assign: tuple[Assignment, ...] = ()
    spawn: tuple[SpawnOrder, ...] = ()
    waiting: tuple[str, ...] = ()  # eligible tasks left in the queue (no agent, no room)
    blocked: tuple[str, ...] = ()  # tasks whose dependencies are not all DONE


def order_key(task: TaskState) -> tuple[int, float, str]:
    """Priority first (critical highest), then age in the queue (oldest first), then id."""
    rank = PRIORITY_RANK.get(task.spec.priority, len(PRIORITY_RANK))
    at = task.queued_at or task.created_at
    if at is None:
        return (rank, float("-inf"), task.task_id)
    return (rank, (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp(), task.task_id)


def fits(task: TaskState, template: str, capabilities: Iterable[str]) -> bool:
    """An agent of `template` with `capabilities` can run `task`."""
    if task.spec.template and task.spec.template != template:
        return False
    return set(task.spec.capabilities) <= set(capabilities)


def plan(
    tasks: Sequence[TaskState],
    agents: Sequence[Candidate],
    templates: Mapping[str, TemplateLimits],
    deps: Mapping[str, TaskStatus],
    *,
    fleet_room: int | None = None,
) -> Plan:
    """Plan dispatch of the QUEUED tasks among `tasks` (others are ignored).

    `deps` holds the status of every task named in a `depends_on` (a missing one counts as not
    DONE); `fleet_room` bounds how many agents may be spawned in all (None: no bound).
    """
    agents = list(agents)  # grows by the agents this plan asks for, which later tasks may share
    load = {a.agent_id: a.running for a in agents}
    per_template: dict[str, int] = {}
    for a in agents:
        per_template[a.template] = per_template.get(a.template, 0) + 1
    room = fleet_room
    assign: list[Assignment] = []
    spawn: list[SpawnOrder] = []
    waiting: list[str] = []
    blocked: list[str] = []
    queued = sorted((x for x in tasks if x.status is S.QUEUED), key=order_key)
    for task in queued:
        if pending_dependencies(task, deps):
            blocked.append(task.task_id)
            continue
        agent = _best(task, agents, templates, load, ready=True)
        if agent is not None:
            load[agent.agent_id] += 1
            assign.append(Assignment(task.task_id, agent.agent_id))
            continue
        coming = _best(task, agents, templates, load, ready=False)
        if coming is not None:
            load[coming.agent_id] += 1  # reserved: it takes this task once ready
            waiting.append(task.task_id)
            continue
        template = _spawnable(task, templates, per_template, room)
        if template is None:
            waiting.append(task.task_id)
            continue
        per_template[template] = per_template.get(template, 0) + 1
        room = None if room is None else room - 1
        spawn.append(SpawnOrder(template, task.task_id))
        new = Candidate(
            agent_id=f"spawn:{len(spawn)}",
            template=template,
            capabilities=templates[template].capabilities,
            spawning=True,
        )
        agents.append(new)
        load[new.agent_id] = 1
    return Plan(
        assign=tuple(assign), spawn=tuple(spawn), waiting=tuple(waiting), blocked=tuple(blocked)
    )


def _limit(templates: Mapping[str, TemplateLimits], template: str) -> int:
    limits = templates.get(template)
    return 1 if limits is None else limits.max_concurrent_tasks


def _best(
    task: TaskState,
    agents: Sequence[Candidate],
    templates: Mapping[str, TemplateLimits],
    load: Mapping[str, int],
    *,
    ready: bool,
) -> Candidate | None:
    found = [
        a
        for a in agents
        if (a.ready if ready else a.spawning and not a.ready)
        and load[a.agent_id] < _limit(templates, a.template)
        and fits(task, a.template, a.capabilities)
    ]
    return min(found, key=lambda a: (load[a.agent_id], a.agent_id), default=None)


def _spawnable(
    task: TaskState,
    templates: Mapping[str, TemplateLimits],
    per_template: Mapping[str, int],
    room: int | None,
) -> str | None:
    if room is not None and room <= 0:
        return None
    for name in sorted(templates):
        limits = templates[name]
        if per_template.get(name, 0) < limits.max_agents and fits(task, name, limits.capabilities):
            return name
    return None
