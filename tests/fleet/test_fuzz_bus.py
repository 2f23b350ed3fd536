"""Fuzzing the bus: arbitrary JSON values and arbitrary bytes on every command and control
subject. Every request gets a structured error or a valid reply, nothing dies, and a refused
request leaves the event log as it was."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import NoRespondersError

from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn

VERBS = ("spawn", "list", "find", "acquire", "templates", "ports", "health")
SAFE_TYPES = ("show", "output", "pause", "resume", "fly", "")  # nothing that ends the agent

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Shaped like a command: a known (harmless) type with fields of any name and value.
command_like = st.builds(
    lambda t, extra: {"type": t, **extra},
    st.sampled_from(SAFE_TYPES),
    st.dictionaries(st.sampled_from(["lines", "window", "by", "id", "text", "x"]), json_values),
)
control_like = st.dictionaries(
    st.sampled_from(["capabilities", "count", "limit", "template", "removed", "name", "op"]),
    json_values,
    max_size=4,
)
payloads = st.one_of(
    json_values.map(msgspec.json.encode),
    st.binary(max_size=300),
    command_like.map(msgspec.json.encode),
)


def drive(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine on the test's loop from hypothesis's (synchronous) thread."""
    return lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)


async def events_seq(nc: Client) -> int:
    info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
    return int(info.state.last_seq)


async def checked(nc: Client, subject: str, data: bytes) -> dict[str, Any]:
    """One request; its reply must be the one shape, an error must carry a code and a sentence,
    and a refused request must not have written to the log."""
    before = await events_seq(nc)
    reply = await request(nc, subject, data, timeout=10)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        error = reply["error"]
        assert error["code"] and error["message"], reply
        assert error["code"] != "internal", reply
        assert await events_seq(nc) == before, (subject, data[:80], reply)
    return reply


async def answered_verbs(nc: Client) -> list[str]:
    found = []
    for verb in VERBS:
        try:
            await nc.request(subjects.control(verb), b"{}", timeout=5)
            found.append(verb)
        except NoRespondersError:
            continue
    return found


@pytest.mark.slow
async def test_arbitrary_input_on_every_subject_gets_a_structured_answer(
    fleet: Fleet, nc: Client, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@e", "-c", "user.name=T", "commit", "-q", "--allow-empty",
         "-m", "first"], cwd=repo, check=True,
    )  # fmt: skip
    assert (await spawn(nc, str(repo), "z1"))["ok"]
    verbs = await answered_verbs(nc)
    assert {"spawn", "list", "find", "acquire"} <= set(verbs)
    run = drive(asyncio.get_running_loop())
    quick = settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )

    @quick
    @given(data=payloads, target=st.sampled_from(["z1", "nobody"]))
    def fuzz_commands(data: bytes, target: str) -> None:
        run(checked(nc, subjects.command(target), data))

    @quick
    @given(
        data=st.one_of(payloads, control_like.map(msgspec.json.encode)),
        verb=st.sampled_from(verbs),
    )
    def fuzz_control(data: bytes, verb: str) -> None:
        run(checked(nc, subjects.control(verb), data))

    await asyncio.to_thread(fuzz_commands)
    await asyncio.to_thread(fuzz_control)
    # Nothing died: the agent and the supervisor still answer, and the agent is whole.
    shown = await command(nc, "z1", "show")
    assert shown["ok"] and shown["agent"]["lifecycle"] in ("RUNNING", "PAUSED")
    listed = await request(nc, subjects.control("list"), {})
    assert [a["id"] for a in listed["agents"]] == ["z1"]
