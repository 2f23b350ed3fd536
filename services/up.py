"""`fleet up`: the composition root that starts fleetd's parts in order and stops them in reverse.

The parts: NATS (the embedded server, or `FLEET_NATS_URL`) with its streams and buckets, Ray
(a local daemon of our own that outlives a crash of this process, or `FLEET_RAY_ADDRESS`) and
the supervisor actor, which re-adopts every agent the log knows; the bus services
(credential_issuer, template_store, port_broker, node_services, health, notifier) and the
gateway. It is the one module that imports both actors/ and services/. Once ready it writes
the state file so every other `fleet` command can find it, and it runs until SIGINT or
SIGTERM. A flock on `<state_dir>/fleet.lock` keeps a second `fleet up` off the same state
dir; the kernel releases it if this process dies, so a crash never wedges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import msgspec
import ray
from nats.aio.client import Client

import infra.nats
from actors import supervisor
from actors.agent import AgentConfig
from actors.supervisor import FleetConfig
from infra import fleetkey, natsauth, natsserver, raycluster, storewatch
from infra.config import (
    FleetState,
    Settings,
    format_state,
    now_utc,
    pid_alive,
    read_state_file,
    remove_state,
    write_state,
)
from schemas.errors import AlreadyRunning, FleetError
from services import (
    credential_issuer,
    gateway,
    health,
    node_services,
    notifier,
    port_broker,
    template_store,
    tokens,
)

log = logging.getLogger(__name__)

DETACH_READY_TIMEOUT_S = 300.0  # a guard against a hung child, not an expectation
REACH_TIMEOUT_S = 10.0  # re-adopted agents reconnect to NATS within ~1 s of it being back


@contextlib.contextmanager
def hold_lock(settings: Settings) -> Iterator[None]:
    """Hold the state dir's lock for the life of this `fleet up`, or refuse with a sentence."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = read_state_file(settings.state_file)
            raise AlreadyRunning(str(settings.state_dir), state.pid if state else None) from None
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _start_nats(settings: Settings, stack: AsyncExitStack) -> natsserver.NatsServer | None:
    """The embedded server (stopped when the stack unwinds), or None for `FLEET_NATS_URL`.

    It runs with users (infra/natsauth.py): the control plane's, and those of the agents
    that hold one, so agents kept running from the last `fleet up` can still connect."""
    if settings.nats_url:
        return None
    auth = natsauth.AuthDir.of(settings.state_dir)
    auth.write_config(natsauth.new_password())
    server = natsserver.NatsServer.start(
        settings.nats_store_dir, config=auth.config_path, reuse_port=True
    )  # the last port, if free: agents and the supervisor kept running reconnect to it
    stack.callback(server.stop)
    return server


def _nats_moved(settings: Settings, url: str) -> bool:
    """True if a crashed `fleet up` (its state file is left) had NATS at another URL: the
    actors it left running would never reach the new one."""
    try:
        previous = read_state_file(settings.state_file)
    except FleetError:
        return False
    return previous is not None and previous.nats_url != natsauth.without_userinfo(url)


async def _start_ray(settings: Settings, stack: AsyncExitStack, nats_url: str) -> str:
    """Join `FLEET_RAY_ADDRESS`, or our own local Ray daemon (infra/raycluster.py): one left
    running by a crashed `fleet up` is joined, with its actors; a clean stop ends it."""
    address = settings.ray_address
    if address is None:
        state_dir, fresh = settings.state_dir, _nats_moved(settings, nats_url)
        daemon = await asyncio.to_thread(raycluster.ensure_daemon, state_dir, fresh=fresh)
        stack.callback(raycluster.stop_daemon, state_dir, daemon)
        address = daemon.gcs_address
    joined = await asyncio.to_thread(raycluster.start, address)
    stack.callback(raycluster.stop)
    return joined


def _control_access(settings: Settings, server: natsserver.NatsServer | None) -> tuple[str, str]:
    """The URL the control plane connects with (its credential in it), and the file that keeps
    that credential for the CLI ("" when NATS wants none). An operator's NATS
    (`FLEET_NATS_URL`) gets the user and password given in that URL, if any."""
    auth = natsauth.AuthDir.of(settings.state_dir)
    if server is not None:
        return natsauth.with_credential(server.url, auth.control()), str(auth.control_path)
    url = str(settings.nats_url)
    given = natsauth.userinfo_of(url)
    if given is None:
        return url, ""
    natsauth.write_credential(auth.external_path, given)
    return url, str(auth.external_path)


def _supervise(
    server: natsserver.NatsServer, settings: Settings, state: FleetState
) -> asyncio.Task[None]:
    """Restart a dead server on its store and port, and keep the state file's pid true."""

    def restarted(server: natsserver.NatsServer, status: int) -> None:
        log.warning("nats-server died (status %d); restarted as pid %d", status, server.pid)
        write_state(settings.state_file, msgspec.structs.replace(state, nats_pid=server.pid))

    return asyncio.create_task(natsserver.supervise(server, restarted))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Phases:
    """How long each part took to start, for the log line that says fleetd is ready."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.parts: list[str] = []

    def __call__(self, part: str) -> None:
        now = time.monotonic()
        self.parts.append(f"{part} {now - self.last:.2f} s")
        self.last = now

    def __str__(self) -> str:
        return f"{time.monotonic() - self.started:.2f} s ({', '.join(self.parts)})"


async def _bring_up(settings: Settings, stack: AsyncExitStack) -> FleetState:
    """Start each part in dependency order, registering its stop on the stack."""
    took = _Phases()
    server = _start_nats(settings, stack)
    url, creds_file = _control_access(settings, server)
    infra.nats.quiet_lost_connections()
    nc = await infra.nats.connect(url, name="fleet-up")
    stack.push_async_callback(nc.close)
    await infra.nats.ensure_streams(nc.jetstream(), infra.nats.replicas_for(nc))
    took("nats")
    access = await credential_issuer.for_fleet(settings, server, nc, stack)
    if access is not None:  # answers before any agent actor asks for its user
        stack.push_async_callback((await credential_issuer.start(nc, access)).unsubscribe)
        await credential_issuer.prune(nc, access, fleetkey.load_or_create(settings.state_dir))
        took("credentials")
    ray_address = await _start_ray(settings, stack, url)
    took("ray")
    await _start_templates_and_ports(settings, nc, stack, url)
    took("templates and ports")
    await _start_supervisor(settings, url, nats_auth=access is not None)
    took("supervisor")
    gateway_url = await _start_faces(settings, url, nc, stack)
    took("gateway")
    await _start_health(settings, nc, stack)
    took("health")
    state = FleetState(
        pid=os.getpid(),
        state_dir=str(settings.state_dir),
        nats_url=natsauth.without_userinfo(url),
        nats_pid=server.pid if server else None,
        nats_creds=creds_file or None,
        started_at=now_utc(),
        ray_address=ray_address,
        gateway_url=gateway_url,
    )
    write_state(settings.state_file, state)
    log.info("ready in %s", took)
    stack.callback(remove_state, settings.state_file)
    if server is not None:  # watched only once the state file exists, so a restart can update it
        stack.push_async_callback(_cancel, _supervise(server, settings, state))
        # After a full disk, a restart is what makes JetStream write again (infra/storewatch.py).
        watch = storewatch.watch_space(server.store_dir, lambda: server.pid)
        stack.push_async_callback(_cancel, asyncio.create_task(watch))
    return state


async def _start_faces(settings: Settings, nats_url: str, nc: Client, stack: AsyncExitStack) -> str:
    """The gateway (REST, live events, /metrics) and the notifications service; the URL.

    The CLI's admin token is made first (`<state_dir>/admin.token`), so it works at once."""
    tokens.ensure_admin_token(settings.state_dir)
    app = gateway.init(settings, nats_url)
    runner = await gateway.start(app, port=settings.gateway_port)
    stack.push_async_callback(runner.cleanup)
    metrics = app[gateway.METRICS]
    await stack.enter_async_context(notifier.running(settings, nc, metrics))
    return gateway.url_of(runner)


async def _start_supervisor(settings: Settings, nats_url: str, *, nats_auth: bool) -> None:
    """The supervisor actor (it re-finds every agent the log knows); waits until it answers."""
    agent = AgentConfig(
        nats_url=nats_url,
        nats_auth=nats_auth,
        state_dir=str(settings.state_dir),
        worktree_root=str(settings.worktrees),
        tmux_socket=settings.tmux_socket,
        mac_key=fleetkey.load_or_create(settings.state_dir),
    )
    config = FleetConfig(agent=agent, pool_size=settings.pool_size, max_agents=settings.max_agents)
    handle = supervisor.start(config)
    agents = await handle.known.remote()
    late = await handle.unreachable.remote(REACH_TIMEOUT_S)
    if late:
        log.warning("agents not yet back on NATS (they keep retrying): %s", ", ".join(late))
    log.info("supervisor up; %d agent(s) re-adopted", len(agents))


async def _start_templates_and_ports(
    settings: Settings, nc: Client, stack: AsyncExitStack, url: str
) -> None:
    """The templates and ports services, answering before the supervisor spawns anything; on a
    Ray cluster, ports and health on every other node too (services/node_services.py)."""
    stack.push_async_callback((await template_store.start(nc)).close)
    own = node_services.this_node(settings)
    key = fleetkey.load_or_create(settings.state_dir)
    leases = await port_broker.start(nc, settings.port_range, node=own, mac_key=key)
    stack.push_async_callback(leases.close)
    await node_services.start(settings, url, stack)


async def _start_health(settings: Settings, nc: Client, stack: AsyncExitStack) -> None:
    """The health service of this node; on a Ray cluster it watches only this node's agents."""
    node = ray.get_runtime_context().get_node_id() if settings.ray_address else ""
    stop = asyncio.Event()
    config = health.HealthConfig(node=node, mac_key=fleetkey.load_or_create(settings.state_dir))
    task = asyncio.create_task(health.run(nc, stop, config))

    async def stop_health() -> None:
        stop.set()
        await task

    stack.push_async_callback(stop_health)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop`; installed before anything starts, so no signal is lost."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve(settings: Settings, out: TextIO, as_json: bool) -> None:
    """Bring fleetd up, say where it listens, run until signalled, then stop in reverse order."""
    stop = asyncio.Event()
    for part in ("services", "infra"):  # fleetd's own progress lines go to fleet-up.log
        logging.getLogger(part).setLevel(logging.INFO)
    with hold_lock(settings), _stop_on_signals(stop):
        async with AsyncExitStack() as stack:
            state = await _bring_up(settings, stack)
            print(format_state(state, as_json), file=out, flush=True)
            if not as_json:
                print("Ctrl-C stops it.", file=out, flush=True)
            await stop.wait()
            log.info("stopping fleetd")


END_GRACE_S = 5.0  # for the tasks still running once everything is stopped


def run(settings: Settings, out: TextIO, as_json: bool) -> None:
    """`serve` in a loop of its own, whose leftover tasks get a bounded end (`_end_tasks`)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(settings, out, as_json))
    finally:
        try:
            _end_tasks(loop, END_GRACE_S)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _end_tasks(loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """Cancel what is left, again and again, for at most `grace_s`; then say what would not
    end and go on. (`asyncio.run` waits for them for ever, and nats-py swallows a cancel that
    lands in its flush: a `fleet up` whose gateway port was taken hung so on a loaded machine.)"""
    deadline = time.monotonic() + grace_s
    left = asyncio.all_tasks(loop)
    while left and time.monotonic() < deadline:
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.wait(left, timeout=0.1))
        left = {t for t in left if not t.done()}
    for task in left:
        log.warning("a task would not end within %g s of fleetd's stop: %s", grace_s, task)


def detach(settings: Settings, out: TextIO, as_json: bool) -> None:
    """Start `fleet up` in its own session, return once it has written its state file."""
    with hold_lock(settings):
        pass  # refuse early, with the same sentence, if one is already up
    log_path = settings.state_dir / "fleet-up.log"
    with log_path.open("ab") as logf:
        child = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up"],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no SIGHUP when the terminal goes away
        )
    state = _wait_for_child(settings, child, log_path)
    print(format_state(state, as_json), file=out, flush=True)
    if not as_json:
        print(f"Logs in {log_path}; stop it with `kill -INT {state.pid}`.", file=out, flush=True)


def _wait_for_child(settings: Settings, child: subprocess.Popen[bytes], log: Path) -> FleetState:
    deadline = time.monotonic() + DETACH_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state_file(settings.state_file)
        if state is not None and state.pid == child.pid and pid_alive(child.pid):
            return state
        if child.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            why = tail[0] if tail else f"exit status {child.returncode}"
            raise FleetError(f"`fleet up` stopped before it was ready: {why} (log: {log})")
        time.sleep(0.02)
    child.terminate()
    child.wait()
    raise FleetError(f"`fleet up` was not ready after {DETACH_READY_TIMEOUT_S:.0f} s (log: {log})")
