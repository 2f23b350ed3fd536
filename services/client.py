"""The CLI's side of the wire: one NATS connection found through the state file, JSON requests.

Every reply has the shape of `schemas.replies`; an error reply becomes a `RemoteError` with
the code and the sentence the responder wrote, so the CLI prints it as is. NATS facts used:
a request with no subscriber on its subject fails at once with "no responders" (the server
answers with a 503 status), rather than waiting for the timeout.
"""

from __future__ import annotations

import getpass
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from infra import natsauth
from infra.config import Settings, read_state
from infra.nats import connect
from infra.resend import request as resend_request
from schemas import subjects
from schemas.errors import NotRunning, RemoteError, UnknownVerb

SPAWN_TIMEOUT_S = 60.0  # a cold spawn starts a Ray worker, a worktree and a tmux session
STOP_TIMEOUT_S = 30.0  # polite quit, then SIGTERM, then SIGKILL, each with a timeout
RESTART_TIMEOUT_S = STOP_TIMEOUT_S + SPAWN_TIMEOUT_S
COMMAND_TIMEOUT_S = 10.0

_encode = msgspec.json.Encoder().encode
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def user_name() -> str:
    """The OS user as a safe token (it names a grouped tmux session and goes into events)."""
    try:
        raw = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        raw = "user"
    return _UNSAFE.sub("_", raw)[:64] or "user"


def by() -> str:
    """The `by` field every command carries: who asked."""
    return f"user:{user_name()}"


def nats_target(settings: Settings) -> tuple[str, str]:
    """Where NATS listens and as whom: the URL (with a user and password in it when the
    server wants them) and the reply-inbox prefix ("" for nats-py's own).

    Inside an agent, `FLEET_NATS_CREDS` names the agent's own credential, used with
    `FLEET_NATS_URL`; elsewhere the live `fleet up`'s state file gives the URL and the
    control plane's credential, else `FLEET_NATS_URL` alone (an operator's NATS)."""
    if settings.nats_creds is not None:
        cred = natsauth.read_credential(settings.nats_creds)
        base = settings.nats_url or read_state(settings).nats_url
        return natsauth.with_credential(base, cred), cred.inbox_prefix
    try:
        state = read_state(settings)
    except NotRunning:
        if settings.nats_url:
            return settings.nats_url, ""
        raise
    control = natsauth.read_credential(state.nats_creds) if state.nats_creds else None
    return natsauth.with_credential(state.nats_url, control), ""


def nats_url(settings: Settings) -> str:
    """The URL of `nats_target`, for a connection that needs no reply inbox of its own."""
    return nats_target(settings)[0]


class FleetClient:
    """Requests to the supervisor (`fleet.ctl.<verb>`) and agents (`fleet.cmd.<id>`)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def request(
        self,
        subject: str,
        payload: dict[str, Any],
        timeout: float,
        *,
        nobody: str = "",
        resend: bool = False,
    ) -> dict[str, Any]:
        """Send `payload` as JSON and return the decoded success reply.

        `nobody` is the sentence for "no responders" (default: names the subject). With
        `resend` (an agent command with an id) the request is sent again while unanswered,
        across its agent's reconnect (infra/resend.py).
        """
        try:
            data = _encode(payload)
            if resend:
                msg = await resend_request(self.nc, subject, data, timeout)
            else:
                headers = {subjects.TIMEOUT_HEADER: f"{timeout:g}"}  # a busy agent says so
                msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except NoRespondersError as e:
            sentence = nobody or f"nothing answers on {subject}; is `fleet up` running?"
            raise RemoteError("no_responders", sentence) from e
        except TimeoutError as e:
            raise RemoteError(
                "timeout", f"no reply on {subject} within {timeout:.0f} s; it may still finish"
            ) from e
        try:
            reply = msgspec.json.decode(msg.data)
        except msgspec.DecodeError as e:
            raise RemoteError("bad_reply", f"the reply on {subject} is not JSON: {e}") from e
        if not isinstance(reply, dict):
            raise RemoteError("bad_reply", f"the reply on {subject} is not a JSON object")
        if reply.get("ok") is not True:
            error = reply.get("error") or {}
            raise RemoteError(
                str(error.get("code") or "error"),
                str(error.get("message") or f"the reply on {subject} says it failed"),
            )
        return reply

    async def command(
        self, agent_id: str, type_: str, timeout: float = COMMAND_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """One command to one agent; an agent with no actor answering is one sentence."""
        subject = subjects.command(agent_id)
        nobody = f"there is no running agent {agent_id!r} (fleet ls lists agents)"
        payload = {"type": type_, "by": by(), "id": uuid.uuid4().hex, **fields}
        return await self.request(subject, payload, timeout, nobody=nobody, resend=True)

    async def control(
        self, verb: str, payload: dict[str, Any], timeout: float = COMMAND_TIMEOUT_S
    ) -> dict[str, Any]:
        """A fleet-wide request, answered by the supervisor (or the service of its verb)."""
        subject = subjects.control(verb)
        if not subjects.control_served(subject):
            raise UnknownVerb(subject, known_verbs())
        nobody = (
            f"no supervisor answers on {subject}; fleetd may still be starting "
            "(`fleet status` says where it runs)"
        )
        return await self.request(subject, {**payload, "by": by()}, timeout, nobody=nobody)


@asynccontextmanager
async def open_client(settings: Settings | None = None) -> AsyncIterator[FleetClient]:
    """Connect (no reconnect loop: a CLI call should fail fast) and close on the way out."""
    url, inbox_prefix = nats_target(settings or Settings.from_env())
    nc = await connect(url, name="fleet-cli", reconnect=False, inbox_prefix=inbox_prefix)
    try:
        yield FleetClient(nc)
    finally:
        await nc.close()


def known_verbs() -> tuple[str, ...]:
    return subjects.CONTROL_VERBS + tuple(f"{f}.<...>" for f in subjects.CONTROL_FAMILIES)
