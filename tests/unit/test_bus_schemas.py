"""Pure parts of the bus: token buckets, registry selection, mail checks, the wire catalog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from schemas import subjects
from schemas.discovery import FindRequest, RegistryEntry, select
from schemas.errors import InvalidName, PayloadTooLarge, RateLimited
from schemas.mail import MAX_BODY_BYTES, MailMessage, check, decode, expired, rank
from schemas.ratelimit import RateLimiter, TokenBucket
from schemas.wire import WIRE_TYPES, json_schemas

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    for _ in range(3):
        limiter.check("s", 0.0)
    with pytest.raises(RateLimited) as caught:
        limiter.check("s", 0.0)
    assert caught.value.code == "rate_limited" and caught.value.retry_after_s == pytest.approx(0.5)
    limiter.check("s", 0.5)  # one token back after 1/rate seconds
    limiter.check("other", 0.5)  # each sender has its own bucket


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket, wait = TokenBucket(3, 0).take(1000.0, rate=10, burst=3)
    assert wait == 0 and bucket.tokens == 2


def test_the_limiter_forgets_the_oldest_sender_past_its_bound() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_senders=2)
    for sender in ("a", "b", "c"):
        limiter.check(sender, 0.0)
    limiter.check("a", 0.0)  # forgotten, so it starts full again


def entry(agent_id: str, caps: tuple[str, ...], *, activity: str = "READY", age: float = 0,
          lifecycle: str = "RUNNING") -> RegistryEntry:  # fmt: skip
    return RegistryEntry(
        id=agent_id, name=agent_id, template="shell", capabilities=caps, lifecycle=lifecycle,
        activity=activity, endpoint=subjects.command(agent_id),
        heartbeat_at=NOW - timedelta(seconds=age),
    )  # fmt: skip


def test_find_selects_live_ready_running_agents_with_every_capability() -> None:
    entries = [
        entry("b", ("py", "git")),
        entry("a", ("py", "git", "go")),
        entry("c", ("py",)),
        entry("d", ("py", "git"), activity="WORKING"),
        entry("e", ("py", "git"), age=60),
        entry("f", ("py", "git"), lifecycle="PAUSED"),
    ]
    assert [e.id for e in select(entries, FindRequest(capabilities=("py", "git")), NOW)] == [
        "a",
        "b",
    ]
    assert [e.id for e in select(entries, FindRequest(limit=1), NOW)] == ["a"]


def test_mail_checks_sender_body_and_ttl() -> None:
    assert check(MailMessage(from_="ana", body="hi")).body == "hi"
    with pytest.raises(InvalidName):
        check(MailMessage(from_="a b", body="hi"))
    with pytest.raises(PayloadTooLarge):
        check(MailMessage(from_="ana", body="x" * (MAX_BODY_BYTES + 1)))
    assert decode(b'{"from":"ana","body":"x"}').from_ == "ana"
    assert (
        msgspec.json.decode(msgspec.json.encode(MailMessage(from_="ana", body="x")))["from"]
        == "ana"
    )
    message = MailMessage(from_="ana", body="x", ttl_s=10, sent_at=NOW)
    assert not expired(message, NOW + timedelta(seconds=9))
    assert expired(message, NOW + timedelta(seconds=10))
    assert [rank(p) for p in subjects.PRIORITIES] == [0, 1, 2, 3]


def test_mail_subjects_round_trip() -> None:
    assert subjects.mail_of(subjects.mail("a1", "high")) == ("a1", "high")
    assert subjects.dead_mail("a1", "low") == "fleet.deadmail.a1.low"
    assert subjects.agent_from_command(subjects.command("a1")) == "a1"
    with pytest.raises(InvalidName):
        subjects.mail("a1", "urgent")


def test_every_wire_type_has_a_json_schema() -> None:
    schemas = json_schemas()
    assert set(schemas) == set(WIRE_TYPES)
    for name, schema in schemas.items():
        assert ("$ref" in schema or "anyOf" in schema) and schema["$defs"], name
