"""Mail against a real nats-server: priority order, redelivery, dead letters, TTL, request/
response, broadcast by capability, topics with wildcards, limits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra import registry
from infra.deadletters import DeadLetters
from infra.mailbox import Mailbox
from infra.mailpull import Delivery, MailPolicy, Pulls
from schemas import subjects
from schemas.discovery import RegistryEntry
from schemas.errors import MailTimeout, PayloadTooLarge, RateLimited
from schemas.mail import MAX_BODY_BYTES, DeadLetterNotice, MailMessage, decode


def msg(body: str, sender: str = "alice", **fields: object) -> MailMessage:
    return MailMessage(from_=sender, body=body, **fields)  # type: ignore[arg-type]


async def test_a_critical_message_overtakes_ten_thousand_low_ones(nc: Client) -> None:
    box = Mailbox(nc)
    lows = [("bob", msg(f"low {i}"), "low") for i in range(10_000)]
    assert await box.send_many(lows) == 10_000
    await box.send("bob", msg("fire!"), "critical")
    await box.send("bob", msg("soon"), "high")
    first = await box.next("bob")
    assert first is not None
    assert (first.priority, first.from_, first.body) == ("critical", "alice", "fire!")
    second = await box.next("bob")
    assert second is not None and second.body == "soon"
    third = await box.next("bob")
    assert third is not None and (third.priority, third.body) == ("low", "low 0")


async def test_a_batch_is_read_highest_priority_first_and_acked_mail_is_gone(nc: Client) -> None:
    box = Mailbox(nc)
    for priority in ("low", "normal", "high", "critical"):
        await box.send("carol", msg(priority), priority)
    got = await box.read("carol", 10)
    assert [d.item.priority for d in got] == ["critical", "high", "normal", "low"]
    for d in got:
        await d.ack()
    await nc.flush()
    assert await box.read("carol", 10) == []
    info = await nc.jetstream().stream_info(subjects.MAIL_STREAM)
    assert info.state.messages == 0


async def test_unacked_mail_is_redelivered_then_dead_lettered_with_a_notice(nc: Client) -> None:
    policy = MailPolicy(backoff_s=(0.3, 0.3), max_deliver=3)
    box, mover = Mailbox(nc, policy), DeadLetters(nc)
    await mover.start()
    notices: asyncio.Queue[Msg] = asyncio.Queue()
    await nc.subscribe(subjects.notify("warning"), cb=notices.put)
    seq = await box.send("dave", msg("read me"), "high")
    deliveries = []
    for _ in range(3):
        for _ in range(40):
            got = await box.read("dave")
            if got:
                deliveries.append(got[0].item.deliveries)
                break
            await asyncio.sleep(0.05)
    assert deliveries == [1, 2, 3]
    # The server gives up on the message when it would deliver it a 4th time: on a pull.
    await asyncio.sleep(0.4)
    assert await box.read("dave") == []
    notice = msgspec.json.decode(
        (await asyncio.wait_for(notices.get(), 10)).data, type=DeadLetterNotice
    )
    assert (notice.agent_id, notice.priority, notice.from_, notice.seq) == (
        "dave",
        "high",
        "alice",
        seq,
    )
    assert notice.deliveries == 3
    dead = await nc.jetstream().get_msg(subjects.MAIL_DLQ_STREAM, notice.dead_seq)
    assert dead.subject == subjects.dead_mail("dave", "high")
    assert msgspec.json.decode(dead.data or b"", type=MailMessage).body == "read me"
    assert await box.read("dave") == []
    await mover.stop()


async def test_mail_past_its_ttl_is_never_read(nc: Client) -> None:
    box = Mailbox(nc)
    await box.send("erin", msg("stale", ttl_s=1), "normal")
    await box.send(
        "erin", msg("old news", ttl_s=5, sent_at=datetime.now(UTC) - timedelta(seconds=10))
    )
    await box.send("erin", msg("kept"), "low")
    await asyncio.sleep(1.5)  # the server drops the first (Nats-TTL); the reader drops the second
    got = await box.read("erin", 10)
    assert [d.item.body for d in got] == ["kept"]


async def test_request_and_response_between_agents(nc: Client) -> None:
    asker, answerer = Mailbox(nc), Mailbox(nc)

    async def serve() -> None:
        while not (got := await answerer.read("frank")):
            await asyncio.sleep(0.02)
        await got[0].ack()
        await answerer.reply(got[0].item, f"echo {got[0].item.body}", "frank")

    server = asyncio.create_task(serve())
    answer = await asker.request("frank", msg("ping"), timeout=30)
    await server
    assert (answer.from_, answer.body) == ("frank", "echo ping")
    with pytest.raises(MailTimeout):
        await asker.request("nobody", msg("hello?"), timeout=0.3)


async def test_broadcast_reaches_the_live_agents_with_the_capabilities(nc: Client) -> None:
    now = datetime.now(UTC)

    def entry(agent_id: str, caps: tuple[str, ...], age_s: float = 0) -> RegistryEntry:
        return RegistryEntry(
            id=agent_id,
            name=agent_id,
            template="shell",
            capabilities=caps,
            lifecycle="RUNNING",
            activity="READY",
            endpoint=subjects.command(agent_id),
            heartbeat_at=now - timedelta(seconds=age_s),
        )

    for e in (
        entry("g1", ("python", "git")),
        entry("g2", ("python",)),
        entry("g3", ("python", "git"), age_s=600),  # dead: no heartbeat for ten minutes
    ):
        await registry.put(nc, e)
    box = Mailbox(nc)
    assert await box.broadcast(msg("to git people"), ("git",)) == ["g1"]
    assert await box.broadcast(msg("to everyone")) == ["g1", "g2"]
    assert [i.body for i in await box.peek("g1")] == ["to git people", "to everyone"]
    assert [i.body for i in await box.peek("g2")] == ["to everyone"]


async def test_topics_deliver_to_wildcard_subscribers(nc: Client) -> None:
    box = Mailbox(nc)
    got: dict[str, list[str]] = {"star": [], "tail": []}

    async def into(key: str, m: Msg) -> None:
        got[key].append(m.data.decode())

    await box.subscribe_topic("builds.*", partial(into, "star"))
    await box.subscribe_topic("builds.>", partial(into, "tail"))
    await box.publish_topic("builds.main", b"a")
    await box.publish_topic("builds.main.ok", b"b")
    await box.publish_topic("tests.main", b"c")
    await nc.flush()
    await asyncio.sleep(0.1)
    assert got == {"star": ["a"], "tail": ["a", "b"]}


async def test_limits_on_body_size_and_sender_rate(nc: Client) -> None:
    box = Mailbox(nc, MailPolicy(send_rate=1, send_burst=3))
    with pytest.raises(PayloadTooLarge):
        await box.send("hal", msg("x" * (MAX_BODY_BYTES + 1)))
    for i in range(3):
        await box.send("hal", msg(f"{i}", sender="spammer"))
    with pytest.raises(RateLimited) as caught:
        await box.send("hal", msg("one more", sender="spammer"))
    assert caught.value.code == "rate_limited"
    await box.send("hal", msg("another sender is fine", sender="polite"))


async def test_a_reader_with_the_doorbell_skips_empty_priorities_but_never_misses_mail(
    nc: Client,
) -> None:
    box, sender = Mailbox(nc), Mailbox(nc)
    assert await box.wait("ivy", 0)  # hangs the doorbell
    assert await box.read("ivy", 10) == []  # every priority seen empty
    await sender.send_many([("ivy", msg(f"low {i}"), "low") for i in range(100)])
    assert await box.wait("ivy", 5)
    first = await box.read("ivy", 10)
    assert [d.item.body for d in first] == [f"low {i}" for i in range(10)]
    await sender.send("ivy", msg("fire!"), "critical")
    await nc.flush()
    got = await box.read("ivy", 10)
    assert [d.item.body for d in got][:2] == ["fire!", "low 10"]
    for d in first + got:
        await d.ack()
    rest: list[Delivery] = []
    while len(rest) < 81:
        rest.extend(await box.read("ivy", 50))
    assert [d.item.body for d in rest] == [f"low {i}" for i in range(19, 100)]
    await box.close()


async def test_mail_stored_while_a_pull_waits_comes_in_that_pull(nc: Client) -> None:
    pulls = Pulls(nc, nc.jetstream(), MailPolicy())
    assert await pulls.pull("kim", "high", 10) == ([], True)  # creates the consumer
    waiting = asyncio.create_task(pulls.pull("kim", "high", 10, wait_s=5.0))
    await asyncio.sleep(0.05)  # let the pull reach the server first (passes either way)
    await Mailbox(nc).send("kim", msg("late"), "high")
    got, short = await asyncio.wait_for(waiting, 30)
    assert [decode(m.data).body for m in got] == ["late"] and short
    assert await pulls.pull("kim", "high", 10, wait_s=0.05) == ([], True)  # 408 when nothing
    await pulls.close()


async def test_mail_published_without_waiting_for_its_store_still_goes_first(nc: Client) -> None:
    """A core publish is routed (it rings) before it is stored, and a pull may be told 404 for
    a moment even after the store: the read that has the ring waits for the message rather
    than hand out the lower mail it has."""
    box, sender = Mailbox(nc), Mailbox(nc)
    assert await box.wait("lou", 0)
    await sender.send_many([("lou", msg(f"low {i}"), "low") for i in range(100)])
    for round_ in range(20):
        first = await box.read("lou", 1)
        critical = msgspec.json.encode(msg(f"c{round_}"))
        await nc.publish(subjects.mail("lou", "critical"), critical)
        await nc.flush()  # routed: its ring comes before the PONG
        got = await box.read("lou", 5)
        assert [d.item.body for d in got][:2] == [f"c{round_}", f"low {5 * round_ + 1}"]
        for d in first + got:
            await d.ack()
    await box.close()


async def test_a_ring_whose_mail_another_reader_took_holds_nothing_back(nc: Client) -> None:
    box, other = Mailbox(nc), Mailbox(nc)
    assert await box.wait("max", 0)
    for i in range(3):
        await box.send("max", msg(f"low {i}"), "low")
    await box.send("max", msg("fire!"), "critical")
    taken = await other.next("max")  # another reader (no doorbell) takes the critical one
    assert taken is not None and taken.body == "fire!"
    got = await box.read("max", 10)  # its pull waits once for "fire!", then forgets it
    assert [d.item.body for d in got] == ["low 0", "low 1", "low 2"]
    for d in got:
        await d.ack()
    assert await box.read("max", 10) == []
    await box.close()
    await other.close()
