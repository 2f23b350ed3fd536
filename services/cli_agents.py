"""`fleet spawn`, `ls`, `show`, `events` and the commands to one agent, over NATS request/reply.

Each `cmd_*` is a row of the table in services/cli.py. Each speaks the wire contract of
schemas/control.py: the supervisor answers `fleet.ctl.*`, an agent's actor `fleet.cmd.<id>`;
an error reply is raised as a `RemoteError`, whose sentence the CLI prints (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
from typing import Any

import msgspec

from schemas import events as e
from schemas import subjects
from schemas.errors import FleetError, RemoteError
from schemas.states import LIVE
from services import cli_live, cli_style
from services.cli_events import print_events
from services.cli_progress import Progress
from services.client import (
    RESTART_TIMEOUT_S,
    STOP_TIMEOUT_S,
    FleetClient,
    open_client,
    user_name,
)

_event_decoder = msgspec.json.Decoder(e.AgentEvent)
FOLLOW_POLL_S = 0.5
FOLLOW_WINDOW = 1000  # lines captured per poll of `logs -f`: enough overlap to find new lines


def _print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, *rows]]  # fmt: skip
    return "\n".join(lines)


def _agent_line(agent: dict[str, Any]) -> str:
    reason = f"  ({agent['reason']})" if agent.get("reason") else ""
    return f"{agent['id']}  {agent['lifecycle']}{reason}"


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
        return cli_live.ls_watch(args)
    return asyncio.run(_ls(args))


async def _ls(args: argparse.Namespace) -> int:
    async with open_client() as client:
        reply = await client.control("list", {"removed": args.all})
    agents: list[dict[str, Any]] = reply.get("agents", [])
    if args.json:
        _print_json(agents)
    elif not agents:
        print("no agents (fleet spawn starts one)")
    else:
        rows = [
            [a["id"], a["lifecycle"], a["activity"], a["template"], a["branch"], a["worktree"]]
            for a in agents
        ]
        paint = cli_style.painter(cli_style.color_wanted(sys.stdout, no_color=args.no_color))
        print(cli_style.table(cli_live.LS_HEADERS, rows, paint=paint, coloured=frozenset({1, 2})))
    return 0


def id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("agent", help="the agent's id (its name)")


def cmd_show(args: argparse.Namespace) -> int:
    """Show one agent."""
    agent = asyncio.run(_one(args.agent, "show"))
    if args.json:
        _print_json(agent)
    else:
        print(describe(agent))
    return 0


def _activity(a: dict[str, Any], detail: str | None) -> str:
    """None ("-") once the agent is stopped or failed: its screen is gone."""
    if a["lifecycle"] not in {lc.value for lc in LIVE}:
        return "-"
    return a["activity"] + (f": {detail}" if detail else "")


def describe(a: dict[str, Any]) -> str:
    """A few aligned lines about one agent, empty fields left out."""
    tmux, actor = a.get("tmux") or {}, a.get("actor") or {}
    reason, detail = a.get("reason"), a.get("activity_detail")
    ports = " ".join(f"{k}={v}" for k, v in (a.get("ports") or {}).items())
    services = " ".join(f"{k}:{s.get('state')}" for k, s in (a.get("services") or {}).items())
    rows = [
        ("lifecycle", a["lifecycle"] + (f" ({reason})" if reason else "")),
        ("activity", _activity(a, detail)),
        ("template", a.get("template", "")),
        ("repo", a.get("repo", "")),
        ("branch", a.get("branch", "")),
        ("worktree", a.get("worktree", "")),
        ("tmux", f"-L {tmux['socket']} {tmux['session']}" if tmux.get("session") else ""),
        (
            "actor",
            f"pid {actor['pid']} on node {actor.get('node') or '?'}" if actor.get("pid") else "",
        ),
        ("ports", ports),
        ("services", services),
        ("users", " ".join(a.get("users") or ())),
        ("events", f"{a.get('events', 0)} (last seq {a.get('seq', 0)})"),
    ]
    return "\n".join([a["id"], *(f"  {k:<10} {v}" for k, v in rows if v)])


# Commands long enough to show a spinner (on a terminal), and its words.
PROGRESS = {"stop": "stopping", "restart": "restarting", "kill": "killing"}


async def _one(agent_id: str, type_: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    subjects.token(agent_id)  # a bad id is refused before looking for fleetd
    async with open_client() as client:
        if type_ in PROGRESS:
            async with Progress(client.nc, [agent_id], PROGRESS[type_]):
                reply = await client.command(agent_id, type_, timeout, **fields)
        else:
            reply = await client.command(agent_id, type_, timeout, **fields)
    agent: dict[str, Any] = reply["agent"]
    return agent


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


def _run_one(args: argparse.Namespace, type_: str, timeout: float, **fields: Any) -> int:
    agent = asyncio.run(_one(args.agent, type_, timeout, **fields))
    if args.json:
        _print_json(agent)
    else:
        print(_agent_line(agent))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop an agent: polite quit, then SIGTERM, then SIGKILL."""
    fields = {"remove_worktree": args.remove_worktree, "force": args.force}
    return _run_one(args, "stop", STOP_TIMEOUT_S, **fields)


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause an agent (SIGSTOP to its processes)."""
    return _run_one(args, "pause", 10.0)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused agent (SIGCONT)."""
    return _run_one(args, "resume", 10.0)


def cmd_restart(args: argparse.Namespace) -> int:
    """Restart an agent: stop it, then spawn it again in its worktree."""
    return _run_one(args, "restart", RESTART_TIMEOUT_S)


def cmd_kill(args: argparse.Namespace) -> int:
    """Kill an agent at once (SIGTERM, then SIGKILL; no polite quit)."""
    return _run_one(args, "kill", STOP_TIMEOUT_S)


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
    fields = {"text": text, "keys": args.keys, "enter": not args.no_enter}
    return _run_one(args, "send", 10.0, **fields)


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
            _print_json({"id": args.agent, "output": text})
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
    reply = await client.command(agent_id, "output", 10.0, lines=lines, window=window)
    return str(reply.get("output", ""))


def _print_lines(lines: list[str], as_json: bool) -> None:
    for line in lines:
        if as_json:
            _print_json({"line": line})
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
    argv: list[str] = reply["argv"]
    if args.print:
        if args.json:
            _print_json({"session": reply["session"], "argv": argv})
        else:
            print(shlex.join(argv))
        return 0
    try:
        status = subprocess.run(argv, check=False).returncode
    finally:
        agent = asyncio.run(_one(args.agent, "detach", 10.0, user=user))
    if args.json:
        _print_json(agent)
    return 0 if status == 0 else 1


async def _attach(agent_id: str, user: str, readonly: bool) -> dict[str, Any]:
    subjects.token(agent_id)
    async with open_client() as client:
        reply = await client.command(agent_id, "attach", 10.0, user=user, readonly=readonly)
    if not isinstance(reply.get("argv"), list) or not reply["argv"]:
        raise RemoteError("bad_reply", f"agent {agent_id} answered attach without a command")
    return reply
