"""The mail and topic relay (actors/supervisor/mailrelay.py) and the streams' limits, on a real
nats-server.

The relay runs here as the supervisor runs it, with the agents it knows given by the test; the
senders are `Mailbox`es with `relay_as`, as inside an agent. Every refusal is a sentence and
stores nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy
from nats.js.errors import APIError

from actors.supervisor.mailrelay import MailRelay
from infra import nats as fleet_nats
from infra import natsauth
from infra.mailbox import Mailbox
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from schemas import mail as m
from schemas import subjects
from schemas.errors import PayloadTooLarge, RemoteError
from schemas.mail import MailMessage
from schemas.ratelimit import RateLimiter

KNOWN = {"a1", "b1"}


@pytest.fixture
async def relay(nc: Client) -> AsyncIterator[MailRelay]:
    relay = MailRelay(nc, lambda: KNOWN)
    await relay.start()
    await nc.flush()
    try:
        yield relay
    finally:
        await relay.stop()


def message(body: str, sender: str = "someone-else") -> MailMessage:
    return MailMessage(from_=sender, body=body)


async def test_an_agent_mails_a_known_agent_as_itself(nc: Client, relay: MailRelay) -> None:
    sender = Mailbox(nc, relay_as="a1")
    seq = await sender.send("b1", message("hello", sender="boss"), "high")
    assert seq > 0
    (got,) = await Mailbox(nc).peek("b1")
    assert (got.from_, got.body, got.priority) == ("a1", "hello", "high")  # never "boss"


async def test_mail_to_an_unknown_agent_is_refused_and_nothing_is_stored(
    nc: Client, relay: MailRelay
) -> None:
    with pytest.raises(RemoteError, match="there is no agent 'ghost'") as refused:
        await Mailbox(nc, relay_as="a1").send("ghost", message("boo"))
    assert refused.value.code == "unknown_agent"
    assert (await nc.jetstream().stream_info(subjects.MAIL_STREAM)).state.messages == 0


async def test_a_bad_priority_an_oversized_body_and_a_foreign_inbox_are_refused(
    nc: Client, relay: MailRelay
) -> None:
    raw = msgspec.json.encode({"to": "b1", "priority": "urgent", "body": "x"})
    reply = await nc.request(subjects.mail_relay("a1"), raw, timeout=10)
    error = msgspec.json.decode(reply.data)["error"]
    assert error["code"] == "invalid_field" and "unknown priority 'urgent'" in error["message"]
    big = msgspec.json.encode({"to": "b1", "body": "x" * (m.MAX_MESSAGE_BYTES + 1)})
    reply = await nc.request(subjects.mail_relay("a1"), big, timeout=10)
    assert msgspec.json.decode(reply.data)["error"]["code"] == "payload_too_large"
    with pytest.raises(PayloadTooLarge):  # the sender's own check, before anything is sent
        await Mailbox(nc, relay_as="a1").send("b1", message("x" * (m.MAX_BODY_BYTES + 1)))
    forged = msgspec.json.encode({"to": "b1", "body": "x", "reply_to": "_INBOX.abc.def"})
    reply = await nc.request(subjects.mail_relay("a1"), forged, timeout=10)
    assert "invalid reply_to" in msgspec.json.decode(reply.data)["error"]["message"]
    assert (await nc.jetstream().stream_info(subjects.MAIL_STREAM)).state.messages == 0


async def test_a_flood_of_mail_from_one_agent_is_cut_at_its_rate(
    nc: Client, relay: MailRelay
) -> None:
    # A bucket of 5 that refills once in 100 s: the count does not hang on this machine's pace.
    relay.mail_limit = RateLimiter(0.01, 5, "mail messages")
    sender = Mailbox(nc, relay_as="a1")
    outcomes = []
    for i in range(10):
        try:
            await sender.send("b1", message(str(i)))
            outcomes.append("sent")
        except RemoteError as e:
            outcomes.append(e.code)
            assert "too many mail messages from a1" in str(e)
    assert outcomes == ["sent"] * 5 + ["rate_limited"] * 5
    # Another sender is not held back by a1's flood.
    assert await Mailbox(nc, relay_as="b1").send("a1", message("fine")) > 0
    assert len(await Mailbox(nc).peek("b1")) == 5


async def test_a_topic_message_is_sent_on_with_its_sender_and_bounded(
    nc: Client, relay: MailRelay
) -> None:
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        await got.put(msg)

    await nc.subscribe(subjects.topic("build.>"), cb=on)
    await nc.flush()
    await Mailbox(nc, relay_as="a1").publish_topic("build.done", b"ok")
    msg = await asyncio.wait_for(got.get(), 10)
    assert msg.subject == subjects.topic("build.done") and msg.data == b"ok"
    assert (msg.headers or {})[m.FROM_HEADER] == "a1"
    with pytest.raises(PayloadTooLarge):
        await Mailbox(nc, relay_as="a1").publish_topic("build.big", b"x" * (m.MAX_TOPIC_BYTES + 1))
    big = await nc.request(
        subjects.topic_relay("a1"),
        b"x" * (m.MAX_TOPIC_BYTES + 1),
        timeout=10,
        headers={m.TOPIC_HEADER: "build.big"},
    )
    assert msgspec.json.decode(big.data)["error"]["code"] == "payload_too_large"
    wild = await nc.request(
        subjects.topic_relay("a1"), b"x", timeout=10, headers={m.TOPIC_HEADER: "build.*"}
    )
    assert "without wildcards" in msgspec.json.decode(wild.data)["error"]["message"]
    assert got.empty()


async def test_a_full_mailbox_refuses_new_mail_and_keeps_the_old(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_nats, "MAIL_MAX_PER_MAILBOX", 3)
    nc = await connect(nats_url)
    try:
        await ensure_streams(nc.jetstream())
        relay = MailRelay(nc, lambda: KNOWN)
        await relay.start()
        sender = Mailbox(nc, relay_as="a1")
        for i in range(3):
            await sender.send("b1", message(f"kept {i}"))
        with pytest.raises(RemoteError, match="mail to b1 \\(normal\\) was not stored") as full:
            await sender.send("b1", message("one too many"))
        assert full.value.code == "mailbox_full"
        assert await sender.send("b1", message("another priority"), "low") > 0
        bodies = [i.body for i in await Mailbox(nc).peek("b1")]
        assert bodies == ["kept 0", "kept 1", "kept 2", "another priority"]
        await relay.stop()
    finally:
        await nc.close()


async def test_a_full_event_log_refuses_the_next_append_and_keeps_every_event(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_nats, "EVENTS_MAX_PER_AGENT", 2)
    nc = await connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        config = (await js.stream_info(subjects.EVENTS_STREAM)).config
        assert config.discard == DiscardPolicy.NEW and config.discard_new_per_subject
        assert config.max_bytes == fleet_nats.EVENTS_MAX_BYTES
        for i in range(2):
            await js.publish(subjects.events("e1"), f"event {i}".encode())
        with pytest.raises(APIError):
            await js.publish(subjects.events("e1"), b"event 2")
        await js.publish(subjects.events("e2"), b"another agent's log is not full")
        kept = await js.get_msg(subjects.EVENTS_STREAM, seq=1)
        assert kept.data == b"event 0"
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 3
    finally:
        await nc.close()


async def test_limits_the_store_cannot_reserve_are_made_smaller_never_dropped(
    tmp_path: Path,
) -> None:
    """JetStream reserves `max_bytes` in its store: on a small one, the limits shrink to fit."""
    config = tmp_path / "small.conf"
    config.write_text(json.dumps({"jetstream": {"max_file_store": 2 * 1024**3}}))
    server = NatsServer.start(tmp_path / "nats", config=config)
    try:
        nc = await connect(server.url)
        js = nc.jetstream()

        async def limits() -> dict[str, int]:
            streams = (subjects.EVENTS_STREAM, subjects.MAIL_STREAM, subjects.MAIL_DLQ_STREAM)
            return {n: (await js.stream_info(n)).config.max_bytes or 0 for n in streams}

        await ensure_streams(js)
        made = await limits()
        assert 0 < made[subjects.EVENTS_STREAM] < fleet_nats.EVENTS_MAX_BYTES, made
        assert 0 < made[subjects.MAIL_STREAM] <= fleet_nats.MAIL_MAX_BYTES, made
        for _ in range(2):  # every process does it again at its start: nothing shrinks
            await ensure_streams(js)
            assert await limits() == made
        events = (await js.stream_info(subjects.EVENTS_STREAM)).config
        assert events.discard == DiscardPolicy.NEW
        await nc.close()
    finally:
        server.stop()


async def test_answers_go_by_the_relay_to_the_waiting_sender_only(
    nc: Client, relay: MailRelay, nats_url: str
) -> None:
    # a1's connection has an agent's reply inbox (`_INBOX.agent-a1`), as inside its panes.
    a1_nc = await connect(nats_url, inbox_prefix=natsauth.agent_inbox("a1"))
    a1, b1 = Mailbox(a1_nc, relay_as="a1"), Mailbox(nc, relay_as="b1")

    async def answer(box: Mailbox, me: str, body: str, asking: asyncio.Future[object]) -> None:
        while not (got := await box.read(me, 1)):
            assert not asking.done(), asking.result()  # the request failed: say how
            await box.wait(me, 1.0)
        await box.reply(got[0].item, body, me)
        await got[0].ack()

    # Agent to agent: a1 waits on its own reply inbox, b1's answer is relayed there.
    asking = asyncio.ensure_future(a1.request("b1", message("ping?"), timeout=30))
    await asyncio.wait_for(answer(b1, "b1", "pong", asking), 60)
    got = await asking
    assert (got.from_, got.body) == ("b1", "pong")
    await a1_nc.close()
    # The control plane waits on a random subject under WAIT_INBOX_PREFIX; an agent answers.
    asking = asyncio.ensure_future(Mailbox(nc).request("b1", message("status?", "boss"), 30))
    await asyncio.wait_for(answer(b1, "b1", "all good", asking), 60)
    got = await asking
    assert (got.from_, got.body) == ("b1", "all good")
    # Any other inbox (a request of the control plane, say) is refused: no forged answers.
    for inbox in ("_INBOX.abcdef.123", "_INBOX.agent-ghost.x", f"{m.WAIT_INBOX_PREFIX}.a.b"):
        forged = msgspec.json.encode({"body": "forged", "answer_inbox": inbox})
        reply = await nc.request(subjects.mail_relay("a1"), forged, timeout=10)
        assert "invalid answer_inbox" in msgspec.json.decode(reply.data)["error"]["message"]
