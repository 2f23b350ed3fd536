"""The bus is the API: a plain NATS client drives agents, bad input gets a code per kind,
unknown agents are answered, find/acquire work through the registry, limits hold."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.agent import AgentConfig
from infra import registry
from infra.eventstore import EventStore
from infra.nats import connect
from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn, until


async def replies_to(nc: Client, subject: str, data: bytes, wait: float = 0.5) -> list[Any]:
    """Every reply one request gets (nats-py's `request` would keep only the first)."""
    inbox = nc.new_inbox()
    got: list[Any] = []

    async def keep(msg: Msg) -> None:
        got.append(msgspec.json.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=keep)
    await nc.publish(subject, data, reply=inbox)
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return got


async def test_an_unknown_agent_is_answered_with_unknown_agent(fleet: Fleet, nc: Client) -> None:
    got = await replies_to(nc, subjects.command("nobody"), b'{"type":"show"}')
    assert len(got) == 1
    assert got[0]["ok"] is False
    assert got[0]["error"]["code"] == "unknown_agent"
    assert "nobody" in got[0]["error"]["message"]


async def test_a_plain_client_pauses_and_resumes_and_each_bad_input_has_its_code(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "b1"))["ok"]
    subject = subjects.command("b1")
    once = await replies_to(nc, subject, b'{"type":"show"}')
    assert len(once) == 1 and once[0]["ok"], "a known agent is answered exactly once"
    assert (await request(nc, subject, b'{"type":"pause"}'))["agent"]["lifecycle"] == "PAUSED"
    assert (await request(nc, subject, b'{"type":"resume"}'))["agent"]["lifecycle"] == "RUNNING"
    before = await EventStore(nc).last_seq("b1")
    bad = {
        b"{not json": "invalid_json",
        b"[1, 2]": "not_an_object",
        b'{"type": "fly"}': "unknown_type",
        b'{"type": "send", "text": 5}': "invalid_field",
        b'{"type": "resume"}': "invalid_transition",  # it is RUNNING
        b'{"text": "hi"}': "missing_type",
        b"x" * (70 * 1024): "payload_too_large",
    }
    for data, code in bad.items():
        reply = await request(nc, subject, data)
        assert reply["ok"] is False and reply["error"]["code"] == code, (data[:30], reply)
        assert reply["error"]["message"]
    assert await EventStore(nc).last_seq("b1") == before, "bad input wrote nothing"
    assert (await command(nc, "b1", "show"))["agent"]["lifecycle"] == "RUNNING"


async def test_find_returns_ready_agents_with_every_capability_and_acquire_spawns(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "f1", capabilities=["python", "git"])
    await spawn(nc, str(repo), "f2", capabilities=["python"])
    find = subjects.control("find")

    async def found(caps: list[str]) -> list[str]:
        reply = await request(nc, find, {"capabilities": caps})
        assert reply["ok"], reply
        return [a["id"] for a in reply["agents"]]

    await until(lambda: _equals(found(["python"]), ["f1", "f2"]), "both agents in the registry")
    assert await found(["python", "git"]) == ["f1"]
    assert await found(["rust"]) == []
    entry = (await request(nc, find, {"capabilities": ["git"]}))["agents"][0]
    assert entry["endpoint"] == subjects.command("f1") and entry["activity"] == "READY"
    assert (await command(nc, "f1", "pause"))["ok"]
    await until(lambda: _equals(found(["git"]), []), "a paused agent to drop out of find")

    acquire = subjects.control("acquire")
    short = await request(nc, acquire, {"capabilities": ["python"], "count": 3})
    assert short["error"]["code"] == "not_enough_agents"
    got = await request(nc, acquire, {"capabilities": ["python"], "count": 2, "repo": str(repo)})
    assert got["ok"], got
    assert len(got["agents"]) == 2 and len(got["spawned"]) == 1
    assert got["agents"][0]["id"] == "f2"
    new = got["spawned"][0]
    assert (await command(nc, new, "show"))["agent"]["lifecycle"] == "RUNNING"
    await until(lambda: _equals(found(["python"]), sorted(["f2", new])), "the new agent found")


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_commands_past_the_rate_limit_get_rate_limited(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "r1")
    burst = AgentConfig.cmd_burst
    subject, show = subjects.command("r1"), b'{"type":"show"}'
    got = await asyncio.gather(*(request(nc, subject, show) for _ in range(int(burst) + 200)))
    codes = [r["error"]["code"] for r in got if not r["ok"]]
    assert len(got) - len(codes) >= burst, "the burst is allowed"
    assert codes and set(codes) == {"rate_limited"}
    limited = next(r for r in got if not r["ok"])["error"]["message"]
    assert "too many commands from" in limited and "retry in" in limited
    other = await connect(fleet.nats_url)  # another sender has its own bucket
    try:
        assert (await request(other, subject, show))["ok"]
    finally:
        await other.close()


async def test_registry_entries_of_live_agents_carry_a_recent_heartbeat(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "h1", capabilities=["x"])

    async def shown() -> list[tuple[str, tuple[str, ...], str]]:
        return [(e.id, e.capabilities, e.lifecycle) for e in await registry.live(nc)]

    await until(lambda: _equals(shown(), [("h1", ("x",), "RUNNING")]), "h1 RUNNING in the registry")
    assert (await command(nc, "h1", "stop"))["ok"]
    assert (await command(nc, "h1", "remove"))["ok"]
    await until(lambda: _equals(registry.entries(nc), []), "the removed agent's entry gone")
    got = await until(
        lambda: _unknown(nc, "h1"), "the removed agent answered as unknown by the supervisor"
    )
    assert got


async def _unknown(nc: Client, agent_id: str) -> bool:
    replies = await replies_to(nc, subjects.command(agent_id), b'{"type":"show"}', 0.3)
    return [r["error"]["code"] for r in replies] == ["unknown_agent"]
