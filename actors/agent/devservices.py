"""An agent's dev services: started in dependency order, watched, restarted, stopped.

Each service of the agent's template runs in its own pane of the session's `services`
window (see infra/panes.py). One task per service carries it through its life: wait for what
it depends on, start, run its startup/readiness probes, wait for its exit (a pidfd on the
pane's shell, so an exit is seen at once), and restart it per its policy with a backoff that
resets after a stable run (schemas/restart.py). Every start, exit, health change and restart
is an event of the agent's log.

Locking: the tasks take the actor's lock around each step that changes the world or the log
(start, the bookkeeping of an exit, a health change), and wait without it. Commands that hold
the lock (`restart_service`, stop) can therefore cancel the tasks at any wait and find every
service in a state the log agrees with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shlex
import signal
import socket
import time
from pathlib import Path

from actors.agent.checkpoints import take_auto
from actors.agent.confine import wrap
from actors.agent.context import AgentContext
from actors.agent.session import agent_env
from infra import panes, probes, procs
from infra.pidfd import wait_exit
from schemas import events as e
from schemas.dependencies import start_order
from schemas.errors import FleetError, UnknownService
from schemas.restart import Done, GiveUp, RestartTracker
from schemas.states import Lifecycle
from schemas.templates import Probe, ServiceSpec, Template

log = logging.getLogger(__name__)
SUPERVISED = frozenset({Lifecycle.RUNNING, Lifecycle.PAUSED})


def template_of(ctx: AgentContext) -> Template:
    """The agent's resolved template: as given to the actor, else as recorded in its log
    (`agent.created`), else one without services."""
    found = ctx.resolved_template()
    return found if found is not None else Template(name=ctx.state.template or "-")


class Service:
    """One dev service of one agent, and the task that keeps it running."""

    def __init__(self, group: DevServices, name: str, spec: ServiceSpec) -> None:
        self.group, self.ctx, self.name, self.spec = group, group.ctx, name, spec
        self.tracker = RestartTracker(spec.restart)
        self.pane: panes.Pane | None = None
        self.pid: int | None = None
        self.out_start = 0
        self.started, self.healthy, self.completed = (
            asyncio.Event(),
            asyncio.Event(),
            asyncio.Event(),
        )
        self.task: asyncio.Task[None] | None = None
        files = group.folder
        self.status_file, self.log_file = files / f"{name}.status", files / f"{name}.log"

    # -- what the service sees -------------------------------------------------------------

    def ports(self) -> dict[str, int]:
        leased = self.ctx.state.ports
        return {
            p: leased[f"{self.name}.{p}"] for p in self.spec.ports if f"{self.name}.{p}" in leased
        }

    def env(self) -> dict[str, str]:
        return {**self.group.template.env, **self.spec.env, **probes.port_env(self.ports())}

    def cwd(self) -> Path:
        return Path(self.ctx.state.worktree or ".") / self.spec.cwd

    def output(self) -> str:
        return panes.output_tail(self.log_file, self.out_start)

    def alive(self) -> bool:
        return self.pane is not None and self.pid is not None

    # -- the task ---------------------------------------------------------------------------

    def launch(self, first: bool) -> None:
        body = self._life() if first else self._supervise()
        self.task = asyncio.get_running_loop().create_task(body, name=f"service {self.name}")

    async def cancel(self) -> None:
        task, self.task = self.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _life(self) -> None:
        for dep, condition in self.spec.depends_on.items():
            needed: asyncio.Event = getattr(self.group.services[dep], condition)
            await needed.wait()
        async with self.ctx.lock.step(f"starting service {self.name}"):
            if not self.group.supervising():
                return
            await self.start()
        await self._supervise()

    async def _supervise(self) -> None:
        try:
            while True:
                ready = asyncio.get_running_loop().create_task(self._readiness())
                try:
                    assert self.pane is not None
                    await wait_exit(self.pane.shell_pid)
                finally:
                    ready.cancel()
                    await asyncio.gather(ready, return_exceptions=True)
                async with self.ctx.lock.step(f"recording service {self.name}'s readiness"):
                    if not self.group.supervising():
                        return
                    verdict = await self._exited()
                if verdict is None:
                    return
                await asyncio.sleep(verdict)
                async with self.ctx.lock.step(f"restarting service {self.name}"):
                    if not self.group.supervising():
                        return
                    await self.start()
        except FleetError as err:  # a start that failed: the log says so, the service stays down
            async with self.ctx.lock.step(f"recording that service {self.name} failed"):
                if self.group.supervising():
                    await self._health(False, "start", str(err))

    async def _exited(self) -> float | None:
        """Record the exit and what the policy says; the delay before restarting, or None."""
        code, sig = await self.reap()
        verdict = self.tracker.exited(time.monotonic(), code, sig, random.random())
        if isinstance(verdict, Done):
            if code == 0:
                self.completed.set()
            return None
        if isinstance(verdict, GiveUp):
            await self._health(False, "restart", f"not restarted: {verdict.reason}")
            return None
        restarted = e.ServiceRestarted(
            service=self.name, attempt=verdict.attempt, delay_s=round(verdict.delay_s, 4),
            **self.ctx.meta(),
        )  # fmt: skip
        await self.ctx.record([restarted])
        return verdict.delay_s

    # -- steps (the actor's lock held) ------------------------------------------------------

    async def start(self, cause: str = "") -> None:
        """Run the service (a new pane, or its old one again) and record `service.started`."""
        session = self.ctx.state.tmux_session
        worktree = Path(self.ctx.state.worktree)
        keep = [*agent_env(self.ctx, worktree), *self.env()]  # the session's and its own
        line = self.spec.command
        run_line = ["/bin/sh", "-c", line if isinstance(line, str) else shlex.join(line)]
        # The sandbox under the waiting shell (it stays outside and writes the status file).
        inner = await asyncio.to_thread(
            wrap, self.ctx, run_line, keep, worktree, self.env().get("PATH")
        )
        argv = panes.service_argv(inner, self.status_file)
        self.status_file.unlink(missing_ok=True)
        self.out_start = panes.log_size(self.log_file)
        self.healthy.clear()
        if self.pane is None:
            opened = await asyncio.to_thread(
                panes.open_pane, self.ctx.tmux, session, self.name, argv, self.cwd(),
                self.env(), self.log_file,
            )  # fmt: skip
            self.pane = opened
        else:
            shell = await asyncio.to_thread(
                panes.respawn_pane, self.ctx.tmux, session, self.pane.pane_id, argv,
                self.cwd(), self.env(),
            )  # fmt: skip
            self.pane = panes.Pane(self.pane.pane_id, shell, service=self.name)
        self.pid = await asyncio.to_thread(panes.service_pid, self.pane.shell_pid)
        self.tracker.started(time.monotonic())
        first = next(iter(self.ports().values()), None)
        started = e.ServiceStarted(
            service=self.name, pid=self.pid, port=first, **self.ctx.meta(cause)
        )
        await self.ctx.record([started])
        self.started.set()

    async def reap(self, cause: str = "") -> tuple[int | None, int | None]:
        """After the pane's shell exited: end what the service left behind, record the exit."""
        assert self.pane is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pane.shell_pid, signal.SIGKILL)  # leftovers in the pane's group
        code, sig = panes.read_status(self.status_file)
        exited = e.ServiceExited(
            service=self.name, pid=self.pid or self.pane.shell_pid, code=code, signal=sig,
            **self.ctx.meta(cause),
        )  # fmt: skip
        self.pid = None
        self.healthy.clear()
        await self.ctx.record([exited])
        return code, sig

    async def shutdown(self, polite: bool, cause: str = "") -> None:
        """Stop the running service per its `shutdown` spec (signal, timeout, then SIGKILL of
        the whole tree) and record its exit; nothing to do for a service already down."""
        if self.pane is None or self.pid is None:
            return
        shell = self.pane.shell_pid
        spec = self.spec.shutdown
        sig = signal.Signals[spec.signal] if polite else signal.SIGKILL
        service = await asyncio.to_thread(procs.tree, [self.pid])
        for proc in service:  # the service's tree, not its waiting shell: that reports the exit
            with contextlib.suppress(Exception):
                if proc.name() == "bwrap":  # its sandbox: it ends with the service, not before
                    continue
                proc.send_signal(sig)
                proc.send_signal(signal.SIGCONT)  # a paused agent's services must see it
        if not await wait_exit(shell, spec.timeout_s if polite else 1.0):
            left = await asyncio.to_thread(procs.tree, [shell])
            await asyncio.to_thread(procs.terminate_processes, left, 0.0, 2.0)
        await self.reap(cause)

    async def _health(self, healthy: bool, probe: str, detail: str) -> None:
        before = self.ctx.state.services.get(self.name)
        ev = e.ServiceHealth(
            service=self.name, healthy=healthy, probe=probe, detail=detail[:500],
            **self.ctx.meta(),
        )  # fmt: skip
        await self.ctx.record([ev])
        if not healthy and (before is None or before.healthy is not False):
            # The same automatic checkpoint as a health-service report: the work as it was
            # when the service turned unhealthy.
            await take_auto(self.ctx, "unhealthy", f"{self.name} unhealthy")

    # -- readiness --------------------------------------------------------------------------

    async def _readiness(self) -> None:
        """Startup, then readiness probe, until they pass; `healthy` is set then."""
        gates: list[tuple[str, Probe]] = [
            (n, p) for n, p in (("startup", self.spec.startup), ("readiness", self.spec.readiness))
            if p is not None
        ]  # fmt: skip
        for i, (label, probe) in enumerate(gates):
            last = i == len(gates) - 1
            await probes.wait_ok(
                probe, ports=self.ports(), cwd=str(self.cwd()), output=self.output,
                env=self.env(), on_change=self._on_probe(label, last),
            )  # fmt: skip
        self.healthy.set()

    def _on_probe(self, label: str, last: bool) -> probes.OnChange:
        async def changed(ok: bool, result: probes.ProbeResult) -> None:
            if ok and not last:
                return
            async with self.ctx.lock.step(f"recording service {self.name}'s {label}"):
                if self.group.supervising() and self.alive():
                    await self._health(ok, label, result.detail)

        return changed


class DevServices:
    """All dev services of one agent (one incarnation of its session)."""

    def __init__(self, ctx: AgentContext, template: Template) -> None:
        self.ctx, self.template = ctx, template
        self.order = start_order(template.services)
        self.folder = Path(ctx.config.state_dir) / "services" / ctx.state.agent_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.services = {n: Service(self, n, template.services[n]) for n in self.order}
        self.closing = False

    def supervising(self) -> bool:
        return not self.closing and self.ctx.state.lifecycle in SUPERVISED

    def launch(self) -> None:
        for service in self.services.values():
            service.launch(first=True)

    async def stop(self, polite: bool, cause: str = "") -> None:
        """Every service, dependents first, each per its shutdown spec (or at once if not
        polite); the lock held."""
        self.closing = True
        for service in self.services.values():
            await service.cancel()
        for name in reversed(self.order):
            await self.services[name].shutdown(polite, cause)

    async def restart(self, name: str, cause: str = "") -> None:
        """Restart one service now (a command: a person or the health service's ladder)."""
        service = self.services[name]
        await service.cancel()
        await service.shutdown(True, cause)
        restarted = e.ServiceRestarted(service=name, attempt=0, **self.ctx.meta(cause))
        await self.ctx.record([restarted])
        service.tracker.restarted_by_hand(time.monotonic())
        await service.start(cause)
        service.launch(first=False)


# -- what the steps and the actor call ------------------------------------------------------


async def start_services(ctx: AgentContext) -> None:
    """Lease missing ports, then launch every service's task (they start in dependency order
    once the caller lets go of the lock)."""
    template = template_of(ctx)
    if not template.services:
        return
    group = DevServices(ctx, template)
    await _lease_missing_ports(ctx, template)
    ctx.services = group
    group.launch()


async def stop_services(ctx: AgentContext, polite: bool, cause: str = "") -> None:
    group, ctx.services = ctx.services, None
    if group is not None:
        await group.stop(polite, cause)


async def restart_service(ctx: AgentContext, name: str, cause: str = "") -> None:
    group = ctx.services
    if group is None or name not in group.services:
        raise UnknownService(ctx.state.agent_id, name)
    await group.restart(name, cause)


async def adopt_services(ctx: AgentContext) -> None:
    """After the actor's restart: watch the service panes that outlived it, start the rest."""
    template = template_of(ctx)
    if not template.services or ctx.services is not None:
        return
    group = DevServices(ctx, template)
    found = await asyncio.to_thread(panes.service_panes, ctx.tmux, ctx.state.tmux_session)
    ctx.services = group
    for name, service in group.services.items():
        pane, known = found.get(name), ctx.state.services.get(name)
        if pane is None or known is None:
            service.launch(first=True)
            continue
        service.pane = pane
        service.pid = known.pid if not pane.dead else None
        service.started.set()
        service.tracker.started(time.monotonic())
        service.launch(first=False)


async def _lease_missing_ports(ctx: AgentContext, template: Template) -> None:
    """Ports the ports service did not lease (an actor used without it): free ones, recorded.

    A port is taken by binding to port 0, so the kernel picks one that is free right now.
    """
    missing = [
        f"{name}.{port}"
        for name, spec in template.services.items()
        for port in spec.ports
        if f"{name}.{port}" not in ctx.state.ports
    ]
    if not missing:
        return
    leased = {key: _free_port() for key in missing}
    await ctx.record([e.PortsLeased(ports=leased, **ctx.meta())])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
