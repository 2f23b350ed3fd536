"""An agent's dev services on a real fleet: dependency order, restarts, restart_service, stop.

The agent actor is made here with an explicit `Template` (`use_template`), the way the
supervisor hands it the resolved one; the supervisor then finds it by its Ray name.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import ray
from nats.aio.client import Client

from actors.agent import AgentActor
from actors.supervisor import AGENT_PREFIX, agent_options
from infra.eventstore import EventStore
from schemas import events as e
from schemas.control import SpawnRequest
from schemas.templates import (
    Backoff,
    HttpProbe,
    Probe,
    RestartSpec,
    ServiceSpec,
    ShutdownSpec,
    Template,
)
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until

FAST = RestartSpec(backoff=Backoff(initial_s=0.05, max_s=1.0), reset_after_s=30.0)
API = ServiceSpec(
    command="python3 -m http.server --bind 127.0.0.1 $PORT",
    ports=("http",),
    readiness=Probe(http=HttpProbe(port="http"), period_s=0.1, timeout_s=0.5),
    restart=FAST,
    shutdown=ShutdownSpec(signal="SIGTERM", timeout_s=2.0),
)
WORKER = ServiceSpec(
    command=["python3", "-c", "import time; print('worker up', flush=True); time.sleep(1000)"],
    depends_on={"api": "healthy"},
    restart=FAST,
)


async def spawn_with(fleet: Fleet, repo_path: Path, name: str, template: Template) -> Any:
    """An agent actor given `template`, spawned, and known to the supervisor."""
    config = fleet.config()
    remote: Any = ray.remote(AgentActor)
    handle = remote.options(**agent_options(AGENT_PREFIX + name, config)).remote(config.agent, name)
    await handle.use_template.remote(template)
    await fleet.supervisor.refind.remote()  # so it does not answer for this id itself
    request = SpawnRequest(repo=str(repo_path), name=name, template=template.name)
    reply = await handle.spawn.remote(request, "bash --noprofile --norc -i", False)
    assert b'"ok":true' in reply, reply
    return handle


async def events(nc: Client, agent_id: str) -> list[e.AgentEvent]:
    return [s.event for s in await EventStore(nc).read(agent_id) if s.event is not None]


async def services(nc: Client, agent_id: str) -> dict[str, Any]:
    reply = await command(nc, agent_id, "show")
    found: dict[str, Any] = reply["agent"]["services"]
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_api_then_worker_restart_on_kill_restart_service_and_stop(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    template = Template(name="shell", services={"worker": WORKER, "api": API})
    await spawn_with(fleet, repo, "w1", template)

    async def both_running() -> dict[str, Any] | None:
        found = await services(nc, "w1")
        up = all(found.get(n, {}).get("state") == "running" for n in ("api", "worker"))
        return found if up and found["api"]["healthy"] else None

    found = await until(both_running, "api healthy and worker running")
    api = found["api"]
    assert api["port"] and api["pid"] and found["worker"]["pid"]
    assert api["healthy"] is True and api["restarts"] == 0
    # The worker started only after api answered its readiness probe.
    log = await events(nc, "w1")
    healthy = next(
        i for i, ev in enumerate(log) if isinstance(ev, e.ServiceHealth) and ev.service == "api"
    )
    worker_started = next(
        i for i, ev in enumerate(log) if isinstance(ev, e.ServiceStarted) and ev.service == "worker"
    )
    assert healthy < worker_started
    # kill -9 of api: a new api process, within a fraction of a second.
    killed_at = time.monotonic()
    os.kill(api["pid"], signal.SIGKILL)

    async def new_api() -> int | None:
        now = (await services(nc, "w1")).get("api", {})
        return now["pid"] if now.get("state") == "running" and now["pid"] != api["pid"] else None

    new_pid = await until(new_api, "a new api process")
    took = time.monotonic() - killed_at
    assert alive(new_pid), new_pid
    print(f"api back after kill -9 in {took * 1000:.0f} ms (polling included)")
    tail = [
        ev for ev in (await events(nc, "w1"))[len(log) :] if getattr(ev, "service", "") == "api"
    ]
    assert [type(ev) for ev in tail[:3]] == [e.ServiceExited, e.ServiceRestarted, e.ServiceStarted]
    exited, restarted = tail[0], tail[1]
    assert isinstance(exited, e.ServiceExited) and exited.signal == signal.SIGKILL
    assert isinstance(restarted, e.ServiceRestarted) and restarted.attempt == 1
    # restart_service: a person (or the health service) restarts it now.
    reply = await command(nc, "w1", "restart_service", service="api")
    assert reply["ok"], reply
    after = reply["agent"]["services"]["api"]
    assert after["state"] == "running" and after["pid"] not in (api["pid"], new_pid)
    assert after["restarts"] == 2
    assert not alive(new_pid)
    # Stop leaves no service process behind.
    pids = [after["pid"], (await services(nc, "w1"))["worker"]["pid"]]
    assert all(alive(p) for p in pids)
    stopped = await command(nc, "w1", "stop")
    assert stopped["agent"]["lifecycle"] == "STOPPED", stopped
    assert not [p for p in pids if alive(p)]
    kinds = [(type(ev).__name__, getattr(ev, "service", "")) for ev in await events(nc, "w1")]
    exits = [s for k, s in kinds if k == "ServiceExited"]
    assert exits[-2:] == ["worker", "api"]  # dependents first


async def test_a_service_that_keeps_failing_is_left_down_after_max_restarts(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    failing = ServiceSpec(
        command=["sh", "-c", "echo failing; exit 3"],
        restart=RestartSpec(backoff=Backoff(initial_s=0.02, max_s=0.1), max_restarts=2),
    )
    await spawn_with(fleet, repo, "f1", Template(name="shell", services={"bad": failing}))

    async def given_up() -> list[e.AgentEvent] | None:
        # Giving up records service.health, then the automatic "unhealthy" checkpoint.
        log = await events(nc, "f1")
        done = any(isinstance(ev, e.CheckpointTaken) and ev.auto == "unhealthy" for ev in log)
        return log if done else None

    log = await until(given_up, "the restarts to stop")
    await asyncio.sleep(0.3)  # nothing more happens
    assert len(await events(nc, "f1")) == len(log)
    bad = [ev for ev in log if getattr(ev, "service", "") == "bad"]
    assert [type(ev).__name__ for ev in bad] == [
        "ServiceStarted",
        "ServiceExited",
        "ServiceRestarted",
        "ServiceStarted",
        "ServiceExited",
        "ServiceRestarted",
        "ServiceStarted",
        "ServiceExited",
        "ServiceHealth",
    ]
    assert all(ev.code == 3 for ev in bad if isinstance(ev, e.ServiceExited))
    shown = (await services(nc, "f1"))["bad"]
    assert shown["state"] == "exited" and shown["restarts"] == 2 and shown["healthy"] is False
    assert shown["exit_code"] == 3


async def test_web_demo_through_the_supervisor_answers_on_its_leased_port(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    reply = await spawn(nc, str(repo), "d1", template="web-demo")
    assert reply["ok"], reply

    async def up() -> dict[str, Any] | None:
        found = await services(nc, "d1")
        worker = found.get("worker", {})
        return found if worker.get("state") == "running" else None

    found = await until(up, "web-demo's api healthy and its worker running")
    assert found["api"]["healthy"] is True
    port = found["api"]["port"]
    assert port == reply["agent"]["ports"]["api.http"]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.0\r\n\r\n")
    answer = await r.read()
    w.close()
    assert b"hello from web-demo" in answer
    assert (await command(nc, "d1", "stop"))["agent"]["lifecycle"] == "STOPPED"


async def test_a_restarted_actor_adopts_its_running_services(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    reply = await spawn(nc, str(repo), "r1", template="web-demo")
    assert reply["ok"], reply

    async def healthy_api() -> dict[str, Any] | None:
        found = await services(nc, "r1")
        worker = found.get("worker", {}).get("state") == "running"  # it waits for a healthy api
        return found if found.get("api", {}).get("healthy") and worker else None

    before = await until(healthy_api, "api healthy and its worker running")
    actor_pid = reply["agent"]["actor"]["pid"]
    os.kill(actor_pid, signal.SIGKILL)  # Ray runs the constructor again: it re-adopts

    async def readopted() -> dict[str, Any] | None:
        try:
            shown = (await command(nc, "r1", "show", timeout=2))["agent"]
        except TimeoutError:
            return None
        return shown if shown.get("actor", {}).get("pid") not in (None, actor_pid) else None

    await until(readopted, "the actor back", timeout=60)
    assert alive(before["api"]["pid"])  # the services lived on in the tmux server
    os.kill(before["api"]["pid"], signal.SIGKILL)

    async def new_api() -> int | None:
        now = (await services(nc, "r1")).get("api", {})
        fresh = now.get("state") == "running" and now["pid"] != before["api"]["pid"]
        return now["pid"] if fresh else None

    assert alive(await until(new_api, "the adopted api restarted"))
    await command(nc, "r1", "stop")
    assert not alive(before["worker"]["pid"])


async def test_a_service_and_the_agent_get_the_path_they_are_given(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """tmux hands a pane its client's PATH whatever the pane's own env says; the sandbox
    launcher sets the service's own PATH (its env), and the agent's (the template's env)."""
    line = 'echo "$PATH" > service-path.txt; exec sleep 1000'
    own = ServiceSpec(command=line, env={"PATH": "/svc/bin:/usr/bin:/bin"})
    template = Template(name="shell", env={"PATH": "/agent/bin:/usr/bin:/bin"}, services={"p": own})
    await spawn_with(fleet, repo, "pth1", template)
    worktree = Path((await command(nc, "pth1", "show"))["agent"]["worktree"])
    written = worktree / "service-path.txt"

    async def wrote() -> str:
        return written.read_text().strip() if written.exists() else ""

    assert await until(wrote, "the service to write its PATH", 60) == "/svc/bin:/usr/bin:/bin"
    await command(nc, "pth1", "send", text='echo "$PATH" > agent-path.txt')
    written = worktree / "agent-path.txt"
    assert await until(wrote, "the agent's shell to write its PATH", 60) == (
        "/agent/bin:/usr/bin:/bin"
    )
    await command(nc, "pth1", "kill")
