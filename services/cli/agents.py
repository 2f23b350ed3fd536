"""`fleet spawn`, `ls`, `show`, `events` and the commands to one agent, over NATS request/reply.

Each `cmd_*` is a row of the table in services/cli/__init__.py. Each speaks the wire contract of
schemas/control.py: the supervisor answers `fleet.ctl.*`, an agent's actor `fleet.cmd.<id>`;
an error reply is raised as a `RemoteError`, whose sentence the CLI prints (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys

import msgspec

from schemas import commands as c
from schemas import events as e
from schemas import subjects
from schemas.control import AgentView, ListRequest
from schemas.errors import FleetError, RemoteError
from schemas.states import LIVE
from schemas.wire import AgentReply, AgentsReply, OutputReply
from services.cli import live, style
from services.cli.client import (
    RESTART_TIMEOUT_S,
    STOP_TIMEOUT_S,
    FleetClient,
    open_client,
    user_name,
)
from services.cli.eventlines import print_events
from services.cli.progress import Progress

_event_decoder = msgspec.json.Decoder(e.AgentEvent)
FOLLOW_POLL_S = 0.5
FOLLOW_WINDOW = 1000  # lines captured per poll of `logs -f`: enough overlap to find new lines


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, *rows]]  # fmt: skip
    return "\n".join(lines)


def _agent_line(agent: AgentView) -> str:
    reason = f"  ({agent.reason})" if agent.reason else ""
    return f"{agent.id}  {agent.lifecycle}{reason}"


# -- ls and show ----------------------------------------------------------------------------


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include removed agents")
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="keep the table live from the events (Ctrl-C quits)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="with --watch: least seconds between redraws"
    )


def cmd_ls(args: argparse.Namespace) -> int:
    """List the fleet's agents."""
    if args.watch:
        return live.ls_watch(args)
    return asyncio.run(_ls(args))


async def _ls(args: argparse.Namespace) -> int:
    async with open_client() as client:
        reply = await client.control("list", ListRequest(removed=args.all), AgentsReply)
    agents = reply.agents
    if args.json:
        style.print_json(agents)
    elif not agents:
        print("no agents (fleet spawn starts one)")
    else:
        rows = [[a.id, a.lifecycle, a.activity, a.template, a.branch, a.worktree] for a in agents]
        paint = style.painter(style.color_wanted(sys.stdout, no_color=args.no_color))
        print(style.table(live.LS_HEADERS, rows, paint=paint, coloured=frozenset({1, 2})))
    return 0


def id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("agent", help="the agent's id (its name)")


def cmd_show(args: argparse.Namespace) -> int:
    """Show one agent."""
    agent = asyncio.run(_one(args.agent, c.Show()))
    if args.json:
        style.print_json(agent)
    else:
        print(describe(agent))
    return 0


def _activity(a: AgentView) -> str:
    """None ("-") once the agent is stopped or failed: its screen is gone."""
    if a.lifecycle not in {lc.value for lc in LIVE}:
        return "-"
    return a.activity + (f": {a.activity_detail}" if a.activity_detail else "")


def describe(a: AgentView) -> str:
    """A few aligned lines about one agent, empty fields left out."""
    tmux, actor = a.tmux, a.actor
    ports = " ".join(f"{k}={v}" for k, v in a.ports.items())
    services = " ".join(f"{k}:{s.state}" for k, s in a.services.items())
    rows = [
        ("lifecycle", a.lifecycle + (f" ({a.reason})" if a.reason else "")),
        ("activity", _activity(a)),
        ("template", a.template),
        ("repo", a.repo),
        ("branch", a.branch),
        ("worktree", a.worktree),
        ("tmux", f"-L {tmux.socket} {tmux.session}" if tmux.session else ""),
        ("actor", f"pid {actor.pid} on node {actor.node or '?'}" if actor.pid else ""),
        ("ports", ports),
        ("services", services),
        ("users", " ".join(a.users)),
        ("events", f"{a.events} (last seq {a.seq})"),
    ]
    return "\n".join([a.id, *(f"  {k:<10} {v}" for k, v in rows if v)])


# Commands long enough to show a spinner (on a terminal), and its words.
PROGRESS = {"stop": "stopping", "restart": "restarting", "kill": "killing"}


async def _one(agent_id: str, cmd: c.AgentCommand, timeout: float = 10.0) -> AgentView:
    subjects.token(agent_id)  # a bad id is refused before looking for fleetd
    doing = PROGRESS.get(str(type(cmd).__struct_config__.tag))
    async with open_client() as client:
        if doing:
            async with Progress(client.nc, [agent_id], doing):
                reply = await client.command(agent_id, cmd, AgentReply, timeout)
        else:
            reply = await client.command(agent_id, cmd, AgentReply, timeout)
    return reply.agent


# -- events ---------------------------------------------------------------------------------


def events_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")


def cmd_events(args: argparse.Namespace) -> int:
    """Print an agent's event log (from the log itself; no actor needed)."""
    return asyncio.run(print_events(args.agent, args.follow, args.json))


# -- commands to one agent ------------------------------------------------------------------


def stop_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("--remove-worktree", action="store_true", help="remove its worktree too")
    p.add_argument(
        "--force", action="store_true", help="remove even with unsaved work (saved to a ref)"
    )


def _run_one(args: argparse.Namespace, cmd: c.AgentCommand, timeout: float) -> int:
    agent = asyncio.run(_one(args.agent, cmd, timeout))
    if args.json:
        style.print_json(agent)
    else:
        print(_agent_line(agent))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop an agent: polite quit, then SIGTERM, then SIGKILL."""
    cmd = c.Stop(remove_worktree=args.remove_worktree, force=args.force)
    return _run_one(args, cmd, STOP_TIMEOUT_S)


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause an agent (SIGSTOP to its processes)."""
    return _run_one(args, c.Pause(), 10.0)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused agent (SIGCONT)."""
    return _run_one(args, c.Resume(), 10.0)


def cmd_restart(args: argparse.Namespace) -> int:
    """Restart an agent: stop it, then spawn it again in its worktree."""
    return _run_one(args, c.Restart(), RESTART_TIMEOUT_S)


def cmd_kill(args: argparse.Namespace) -> int:
    """Kill an agent at once (SIGTERM, then SIGKILL; no polite quit)."""
    return _run_one(args, c.Kill(), STOP_TIMEOUT_S)


def send_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("text", nargs="*", help="text to type (words are joined with spaces)")
    p.add_argument("--keys", nargs="+", default=[], help="named keys to press, e.g. C-c Enter")
    p.add_argument("--no-enter", action="store_true", help="do not press Enter after the text")


def cmd_send(args: argparse.Namespace) -> int:
    """Type text (and/or press keys) into an agent's window."""
    text = " ".join(args.text)
    if not text and not args.keys:
        raise FleetError("nothing to send: give TEXT, --keys, or both")
    cmd = c.Send(text=text, keys=tuple(args.keys), enter=not args.no_enter)
    return _run_one(args, cmd, 10.0)


def logs_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("-n", "--lines", type=int, default=200, help="how many lines (default 200)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--window", default="agent", help="tmux window (default: agent)")


def cmd_logs(args: argparse.Namespace) -> int:
    """Print what an agent's window shows (its scrollback)."""
    if args.lines < 1:
        raise FleetError(f"-n must be at least 1, not {args.lines}")
    return asyncio.run(_logs(args))


async def _logs(args: argparse.Namespace) -> int:
    subjects.token(args.agent)
    async with open_client() as client:
        text = await _output(client, args.agent, args.lines, args.window)
        if args.json and not args.follow:
            style.print_json({"id": args.agent, "output": text})
            return 0
        lines = text.split("\n") if text else []
        shown = lines[:-1] if args.follow else lines  # following: the last line may change
        _print_lines(shown, args.json)
        if not args.follow:
            return 0
        while True:
            await asyncio.sleep(FOLLOW_POLL_S)
            text = await _output(client, args.agent, max(args.lines, FOLLOW_WINDOW), args.window)
            stable = (text.split("\n") if text else [])[:-1]
            _print_lines(new_lines(shown, stable), args.json)
            shown = stable


async def _output(client: FleetClient, agent_id: str, lines: int, window: str) -> str:
    reply = await client.command(agent_id, c.Output(lines=lines, window=window), OutputReply)
    return reply.output


def _print_lines(lines: list[str], as_json: bool) -> None:
    for line in lines:
        if as_json:
            style.print_json({"line": line})
        else:
            print(line)
    sys.stdout.flush()


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """Lines of `now` that follow the longest tail of `before` that `now` starts with.

    The screen scrolls: `now` is `before` minus some first lines plus new ones. No overlap
    means more changed than a capture holds (or the screen was cleared): all of `now` is new.
    """
    for k in range(min(len(before), len(now)), 0, -1):
        if before[len(before) - k :] == now[:k]:
            return now[k:]
    return now


def attach_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("--readonly", action="store_true", help="watch without typing")
    p.add_argument("--print", action="store_true", help="only print the tmux command to run")


def cmd_attach(args: argparse.Namespace) -> int:
    """Put your terminal into an agent's tmux session (your own grouped session)."""
    if not args.print and not sys.stdin.isatty():
        raise FleetError(
            "fleet attach needs a terminal (stdin is not a TTY); "
            "use --print to get the tmux command instead"
        )
    user = user_name()
    reply = asyncio.run(_attach(args.agent, user, args.readonly))
    argv = reply.argv or []
    if args.print:
        if args.json:
            style.print_json({"session": reply.session, "argv": argv})
        else:
            print(shlex.join(argv))
        return 0
    try:
        status = subprocess.run(argv, check=False).returncode
    finally:
        agent = asyncio.run(_one(args.agent, c.Detach(user=user), 10.0))
    if args.json:
        style.print_json(agent)
    return 0 if status == 0 else 1


async def _attach(agent_id: str, user: str, readonly: bool) -> AgentReply:
    subjects.token(agent_id)
    async with open_client() as client:
        cmd = c.Attach(user=user, readonly=readonly)
        reply = await client.command(agent_id, cmd, AgentReply, 10.0)
    if not reply.argv:
        raise RemoteError("bad_reply", f"agent {agent_id} answered attach without a command")
    return reply
