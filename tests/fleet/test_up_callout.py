"""`fleet up` on a NATS you run, configured as infra/deploy/README.md says (auth.conf and the
auth callout): each agent gets its own user there, which cannot command another agent and is
refused, with its open connection closed, once the agent stops. A callout seed without a
system-account user is refused with a sentence before anything starts."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from infra import natsauth, natscallout
from schemas import subjects
from tests.fleet import callout as callout_nats
from tests.fleetcli import fleet_cli, private_up


@pytest.fixture
def operator_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A nats-server with the guide's auth.conf; the settings that point fleetd at it."""
    seed_file = tmp_path / "callout.seed"
    made = fleet_cli(dict(os.environ), "callout-key", str(seed_file), "--json")
    assert made.returncode == 0, made.stderr
    issuer = json.loads(made.stdout)["issuer"]
    assert issuer == natscallout.public_key(natscallout.load_issuer(seed_file))
    theirs = callout_nats.start(tmp_path, monkeypatch, seed_file)
    try:
        yield theirs.settings()
    finally:
        theirs.server.stop()


def test_a_callout_seed_needs_a_system_user(tmp_path: Path, operator_nats: dict[str, str]) -> None:
    settings = {k: v for k, v in operator_nats.items() if k != "FLEET_NATS_SYSTEM_URL"}
    with private_up(tmp_path, **settings) as env:
        up = fleet_cli(env, "up", "--detach")
        assert up.returncode == 2, up.stdout
        assert "FLEET_NATS_SYSTEM_URL" in up.stderr and "system-account user" in up.stderr


def test_agents_get_their_own_users_on_a_nats_you_run(
    tmp_path: Path, operator_nats: dict[str, str], repo: Path
) -> None:
    with private_up(tmp_path, **operator_nats) as env:
        up = fleet_cli(env, "up", "--detach")
        assert up.returncode == 0, up.stderr
        for name in ("oc1", "oc2"):
            spawned = fleet_cli(env, "spawn", "--repo", str(repo), "--name", name)
            assert spawned.returncode == 0, spawned.stderr + spawned.stdout
        creds = natsauth.AuthDir.of(env["FLEET_STATE_DIR"]).agent_creds_path("oc1")
        cred = natsauth.read_credential(creds)
        url = natsauth.without_userinfo(env["FLEET_NATS_URL"])
        asyncio.run(_agent_is_confined_then_revoked(env, url, cred))


async def _agent_is_confined_then_revoked(
    env: dict[str, str], url: str, cred: natsauth.Credential
) -> None:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    nc = await nats.connect(
        natsauth.with_credential(url, cred),
        inbox_prefix=cred.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request(subjects.command("oc2"), b'{"type":"kill"}', timeout=1)
    assert any(f'publish to "{subjects.command("oc2")}"' in e for e in errors), errors
    shown = json.loads(fleet_cli(env, "show", "oc2", "--json").stdout)
    assert shown["lifecycle"] == "RUNNING"  # oc1's credential could not touch it

    stopped = await asyncio.to_thread(fleet_cli, env, "stop", "oc1")
    assert stopped.returncode == 0, stopped.stderr
    for _ in range(100):  # the system account closes the stopped agent's connection
        if nc.is_closed:
            break
        await asyncio.sleep(0.1)
    assert nc.is_closed
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            natsauth.with_credential(url, cred),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=on_error,
        )
