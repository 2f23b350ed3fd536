"""`fleet hook ASSISTANT`: what an assistant's own hook runs, inside the agent's pane.

The hooks fleetd installs in each agent's config dir (actors/agent/assistantconfig.py) run
this with the assistant's payload (Claude Code and Gemini CLI: JSON on stdin; Codex `notify`: JSON
as the last argument; Aider's notifications command: nothing). It keeps the fields read
(schemas/hooks.py `slim`) and sends them as a request on `fleet.hook.<FLEET_AGENT_ID>` with
the agent's own NATS user (`FLEET_NATS_CREDS`; never the control plane's, which the pane
cannot read): the agent's actor checks the call and records what it says.

A hook must not disturb its assistant: this prints nothing on stdout (Gemini reads stdout as
JSON, Claude shows it), waits at most `WAIT_S` in all, and exits 0 whatever happened. What
went wrong (a refusal, a fleet that did not answer) is one sentence on stderr. The hooks run
it as `python -m services.cli.hook` (the same as `fleet hook`, without the imports of every
other subcommand, and nats-py without the aiohttp of its WebSocket transport): about 0.2 s of
a Python start where `fleet hook` takes 0.4, waited for at each prompt and each stop.
"""

# ruff: noqa: E402
from __future__ import annotations

from infra import natsimport

natsimport.import_nats()  # before anything imports nats-py

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import msgspec
from nats.errors import NoRespondersError

from infra.config import Settings
from infra.nats import connect
from schemas import hooks, subjects
from schemas.errors import FleetError, RemoteError
from schemas.replies import Reply, decode_reply
from services.cli.client import nats_target

WAIT_S = 2.0  # connect, request and reply; an assistant waits for its hook
STDIN_MAX = 1 << 20  # Claude's payloads carry a prompt; more than this is not read


def hook_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("assistant", help="whose hook this is: " + ", ".join(hooks.ASSISTANTS))
    p.add_argument("payload", nargs="*", help="Codex notify: the JSON payload (the last one)")
    p.add_argument("--agent", default="", help="the agent it speaks for (default: this one)")


def cmd_hook(args: argparse.Namespace) -> int:
    """Tell this agent's actor what its assistant's hook says (run by the hooks themselves)."""
    try:
        call = hook_call(args.assistant, args.payload, args.agent, _stdin(args.assistant))
        said = asyncio.run(asyncio.wait_for(send(call), WAIT_S))
    except FleetError as e:
        said = str(e)
    except NoRespondersError:
        said = "nothing answers for this agent (is its actor running?); nothing was recorded"
    except TimeoutError:
        said = f"the fleet did not answer within {WAIT_S:g} s; nothing was recorded"
    except OSError as e:  # NATS unreachable, say
        said = f"the fleet could not be reached ({e}); nothing was recorded"
    except Exception as e:  # noqa: BLE001 (a hook must not fail its assistant: it says why)
        said = f"fleet hook failed ({type(e).__name__}: {e}); nothing was recorded"
    if said:
        print(f"fleet hook: {said}", file=sys.stderr)
    return 0


def _stdin(assistant: str) -> bytes:
    if assistant not in ("claude-code", "gemini") or sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read(STDIN_MAX)


def hook_call(assistant: str, argv: list[str], agent: str, stdin: bytes) -> hooks.HookCall:
    """The call to send: the payload read from where `assistant` puts it, slimmed."""
    own = os.environ.get("FLEET_AGENT_ID", "")
    if not own:
        raise FleetError("fleet hook runs inside an agent's pane: FLEET_AGENT_ID is not set")
    raw: bytes | str = argv[-1] if assistant == "codex" and argv else stdin
    payload: dict[str, Any] = {}
    if raw:
        try:
            found = json.loads(raw)
        except ValueError as e:
            raise FleetError(f"the {assistant} hook payload is not JSON ({e})") from e
        if not isinstance(found, dict):
            raise FleetError(f"the {assistant} hook payload is not a JSON object")
        payload = found
    return hooks.HookCall(assistant=assistant, agent_id=agent or own, payload=hooks.slim(payload))


async def send(call: hooks.HookCall) -> str:
    """Send the call on the agent's own subject; "" when it was taken, else the sentence."""
    url, inbox = nats_target(Settings.from_env())
    nc = await connect(url, name="fleet-hook", reconnect=False, inbox_prefix=inbox)
    try:
        subject = subjects.hook(os.environ["FLEET_AGENT_ID"])
        msg = await nc.request(subject, msgspec.json.encode(call), timeout=WAIT_S)
    finally:
        await nc.close()
    try:
        decode_reply(msg.data, Reply, "the reply to the hook")
    except RemoteError as e:
        return e.message
    return ""


def main(argv: list[str] | None = None) -> int:
    """`python -m services.cli.hook ASSISTANT [PAYLOAD]`: what the installed hooks run."""
    parser = argparse.ArgumentParser(prog="fleet hook", description=cmd_hook.__doc__)
    hook_arguments(parser)
    return cmd_hook(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
