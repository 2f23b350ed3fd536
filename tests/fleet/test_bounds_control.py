"""The control plane's refusals on a real fleet: an unknown `fleet.ctl` verb is answered at
once, a spawn refused for its repository leaves no agent behind, and NUL in `send` text is
refused with nothing recorded."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError

from infra.eventstore import EventStore
from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn


async def test_an_unknown_control_verb_is_answered_at_once_and_known_ones_still_work(
    fleet: Fleet, nc: Client
) -> None:
    """NATS's own "no responders" (503), not a timeout: nothing shadows the verbs fleetd has."""
    for subject in ("fleet.ctl.bogus", "fleet.ctl.spawn.extra", "fleet.ctl.nope.a.b"):
        with pytest.raises(NoRespondersError):
            await nc.request(subject, b"{}", timeout=30)
    with pytest.raises(NoRespondersError):  # a known verb whose service is not running here
        await nc.request(subjects.control("health"), b"{}", timeout=30)
    listed = await nc.request(subjects.control("list"), b"{}", timeout=30)
    assert msgspec.json.decode(listed.data)["ok"] is True


async def test_a_spawn_in_a_folder_that_is_no_repository_leaves_no_agent(
    fleet: Fleet, nc: Client, repo: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    for _ in range(2):  # the pool actor it took is let go, and the name stays free
        reply = await spawn(nc, str(plain), "nr1")
        assert reply["ok"] is False, reply
        assert "it is not a git repository" in reply["error"]["message"], reply
    assert await EventStore(nc).last_seq("nr1") == 0
    listed = await request(nc, subjects.control("list"), {"removed": True}, timeout=30)
    assert "nr1" not in [a["id"] for a in listed["agents"]]
    shown = await command(nc, "nr1", "show", timeout=30)
    assert shown["error"]["code"] == "unknown_agent", shown
    # The name is free: a spawn in a real repository makes that agent.
    made = await spawn(nc, str(repo), "nr1")
    assert made["ok"] and made["agent"]["lifecycle"] == "RUNNING", made


async def test_send_text_with_a_nul_is_refused_and_records_nothing(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "nul1"))["ok"]
    before = await EventStore(nc).last_seq("nul1")
    refused = await command(nc, "nul1", "send", text="echo a\x00b")
    assert refused["ok"] is False and refused["error"]["code"] == "invalid_name", refused
    assert "control character U+0000" in refused["error"]["message"]
    assert await EventStore(nc).last_seq("nul1") == before


async def test_the_error_log_is_there_from_the_start_and_takes_an_actors_traceback(
    fleet: Fleet, nc: Client
) -> None:
    """The supervisor makes `<state dir>/fleet-errors.log`; a traceback logged in a Ray worker
    that installed the log as fleetd's actors do lands there under its id."""
    import ray

    path = fleet.state_dir / "fleet-errors.log"
    assert path.exists()

    probe = ray.remote(_ErrorProbe).options(namespace=fleet.namespace).remote(str(fleet.state_dir))
    await probe.fail.remote("00aa11bb22cc")
    text = path.read_text()
    assert "--- error 00aa11bb22cc " in text and "RuntimeError: a bug in an actor" in text


class _ErrorProbe:
    """An actor that installs the error log as fleetd's actors do, then logs a traceback."""

    def __init__(self, state_dir: str) -> None:
        from infra import errorlog

        errorlog.install(state_dir)

    def fail(self, error_id: str) -> None:
        import logging

        try:
            raise RuntimeError("a bug in an actor")
        except RuntimeError:
            logging.getLogger("actors.test").exception("it failed (error id %s)", error_id)
