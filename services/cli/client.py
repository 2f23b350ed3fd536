"""The CLI's side of the wire: one NATS connection found through the state file, requests
that are command or request Structs (msgspec JSON), replies decoded as reply Structs.

Every reply is read by `schemas.replies.decode_reply`: an error reply becomes a `RemoteError`
with the code and the sentence the responder wrote, so the CLI prints it as is. NATS facts used:
a request with no subscriber on its subject fails at once with "no responders" (the server
answers with a 503 status), rather than waiting for the timeout.
"""

from __future__ import annotations

import getpass
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from infra import natsauth
from infra.config import Settings, read_state
from infra.nats import connect
from infra.resend import request as resend_request
from schemas import subjects
from schemas.commands import AgentCommand
from schemas.errors import NotRunning, RemoteError, UnknownVerb
from schemas.replies import decode_reply

SPAWN_TIMEOUT_S = 60.0  # a cold spawn starts a Ray worker, a worktree and a tmux session
STOP_TIMEOUT_S = 30.0  # polite quit, then SIGTERM, then SIGKILL, each with a timeout
RESTART_TIMEOUT_S = STOP_TIMEOUT_S + SPAWN_TIMEOUT_S
COMMAND_TIMEOUT_S = 10.0

_encode = msgspec.json.Encoder().encode
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
R = TypeVar("R")
S = TypeVar("S", bound=msgspec.Struct)


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
        payload: msgspec.Struct,
        kind: type[R],
        timeout: float,
        *,
        nobody: str = "",
        resend: bool = False,
    ) -> R:
        """Send `payload` (a request or command Struct) and return the success reply as `kind`.

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
        return decode_reply(msg.data, kind, f"the reply on {subject}")

    async def command(
        self, agent_id: str, cmd: AgentCommand, kind: type[R], timeout: float = COMMAND_TIMEOUT_S
    ) -> R:
        """One command to one agent, sent with a fresh id and who asked (unless it has them);
        an agent with no actor answering is one sentence."""
        subject = subjects.command(agent_id)
        nobody = f"there is no running agent {agent_id!r} (fleet ls lists agents)"
        sent = msgspec.structs.replace(cmd, id=cmd.id or uuid.uuid4().hex, by=cmd.by or by())
        return await self.request(subject, sent, kind, timeout, nobody=nobody, resend=True)

    async def control(
        self, verb: str, req: msgspec.Struct, kind: type[R], timeout: float = COMMAND_TIMEOUT_S
    ) -> R:
        """A fleet-wide request, answered by the supervisor (or the service of its verb)."""
        subject = subjects.control(verb)
        if not subjects.control_served(subject):
            raise UnknownVerb(subject, known_verbs())
        nobody = (
            f"no supervisor answers on {subject}; fleetd may still be starting "
            "(`fleet status` says where it runs)"
        )
        return await self.request(subject, with_by(req), kind, timeout, nobody=nobody)


def with_by(req: S) -> S:
    """`req` with its `by` field naming who asked, if it has one left empty."""
    if getattr(req, "by", None) == "":
        return msgspec.structs.replace(req, by=by())
    return req


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
