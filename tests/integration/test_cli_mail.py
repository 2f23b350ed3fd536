"""`fleet inbox`, `fleet mail`, `fleet topic` and `fleet schema` as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infra.nats import connect, ensure_streams
from tests.integration.test_cli import run


@pytest.fixture
async def env(state_dir: Path, nats_url: str) -> dict[str, str]:
    nc = await connect(nats_url)
    await ensure_streams(nc.jetstream())
    await nc.close()
    return {**os.environ, "FLEET_STATE_DIR": str(state_dir), "FLEET_NATS_URL": nats_url}


async def test_mail_sent_is_read_in_priority_order_and_kept_in_the_mailbox_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(env, "mail", "send", "w1", "later", "--priority", "low").status == 0
    assert (
        run(env, "mail", "send", "w1", "now!", "--priority", "critical", "--from", "boss").status
        == 0
    )
    listed = run(env, "inbox", "w1", "--json")
    assert [m["body"] for m in json.loads(listed.out)] == ["now!", "later"]
    inside = {**env, "FLEET_AGENT_ID": "w1", "FLEET_WORKTREE": str(tmp_path)}
    first = json.loads(run(inside, "inbox", "--next", "--json", "--ack").out)
    assert (first["priority"], first["from"], first["body"]) == ("critical", "boss", "now!")
    second = json.loads(run(env, "inbox", "w1", "--next", "--json", "--ack").out)
    assert second["body"] == "later"
    assert json.loads(run(env, "inbox", "w1", "--next", "--json").out) is None
    kept = (tmp_path / ".fleet" / "inbox.jsonl").read_text().splitlines()
    assert [json.loads(line)["body"] for line in kept] == ["now!"]


def test_bad_mail_is_refused_with_a_sentence(env: dict[str, str]) -> None:
    bad = run(env, "mail", "send", "no.dots", "x")
    assert bad.status == 2 and "invalid agent id 'no.dots'" in bad.sentence()
    assert run(env, "inbox").status == 2


def test_schema_writes_one_file_per_wire_type(tmp_path: Path) -> None:
    got = run(dict(os.environ), "schema", "--out", str(tmp_path))
    assert got.status == 0, got.err
    names = {p.stem for p in tmp_path.glob("*.json")}
    assert {"command", "error_reply", "event", "mail_message", "template"} <= names
    command = json.loads((tmp_path / "command.json").read_text())
    assert "Pause" in command["$defs"]
