"""The pure audit (schemas/audit.py): honest logs pass, tampered ones fail at the right sequence.

Histories come from random command sequences through `decide`/`evolve` (the Run of
test_schemas_decider), with checkpoints and rollbacks slipped in as the actor records them, then
stored the way EventStore.append stores them: each event names the previous bytes' hash and is
signed with the fleet key.
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra import fleetkey
from schemas import events as e
from schemas.agent import AgentState, CheckpointRef, ServiceState, evolve, fold, initial
from schemas.audit import AgentAudit, audit_events, event_mac, last_healthy_checkpoint
from schemas.chain import GENESIS, event_hash
from schemas.states import Lifecycle
from tests.unit.test_schemas_decider import AGENT, CREATE, FORWARD_ST, T0, Run
from tests.unit.test_schemas_strategies import commands_st

KEY = b"k" * 32
Row = tuple[int, bytes, str]


def store(events: list[e.AgentEvent], key: bytes | None = KEY, start: int = 1) -> list[Row]:
    """Encode as EventStore.append does; sequences step by 3 (other agents share the stream)."""
    rows: list[Row] = []
    prev = GENESIS
    for i, event in enumerate(events):
        raw = msgspec.json.encode(msgspec.structs.replace(event, prev_hash=prev))
        rows.append((start + 3 * i, raw, event_mac(key, raw) if key else ""))
        prev = event_hash(raw)
    return rows


def history(data: st.DataObject) -> Run:
    run = Run()
    run.apply(CREATE)
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        if data.draw(st.integers(0, 9)) == 0 and run.state.lifecycle is not Lifecycle.STOPPING:
            checkpoint_or_rollback(run, data)
            continue
        forward = FORWARD_ST.get(run.state.lifecycle, commands_st)
        run.apply(data.draw(st.one_of(forward, commands_st)))
    return run


def checkpoint_or_rollback(run: Run, data: st.DataObject) -> None:
    """What the actor records for a checkpoint or a rollback (it decides those itself)."""
    s, at = run.state, T0 + timedelta(days=1, seconds=len(run.events))
    meta: dict[str, Any] = {"agent_id": AGENT, "event_id": run.new_id(), "at": at, "actor": "agent"}
    seq = 1 + 3 * (len(run.events) - 1)  # the sequence `store` gives the last event
    rollback: bool = data.draw(st.booleans())
    if s.checkpoints and rollback:
        cp = data.draw(st.sampled_from(s.checkpoints))
        ev: e.AgentEvent = e.RolledBack(
            checkpoint=cp.checkpoint, to_seq=cp.log_seq, commit=cp.commit, **meta
        )
    else:
        n = len(s.checkpoints) + 1
        ref = f"refs/fleet/checkpoints/{AGENT}/{n}"
        ev = e.CheckpointTaken(checkpoint=n, log_seq=seq, commit=f"{n:040x}", ref=ref, **meta)
    run.state = evolve(run.state, ev)
    run.events.append(ev)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_an_honest_random_history_passes_and_replays_to_the_live_state(
    data: st.DataObject,
) -> None:
    run = history(data)
    rows = store(run.events)
    audit = audit_events(AGENT, rows, KEY)
    assert audit.ok, [v.sentence() for v in audit.violations]
    # the replayed state is the live state (the actor's, step by step)
    assert audit.state == run.state == fold(run.events)
    k = data.draw(st.integers(0, len(rows) - 1), label="at")
    at = AgentAudit(AGENT, KEY, at_seq=rows[k][0])
    for row in rows:
        at.feed(*row)
    assert at.state_at == fold(run.events[: k + 1], initial(AGENT))
    assert len(audit.rows) == len(run.events)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_tampering_is_found_at_its_sequence(data: st.DataObject) -> None:
    run = history(data)
    rows = store(run.events)
    i = data.draw(st.integers(1, len(rows) - 1), label="index")
    seq, raw, mac = rows[i]
    how = data.draw(st.sampled_from(["forge", "alter", "drop", "unsigned"]), label="how")
    if how == "forge":  # slipped in with a correct prev_hash, but no key to sign it
        event = msgspec.json.decode(rows[i - 1][1], type=e.AgentEvent)
        fake = e.InputSent(
            agent_id=AGENT, event_id="x", at=T0, prev_hash=event_hash(rows[i - 1][1])
        )
        fake_raw = msgspec.json.encode(fake)
        tampered = [*rows[:i], (seq - 1, fake_raw, event_mac(b"wrong" * 8, fake_raw)), *rows[i:]]
        expect = {seq - 1: "the Fleet-Mac is wrong", seq: "prev_hash"}
        assert event.agent_id == AGENT
    elif how == "alter":  # the stored bytes changed afterwards
        altered = raw.replace(b'"agent_id":"a1"', b'"agent_id":"a1" ', 1)
        tampered = [*rows[:i], (seq, altered, mac), *rows[i + 1 :]]
        expect = {seq: "the Fleet-Mac is wrong"}
        if i + 1 < len(rows):
            expect[rows[i + 1][0]] = "prev_hash"
    elif how == "drop":
        if i + 1 == len(rows):
            return  # dropping the last event is seen only against the stream's count
        tampered = [*rows[:i], *rows[i + 1 :]]
        expect = {rows[i + 1][0]: "prev_hash"}
    else:
        tampered = [*rows[:i], (seq, raw, ""), *rows[i + 1 :]]
        expect = {seq: "no Fleet-Mac"}
    audit = audit_events(AGENT, tampered, KEY)
    found = {(v.seq, v.problem.split(" ", 1)[0]) for v in audit.violations}
    for where, problem in expect.items():
        assert (where, problem.split(" ", 1)[0]) in found, (how, where, audit.violations)


def test_transitions_outside_the_table_and_foreign_events_are_named() -> None:
    meta: dict[str, Any] = {"event_id": "e", "at": T0}
    events: list[e.AgentEvent] = [
        e.AgentCreated(agent_id=AGENT, name=AGENT, template="shell", repo="/r", **meta),
        e.LifecycleChanged(agent_id=AGENT, to=Lifecycle.RUNNING, frm=Lifecycle.NEW, **meta),
        e.InputSent(agent_id="other", **meta),
        e.AgentCreated(agent_id=AGENT, name=AGENT, template="shell", repo="/r", **meta),
    ]
    audit = audit_events(AGENT, store(events), KEY)
    problems = [(v.seq, v.problem) for v in audit.violations]
    assert (4, "lifecycle NEW -> RUNNING is not in the table") in problems
    assert any(s == 7 and "names agent 'other'" in p for s, p in problems)
    assert (10, "agent.created for an agent that already exists") in problems
    before = audit_events(AGENT, store([e.InputSent(agent_id=AGENT, **meta)]), KEY)
    assert before.violations[0].problem == "input.sent before agent.created"


def test_a_purged_start_and_a_short_read_are_violations() -> None:
    meta: dict[str, Any] = {"event_id": "e", "at": T0, "agent_id": AGENT}
    created = e.AgentCreated(name=AGENT, template="shell", repo="/r", **meta)
    rows = store([created, e.LifecycleChanged(to=Lifecycle.SPAWNING, **meta)])
    audit = AgentAudit(AGENT, KEY)
    audit.feed(*rows[1])
    audit.finish(stream_count=2, stream_last=4)
    problems = " / ".join(v.problem for v in audit.violations)
    assert "does not start at the agent's first event" in problems
    assert "holds 2 events for this agent but 1 were read" in problems
    unsigned = audit_events(AGENT, store([created], key=None), None)
    assert unsigned.ok  # no key known: MACs are not checked


def test_last_healthy_checkpoint_is_the_last_taken_with_no_unhealthy_service() -> None:
    meta: dict[str, Any] = {"event_id": "e", "at": T0, "agent_id": AGENT}

    def cp(n: int) -> e.CheckpointTaken:
        return e.CheckpointTaken(checkpoint=n, log_seq=n, commit="c", ref="r", **meta)

    s = AgentState(agent_id=AGENT, services={"web": ServiceState(name="web", healthy=True)})
    assert last_healthy_checkpoint(s) is None
    s = evolve(s, cp(1))
    bad = e.ServiceHealth(service="web", healthy=False, **meta)
    s = evolve(evolve(s, bad), cp(2))
    assert [c.healthy for c in s.checkpoints] == [True, False]
    assert last_healthy_checkpoint(s) == 1
    old = AgentState(checkpoints=(CheckpointRef(checkpoint=1, log_seq=1, commit="c", ref="r"),))
    assert last_healthy_checkpoint(old) is None  # recorded before `healthy` existed: unknown


def test_the_fleet_key_is_made_once_private_and_then_read(tmp_path: Path) -> None:
    key = fleetkey.load_or_create(tmp_path / "state")
    assert len(key) == fleetkey.KEY_BYTES
    mode = stat.S_IMODE(os.stat(fleetkey.key_path(tmp_path / "state")).st_mode)
    assert mode == 0o600
    assert fleetkey.load_or_create(tmp_path / "state") == key
    assert fleetkey.load_if_present(tmp_path / "none") is None
    fleetkey.key_path(tmp_path / "state").write_text("zz\n")
    with pytest.raises(Exception, match="not hex"):
        fleetkey.load(tmp_path / "state")
