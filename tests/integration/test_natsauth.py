"""NATS users on a real nats-server: the control plane may do everything, an agent only its own.

The server runs with the config infra/natsauth.py writes, and users come and go through the
credentials service (services/credential_issuer.py) as `fleet up` runs it. A denied publish or
subscribe is seen by the client as nats-py's permissions-violation error.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.supervisor.mailrelay import MailRelay
from infra import natsauth
from infra.mailbox import Mailbox
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from schemas import subjects
from schemas.errors import StoreUnavailable
from schemas.mail import MailMessage
from services import credential_issuer


@pytest.fixture
def auth(tmp_path: Path) -> natsauth.AuthDir:
    return natsauth.AuthDir.of(tmp_path / "server-state")


@pytest.fixture
def server(auth: natsauth.AuthDir, tmp_path: Path) -> Iterator[NatsServer]:
    auth.write_config(natsauth.new_password())
    srv = NatsServer.start(tmp_path / "nats", config=auth.config_path)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def control(server: NatsServer, auth: natsauth.AuthDir) -> AsyncIterator[Client]:
    """The control plane's connection, with the credentials service answering on it."""
    nc = await connect(natsauth.with_credential(server.url, auth.control()), name="test-control")
    await ensure_streams(nc.jetstream())
    sub = await credential_issuer.start(nc, credential_issuer.EmbeddedUsers(auth, server=server))
    try:
        yield nc
    finally:
        await sub.unsubscribe()
        await nc.close()


@dataclass
class Agent:
    """One agent's own connection, and every error the server sent it."""

    agent_id: str
    cred: natsauth.Credential
    nc: Client
    errors: list[str] = field(default_factory=list)

    async def violations(self) -> list[str]:
        await asyncio.sleep(0.05)  # the server's -ERR follows the denied operation
        await self.nc.flush()
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


async def grant(control: Client, agent_id: str) -> natsauth.Credential:
    """What an agent actor does at spawn (actors/agent/creds.py): a password, its hash to
    fleet up."""
    password = natsauth.new_password()
    hashed = natsauth.hash_password(password)
    request = {"op": "grant", "agent_id": agent_id, "password_hash": hashed}
    msg = await control.request(subjects.control("creds"), msgspec.json.encode(request), timeout=20)
    reply = msgspec.json.decode(msg.data)
    assert reply == {"ok": True, "user": f"agent-{agent_id}", "changed": True}
    return natsauth.Credential(
        user=natsauth.agent_user(agent_id),
        password=password,
        inbox_prefix=natsauth.agent_inbox(agent_id),
    )


async def revoke(control: Client, agent_id: str) -> dict[str, object]:
    request = {"op": "revoke", "agent_id": agent_id}
    msg = await control.request(subjects.control("creds"), msgspec.json.encode(request), timeout=20)
    reply: dict[str, object] = msgspec.json.decode(msg.data)
    return reply


async def connect_agent(server: NatsServer, agent_id: str, cred: natsauth.Credential) -> Agent:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(
        natsauth.with_credential(server.url, cred),
        inbox_prefix=cred.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    return Agent(agent_id, cred, nc, errors)


@pytest.fixture
async def a1(server: NatsServer, control: Client) -> AsyncIterator[Agent]:
    agent = await connect_agent(server, "a1", await grant(control, "a1"))
    try:
        yield agent
    finally:
        await agent.nc.close()


def mail(body: str, sender: str = "user") -> MailMessage:
    return MailMessage(from_=sender, body=body)


async def test_without_a_user_the_server_refuses(server: NatsServer) -> None:
    with pytest.raises(StoreUnavailable, match="refused this client") as caught:
        await connect(server.url, reconnect=False)
    bad = natsauth.Credential(user=natsauth.CONTROL_USER, password="not-it")
    with pytest.raises(StoreUnavailable) as wrong:
        await connect(natsauth.with_credential(server.url, bad), reconnect=False)
    assert "not-it" not in str(wrong.value) and "not-it" not in str(caught.value)


async def test_the_control_plane_does_everything_the_fleet_needs(control: Client) -> None:
    js = control.jetstream()
    ack = await js.publish(subjects.events("b1"), b"{}")
    assert ack.stream == subjects.EVENTS_STREAM
    box = Mailbox(control)
    await box.send("a1", mail("hello"), "high")
    assert [i.body for i in await box.peek("a1")] == ["hello"]  # a stream read: control only
    assert (await box.next("a1")).body == "hello"  # type: ignore[union-attr]
    kv = await js.key_value(subjects.PORTS_BUCKET)
    await kv.put("probe", b"1")

    async def pong(msg: Msg) -> None:
        await msg.respond(b"pong")

    sub = await control.subscribe(subjects.command("b1"), cb=pong)
    assert (await control.request(subjects.command("b1"), b"ping", timeout=30)).data == b"pong"
    await sub.unsubscribe()


async def test_an_agent_reads_its_commands_but_never_writes_its_log(
    control: Client, a1: Agent
) -> None:
    heard: asyncio.Queue[Msg] = asyncio.Queue()
    await a1.nc.subscribe(subjects.command("a1"), cb=heard.put)
    await a1.nc.flush()
    asking = asyncio.ensure_future(control.request(subjects.command("a1"), b"pause", timeout=2))
    seen = await asyncio.wait_for(heard.get(), 30)
    assert seen.data == b"pause" and await a1.violations() == []
    # It may not answer it, nor any request: its actor answers, a forged reply is dropped.
    await seen.respond(b"done (forged)")
    assert f'publish to "{seen.reply.lower()}"' in " ".join(await a1.violations())
    with pytest.raises(nats.errors.TimeoutError):
        await asking
    # Its own log is its actor's alone: the server drops the publish, nobody sees it.
    await a1.nc.publish(subjects.events("a1"), b'{"type":"x"}')
    assert f'publish to "{subjects.events("a1")}"' in " ".join(await a1.violations())
    info = await control.jetstream().stream_info(
        subjects.EVENTS_STREAM, subjects_filter=subjects.events("a1")
    )
    assert not (info.state.subjects or {})


async def test_an_agent_reads_its_own_mail_sends_mail_and_uses_topics(
    control: Client, a1: Agent
) -> None:
    relay = MailRelay(control, lambda: {"a1", "b1"})  # as the supervisor runs it
    await relay.start()
    await Mailbox(control).send("a1", mail("for a1"), "critical")
    mine = Mailbox(a1.nc, relay_as="a1")  # it sends by the relay, as itself
    got = await mine.read("a1", 5)
    assert [d.item.body for d in got] == ["for a1"]
    await got[0].ack()
    await a1.nc.flush()
    for _ in range(100):  # acked: the work queue drops it (an ack is not confirmed to the sender)
        if not await Mailbox(control).peek("a1"):
            break
        await asyncio.sleep(0.02)
    assert await Mailbox(control).peek("a1") == []
    await mine.send("b1", mail("from a1", "a1"), "normal")
    assert [i.body for i in await Mailbox(control).peek("b1")] == ["from a1"]
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def hear(msg: Msg) -> None:
        await heard.put(msg.data)

    await mine.subscribe_topic("builds.>", hear)
    await a1.nc.flush()  # the server has the subscription before anyone publishes on another link
    await Mailbox(control).publish_topic("builds.main", b"green")
    await mine.publish_topic("builds.a1", b"mine")
    # A guard, not a timing: a loaded 2-core machine (one run in CI's shape missed a 2 s one).
    assert {await asyncio.wait_for(heard.get(), 30) for _ in range(2)} == {b"green", b"mine"}
    assert await mine.wait("a1", 0.01)  # its doorbell: a core subscription on its own mail
    assert await a1.violations() == []
    # Not straight into JetStream, nor onto a topic: only by the relay.
    await a1.nc.publish(subjects.mail("b1", "critical"), b'{"from":"boss","body":"forged"}')
    await a1.nc.publish(subjects.topic("builds.main"), b"forged")
    denied = " ".join(await a1.violations())
    assert f'publish to "{subjects.mail("b1", "critical")}"' in denied
    assert f'publish to "{subjects.topic("builds.main")}"' in denied
    assert [i.body for i in await Mailbox(control).peek("b1")] == ["from a1"]
    await relay.stop()


async def test_an_agent_cannot_command_another(control: Client, a1: Agent) -> None:
    heard: list[bytes] = []

    async def b1_actor(msg: Msg) -> None:
        heard.append(msg.data)
        await msg.respond(b"obeyed")

    await control.subscribe(subjects.command("b1"), cb=b1_actor)
    await control.flush()
    with pytest.raises(nats.errors.TimeoutError):  # the server drops it: nobody ever sees it
        await a1.nc.request(subjects.command("b1"), b'{"type":"kill"}', timeout=0.5)
    assert heard == []
    assert f'permissions violation for publish to "{subjects.command("b1")}"' in " ".join(
        await a1.violations()
    )
    await a1.nc.subscribe(subjects.command("b1"))  # nor listen to its commands
    assert any("subscription" in v for v in await a1.violations())


async def test_an_agent_cannot_read_anothers_mail_or_write_its_log(
    control: Client, a1: Agent
) -> None:
    await Mailbox(control).send("b1", mail("secret for b1"), "high")
    thief = Mailbox(a1.nc)
    with pytest.raises(TimeoutError):  # its consumer create is dropped as a violation
        await thief.read("b1", 5)
    api = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.MAIL_STREAM}.{subjects.mail_consumer('b1', 'high')}"
    await a1.nc.publish(api, b'{"batch": 5, "no_wait": true}', reply=a1.nc.new_inbox())
    await a1.nc.subscribe(subjects.mailbox("b1"))  # nor ring b1's doorbell
    await a1.nc.publish(subjects.events("b1"), b'{"type":"forged"}')
    violations = " ".join(await a1.violations())
    assert f'publish to "{api.lower()}"' in violations  # nats-py lowercases the -ERR text
    assert f'publish to "{subjects.events("b1")}"' in violations
    assert "subscription" in violations
    assert [i.body for i in await Mailbox(control).peek("b1")] == ["secret for b1"]  # untouched
    info = await control.jetstream().stream_info(
        subjects.EVENTS_STREAM, subjects_filter=subjects.events("b1")
    )
    assert not (info.state.subjects or {})  # no event of b1 was written


async def test_revoked_at_stop_the_agent_is_cut_off(
    server: NatsServer, control: Client, a1: Agent
) -> None:
    assert await revoke(control, "a1") == {"ok": True, "user": "agent-a1", "changed": True}
    for _ in range(100):  # the server closes the connection of a user that is gone
        if a1.nc.is_closed:
            break
        await asyncio.sleep(0.02)
    assert a1.nc.is_closed
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            natsauth.with_credential(server.url, a1.cred),
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    again = await revoke(control, "a1")
    assert again == {"ok": True, "user": "agent-a1", "changed": False}
    assert "agent-a1" not in auth_text(server)


def auth_text(server: NatsServer) -> str:
    assert server.config is not None
    return server.config.read_text()


async def test_the_config_holds_hashes_and_private_files(
    server: NatsServer, control: Client, auth: natsauth.AuthDir, a1: Agent
) -> None:
    text = auth_text(server)
    assert a1.cred.password not in text
    assert text.count('"$2b$') + text.count('"$2a$') == 2  # the reload canary, a1
    # The control plane's password is there in plain, as in control.json beside it (0600).
    assert auth.control().password in auth.control_path.read_text()
    for path in (auth.config_path, auth.control_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth.root.stat().st_mode) == 0o700


async def test_a_bad_request_gets_a_sentence(control: Client) -> None:
    msg = await control.request(
        subjects.control("creds"), b'{"op":"grant","agent_id":"a.b"}', timeout=5
    )
    reply = msgspec.json.decode(msg.data)
    assert reply["ok"] is False and "agent id" in reply["error"]["message"]


async def test_users_survive_a_server_restart(
    server: NatsServer, control: Client, a1: Agent
) -> None:
    """`fleet up` restarts a dead server on the same config: agents still get in."""
    await a1.nc.close()
    server.kill()
    server.restart()
    again = await connect_agent(server, "a1", a1.cred)
    try:
        await again.nc.flush()  # a round trip as agent-a1: the server took its password
        assert again.nc.is_connected
    finally:
        await again.nc.close()


def test_urls_carry_and_lose_credentials() -> None:
    cred = natsauth.Credential(user="u", password="p-w_1")
    url = natsauth.with_credential("nats://h1:4222,nats://x:y@h2:4223", cred)
    assert url == "nats://u:p-w_1@h1:4222,nats://u:p-w_1@h2:4223"
    assert natsauth.without_userinfo(url) == "nats://h1:4222,nats://h2:4223"
    assert natsauth.userinfo_of(url) == cred
    assert natsauth.userinfo_of("nats://h:1") is None
    assert natsauth.with_credential("nats://h:1", None) == "nats://h:1"


def test_a_credentials_file_is_read_or_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    cred = natsauth.Credential(user="agent-a", password="x", inbox_prefix="_INBOX.agent-a")
    natsauth.write_credential(path, cred)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert natsauth.read_credential(path) == cred
    with pytest.raises(natsauth.CredentialsUnusable, match="there is no such file"):
        natsauth.read_credential(tmp_path / "none.json")
    path.write_text("user=x")
    with pytest.raises(natsauth.CredentialsUnusable, match="not a fleetd credentials file"):
        natsauth.read_credential(path)


def test_fleet_up_on_an_operators_nats_keeps_the_credential_it_was_given(
    server: NatsServer,
    auth: natsauth.AuthDir,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`FLEET_NATS_URL` with a user in it: fleet up and the CLI use it, nothing prints it."""
    from tests.integration.test_up import _first_line, _stopped_cleanly, fleet

    control = auth.control()  # stands in for a user the operator made for fleetd
    monkeypatch.setenv("FLEET_NATS_URL", natsauth.with_credential(server.url, control))
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--json"],
        cwd=Path(__file__).resolve().parents[2],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed = json.loads(_first_line(proc))
    assert printed["nats_url"] == server.url and printed["nats_pid"] is None
    assert natsauth.read_credential(printed["nats_creds"]) == control
    monkeypatch.delenv("FLEET_NATS_URL")  # the CLI finds the credential through the state dir
    listed = fleet("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert control.password not in fleet("status").stdout
    _stopped_cleanly(proc, printed, state_dir)


async def test_users_of_agents_stopped_while_fleet_up_was_down_are_pruned(
    server: NatsServer, control: Client, auth: natsauth.AuthDir
) -> None:
    from infra.eventstore import EventStore
    from schemas import commands as c
    from schemas.agent import decide, initial
    from schemas.chain import Position

    store, now = EventStore(control), datetime.now(UTC)
    ids = iter(range(1_000_000))

    async def record(agent_id: str, *cmds: c.AgentCommand) -> None:
        state, pos = initial(agent_id), Position()
        for cmd in cmds:
            made = decide(state, cmd, now=now, new_id=lambda: f"ev-{next(ids)}")
            state, pos = await store.record(state, made, pos)

    await record("live1", c.Create(name="live1"), c.MarkRunning())
    await record("done1", c.Create(name="done1"), c.MarkRunning(), c.Stop(), c.MarkStopped())
    live = await connect_agent(server, "live1", await grant(control, "live1"))
    stale = await connect_agent(server, "done1", await grant(control, "done1"))
    ghost = await grant(control, "ghost1")  # no log at all
    try:
        access = credential_issuer.EmbeddedUsers(auth, server=server)
        assert await credential_issuer.prune(control, access) == ["done1", "ghost1"]
        assert sorted(auth.agents()) == ["live1"]
        for _ in range(100):
            if stale.nc.is_closed:
                break
            await asyncio.sleep(0.02)
        assert stale.nc.is_closed and not live.nc.is_closed
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                natsauth.with_credential(server.url, ghost),
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
    finally:
        await live.nc.close()
        await stale.nc.close()
