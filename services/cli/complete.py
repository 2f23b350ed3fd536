"""Shell completion: `fleet completion bash|zsh|fish` and the hidden `fleet __complete-agents`.

Built on argcomplete rather than written by hand or generated statically (shtab): one
mechanism for bash, zsh and fish (shtab has no fish), read from the same argparse parser the
CLI runs, so a new subcommand or option completes with no change here. The script asks
`fleet` itself what to complete (argcomplete runs it with `_ARGCOMPLETE` set, and
`autocomplete` answers before any argument is parsed), the same way `kubectl __complete`
works. Agent ids complete from the running fleet through `agent_ids`, which is also what
`fleet __complete-agents` prints; both stay silent, and succeed, when fleetd is down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import argcomplete
from argcomplete.shell_integration import shellcode

from schemas.control import ListRequest
from schemas.errors import FleetError
from schemas.wire import AgentsReply
from services.cli.client import open_client

SHELLS = ("bash", "zsh", "fish")
HIDDEN = "__complete-agents"
LIST_TIMEOUT_S = 1.5  # a completion that waits longer than this is worse than none
AGENT_ARGUMENTS = ("agent", "to")  # positional arguments that name an agent


def completion_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=SHELLS, help="the shell to print the script for")


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a shell completion script (e.g. `source <(fleet completion bash)`)."""
    print(script(args.shell))
    return 0


def script(shell: str) -> str:
    if shell not in SHELLS:
        raise FleetError(f"no completion for the shell {shell!r}; choose {', '.join(SHELLS)}")
    return shellcode(["fleet"], shell=shell)


def cmd_complete_agents(args: argparse.Namespace) -> int:
    """List agent ids, one a line, for completion scripts (nothing if fleetd is down)."""
    for agent_id in agent_ids():
        print(agent_id)
    return 0


def agent_ids(prefix: str = "") -> list[str]:
    """The ids of the fleet's agents that start with `prefix`; [] when nothing answers."""
    try:
        ids = asyncio.run(asyncio.wait_for(_list(), LIST_TIMEOUT_S))
    except (FleetError, TimeoutError, OSError):
        return []
    return sorted(i for i in ids if i.startswith(prefix))


async def _list() -> list[str]:
    async with open_client() as client:
        reply = await client.control("list", ListRequest(), AgentsReply, LIST_TIMEOUT_S)
    return [a.id for a in reply.agents]


def _complete_agent(prefix: str, **_: object) -> list[str]:
    return agent_ids(prefix)


def attach(parser: argparse.ArgumentParser) -> None:
    """Complete agent ids for every positional argument that names an agent, in every parser."""
    for action in parser._actions:  # argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                attach(sub)
        elif not action.option_strings and action.dest in AGENT_ARGUMENTS:
            action.completer = _complete_agent  # type: ignore[attr-defined]


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request and exit, if this run is one (`_ARGCOMPLETE` set)."""
    attach(parser)
    with contextlib.suppress(BrokenPipeError):
        argcomplete.autocomplete(parser, always_complete_options=False, exclude=[HIDDEN])
