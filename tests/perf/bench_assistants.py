"""Group `assistants`: how soon an agent's log has what its assistant said, by hook or screen.

`hook_to_event_p50_ms`: from a hook call's request on `fleet.hook.<agent>` (the bytes `fleet
hook` sends, made by services/cli/hook.py) to its ActivityChanged stored in the agent's log
(seen on `fleet.evt.<agent>`), for a real agent actor whose hooks alternate Claude Code's
UserPromptSubmit and Stop. Floor: a thin raw client's NATS request to a responder that does
one JetStream publish into FLEET_EVENTS and answers, in the same run. The whole `fleet hook`
process (a Python start, a connect, the request) is logged beside it.

`screen_to_event_p50_ms`: from a line typed into the agent's pane (its screen then shows a
Claude Code question or spinner line) to the ActivityChanged in its log, with the actor's
monitor at its default period and debouncer. Floor: the same tmux capture and `classify`
done by a bare loop (every 50 ms) on a plain tmux pane, until it reads the new activity.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
import ray
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors import assistantconfig, supervisor
from actors.agent import AgentConfig
from actors.supervisor import FleetConfig
from infra.nats import connect
from infra.tmux import Tmux
from schemas import events as e
from schemas import subjects
from schemas.assistants import classify
from schemas.builtin_profiles import BUILTIN
from schemas.states import Activity
from services.cli.hook import hook_call
from tests.perf.common import emit, git_repo, log, nats_and_ray, p50

HOOKS, SCREENS, CLI_RUNS = 60, 10, 8
SHELL = "bash --noprofile --norc -i"
GUARD_S = 120.0
SOCKET, FLOOR_SOCKET = "bench-assistants", "bench-assistants-floor"
FLOOR_SUBJECT = subjects.topic("bench.floor.hook")
# printf's escapes keep the typed line itself from matching the patterns: only its output does
LINES = {
    Activity.AWAITING_INPUT: r"clear; printf 'Do you want to \x70roceed?\n'",
    Activity.WORKING: r"clear; printf '* Thinking\xe2\x80\xa6 (esc to \x69nterrupt)\n'",
}


def start_fleet(nats_url: str, root: Path) -> None:
    agent = AgentConfig(
        nats_url=nats_url,
        state_dir=str(root / "state"),
        worktree_root=str(root / "worktrees"),
        tmux_socket=SOCKET,
        namespace="bench-assistants",
    )
    handle = supervisor.start(FleetConfig(agent=agent, pool_size=0, max_agents=10))
    ray.get(handle.known.remote())


async def spawn(nc: Client, repo: Path, name: str) -> None:
    request = {"repo": str(repo), "name": name, "template": "claude-code", "command": SHELL}
    msg = await nc.request(subjects.control("spawn"), msgspec.json.encode(request), timeout=300)
    reply = msgspec.json.decode(msg.data)
    if not reply.get("ok"):
        raise RuntimeError(f"spawn {name} failed: {reply}")


class Changes:
    """ActivityChanged events of one agent as they are stored, with when they were seen."""

    def __init__(self) -> None:
        self.seen: asyncio.Queue[tuple[float, e.ActivityChanged]] = asyncio.Queue()

    async def on_event(self, msg: Msg) -> None:
        try:
            event = msgspec.json.decode(msg.data, type=e.AgentEvent)
        except msgspec.DecodeError:
            return
        if isinstance(event, e.ActivityChanged):
            self.seen.put_nowait((time.perf_counter(), event))

    async def next(self, to: Activity) -> tuple[float, e.ActivityChanged]:
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline:
            at, event = await asyncio.wait_for(self.seen.get(), GUARD_S)
            if event.to is to:
                return at, event
        raise AssertionError(f"no ActivityChanged to {to.value} within {GUARD_S:.0f} s")


async def hook_samples(nc: Client, agent: str) -> list[float]:
    changes = Changes()
    sub = await nc.subscribe(subjects.events(agent), cb=changes.on_event)
    os.environ["FLEET_AGENT_ID"] = agent  # what `fleet hook` reads in the pane
    samples = []
    try:
        for i in range(HOOKS):
            name, to = (
                ("UserPromptSubmit", Activity.WORKING) if i % 2 == 0 else ("Stop", Activity.READY)
            )
            call = hook_call("claude-code", [], "", msgspec.json.encode({"hook_event_name": name}))
            t = time.perf_counter()
            reply = await nc.request(subjects.hook(agent), msgspec.json.encode(call), timeout=30)
            seen, event = await changes.next(to)
            assert b'"ok":true' in reply.data.replace(b" ", b""), reply.data
            assert event.source == "hook", event
            samples.append((seen - t) * 1000)
    finally:
        await sub.unsubscribe()
    return samples[2:]  # the first two: the connection's and the actor's first of each


async def hook_floor(nc: Client) -> list[float]:
    """A request to a responder that publishes once to JetStream (a stream subject of an
    agent nobody runs), then answers."""
    js = nc.jetstream()
    subject = subjects.events("bench-floor")

    async def answer(msg: Msg) -> None:
        await js.publish(subject, msg.data)
        await msg.respond(b'{"ok": true}')

    sub = await nc.subscribe(FLOOR_SUBJECT, cb=answer)
    samples = []
    try:
        for _ in range(HOOKS):
            t = time.perf_counter()
            await nc.request(FLOOR_SUBJECT, b'{"hook_event_name": "Stop"}', timeout=30)
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        await sub.unsubscribe()
    return samples[2:]


def cli_runs(agent: str, nats_url: str) -> list[float]:
    """The whole `fleet hook` process as the installed hooks run it (logged, not a metric)."""
    env = {**os.environ, "FLEET_AGENT_ID": agent, "FLEET_NATS_URL": nats_url}
    samples = []
    for i in range(CLI_RUNS):
        payload = b'{"hook_event_name": "%s"}' % (b"UserPromptSubmit" if i % 2 else b"Stop")
        t = time.perf_counter()
        done = subprocess.run(
            assistantconfig.hook_argv("claude-code"),
            input=payload, env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        samples.append((time.perf_counter() - t) * 1000)
        if done.stdout or done.stderr:
            raise AssertionError(f"fleet hook said: {done.stdout!r} {done.stderr!r}")
    return samples


async def screen_samples(nc: Client, agent: str) -> list[float]:
    tmux, session = Tmux(SOCKET), f"fleet-{agent}"
    changes = Changes()
    sub = await nc.subscribe(subjects.events(agent), cb=changes.on_event)
    samples = []
    try:
        for i in range(SCREENS + 1):
            to = Activity.WORKING if i % 2 == 0 else Activity.AWAITING_INPUT
            await asyncio.sleep(1.2)  # past the debouncer's min_interval since the last one
            t = time.perf_counter()
            await asyncio.to_thread(tmux.send_text, session, "agent", LINES[to])
            seen, event = await changes.next(to)
            assert event.source == "screen", event
            samples.append((seen - t) * 1000)
    finally:
        await sub.unsubscribe()
    return samples[1:]


def screen_floor(root: Path) -> list[float]:
    tmux, profile = Tmux(FLOOR_SOCKET), BUILTIN["claude-code"]
    env = {"PATH": os.environ["PATH"], "TERM": "xterm-256color"}
    tmux.create_session("floor", root, env, command_for_agent=SHELL)
    time.sleep(1.0)  # its prompt
    samples = []
    for i in range(SCREENS + 1):
        to = Activity.WORKING if i % 2 == 0 else Activity.AWAITING_INPUT
        t = time.perf_counter()
        tmux.send_text("floor", "agent", LINES[to])
        deadline = time.monotonic() + GUARD_S
        while classify(tmux.capture("floor", "agent", None, False), profile) is not to:
            if time.monotonic() > deadline:
                raise AssertionError(f"the bare loop never read {to.value}")
            time.sleep(0.05)
        samples.append((time.perf_counter() - t) * 1000)
    return samples[1:]


async def run(nats_url: str, root: Path) -> None:
    repo = git_repo(root, lambda r: (r / "README").write_text("bench\n"))
    start_fleet(nats_url, root)
    nc = await connect(nats_url)
    try:
        for name in ("hooked", "screened"):
            await spawn(nc, repo, name)
        await asyncio.sleep(2.0)  # their first screens read
        floor = await hook_floor(nc)
        hooked = await hook_samples(nc, "hooked")
        emit("hook_to_event_p50_ms", p50(hooked), "ms", p50(floor),
             "floor: a raw NATS request/reply plus one JetStream publish")  # fmt: skip
        cli = await asyncio.to_thread(cli_runs, "hooked", nats_url)
        log(f"assistants: a whole `fleet hook` process, p50 {p50(cli):.0f} ms")
        screened = await screen_samples(nc, "screened")
        bare = await asyncio.to_thread(screen_floor, root)
        note = "monitor period 0.5 s, debounce 0.5 s; floor: a bare capture+classify loop (50 ms)"
        emit("screen_to_event_p50_ms", p50(screened), "ms", p50(bare), note)
    finally:
        await nc.close()


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-assistants-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        async with nats_and_ray(root, SOCKET, FLOOR_SOCKET) as server:
            await run(server.url, root)
