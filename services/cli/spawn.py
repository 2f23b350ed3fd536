"""`fleet spawn`: one or more agents at once, with their progress as it happens.

On a terminal a spinner shows the step each agent is at; elsewhere each event of the agent's
log that verifies is a line, for logs and scripts. The supervisor answers `fleet.ctl.spawn`
(schemas.control.SpawnRequest).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from schemas import events as e
from schemas import subjects
from schemas.control import SpawnRequest
from schemas.errors import FleetError
from schemas.wire import AgentReply
from services.cli import follow, style
from services.cli.client import SPAWN_TIMEOUT_S, open_client
from services.cli.eventlines import summary
from services.cli.progress import Progress


def spawn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, help="the git repository the agents work in")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--name", action="append", default=[], help="agent name (repeatable)")
    names.add_argument("--count", type=int, help="spawn K agents with generated names")
    p.add_argument("--template", default="shell", help="template (default: shell)")
    p.add_argument("--base-ref", default="HEAD", help="branch the agents from this ref")
    p.add_argument("--cap", action="append", default=[], help="a capability (repeatable)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="environment for the agent's processes; NAME alone takes your value (repeatable)",
    )
    p.add_argument("--command", default="", help="override the template's assistant command")


def cmd_spawn(args: argparse.Namespace) -> int:
    """Spawn one or more agents and show their progress."""
    return asyncio.run(_spawn(args))


def _spawn_names(args: argparse.Namespace) -> list[str]:
    if args.count is not None and args.count < 1:
        raise FleetError(f"--count must be at least 1, not {args.count}")
    template = subjects.token(args.template, "template")
    names: list[str] = args.name or [
        f"{template}-{secrets.token_hex(2)}" for _ in range(args.count or 1)
    ]
    for name in names:
        subjects.token(name, "agent name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FleetError(f"the name {twice[0]!r} is given more than once; agent names are unique")
    return names


def _spawn_request(args: argparse.Namespace, name: str) -> SpawnRequest:
    options = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise FleetError(f"--option {item!r} is not KEY=VALUE")
        options[key] = value
    env = {}
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq:
            if key not in os.environ:
                raise FleetError(f"--env {key!r} has no value and is not set in your environment")
            value = os.environ[key]
        env[key] = value
    repo = Path(args.repo).expanduser().resolve()
    if not repo.is_dir():
        raise FleetError(f"the repository {str(repo)!r} is not a directory")
    return SpawnRequest(
        repo=str(repo),
        name=name,
        template=args.template,
        base_ref=args.base_ref,
        capabilities=tuple(args.cap),
        options=options,
        command=args.command,
        env=env,
    )


async def _spawn(args: argparse.Namespace) -> int:
    names = _spawn_names(args)
    requests = [_spawn_request(args, n) for n in names]
    width = max(len(n) for n in names)
    async with open_client() as client:
        subs = []
        spinner = Progress(client.nc, names, "spawning")
        # On a terminal the spinner shows the steps; the step lines are for logs and scripts.
        lines = not args.json and not (spinner.enabled and style.is_terminal(sys.stdout))
        if lines:
            subs = await _follow_progress(client.nc, names, width)
        async with spinner:
            results = await asyncio.gather(
                *(client.control("spawn", r, AgentReply, SPAWN_TIMEOUT_S) for r in requests),
                return_exceptions=True,
            )
        await asyncio.sleep(0.05)  # let progress lines already received print first
        for sub in subs:
            await sub.unsubscribe()
    if lines and follow.fleet_key() is None and any(isinstance(r, AgentReply) for r in results):
        # Said after the fact, and only when something was spawned: a spawn that no
        # supervisor answered has one sentence, and it is that one.
        print("fleet: no fleet key in the state dir; progress lines were not shown (they could"
              " not be verified)", file=sys.stderr)  # fmt: skip
    return _spawn_report(names, results, args.json)


async def _follow_progress(nc: Client, names: list[str], width: int) -> list[Subscription]:
    """A line per event of each agent's log as it is stored, only of those that verify
    (services/cli/follow.py); none without the fleet key (said once the spawn is answered)."""
    key = follow.fleet_key()

    def line(event: e.AgentEvent) -> None:
        print(_progress_line(event, width), flush=True)

    return await follow.follow(nc, names, line, "spawn progress", key)


def _progress_line(event: e.AgentEvent, width: int) -> str:
    if isinstance(event, e.LifecycleChanged):
        reason = f"  {event.reason}" if event.reason else ""
        return f"{event.agent_id:<{width}}  {event.to.value}{reason}"
    tag = type(event).__struct_config__.tag
    return f"{event.agent_id:<{width}}  {tag:<16}  {summary(event)}".rstrip()


def _spawn_report(
    names: list[str], results: list[AgentReply | BaseException], as_json: bool
) -> int:
    failed = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
    for _, r in failed:
        if not isinstance(r, FleetError):
            raise r
    if len(names) == 1 and failed:
        raise failed[0][1]
    agents = [r.agent for r in results if isinstance(r, AgentReply)]
    if as_json:
        for agent in agents:
            style.print_json(agent)
        for name, err in failed:  # the shape of an error reply, with the name it was for
            assert isinstance(err, FleetError)
            style.print_json(
                {"id": name, "ok": False, "error": {"code": err.code, "message": str(err)}}
            )
    else:
        rows = [[a.id, a.lifecycle, a.branch, a.worktree] for a in agents]
        rows += [[n, "FAILED", str(r), ""] for n, r in failed]
        paint = style.painter(style.color_wanted(sys.stdout))
        print()
        print(style.table(["ID", "LIFECYCLE", "BRANCH", "WORKTREE"], rows, paint=paint,
                              coloured=frozenset({1})))  # fmt: skip
    for name, err in failed:
        print(f"fleet: {name}: {err}", file=sys.stderr)
    if failed:
        print(f"fleet: {len(failed)} of {len(names)} spawns failed", file=sys.stderr)
        return 2
    return 0
