"""infra.probes against real local servers and processes (no mocks): each check and the runner."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from infra import probes
from schemas.templates import ExecProbe, HttpProbe, LogProbe, Probe, TcpProbe
from tests.local_http import serving

GUARD_S = 60.0  # a probe timeout that only stops a hung check; nothing is timed by it


@pytest.fixture
async def server() -> AsyncIterator[dict[str, int]]:
    """A local aiohttp app: /ok answers 200, /broken 503, /slow never in time."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response()

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    app.router.add_get("/slow", slow)
    async with serving(app) as port:
        yield {"http": port}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_http_status_judged_against_the_expected_range(server: dict[str, int]) -> None:
    ok = await probes.check(
        Probe(http=HttpProbe(port="http", path="/ok")), ports=server, cwd=".", output=None
    )
    assert (ok.ok, ok.detail) == (True, "HTTP 200") and ok.ms > 0
    bad = await probes.check(
        Probe(http=HttpProbe(port="http", path="/broken")), ports=server, cwd=".", output=None
    )
    assert (bad.ok, bad.detail) == (False, "HTTP 503")
    wanted = Probe(http=HttpProbe(port=server["http"], path="/broken", expect_status=(503,)))
    assert (await probes.check(wanted, ports={}, cwd=".", output=None)).ok


async def test_http_failures_say_why(server: dict[str, int]) -> None:
    slow = Probe(http=HttpProbe(port="http", path="/slow"), timeout_s=0.2)
    result = await probes.check(slow, ports=server, cwd=".", output=None)
    assert (result.ok, result.detail) == (False, "no answer within 0.2s")
    closed = await probes.check(
        Probe(http=HttpProbe(port=free_port())), ports={}, cwd=".", output=None
    )
    assert (closed.ok, closed.detail) == (False, "connection refused")
    unknown = await probes.check(
        Probe(http=HttpProbe(port="admin")), ports=server, cwd=".", output=None
    )
    assert not unknown.ok
    assert unknown.detail == "no leased port named 'admin' (the service's ports: http)"


async def test_tcp(server: dict[str, int]) -> None:
    assert (
        await probes.check(Probe(tcp=TcpProbe(port="http")), ports=server, cwd=".", output=None)
    ).ok
    refused = Probe(tcp=TcpProbe(port=free_port()))
    assert not (await probes.check(refused, ports={}, cwd=".", output=None)).ok


async def test_exec_sees_its_cwd_and_ports_and_is_killed_on_timeout(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("")
    # Timeouts here are guards (a process start took 3.9 s on a loaded machine), except the
    # hang's, which is what is tested: long enough for its shell to write its pid first.
    probe = Probe(
        exec=ExecProbe(command='test -f marker && test "$PORT_WEB" = 4242'), timeout_s=GUARD_S
    )
    assert (await probes.check(probe, ports={"web": 4242}, cwd=str(tmp_path), output=None)).ok
    argv = Probe(exec=ExecProbe(command=["sh", "-c", "exit 3"], expect_exit=3), timeout_s=GUARD_S)
    assert (await probes.check(argv, ports={}, cwd=str(tmp_path), output=None)).detail == "exit 3"
    hang = Probe(exec=ExecProbe(command=f"echo $$ > {tmp_path}/pid; sleep 30"), timeout_s=5)
    result = await probes.check(hang, ports={}, cwd=str(tmp_path), output=None)
    assert not result.ok and "no answer" in result.detail
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_exec_does_not_see_the_health_services_own_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_TEST_SECRET", "hunter2")
    leak = Probe(
        exec=ExecProbe(command='test -z "$FLEET_TEST_SECRET" && test -n "$PATH"'), timeout_s=GUARD_S
    )
    assert (await probes.check(leak, ports={}, cwd=str(tmp_path), output=None)).ok


async def test_log_matches_the_output_so_far() -> None:
    seen = ["starting\n"]
    probe = Probe(log=LogProbe(pattern=r"^listening on \d+$"))
    assert not (await probes.check(probe, ports={}, cwd=".", output=lambda: "".join(seen))).ok
    seen.append("listening on 8080\n")
    result = await probes.check(probe, ports={}, cwd=".", output=lambda: "".join(seen))
    assert result.ok and "listening on 8080" in result.detail


def test_thresholds_change_only_after_enough_results_in_a_row() -> None:
    t = probes.Thresholds(Probe(success_threshold=2, failure_threshold=3))
    assert [t.observe(x) for x in (True, False, True, True, True)] == [None, None, None, True, None]
    assert [t.observe(x) for x in (False, False, True, False, False, False)] == [
        None, None, None, None, None, False,
    ]  # fmt: skip


async def test_runner_waits_for_readiness_and_reports_changes(server: dict[str, int]) -> None:
    port = free_port()
    probe = Probe(http=HttpProbe(port="web", path="/ok"), period_s=0.05, failure_threshold=2)
    changes: list[tuple[bool, str]] = []

    async def record(ok: bool, result: probes.ProbeResult) -> None:
        changes.append((ok, result.detail))

    async def serve_later() -> web.AppRunner:
        await asyncio.sleep(0.3)

        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/ok", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    later = asyncio.create_task(serve_later())
    result = await probes.wait_ok(probe, ports={"web": port}, cwd=".", on_change=record)
    await (await later).cleanup()
    assert result.ok and changes == [(False, "connection refused"), (True, "HTTP 200")]


async def test_a_timed_out_check_is_not_counted_while_excused_then_is(
    server: dict[str, int],
) -> None:
    """A starved service's timeouts (infra/pressure.py) are not counted, for a bounded time."""
    probe = Probe(
        http=HttpProbe(port="http", path="/slow"), period_s=0.02, timeout_s=0.05,
        failure_threshold=1,
    )  # fmt: skip
    changes: list[tuple[bool, str]] = []
    seen_at_excuse: list[int] = []

    async def record(ok: bool, result: probes.ProbeResult) -> None:
        changes.append((ok, result.detail))

    def excuse() -> bool:
        seen_at_excuse.append(len(changes))
        return True

    task = asyncio.create_task(
        probes.run(probe, ports=server, cwd=".", on_change=record, excuse=excuse, excuse_for_s=0.3)
    )
    try:
        deadline = asyncio.get_running_loop().time() + GUARD_S
        while not changes:
            assert asyncio.get_running_loop().time() < deadline, "no verdict after the excuse"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert seen_at_excuse and set(seen_at_excuse) == {0}, seen_at_excuse  # none counted
    assert changes[0] == (False, "no answer within 0.05s"), changes


async def test_a_refused_check_is_never_excused() -> None:
    probe = Probe(http=HttpProbe(port="web", path="/"), period_s=0.02, failure_threshold=1)
    asked: list[bool] = []
    got: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def record(ok: bool, _: probes.ProbeResult) -> None:
        if not got.done():
            got.set_result(ok)

    run = probes.run(
        probe, ports={"web": free_port()}, cwd=".", on_change=record,
        excuse=lambda: asked.append(True) or True,
    )  # fmt: skip
    task = asyncio.create_task(run)
    try:
        assert await asyncio.wait_for(got, GUARD_S) is False
    finally:
        task.cancel()
    assert asked == []  # connection refused is an answer: nothing to excuse


async def test_under_pressure_a_late_answer_is_waited_for_and_a_hung_service_still_fails() -> None:
    """`patient`: a timed-out check is made again with PATIENCE times its timeout, and that
    answer counts; one that times out again counts as the failure it is."""
    released = asyncio.Event()
    asked: list[bool] = []

    async def held(_: web.Request) -> web.Response:
        await released.wait()  # answers only once the runner has asked for patience
        return web.Response(text="late")

    async def never(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    def patient() -> bool:
        asked.append(True)
        released.set()
        return True

    app = web.Application()
    app.router.add_get("/held", held)
    app.router.add_get("/never", never)
    async with serving(app) as port:
        for path, timeout_s, want in (("/held", 1.0, (True, "HTTP 200")), ("/never", 0.05, None)):
            probe = Probe(
                http=HttpProbe(port="http", path=path), period_s=0.02, timeout_s=timeout_s,
                failure_threshold=1,
            )  # fmt: skip
            got: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()

            async def record(ok: bool, result: probes.ProbeResult, got: Any = got) -> None:
                if not got.done():
                    got.set_result((ok, result.detail))

            run = probes.run(
                probe, ports={"http": port}, cwd=".", on_change=record, patient=patient
            )
            task = asyncio.create_task(run)
            try:
                first = await asyncio.wait_for(got, GUARD_S)
            finally:
                task.cancel()
            if want is not None:
                assert first == want, f"the late answer should have been waited for: {first}"
            else:
                patience = timeout_s * probes.PATIENCE
                assert first == (False, f"no answer within {patience:g}s"), first
    assert asked, "the runner never asked whether to be patient"
