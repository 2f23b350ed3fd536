"""A real agent on a NATS server with users: its own credential is granted at spawn, reaches its
panes through FLEET_NATS_URL and FLEET_NATS_CREDS, works for `fleet inbox` and `fleet mail
send`, cannot command another agent, and is revoked when the agent stops.

The fleet is the one of tests/conftest.py, but its nats-server runs with users, and the
credentials service answers in the test's loop, as in `fleet up`. Each test runs twice:
- `embedded`: the server's config is infra/natsauth.py's, as `fleet up` runs its own;
- `callout`: a server you run, with infra/deploy/nats/auth.conf (accounts and the auth
  callout: infra/natscallout.py), as `FLEET_NATS_URL` with `FLEET_NATS_CALLOUT_SEED_FILE` and
  `FLEET_NATS_SYSTEM_URL`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from infra import natsauth, natscallout
from infra.mailbox import Mailbox
from infra.nats import connect
from infra.natsserver import NatsServer
from infra.tmux import Tmux
from schemas import subjects
from schemas.mail import MailMessage
from services import credential_issuer
from tests.conftest import Fleet, _fleet_down, new_fleet, start_supervisor
from tests.fleet import callout as callout_nats
from tests.fleet.helpers import command, spawn, until

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class AuthFleet:
    fleet: Fleet
    server: NatsServer
    control: natsauth.Credential  # the control plane's user
    callout: tuple[Path, str] | None = None  # the issuer's seed file, a system-account URL


@pytest.fixture(params=["embedded", "callout"])
def auth_fleet(
    request: pytest.FixtureRequest,
    ray_cluster: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AuthFleet]:
    """nats-server with users + Ray + a supervisor whose agents get their own NATS users."""
    auth = natsauth.AuthDir.of(tmp_path / "state")
    callout = None
    if request.param == "embedded":
        auth.write_config(natsauth.new_password())
        control = auth.control()
        server = NatsServer.start(tmp_path / "nats", config=auth.config_path)
    else:
        seed_file = tmp_path / "callout.seed"
        seed_file.write_text(natscallout.new_seed())
        theirs = callout_nats.start(tmp_path, monkeypatch, seed_file)
        server, control = theirs.server, theirs.control
        callout = (seed_file, natsauth.with_credential(server.url, theirs.system))
    fleet = new_fleet(tmp_path, monkeypatch, natsauth.with_credential(server.url, control))
    config = fleet.config()
    config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, nats_auth=True))
    try:
        start_supervisor(fleet, config, ray_cluster, server, nats_creds=str(auth.control_path))
        yield AuthFleet(fleet, server, control, callout)
    finally:
        _fleet_down(fleet)
        server.stop()


@pytest.fixture
async def control(auth_fleet: AuthFleet) -> AsyncIterator[Client]:
    """The control plane's connection, and the credentials service `fleet up` would run."""
    fleet, server = auth_fleet.fleet, auth_fleet.server
    nc = await connect(fleet.nats_url)
    auth = natsauth.AuthDir.of(fleet.state_dir)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(nc.close)
        access: credential_issuer.Credentials
        if auth_fleet.callout is None:
            access = credential_issuer.EmbeddedUsers(auth, server=server)
        else:
            callout = await credential_issuer.callout(nc, auth, *auth_fleet.callout)
            stack.push_async_callback(callout.system.close)
            stack.push_async_callback((await callout.serve()).unsubscribe)
            access = callout
        stack.push_async_callback((await credential_issuer.start(nc, access)).unsubscribe)
        yield nc


def pane_env(fleet: Fleet, session: str) -> dict[str, str]:
    """The environment of the agent's first pane, as the kernel has it."""
    pid = Tmux(fleet.tmux_socket).pane_pids(session)[0]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    return dict(pairs)


async def fleet_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`fleet ...` with only the agent's NATS settings: no state dir that holds the control
    plane's credential (FLEET_STATE_DIR points at an empty one)."""
    keep = {k: env[k] for k in ("FLEET_AGENT_ID", "FLEET_NATS_URL", "FLEET_NATS_CREDS")}
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **keep}
    full["FLEET_STATE_DIR"] = str(Path(env["FLEET_NATS_CREDS"]).parent / "nowhere")
    argv = [sys.executable, "-m", "services.cli", *args]
    return await asyncio.to_thread(
        subprocess.run, argv, env=full, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


async def test_an_agent_gets_its_own_credential_and_loses_it_at_stop(
    auth_fleet: AuthFleet, control: Client, repo: Path
) -> None:
    fleet, server = auth_fleet.fleet, auth_fleet.server
    for name in ("sa1", "sb1"):
        reply = await spawn(control, str(repo), name)
        assert reply["ok"], reply
    env = pane_env(fleet, "fleet-sa1")
    assert env["FLEET_NATS_URL"] == server.url  # no password in it
    creds_file = Path(env["FLEET_NATS_CREDS"])
    assert creds_file.stat().st_mode & 0o777 == 0o600
    cred = natsauth.read_credential(creds_file)
    assert cred.user == "agent-sa1" and cred.inbox_prefix == "_INBOX.agent-sa1"
    assert auth_fleet.control.password not in json.dumps(env)

    # In the agent's own pane (sandboxed as its template says): `fleet inbox` takes its mail.
    await Mailbox(control).send("sa1", MailMessage(from_="boss", body="first"), "high")
    worktree = Path(env["FLEET_WORKTREE"])
    typed = f"{sys.executable} -m services.cli inbox --next --ack --json > got.json 2>&1"
    await command(control, "sa1", "send", text=typed + "; echo done > got.end")
    await until(_exists(worktree / "got.end"), "the pane's `fleet inbox`", timeout=30)
    assert json.loads((worktree / "got.json").read_text())["body"] == "first"

    await Mailbox(control).send("sa1", MailMessage(from_="boss", body="do the thing"), "high")
    taken = await fleet_cli(env, "inbox", "--ack", "--json")
    assert taken.returncode == 0, taken.stderr
    assert [m["body"] for m in json.loads(taken.stdout)] == ["do the thing"]
    sent = await fleet_cli(env, "mail", "send", "sb1", "done", "--json")
    assert sent.returncode == 0, sent.stderr
    assert [i.body for i in await Mailbox(control).peek("sb1")] == ["done"]
    other = await fleet_cli(env, "inbox", "sb1", "--ack")
    assert other.returncode == 2 and "may read only its own mail" in other.stderr
    assert [i.body for i in await Mailbox(control).peek("sb1")] == ["done"]  # still there

    # The same credential, from any client: sa1 cannot command sb1.
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    agent_nc = await nats.connect(
        natsauth.with_credential(env["FLEET_NATS_URL"], cred),
        inbox_prefix=cred.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    with pytest.raises(nats.errors.TimeoutError):
        await agent_nc.request(subjects.command("sb1"), b'{"type":"kill"}', timeout=1)
    assert any(f'publish to "{subjects.command("sb1")}"' in e for e in errors), errors
    shown = await command(control, "sb1", "show")
    assert shown["agent"]["lifecycle"] == "RUNNING"

    stopped = await command(control, "sa1", "stop")
    assert stopped["agent"]["lifecycle"] == "STOPPED", stopped
    await until(_closed(agent_nc), "the server to drop the revoked agent's connection")
    assert not creds_file.exists()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            natsauth.with_credential(server.url, cred),
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    # A restart grants a new user; sb1 kept its own all along.
    restarted = await command(control, "sa1", "restart")
    assert restarted["agent"]["lifecycle"] == "RUNNING", restarted
    again = natsauth.read_credential(creds_file)
    assert again.password != cred.password
    theirs = await fleet_cli(pane_env(fleet, "fleet-sb1"), "inbox", "--next", "--json")
    assert theirs.returncode == 0 and json.loads(theirs.stdout)["body"] == "done", theirs.stderr


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return path.exists()

    return check


def _closed(nc: Client) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return nc.is_closed

    return check


@pytest.mark.parametrize("auth_fleet", ["callout"], indirect=True)
async def test_the_callout_lets_in_only_a_live_agent_with_its_password(
    auth_fleet: AuthFleet, control: Client, repo: Path
) -> None:
    fleet, server = auth_fleet.fleet, auth_fleet.server
    assert (await spawn(control, str(repo), "sc1"))["ok"]
    cred = natsauth.read_credential(natsauth.AuthDir.of(fleet.state_dir).agent_creds_path("sc1"))
    # Garbage on the callout's subject (any control-plane client could send it) is ignored.
    await control.publish(natscallout.AUTH_SUBJECT, b"not a jwt", reply=control.new_inbox())
    wrong = [
        natsauth.Credential(user=cred.user, password=cred.password + "x"),
        natsauth.Credential(user="agent-nobody", password=cred.password),
        natsauth.Credential(user="agent-../../sc1", password=cred.password),
        natsauth.Credential(user="agent-*", password=cred.password),
        natsauth.Credential(user="sc1", password=cred.password),
        natsauth.Credential(user="", password=cred.password),
    ]
    for bad in wrong:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                natsauth.with_credential(server.url, bad),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_ignore,
            )
    refused: list[str] = []

    async def on_error(e: Exception) -> None:
        refused.append(str(e).lower())

    good = await nats.connect(
        natsauth.with_credential(server.url, cred),
        inbox_prefix=cred.inbox_prefix,
        allow_reconnect=False,
        error_cb=on_error,
    )
    # In, but its own log is its actor's alone: the server refuses its publish there.
    await good.publish(subjects.events("sc1"), b"{}", headers={"Nats-Msg-Id": "probe-sc1"})
    await good.flush()

    async def denied() -> bool:
        return any(f'publish to "{subjects.events("sc1")}"' in e for e in refused)

    await until(denied, "the server's permissions violation for sc1's own log", timeout=30)
    await good.close()
    shown = await command(control, "sc1", "show")
    assert shown["agent"]["lifecycle"] == "RUNNING"


async def _ignore(e: Exception) -> None:
    """A refused connect also reaches nats-py's error callback; the raise is what is checked."""
