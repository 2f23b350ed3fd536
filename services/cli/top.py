"""`fleet top`: every agent's CPU, memory, threads, processes, restarts and health, live.

The fleet and its samples come from the live view's engine (services/cli/live.py): the list
and the events folded with `evolve`, plus the health service's samples on `fleet.health.*`
(one `fleet.ctl.health` per agent first). Here are the rows, their order and their table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from schemas.agent import AgentState
from schemas.states import Lifecycle
from services.cli import style
from services.cli.client import open_client
from services.cli.live import LiveFleet, check_interval, load, run_until_interrupted, watch

SORTS = ("cpu", "mem", "name")
TOP_HEADERS = ["ID", "LIFECYCLE", "ACTIVITY", "CPU%", "RSS MB", "THREADS", "PROCS", "RESTARTS",
               "HEALTH"]  # fmt: skip


def health_word(s: AgentState) -> str:
    """failing (a service unhealthy, or ERROR), ok (every service healthy), else -."""
    verdicts = [svc.healthy for svc in s.services.values()]
    if s.lifecycle is Lifecycle.ERROR or False in verdicts:
        return "failing"
    return "ok" if verdicts and all(v is True for v in verdicts) else "-"


def restarts(s: AgentState) -> int:
    return sum(svc.restarts for svc in s.services.values())


def top_rows(fleet: LiveFleet, sort: str) -> list[dict[str, Any]]:
    """One dict per agent: its state words, its last sample (None when unsampled), health."""
    rows = []
    for s in fleet.shown():
        sample = fleet.samples.get(s.agent_id)
        rows.append(
            {
                "id": s.agent_id,
                "lifecycle": s.lifecycle.value,
                "activity": s.activity.value,
                "cpu_percent": sample.cpu_percent if sample else None,
                "rss_mb": sample.rss_mb if sample else None,
                "threads": sample.threads if sample else None,
                "processes": sample.processes if sample else None,
                "restarts": restarts(s),
                "health": health_word(s),
            }
        )
    return sort_rows(rows, sort)


def sort_rows(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """cpu and mem: highest first (unsampled last); name: by id. Ties by id."""
    rows = sorted(rows, key=lambda r: r["id"])
    if sort == "name":
        return rows
    key = "cpu_percent" if sort == "cpu" else "rss_mb"
    return sorted(rows, key=lambda r: -1.0 if r[key] is None else r[key], reverse=True)


def _figure(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def top_frame(rows: list[dict[str, Any]], paint: style.Painter) -> str:
    if not rows:
        return "no agents (fleet spawn starts one)"
    cells = [
        [
            r["id"],
            r["lifecycle"],
            r["activity"],
            _figure(r["cpu_percent"], ".1f"),
            _figure(r["rss_mb"], ".1f"),
            _figure(r["threads"], "d"),
            _figure(r["processes"], "d"),
            str(r["restarts"]),
            r["health"],
        ]
        for r in rows
    ]
    return style.table(TOP_HEADERS, cells, paint=paint, coloured=frozenset({1, 2, 8}))


def top_summary(rows: list[dict[str, Any]], sort: str) -> str:
    running = sum(r["lifecycle"] == "RUNNING" for r in rows)
    cpu = sum(r["cpu_percent"] or 0.0 for r in rows)
    rss = sum(r["rss_mb"] or 0.0 for r in rows)
    return (
        f"{len(rows)} agents, {running} running, cpu {cpu:.1f}%, rss {rss:.0f} MB"
        f"  (sorted by {sort})"
    )


def top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sort", choices=SORTS, default="cpu", help="order of the rows (default cpu)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=2.0,
                   help="least seconds between two frames (default 2)")  # fmt: skip
    p.add_argument("--all", action="store_true", help="include removed agents")


def cmd_top(args: argparse.Namespace) -> int:
    """Live CPU, memory, threads, restarts and health of every agent."""
    check_interval(args.interval)
    paint = style.painter(style.color_wanted(sys.stdout, no_color=args.no_color))

    def render(fleet: LiveFleet, on_terminal: bool) -> str:
        rows = top_rows(fleet, args.sort)
        if args.json:
            return msgspec.json.encode(rows).decode()
        body = top_frame(rows, paint)
        return top_summary(rows, args.sort) + "\n\n" + body if on_terminal else body

    if args.once:
        return asyncio.run(_top_once(args, render))
    return run_until_interrupted(watch(args, render, health=True, title="fleet top"))


async def _top_once(args: argparse.Namespace, render: Callable[[LiveFleet, bool], str]) -> int:
    fleet = LiveFleet(include_removed=args.all)
    async with open_client() as client:
        fleet.changed.clear()
        await load(client, fleet, health=True)
    print(render(fleet, False))
    return 0
