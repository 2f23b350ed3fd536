"""The dispatch plan (schemas/tasks_dispatch.py): limits, dependencies, capabilities, order.

Hypothesis builds random queues, fleets and templates; every plan must stay within each agent's
`max_concurrent_tasks` and each template's `max_agents` (and the fleet's room), assign only to
ready agents that fit, never a task whose dependencies are not all DONE, and never pass a task
over for a later one (priority, then age) that an agent it fits took.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from schemas.tasks import PRIORITIES, S, TaskSpec, TaskStatus
from schemas.tasks_decider import TaskState
from schemas.tasks_dispatch import Candidate, Plan, TemplateLimits, fits, order_key, plan

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
TEMPLATES = ("claude", "codex", "shell")
CAPS = ("python", "rust", "web")


def task(
    tid: str,
    *,
    priority: str = "normal",
    age: int = 0,
    template: str = "",
    caps: tuple[str, ...] = (),
    deps: tuple[str, ...] = (),
    status: TaskStatus = S.QUEUED,
) -> TaskState:
    spec = TaskSpec(
        prompt="p",
        priority=priority,  # type: ignore[arg-type]
        template=template,
        capabilities=caps,
        depends_on=deps,
    )
    at = T0 + timedelta(seconds=age)
    return TaskState(task_id=tid, spec=spec, status=status, created_at=at, queued_at=at)


def agent(
    aid: str, template: str = "claude", *caps: str, running: int = 0, **kw: bool
) -> Candidate:
    return Candidate(agent_id=aid, template=template, capabilities=caps, running=running, **kw)


def test_priority_then_age_decides_who_gets_the_only_agent() -> None:
    tasks = [
        task("old-normal", age=0),
        task("new-high", priority="high", age=10),
        task("old-high", priority="high", age=5),
    ]
    got = plan(tasks, [agent("a1", ready=True)], {}, {})
    assert [(a.task_id, a.agent_id) for a in got.assign] == [("old-high", "a1")]
    assert got.waiting == ("new-high", "old-normal")


def test_capabilities_and_template_must_cover_the_task() -> None:
    tasks = [task("py", caps=("python",)), task("rs", caps=("rust",), template="codex")]
    agents = [
        agent("a1", "claude", "python", ready=True),
        agent("a2", "claude", "rust", ready=True),
    ]
    got = plan(tasks, agents, {}, {})
    assert [(a.task_id, a.agent_id) for a in got.assign] == [("py", "a1")]
    assert got.waiting == ("rs",), "a2 has rust but is no codex agent"


def test_a_task_waits_for_its_dependencies() -> None:
    tasks = [task("t1", deps=("t0",)), task("t2", deps=("t0", "tx"), age=1)]
    agents = [agent("a1", ready=True), agent("a2", ready=True)]
    got = plan(tasks, agents, {}, {"t0": S.DONE, "tx": S.RUNNING})
    assert [a.task_id for a in got.assign] == ["t1"] and got.blocked == ("t2",)


def test_spawns_within_max_agents_and_shares_a_spawning_agent() -> None:
    limits = {
        "claude": TemplateLimits(capabilities=("python",), max_agents=2, max_concurrent_tasks=2)
    }
    tasks = [task(f"t{i}", caps=("python",), age=i) for i in range(6)]
    existing = [agent("a1", "claude", "python", running=2, ready=True)]  # full
    got = plan(tasks, existing, limits, {})
    assert got.assign == ()
    assert [(s.template, s.task_id) for s in got.spawn] == [("claude", "t0")]
    assert got.waiting == ("t1", "t2", "t3", "t4", "t5"), "t1 shares the new agent; the rest wait"
    none = plan(tasks, existing, limits, {}, fleet_room=0)
    assert none.spawn == (), "the fleet has no room for another agent"


def test_a_spawning_agent_is_counted_and_reserved() -> None:
    limits = {"shell": TemplateLimits(max_agents=1)}
    got = plan([task("t1"), task("t2", age=1)], [agent("s1", "shell", spawning=True)], limits, {})
    assert got.spawn == () and got.assign == () and got.waiting == ("t1", "t2")


# Random queues and fleets.

tasks_st = st.lists(
    st.builds(
        task,
        tid=st.just(""),
        priority=st.sampled_from(PRIORITIES),
        age=st.integers(0, 20),
        template=st.sampled_from(("", *TEMPLATES)),
        caps=st.lists(st.sampled_from(CAPS), max_size=2, unique=True).map(tuple),
        deps=st.lists(st.sampled_from(("d1", "d2", "d3")), max_size=2, unique=True).map(tuple),
        status=st.sampled_from([S.QUEUED, S.QUEUED, S.QUEUED, S.RUNNING, S.DONE]),
    ),
    max_size=25,
)
agents_st = st.lists(
    st.builds(
        Candidate,
        agent_id=st.just(""),
        template=st.sampled_from(TEMPLATES),
        capabilities=st.lists(st.sampled_from(CAPS), max_size=3, unique=True).map(tuple),
        ready=st.booleans(),
        spawning=st.booleans(),
        running=st.integers(0, 3),
    ),
    max_size=8,
)
limits_st = st.dictionaries(
    st.sampled_from(TEMPLATES),
    st.builds(
        TemplateLimits,
        capabilities=st.lists(st.sampled_from(CAPS), max_size=3, unique=True).map(tuple),
        max_agents=st.integers(0, 4),
        max_concurrent_tasks=st.integers(1, 3),
    ),
)
deps_st = st.fixed_dictionaries(
    {}, optional={d: st.sampled_from(list(TaskStatus)) for d in ("d1", "d2", "d3")}
)


@settings(max_examples=400, deadline=None)
@given(
    raw_tasks=tasks_st,
    raw_agents=agents_st,
    limits=limits_st,
    deps=deps_st,
    room=st.none() | st.integers(0, 3),
)
def test_any_plan_keeps_the_limits_and_the_order(
    raw_tasks: list[TaskState],
    raw_agents: list[Candidate],
    limits: dict[str, TemplateLimits],
    deps: dict[str, TaskStatus],
    room: int | None,
) -> None:
    tasks = [replace(x, task_id=f"t{i}") for i, x in enumerate(raw_tasks)]
    agents = [replace(a, agent_id=f"a{i}") for i, a in enumerate(raw_agents)]
    got = plan(tasks, agents, limits, deps, fleet_room=room)
    check_plan(got, tasks, agents, limits, deps, room)


def check_plan(
    got: Plan,
    tasks: list[TaskState],
    agents: list[Candidate],
    limits: dict[str, TemplateLimits],
    deps: dict[str, TaskStatus],
    room: int | None,
) -> None:
    by_task = {x.task_id: x for x in tasks}
    by_agent = {a.agent_id: a for a in agents}
    cap = {n: x.max_concurrent_tasks for n, x in limits.items()}
    queued = [x for x in tasks if x.status is S.QUEUED]
    placed = [a.task_id for a in got.assign] + [s.task_id for s in got.spawn]
    # every queued task is in exactly one bucket; nothing else is touched
    buckets = placed + list(got.waiting) + list(got.blocked)
    assert sorted(buckets) == sorted(x.task_id for x in queued)
    load = {a.agent_id: a.running for a in agents}
    for a in got.assign:
        tsk, ag = by_task[a.task_id], by_agent[a.agent_id]
        assert ag.ready and fits(tsk, ag.template, ag.capabilities)
        assert all(deps.get(d) is S.DONE for d in tsk.spec.depends_on), "dependencies not DONE"
        load[a.agent_id] += 1
    for a in got.assign:
        limit = cap.get(by_agent[a.agent_id].template, 1)
        assert load[a.agent_id] <= limit, f"agent {a.agent_id} over its max_concurrent_tasks"
    for s in got.spawn:
        tsk = by_task[s.task_id]
        assert all(deps.get(d) is S.DONE for d in tsk.spec.depends_on)
        assert fits(tsk, s.template, limits[s.template].capabilities)
    for name, lim in limits.items():
        ordered = sum(s.template == name for s in got.spawn)
        if ordered:
            have = sum(a.template == name for a in agents)
            assert have + ordered <= lim.max_agents, f"template {name} over max_agents"
    if room is not None:
        assert len(got.spawn) <= room
    # order: a task left waiting was not passed over for a later task on an agent it fits
    taken = {
        a.agent_id: [by_task[x.task_id] for x in got.assign if x.agent_id == a.agent_id]
        for a in agents
    }
    for tid in got.waiting:
        waiting = by_task[tid]
        for ag in agents:
            if not ag.ready or not fits(waiting, ag.template, ag.capabilities):
                continue
            later = [x for x in taken[ag.agent_id] if order_key(x) > order_key(waiting)]
            assert not later, f"{tid} waits while {later[0].task_id}, after it, took {ag.agent_id}"
