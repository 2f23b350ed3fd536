"""`fleet health <agent>`: what the health service saw of one agent (`fleet.ctl.health`)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgspec

from schemas.health import HealthRequest
from schemas.wire import Fields
from services.cli.client import open_client


def health_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("agent", help="the agent's id")
    p.add_argument("--limit", type=int, default=20, help="how many observations (default 20)")
    p.add_argument("--kind", default="", choices=["", "sample", "probe", "recovery"],
                   help="only observations of this kind")  # fmt: skip


def cmd_health(args: argparse.Namespace) -> int:
    """Show an agent's health: its services' verdicts, the recovery ladder, recent samples."""
    reply = asyncio.run(_fetch(args.agent, args.limit, args.kind))
    if args.json:
        reply.pop("ok", None)
        print(msgspec.json.encode(reply).decode())
    else:
        print(describe(reply))
    return 0


async def _fetch(agent: str, limit: int, kind: str) -> Fields:
    async with open_client() as client:
        req = HealthRequest(agent=agent, limit=limit, kind=kind)
        return await client.control("health", req, Fields)


def describe(r: dict[str, Any]) -> str:
    lines = [f"agent {r['agent']} ({r.get('lifecycle', '?')})"]
    for name, s in (r.get("services") or {}).items():
        verdict = {True: "healthy", False: "UNHEALTHY", None: "unknown"}[s.get("healthy")]
        checks = " ".join(
            f"{k}={'ok' if v else 'fail'}" for k, v in (s.get("checks") or {}).items()
        )
        lines.append(f"  {name:<12} {s.get('state', ''):<9} {verdict:<9} {checks}".rstrip())
    for a in r.get("recovery") or []:
        lines.append(f"  recovery: {a['rung']} (attempt {a['attempt']}) at {a['at']}")
    for o in r.get("history") or []:
        lines.append("  " + _row(o))
    return "\n".join(lines)


def _row(o: dict[str, Any]) -> str:
    at = str(o.get("at", ""))[11:23]
    match o.get("kind"):
        case "sample":
            s = o.get("sample") or {}
            return (
                f"{at} cpu {s.get('cpu_percent', 0):5.1f}%  rss {s.get('rss_mb', 0):8.1f} MB  "
                f"threads {s.get('threads', 0)}  files {s.get('open_files', 0)}  "
                f"procs {s.get('processes', 0)}"
            )
        case "probe":
            ok = "ok" if o.get("ok") else "FAIL"
            return f"{at} {o.get('service')} {o.get('probe')} {ok} {o.get('detail', '')}".rstrip()
        case "recovery":
            return (
                f"{at} recovery {o.get('rung')} (attempt {o.get('attempt')}) {o.get('detail', '')}"
            )
    return f"{at} {o}"
