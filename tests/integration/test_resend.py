"""Requests that bridge a responder's reconnect (infra/resend.py), on a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from infra.nats import connect
from infra.natsserver import NatsServer
from infra.resend import request
from schemas import subjects


async def test_a_responder_that_subscribes_late_still_answers(nats_server: NatsServer) -> None:
    asker = await connect(nats_server.url)
    responder = await connect(nats_server.url)
    seen: list[bytes] = []
    copies = 0
    first_copy = asyncio.Event()
    try:
        # A wildcard listener that never answers, as the supervisor's fleet.cmd.* fallback
        # stays silent for a known agent: the first copy reaches only it.
        async def fallback(msg: Msg) -> None:
            nonlocal copies
            copies += 1
            first_copy.set()

        await asker.subscribe("cmd.*", cb=fallback)
        await asker.flush()

        async def answer(msg: Msg) -> None:
            seen.append(msg.data)
            await msg.respond(b"done:" + msg.data)

        async def subscribe_late() -> None:
            await first_copy.wait()  # the responder comes back after the first copy went by
            await responder.subscribe("cmd.a1", cb=answer)
            await responder.flush()

        late = asyncio.create_task(subscribe_late())
        reply = await request(asker, "cmd.a1", b'{"id": "x"}', timeout=60, resend_s=0.2)
        await late
        assert reply.data == b'done:{"id": "x"}'
        assert copies >= 2, "the request was answered without being sent again"
        assert seen and set(seen) == {b'{"id": "x"}'}  # only copies of the same bytes
    finally:
        await asker.close()
        await responder.close()


async def test_every_copy_says_how_long_its_sender_still_waits(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url)
    waits: list[float] = []
    try:

        async def answer(msg: Msg) -> None:
            waits.append(float((msg.headers or {})[subjects.TIMEOUT_HEADER]))
            await msg.respond(b"ok")

        await nc.subscribe("cmd.a1", cb=answer)
        assert (await request(nc, "cmd.a1", b"{}", timeout=7)).data == b"ok"
        assert len(waits) == 1 and 0 < waits[0] <= 7
    finally:
        await nc.close()


async def test_nobody_there_and_nobody_answering_are_told_apart(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url)
    try:
        with pytest.raises(NoRespondersError):
            await request(nc, "cmd.nobody", b"{}", timeout=30)
        await nc.subscribe("cmd.silent", cb=_ignore)
        with pytest.raises(TimeoutError):
            await request(nc, "cmd.silent", b"{}", timeout=0.5, resend_s=0.1)
    finally:
        await nc.close()


async def _ignore(msg: Msg) -> None:
    del msg
