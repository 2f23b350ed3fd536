"""Probes of a dev service (http, tcp, exec, log line) and a runner with Kubernetes' timing.

Used by the agent actor (readiness and startup: may dependents start?) and by the health
service (liveness, continuously). One probe is one `check`; `run` repeats it every
`period_s` after `initial_delay_s` and reports a change only after `success_threshold`
passes or `failure_threshold` failures in a row.

HTTP probes are a raw HTTP/1.0 GET on an asyncio protocol, not aiohttp: only the status line
is read, and per probe that costs about half the CPU of an aiohttp request (measured by
tests/perf/bench_services.py), which matters with a thousand services on half a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import msgspec

from schemas.templates import ExecProbe, HttpProbe, LogProbe, Probe, TcpProbe

Output = Callable[[], str]
OnChange = Callable[[bool, "ProbeResult"], Awaitable[None]]
STATUS_LINE_MAX = 8192
EXCUSE_FOR_S = 60.0  # the longest a starved service's timed-out checks go uncounted in a row
PATIENCE = 5.0  # under CPU pressure a timed-out check is made again, this many times as patient


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # what was seen: "HTTP 200", "connection refused", "exit 1", ...
    ms: float
    timed_out: bool = False  # no answer within the probe's timeout (not a refusal, not a bad one)


def kind(probe: Probe) -> str:
    """Which check the probe makes: http, tcp, exec or log ("none" if the template set none)."""
    for name in ("http", "tcp", "exec", "log"):
        if getattr(probe, name) is not None:
            return name
    return "none"


def port_of(port: int | str, ports: Mapping[str, int]) -> int:
    """A probe's port: a number, or the name of one of the service's leased ports."""
    if isinstance(port, int):
        return port
    if port in ports:
        return ports[port]
    if port.isdigit():
        return int(port)
    known = ", ".join(sorted(ports)) or "none"
    raise LookupError(f"no leased port named {port!r} (the service's ports: {known})")


def port_env(ports: Mapping[str, int]) -> dict[str, str]:
    """`PORT_<NAME>` for each of a service's ports and `PORT` for its first one."""
    env = {f"PORT_{name.upper()}": str(p) for name, p in ports.items()}
    if ports:
        env["PORT"] = str(next(iter(ports.values())))
    return env


async def check(
    probe: Probe,
    *,
    ports: Mapping[str, int],
    cwd: str,
    output: Output | None = None,
    env: Mapping[str, str] | None = None,
) -> ProbeResult:
    """Make the probe's check once, within its `timeout_s`; never raises for a failed check.

    `ports` are the service's own (by port name); `output` returns what the service printed
    so far (for log probes); `env` is added to ours for exec probes (with the port variables).
    """
    began = time.perf_counter()
    try:
        async with asyncio.timeout(probe.timeout_s):
            ok, detail = await _check(probe, ports, cwd, output, env or {})
    except TimeoutError:
        detail = f"no answer within {probe.timeout_s:g}s"
        return ProbeResult(False, detail, (time.perf_counter() - began) * 1000, timed_out=True)
    except (OSError, LookupError, ValueError) as e:
        ok, detail = False, _reason(e)
    return ProbeResult(ok, detail, (time.perf_counter() - began) * 1000)


async def _check(
    probe: Probe,
    ports: Mapping[str, int],
    cwd: str,
    output: Output | None,
    env: Mapping[str, str],
) -> tuple[bool, str]:
    if probe.http is not None:
        return await http_get(probe.http, port_of(probe.http.port, ports))
    if probe.tcp is not None:
        return await tcp_connect(probe.tcp, port_of(probe.tcp.port, ports))
    if probe.exec is not None:
        return await run_exec(probe.exec, cwd, {**env, **port_env(ports)}, probe.timeout_s)
    if probe.log is not None:
        return log_match(probe.log, output() if output is not None else "")
    return True, "no check configured"


def _reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


# -- http ------------------------------------------------------------------------------------


class _StatusLine(asyncio.Protocol):
    """Send one request; resolve with the first line of the answer, then hang up."""

    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request, self.done, self.buffer = request, done, b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer or len(self.buffer) > STATUS_LINE_MAX:
            self._finish(self.buffer.split(b"\n", 1)[0])

    def eof_received(self) -> bool:
        self._finish(self.buffer)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("closed before answering"))

    def _finish(self, line: bytes) -> None:
        if not self.done.done():
            self.done.set_result(line)


async def http_get(spec: HttpProbe, port: int) -> tuple[bool, str]:
    """GET `spec.path` over HTTP/1.0 and judge the status against `spec.expect_status`."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {spec.path} HTTP/1.0\r\nHost: {spec.host}:{port}\r\n"
        "User-Agent: fleetd-probe\r\nConnection: close\r\n\r\n"
    ).encode()
    done: asyncio.Future[bytes] = loop.create_future()
    # A check that times out while connecting leaves `done` unawaited; its end is not an error.
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    transport, _ = await loop.create_connection(lambda: _StatusLine(request, done), spec.host, port)
    try:
        line = await done
    finally:
        transport.close()
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP answer: {line[:80]!r}"
    status = int(parts[1])
    return status_expected(status, spec.expect_status), f"HTTP {status}"


def status_expected(status: int, expect: tuple[int, ...]) -> bool:
    """`expect` is an inclusive range (low, high); one value means exactly that status."""
    if len(expect) == 2:
        return expect[0] <= status <= expect[1]
    return status in expect


# -- tcp, exec, log --------------------------------------------------------------------------


async def tcp_connect(spec: TcpProbe, port: int) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, spec.host, port)
    transport.close()
    return True, f"connected to {spec.host}:{port}"


PROBE_BASICS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "HOME")


async def run_exec(
    spec: ExecProbe, cwd: str, env: Mapping[str, str], timeout: float
) -> tuple[bool, str]:
    """Run the command (its own session, so a timeout ends all it started).

    It sees the basics (PATH, locale, USER, HOME) and `env` (the ports), never the whole
    environment of the health service, which may hold the control plane's secrets."""
    full_env = {k: os.environ[k] for k in PROBE_BASICS if k in os.environ} | dict(env)
    common = {
        "cwd": cwd,
        "env": full_env,
        "stdin": asyncio.subprocess.DEVNULL,
        "stdout": asyncio.subprocess.DEVNULL,
        "stderr": asyncio.subprocess.DEVNULL,
        "start_new_session": True,
    }
    if isinstance(spec.command, str):
        proc = await asyncio.create_subprocess_shell(spec.command, **common)  # type: ignore[arg-type]
    else:
        proc = await asyncio.create_subprocess_exec(*spec.command, **common)  # type: ignore[arg-type]
    try:
        code = await proc.wait()
    except BaseException:  # the timeout (a cancellation) or our own end: leave nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    return code == spec.expect_exit, f"exit {code}"


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.MULTILINE)


def log_match(spec: LogProbe, text: str) -> tuple[bool, str]:
    found = _compiled(spec.pattern).search(text)
    if found is None:
        return False, f"no line matches {spec.pattern!r} yet"
    return True, f"matched {found.group(0)[:120]!r}"


# -- the runner ------------------------------------------------------------------------------


class Thresholds:
    """Consecutive passes and failures; the status changes only past a threshold.

    The status starts unknown (None): `success_threshold` passes make it True and
    `failure_threshold` failures make it False.
    """

    def __init__(self, probe: Probe) -> None:
        self.success = max(1, probe.success_threshold)
        self.failure = max(1, probe.failure_threshold)
        self.status: bool | None = None
        self.passes = self.failures = 0

    def observe(self, ok: bool) -> bool | None:
        """Count one result; return the new status if it changed, else None."""
        if ok:
            self.passes, self.failures = self.passes + 1, 0
            new = True if self.passes >= self.success else self.status
        else:
            self.passes, self.failures = 0, self.failures + 1
            new = False if self.failures >= self.failure else self.status
        if new is None or new == self.status:
            return None
        self.status = new
        return new


async def run(
    probe: Probe,
    *,
    ports: Mapping[str, int],
    cwd: str,
    on_change: OnChange,
    output: Output | None = None,
    env: Mapping[str, str] | None = None,
    until_ok: bool = False,
    excuse: Callable[[], bool] | None = None,
    excuse_for_s: float = EXCUSE_FOR_S,
    patient: Callable[[], bool] | None = None,
) -> ProbeResult:
    """Probe every `period_s` after `initial_delay_s`, calling `on_change` at each change.

    Runs until cancelled; with `until_ok`, returns the result that first made it pass.
    A check that timed out while `excuse()` says so (the service is starved of CPU: see
    infra/pressure.py) is not counted, for at most `excuse_for_s` in a row: a service that
    does not answer for longer is judged as if it were not excused. Otherwise, while
    `patient()` says so (the machine is starved), a timed-out check is made once more with
    `PATIENCE` times its timeout, and that answer is the one counted: a service that answers
    late because its turn came late is not failed for it, one that is hung still is.
    """
    await asyncio.sleep(probe.initial_delay_s)
    loop = asyncio.get_running_loop()
    counts = Thresholds(probe)
    excused_since: float | None = None
    while True:
        began = loop.time()
        result = await check(probe, ports=ports, cwd=cwd, output=output, env=env)
        if result.timed_out and excuse is not None:
            within = excused_since is None or began - excused_since < excuse_for_s
            if within and await asyncio.to_thread(excuse):
                excused_since = began if excused_since is None else excused_since
                await asyncio.sleep(max(0.0, probe.period_s - (loop.time() - began)))
                continue
        if result.timed_out and patient is not None and await asyncio.to_thread(patient):
            slower = msgspec.structs.replace(probe, timeout_s=probe.timeout_s * PATIENCE)
            result = await check(slower, ports=ports, cwd=cwd, output=output, env=env)
        if not result.timed_out:
            excused_since = None
        change = counts.observe(result.ok)
        if change is not None:
            await on_change(change, result)
            if change and until_ok:
                return result
        await asyncio.sleep(max(0.0, probe.period_s - (loop.time() - began)))


async def wait_ok(
    probe: Probe,
    *,
    ports: Mapping[str, int],
    cwd: str,
    output: Output | None = None,
    env: Mapping[str, str] | None = None,
    on_change: OnChange | None = None,
) -> ProbeResult:
    """Until the probe passes `success_threshold` times in a row (a readiness wait)."""

    async def ignore(_: bool, __: ProbeResult) -> None:
        return None

    return await run(
        probe,
        ports=ports,
        cwd=cwd,
        output=output,
        env=env,
        on_change=on_change or ignore,
        until_ok=True,
    )
