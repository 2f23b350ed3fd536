"""The health service on a real fleet: probes, report_health, psutil history, the recovery ladder.

The health service runs in the test's own event loop (as `fleet up` runs it), with short
periods; agents are spawned with an explicit template recorded in their log, which is where
the health service reads their probes and recovery spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import psutil
import ray
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.agent import AgentActor
from actors.supervisor import AGENT_PREFIX, agent_options
from infra.eventstore import EventStore
from schemas import events as e
from schemas import subjects
from schemas.control import SpawnRequest
from schemas.templates import (
    Backoff,
    HttpProbe,
    Probe,
    RecoverySpec,
    RestartSpec,
    ServiceSpec,
    Template,
    encode_spec,
)
from services.health import HealthService
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, until

GUARD_S = 60.0  # only stops a stuck wait from hanging the suite; nothing is timed
QUICK_LADDER = RecoverySpec(
    rungs=("restart_service", "recreate_session", "new_ports", "respawn", "ask_human"),
    attempts=1,
    backoff=Backoff(initial_s=0.2, max_s=0.5, jitter=0.0),
)


async def spawn_with(fleet: Fleet, repo_path: Path, name: str, template: Template) -> Any:
    config = fleet.config()
    remote: Any = ray.remote(AgentActor)
    handle = remote.options(**agent_options(AGENT_PREFIX + name, config)).remote(config.agent, name)
    await handle.use_template.remote(template)
    await fleet.supervisor.refind.remote()
    req = SpawnRequest(repo=str(repo_path), name=name, template=template.name)
    shell = "bash --noprofile --norc -i"
    reply = await handle.spawn.remote(req, shell, False, encode_spec(template))
    assert b'"ok":true' in reply, reply
    return handle


async def events(nc: Client, agent_id: str) -> list[e.AgentEvent]:
    return [s.event for s in await EventStore(nc).read(agent_id) if s.event is not None]


def unanswering_api() -> Template:
    """An HTTP service with a quick liveness probe, and a ladder too slow to act in a test."""
    api = ServiceSpec(
        command="python3 -m http.server --bind 127.0.0.1 $PORT",
        ports=("http",),
        liveness=Probe(
            http=HttpProbe(port="http"),
            initial_delay_s=1.0,
            period_s=0.1,
            timeout_s=0.3,
            failure_threshold=2,
        ),
    )
    slow = RecoverySpec(rungs=("ask_human",), backoff=Backoff(initial_s=60))
    return Template(name="shell", services={"api": api}, recovery=slow)


async def live(nc: Client, agent: str) -> bool:
    """Whether the health service has seen the api's liveness probe pass."""
    reply = await request(nc, subjects.control("health"), {"agent": agent, "kind": "probe"})
    rows = reply.get("history") or []
    return any(o["probe"] == "liveness" and o["ok"] for o in rows)


def group_members(pid: int) -> list[int]:
    """Every process of the pid's process group but its leader (the pane's waiting shell)."""
    group = os.getpgid(pid)
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.pid != group and os.getpgid(proc.pid) == group:
                found.append(proc.pid)
    return found


async def stop_service(nc: Client, agent: str) -> list[int]:
    """SIGSTOP the api: alive but not answering, which only a probe can tell; the pids, for
    SIGCONT. Every process of the pane's group but the waiting shell that leads it, not only
    the recorded pid: under load that pid can be the shell's (infra/panes.py gives up
    looking for its child after 1 s), and tmux answers a stop of a pane's own process with
    SIGCONT to its group, so the server would go on answering."""
    pid = (await command(nc, agent, "show"))["agent"]["services"]["api"]["pid"]
    stopped = group_members(pid)
    assert stopped, f"no service process under the pane of pid {pid}"
    signal_all(stopped, signal.SIGSTOP)
    return stopped


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def unhealthy_reports(nc: Client, agent: str) -> list[e.ServiceHealth]:
    return [
        ev
        for ev in await events(nc, agent)
        if isinstance(ev, e.ServiceHealth) and not ev.healthy and ev.actor == "service:health"
    ]


async def test_a_failing_liveness_probe_is_reported_and_sampled(
    fleet: Fleet,
    nc: Client,
    repo: Path,
    health: HealthService,
) -> None:
    template = unanswering_api()
    seen: list[dict[str, Any]] = []

    async def on_health(msg: Msg) -> None:
        seen.append(msgspec.json.decode(msg.data))

    await nc.subscribe(subjects.health("h1"), cb=on_health)
    await spawn_with(fleet, repo, "h1", template)

    await until(lambda: live(nc, "h1"), "api's liveness probe to pass", GUARD_S)
    # Under load the service may not listen yet at the first probes: that is reported too, so
    # only a report after this one counts as the stopped service's.
    before = len(await unhealthy_reports(nc, "h1"))
    stopped = await stop_service(nc, "h1")

    async def new_reports() -> list[e.ServiceHealth]:
        return (await unhealthy_reports(nc, "h1"))[before:]

    try:
        found = (
            await until(new_reports, "service.health unhealthy from the health service", GUARD_S)
        )[0]
        assert found.service == "api" and found.probe == "liveness"
    finally:
        signal_all(stopped, signal.SIGCONT)

    reply = await request(nc, subjects.control("health"), {"agent": "h1", "limit": 500})
    assert reply["ok"], reply
    samples = [o["sample"] for o in reply["history"] if o["kind"] == "sample"]
    assert samples and all(s["rss_mb"] > 0 and s["processes"] >= 3 for s in samples)
    assert all(s["threads"] >= 1 and s["open_files"] > 0 for s in samples)
    probes = [o for o in reply["history"] if o["kind"] == "probe" and o["probe"] == "liveness"]
    # Passing, then failing once stopped. Not "the first two": under load the service may not
    # listen yet at the first probe (a failure before any success), and the bounded history
    # (500 observations) may have dropped the earliest probes of a slow run.
    oks = [o["ok"] for o in probes]
    assert True in oks and False in oks[oks.index(True) :], oks
    log = await events(nc, "h1")
    assert any(isinstance(ev, e.ServiceHealth) and ev.healthy for ev in log)
    assert any(o["kind"] == "sample" for o in seen)  # also published on fleet.health.h1
    unknown = await request(nc, subjects.control("health"), {"agent": "nobody"})
    assert unknown["error"]["code"] == "unknown_agent"


async def test_a_service_that_keeps_failing_climbs_the_ladder_to_a_person(
    fleet: Fleet,
    nc: Client,
    repo: Path,
    health: HealthService,
) -> None:
    bad = ServiceSpec(
        command=["sh", "-c", "echo failing; exit 3"], restart=RestartSpec(policy="no")
    )
    template = Template(name="shell", services={"bad": bad}, recovery=QUICK_LADDER)
    notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_notice(msg: Msg) -> None:
        await notices.put(msgspec.json.decode(msg.data))

    await nc.subscribe(subjects.notify("critical"), cb=on_notice)
    await spawn_with(fleet, repo, "r1", template)

    notice = await asyncio.wait_for(notices.get(), 120)
    assert notice["agent"] == "r1" and notice["service"] == "bad"
    assert "exited (status 3)" in notice["reason"]

    log = await events(nc, "r1")
    rungs = [(ev.rung, ev.attempt) for ev in log if isinstance(ev, e.RecoveryEscalated)]
    assert rungs == [
        ("restart_service", 1),
        ("recreate_session", 1),
        ("new_ports", 1),
        ("respawn", 1),
        ("ask_human", 1),
    ]
    kinds = [type(ev).__name__ for ev in log]
    assert "ServiceRestarted" in kinds  # restart_service
    closed = [ev for ev in log if isinstance(ev, e.SessionClosed)]
    assert any(ev.reason == "recreate_session" for ev in closed)
    assert kinds.count("AgentCreated") == 1 and kinds.count("SessionStarted") >= 3  # respawn
    await asyncio.sleep(1.0)  # exhausted: no further rung
    assert [ev for ev in await events(nc, "r1") if isinstance(ev, e.RecoveryEscalated)] == [
        ev for ev in log if isinstance(ev, e.RecoveryEscalated)
    ]
    reply = await request(nc, subjects.control("health"), {"agent": "r1", "kind": "recovery"})
    assert [o["rung"] for o in reply["history"]][-1] == "ask_human"


async def test_limits_applied_at_spawn_contain_a_hog_and_record_it(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    from schemas.templates import Resources

    template = Template(name="shell", resources=Resources(memory_mb=64, on_exceed="warn"))
    await spawn_with(fleet, repo, "m1", template)
    hog = "python3 -c 'b = [bytearray(8 << 20) for _ in range(10**6)]'"
    reply = await command(nc, "m1", "send", text=hog)
    assert reply["ok"], reply

    async def exceeded() -> list[e.ResourcesExceeded]:
        return [ev for ev in await events(nc, "m1") if isinstance(ev, e.ResourcesExceeded)]

    found = (await until(exceeded, "resources.exceeded from the agent", timeout=60))[0]
    assert found.resource == "memory_mb" and found.limit == 64 and found.action == "warn"
    shown = (await command(nc, "m1", "show"))["agent"]
    assert shown["lifecycle"] == "RUNNING"  # warn: the hog was contained, the agent lives on


async def test_the_rollback_rung_returns_to_the_last_healthy_checkpoint(
    fleet: Fleet,
    nc: Client,
    repo: Path,
    health: HealthService,
) -> None:
    # The service runs while the worktree has no file `broken`; a checkpoint is taken while it
    # is healthy, then the agent "breaks" the worktree and the service fails. The ladder's
    # rollback rung takes the worktree back, and the restart after it holds.
    app = ServiceSpec(
        command=["sh", "-c", "test ! -e broken || exit 3; exec sleep 1000"],
        restart=RestartSpec(policy="no"),
    )
    ladder = RecoverySpec(
        rungs=("rollback", "restart_service", "ask_human"),
        attempts=1,
        backoff=Backoff(initial_s=0.2, max_s=0.5, jitter=0.0),
    )
    template = Template(name="shell", services={"app": app}, recovery=ladder)
    await spawn_with(fleet, repo, "rb1", template)

    async def running() -> bool:
        shown = (await command(nc, "rb1", "show"))["agent"]
        app = shown["services"].get("app", {})
        return app.get("state") == "running" and app.get("healthy") is True

    # Only a checkpoint taken once the service is known healthy is one the rung returns to.
    await until(running, "the service to run, healthy", timeout=30)
    taken = await command(nc, "rb1", "checkpoint", label="good")
    assert taken["ok"], taken
    worktree = Path((await command(nc, "rb1", "show"))["agent"]["worktree"])
    (worktree / "broken").write_text("a bad change\n")
    assert (await command(nc, "rb1", "restart_service", service="app"))["ok"]

    async def rolled_back() -> list[e.RolledBack]:
        return [ev for ev in await events(nc, "rb1") if isinstance(ev, e.RolledBack)]

    done = await until(rolled_back, "the rollback rung", timeout=60)
    assert done[0].checkpoint == taken["checkpoint"]
    assert not (worktree / "broken").exists()
    await until(running, "the service to run again after the rollback", timeout=60)
    rungs = [ev.rung for ev in await events(nc, "rb1") if isinstance(ev, e.RecoveryEscalated)]
    assert rungs[0] == "rollback" and "ask_human" not in rungs


async def test_liveness_counts_only_once_the_service_has_been_ready(
    fleet: Fleet,
    nc: Client,
    repo: Path,
    health: HealthService,
) -> None:
    """A service that takes its time to start (as every one does on a loaded machine) is not
    failed by its liveness probe, nor restarted by the ladder, before it was ever ready."""
    slow_start = ServiceSpec(
        command="sleep 3; exec python3 -m http.server --bind 127.0.0.1 $PORT",
        ports=("http",),
        readiness=Probe(http=HttpProbe(port="http"), period_s=0.2),
        liveness=Probe(http=HttpProbe(port="http"), period_s=0.1, failure_threshold=1),
    )
    template = Template(name="shell", services={"api": slow_start}, recovery=QUICK_LADDER)
    await spawn_with(fleet, repo, "h9", template)
    await until(lambda: live(nc, "h9"), "api's liveness probe to pass once it is ready", GUARD_S)
    reply = await request(nc, subjects.control("health"), {"agent": "h9", "limit": 500})
    probes = [o for o in reply["history"] if o["kind"] == "probe"]
    first_ready = next(i for i, o in enumerate(probes) if o["probe"] == "readiness" and o["ok"])
    assert all(o["probe"] != "liveness" for o in probes[:first_ready]), probes
    assert await unhealthy_reports(nc, "h9") == []
    log = await events(nc, "h9")
    assert not any(isinstance(ev, e.ServiceRestarted) for ev in log), log
