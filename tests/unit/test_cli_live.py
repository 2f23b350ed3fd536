"""The live views' model (a list, then events folded with `evolve`), their rows and the spinner."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import msgspec
import pytest

from schemas import events as e
from schemas.agent import ServiceState
from schemas.control import AgentView
from schemas.health import Observation, Sample
from schemas.states import Activity, Lifecycle
from services.cli import live, top
from services.cli.progress import Progress, step

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def agent(agent_id: str, lifecycle: str = "RUNNING", updated: float = 10.0) -> AgentView:
    return AgentView(
        id=agent_id,
        name=agent_id,
        template="shell",
        lifecycle=lifecycle,
        activity="READY",
        branch=f"fleet/{agent_id}",
        updated_at=at(updated),
    )


def changed(agent_id: str, when: float, to: Lifecycle, frm: Lifecycle) -> e.LifecycleChanged:
    return e.LifecycleChanged(agent_id=agent_id, event_id=f"{when}", at=at(when), to=to, frm=frm)


async def test_events_after_the_list_change_the_rows() -> None:
    fleet = live.LiveFleet()
    fleet.load([agent("a1"), agent("a2")])
    fleet.changed.clear()
    assert fleet.apply(changed("a1", 11, Lifecycle.PAUSED, Lifecycle.RUNNING))
    assert fleet.changed.is_set()
    rows = {r[0]: r for r in live.ls_rows(fleet)}
    assert rows["a1"][1] == "PAUSED" and rows["a2"][1] == "RUNNING"
    asking = e.ActivityChanged(
        agent_id="a2", event_id="q", at=at(12), to=Activity.AWAITING_INPUT, detail="Proceed?"
    )
    fleet.apply(asking)
    assert fleet.states["a2"].activity_detail == "Proceed?"
    assert [r[2] for r in live.ls_rows(fleet)] == ["READY", "AWAITING_INPUT"]


async def test_an_agent_whose_pane_died_shows_no_activity() -> None:
    """A login it was asking for is not asked any more once its pane died or it stopped: no
    "ERROR LOGIN_REQUIRED", no "ERROR READY" and no stale question."""
    fleet = live.LiveFleet()
    fleet.load([agent("a1"), agent("a2")])
    for agent_id in ("a1", "a2"):
        fleet.apply(
            e.ActivityChanged(
                agent_id=agent_id,
                event_id=f"l{agent_id}",
                at=at(11),
                to=Activity.LOGIN_REQUIRED,
                detail="Select login method:",
            )
        )
    fleet.apply(changed("a1", 12, Lifecycle.ERROR, Lifecycle.RUNNING))
    fleet.apply(changed("a2", 12, Lifecycle.STOPPING, Lifecycle.RUNNING))
    fleet.apply(changed("a2", 13, Lifecycle.STOPPED, Lifecycle.STOPPING))
    rows = {r[0]: r[1:3] for r in live.ls_rows(fleet)}
    assert rows == {"a1": ["ERROR", "-"], "a2": ["STOPPED", "-"]}
    assert [fleet.states[a].activity_detail for a in ("a1", "a2")] == ["", ""]


async def test_events_seen_during_the_list_are_held_and_old_ones_skipped() -> None:
    fleet = live.LiveFleet()
    old = changed("a1", 5, Lifecycle.SPAWNING, Lifecycle.NEW)  # already folded into the list
    new = changed("a1", 20, Lifecycle.STOPPING, Lifecycle.RUNNING)
    assert not fleet.apply(old) and not fleet.apply(new)  # held: no list yet
    assert fleet.states == {}
    fleet.load([agent("a1", updated=10)])
    assert fleet.states["a1"].lifecycle is Lifecycle.STOPPING
    assert not fleet.apply(changed("a1", 20, Lifecycle.STOPPING, Lifecycle.RUNNING))


async def test_a_new_agent_appears_and_a_removed_one_goes() -> None:
    fleet = live.LiveFleet()
    fleet.load([agent("a1")])
    created = e.AgentCreated(
        agent_id="b2", event_id="c", at=at(30), name="b2", template="claude", repo="/r"
    )
    fleet.apply(created)
    fleet.apply(changed("b2", 31, Lifecycle.SPAWNING, Lifecycle.NEW))
    assert [r[:4] for r in live.ls_rows(fleet)] == [
        ["a1", "RUNNING", "READY", "shell"],
        ["b2", "SPAWNING", "READY", "claude"],
    ]
    fleet.apply(e.AgentRemoved(agent_id="a1", event_id="r", at=at(32)))
    assert [r[0] for r in live.ls_rows(fleet)] == ["b2"]
    fleet.include_removed = True
    assert [r[0] for r in live.ls_rows(fleet)] == ["a1", "b2"]


def sample(agent_id: str, cpu: float, rss: float) -> Observation:
    return Observation(
        agent=agent_id, at=T0, kind="sample", sample=Sample(cpu_percent=cpu, rss_mb=rss, threads=3)
    )


async def test_top_rows_sort_and_show_samples_restarts_and_health() -> None:
    fleet = live.LiveFleet()
    web = ServiceState(name="web", state="running", healthy=True, restarts=2)
    db = ServiceState(name="db", state="running", healthy=False, restarts=1)
    views = [agent("a"), agent("b"), agent("c")]
    views[0] = msgspec.structs.replace(views[0], services={"web": web})
    views[1] = msgspec.structs.replace(views[1], services={"web": web, "db": db})
    fleet.load(views)
    assert not fleet.observe(Observation(agent="a", at=T0, kind="probe", ok=True))
    fleet.observe(sample("a", 5.0, 300.0))
    fleet.observe(sample("b", 50.0, 100.0))
    by_cpu = top.top_rows(fleet, "cpu")
    assert [r["id"] for r in by_cpu] == ["b", "a", "c"]  # unsampled last
    assert [r["id"] for r in top.top_rows(fleet, "mem")] == ["a", "b", "c"]
    assert [r["id"] for r in top.top_rows(fleet, "name")] == ["a", "b", "c"]
    rows = {r["id"]: r for r in by_cpu}
    assert rows["a"]["health"] == "ok" and rows["b"]["health"] == "failing"
    assert rows["c"]["health"] == "-" and rows["c"]["cpu_percent"] is None
    assert rows["b"]["restarts"] == 3 and rows["b"]["rss_mb"] == 100.0
    frame = top.top_frame(by_cpu, live.style.plain)
    assert frame.splitlines()[0].split()[:4] == ["ID", "LIFECYCLE", "ACTIVITY", "CPU%"]
    assert frame.splitlines()[1].split() == ["b", "RUNNING", "READY", "50.0", "100.0", "3", "0",
                                             "3", "failing"]  # fmt: skip
    assert frame.splitlines()[3].split()[3:7] == ["-", "-", "-", "-"]


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(live.FleetError, match="--interval must be more than 0 seconds, not 0"):
        live.check_interval(0)


# -- the spinner ----------------------------------------------------------------------------


def test_the_spinner_shows_each_agents_step_only_on_a_terminal(tty: TextIO) -> None:
    nc: Any = None  # never reached: nothing subscribes until entered
    assert not Progress(nc, ["a1"], "spawning", io.StringIO()).enabled
    one = Progress(nc, ["a1"], "spawning", tty)
    assert one.enabled
    assert "spawning a1: waiting" in one.line()
    ready = e.WorkspaceReady(agent_id="a1", event_id="w", at=T0, path="/w", branch="b")
    one.saw(ready)
    assert "spawning a1: workspace.ready" in one.line()
    started = e.ServiceStarted(agent_id="a1", event_id="s", at=T0, service="web", pid=1)
    assert step(started) == "service.started web"
    several = Progress(nc, ["a1", "a2"], "spawning", tty)
    several.saw(changed("a1", 1, Lifecycle.RUNNING, Lifecycle.SPAWNING))
    several.saw(ready.__class__(agent_id="a2", event_id="w", at=T0, path="/w", branch="b"))
    several.saw(changed("zz", 1, Lifecycle.RUNNING, Lifecycle.SPAWNING))  # not ours
    assert "2 agents, 1 done" in several.line() and "a2: workspace.ready" in several.line()
    assert "a1:" not in several.line()


async def test_redraw_prints_changed_frames_and_ends_when_the_connection_goes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "ALIVE_CHECK_S", 0.01)
    fleet = live.LiveFleet()
    fleet.load([agent("a1")])
    answers = iter([True, True, False])
    screen = live.Screen(in_place=False)
    render = lambda: live.ls_frame(fleet, live.style.plain)  # noqa: E731
    fleet.apply(changed("a1", 11, Lifecycle.PAUSED, Lifecycle.RUNNING))
    with pytest.raises(live.RemoteError, match="lost the connection to NATS"):
        await live.redraw(fleet, screen, render, 0.01, lambda: next(answers))
    frames = capsys.readouterr().out.split("\n\n")
    assert len(frames) == 2 and frames[1] == ""  # one frame (the two changes drawn together)
    assert frames[0].splitlines()[1].split()[:2] == ["a1", "PAUSED"]
