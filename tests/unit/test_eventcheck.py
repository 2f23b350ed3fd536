"""ChainCheck: an event passes only with the fleet key's MAC and as the next link of its chain."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from msgspec.structs import replace

from schemas import events as e
from schemas.audit import MacKey, event_mac
from schemas.chain import GENESIS, event_hash
from schemas.eventcheck import ChainCheck
from schemas.states import Activity

KEY = b"k" * 32
AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def activity(n: int, prev: str, agent: str = "a1") -> bytes:
    event = e.ActivityChanged(
        agent_id=agent, event_id=f"ev{n}", at=AT, frm=Activity.READY, to=Activity.WORKING
    )
    return msgspec.json.encode(replace(event, prev_hash=prev))


def signed_log(n: int) -> list[tuple[int, bytes, str]]:
    rows, prev = [], GENESIS
    for i in range(1, n + 1):
        raw = activity(i, prev)
        rows.append((i, raw, event_mac(KEY, raw)))
        prev = event_hash(raw)
    return rows


def test_a_signed_chain_passes_and_ends_at_its_last_hash() -> None:
    check = ChainCheck("a1", MacKey(KEY), GENESIS)
    rows = signed_log(3)
    assert [check.check(*row) for row in rows] == [None, None, None]
    assert check.last_hash == event_hash(rows[-1][1]) and check.last_seq == 3


def test_no_mac_or_a_wrong_one_is_refused_and_the_chain_goes_on_past_it() -> None:
    check = ChainCheck("a1", MacKey(KEY), GENESIS)
    rows = signed_log(2)
    assert check.check(*rows[0]) is None
    forged = activity(99, event_hash(rows[0][1]))  # a perfect prev_hash, but no key
    assert "no Fleet-Mac" in (check.check(2, forged, "") or "")
    other_key = event_mac(b"x" * 32, forged)
    assert "Fleet-Mac is wrong" in (check.check(3, forged, other_key) or "")
    # the actor's next event names the last genuine one: it passes at a later sequence
    assert check.check(4, rows[1][1], rows[1][2]) is None


def test_an_old_signed_event_stored_again_is_refused() -> None:
    check = ChainCheck("a1", MacKey(KEY), GENESIS)
    rows = signed_log(3)
    for row in rows:
        assert check.check(*row) is None
    problem = check.check(4, rows[1][1], rows[1][2])
    assert problem is not None and "prev_hash" in problem


def test_another_agents_event_is_refused() -> None:
    check = ChainCheck("b1", MacKey(KEY), GENESIS)
    raw = activity(1, GENESIS, agent="a1")
    assert "names agent 'a1'" in (check.check(1, raw, event_mac(KEY, raw)) or "")


def test_an_unknown_anchor_takes_the_first_signed_event_as_it_is() -> None:
    rows = signed_log(4)
    check = ChainCheck("a1", MacKey(KEY), None)  # the log's start is gone
    assert check.check(*rows[2]) is None and check.check(*rows[3]) is None


def test_a_redelivered_event_passes_on_its_mac_alone() -> None:
    check = ChainCheck("a1", MacKey(KEY), GENESIS)
    rows = signed_log(2)
    for row in rows:
        assert check.check(*row) is None
    assert check.check(*rows[0]) is None  # seq 1 again: a follower's redelivery
    assert check.check(1, rows[0][1], "") is not None


def test_a_refusal_is_one_sentence_with_agent_and_sequence() -> None:
    check = ChainCheck("a1", MacKey(KEY), GENESIS)
    sentence = check.refusal(7, "it has no Fleet-Mac").sentence()
    assert sentence == "agent a1's event at sequence 7 was refused: it has no Fleet-Mac"
