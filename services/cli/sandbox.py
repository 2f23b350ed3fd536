"""`fleet doctor [--sandbox AGENT]`: orphans, or what an agent's sandbox holds on this machine.

With `--sandbox`, the agent's actor runs infra/sandboxprobe.py through the agent's own sandbox
(the same bubblewrap, user, Landlock rules as its panes; actors/agent/confine.py) and each way
out is printed with whether it held. The exit status is 1 when any did not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec

from schemas import commands as c
from schemas import subjects
from schemas.wire import ProbesReply
from services import doctor
from services.cli import doctor_assistants as da
from services.cli.agents import table
from services.cli.client import open_client

PROBE_TIMEOUT_S = 90.0  # a sandbox started on a loaded machine, then a dozen probes


def doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sandbox",
        metavar="AGENT",
        help="try each way out of AGENT's sandbox from inside it, and say what holds here",
    )
    p.add_argument(
        "--assistants",
        action="store_true",
        help="which assistants are installed (as a spawn finds them), their versions, and "
        "whether each is logged in (from its login files; no network, fleetd not needed)",
    )
    p.add_argument(
        "--path",
        metavar="PATH",
        help="with --assistants: look on this PATH (as a spawn given it), not this shell's",
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    """List orphans, probe an agent's sandbox (--sandbox) or report assistants.

    `--sandbox AGENT` probes from inside the agent's sandbox; `--assistants` reports the
    assistants a spawn would find, their versions and logins."""
    if getattr(args, "assistants", False):
        return assistants_report(args)
    if not getattr(args, "sandbox", None):
        return doctor.cmd_doctor(args)
    found = asyncio.run(probe(args.sandbox))
    if args.json:
        print(msgspec.json.encode({"agent": args.sandbox, "probes": found}).decode())
    else:
        print(render(args.sandbox, found))
    return 0 if all(p.get("held") for p in found) else 1


def assistants_report(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    found = [da.report(name, args.path, Path.home(), env) for name in da.assistant_templates()]
    if args.json:
        print(msgspec.json.encode({"assistants": da.as_json(found)}).decode())
    else:
        print(da.render(found))
    return 0


async def probe(agent_id: str) -> list[dict[str, Any]]:
    subjects.token(agent_id)  # a bad id is refused before looking for fleetd
    async with open_client() as client:
        reply = await client.command(agent_id, c.ProbeSandbox(), ProbesReply, PROBE_TIMEOUT_S)
    return reply.probes


def render(agent_id: str, found: list[dict[str, Any]]) -> str:
    rows = [["held" if p.get("held") else "OPEN", str(p["probe"]), str(p["detail"])] for p in found]
    open_ = sum(1 for p in found if not p.get("held"))
    last = (
        f"every probe held for agent {agent_id}"
        if not open_
        else f"{open_} way(s) out of agent {agent_id}'s sandbox are open on this machine"
    )
    return table(["", "PROBE", "DETAIL"], rows) + f"\n\n{last}"
