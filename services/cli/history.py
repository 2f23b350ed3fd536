"""`fleet checkpoint`, `checkpoints`, `rollback` and `audit`: an agent's history, kept and judged.

Checkpoint and rollback are commands to the agent's actor (`fleet.cmd.<id>`). `checkpoints`
and `audit` read the log straight from JetStream, so they need no actor, and an audit also
works on a copy of the stream (`--nats-url`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from infra import fleetkey
from infra.config import Settings
from infra.eventstore import EventStore
from infra.nats import connect
from schemas import commands as c
from schemas import subjects
from schemas.agent import AgentState, CheckpointRef
from schemas.audit import AgentAudit
from schemas.errors import FleetError, UnknownAgent
from schemas.wire import CheckpointReply, RollbackReply
from services import auditor as auditing
from services.cli import style
from services.cli.agents import id_argument, table
from services.cli.client import STOP_TIMEOUT_S, nats_url, open_client
from services.cli.eventlines import summary
from services.cli.progress import Progress

R = TypeVar("R")

EXIT_VIOLATIONS = 3  # `fleet audit --verify` found something wrong
CHECKPOINT_TIMEOUT_S = 60.0  # a commit of a large worktree
ROLLBACK_TIMEOUT_S = CHECKPOINT_TIMEOUT_S + STOP_TIMEOUT_S  # plus restarting services


async def _command(agent_id: str, cmd: c.AgentCommand, kind: type[R], timeout: float) -> R:
    subjects.token(agent_id)
    label = "checkpointing" if isinstance(cmd, c.Checkpoint) else "rolling back"
    async with open_client() as client, Progress(client.nc, [agent_id], label):
        return await client.command(agent_id, cmd, kind, timeout)


# -- checkpoint, checkpoints, rollback ---------------------------------------------------------


def checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("-m", "--message", default="", help="a label for the checkpoint")


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """Save an agent's worktree and scrollback as a checkpoint in its log."""
    cmd = c.Checkpoint(label=args.message)
    reply = asyncio.run(_command(args.agent, cmd, CheckpointReply, CHECKPOINT_TIMEOUT_S))
    if args.json:
        style.print_json(
            {"agent": args.agent, "checkpoint": reply.checkpoint, "commit": reply.commit}
        )
    else:
        print(f"{args.agent}: checkpoint #{reply.checkpoint} ({reply.commit[:10]})")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """List an agent's checkpoints (read from its log; no actor needed)."""
    found = asyncio.run(_checkpoints(args.agent))
    if args.json:
        style.print_json(found)
        return 0
    rows = [
        [
            f"#{cp.checkpoint}",
            cp.at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if cp.at else "-",
            str(cp.log_seq),
            cp.commit[:10],
            cp.auto or "-",
            "yes" if cp.healthy else "no" if cp.healthy is False else "?",
            cp.label,
        ]
        for cp in found
    ]
    headers = ["ID", "TAKEN", "SEQ", "COMMIT", "AUTO", "HEALTHY", "LABEL"]
    print(table(headers, rows) if rows else f"agent {args.agent} has no checkpoints")
    return 0


async def _checkpoints(agent_id: str) -> list[CheckpointRef]:
    subjects.token(agent_id)
    nc = await connect(nats_url(Settings.from_env()), name="fleet-cli", reconnect=False)
    try:
        key = fleetkey.load_if_present(Settings.from_env().state_dir)
        loaded = await EventStore(nc, mac_key=key).load(agent_id)  # only what verifies
    finally:
        await nc.close()
    if loaded.position.seq == 0:
        raise UnknownAgent(agent_id)
    return list(loaded.state.checkpoints)


def rollback_arguments(p: argparse.ArgumentParser) -> None:
    id_argument(p)
    p.add_argument("checkpoint", type=int, help="the checkpoint's number (fleet checkpoints)")


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll an agent back to a checkpoint (the current work is checkpointed first)."""
    cmd = c.Rollback(checkpoint=args.checkpoint)
    reply = asyncio.run(_command(args.agent, cmd, RollbackReply, ROLLBACK_TIMEOUT_S))
    if args.json:
        fields = ("checkpoint", "saved_checkpoint", "commit", "restarted")
        style.print_json({"agent": args.agent, **{k: getattr(reply, k) for k in fields}})
    else:
        print(
            f"{args.agent}: rolled back to checkpoint #{reply.checkpoint}; the work before it "
            f"is checkpoint #{reply.saved_checkpoint} (fleet rollback {args.agent} "
            f"{reply.saved_checkpoint} undoes this)"
        )
    return 0


# -- audit --------------------------------------------------------------------------------------


def audit_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("agent", nargs="?", help="the agent whose log to audit")
    which.add_argument("--all", action="store_true", help="audit every agent's log")
    p.add_argument("--at", metavar="SEQ|TIME", help="show the state as of a sequence or time")
    p.add_argument("--verify", action="store_true", help="exit 3 on any violation, naming it")
    p.add_argument("--nats-url", help="audit the stream on this NATS (e.g. a restored copy)")


def parse_at(raw: str | None) -> tuple[int | None, datetime | None]:
    """`--at 120` is a stream sequence; anything else an ISO time (local time if no zone)."""
    if raw is None:
        return None, None
    if raw.isdigit():
        return int(raw), None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise FleetError(f"--at takes a sequence number or an ISO time, not {raw!r}") from None
    return None, when if when.tzinfo else when.astimezone()


def cmd_audit(args: argparse.Namespace) -> int:
    """Replay and check an agent's log (or all): transitions, hash chain, MACs, sequences."""
    return asyncio.run(_audit(args))


async def _audit(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    at_seq, at_time = parse_at(args.at)
    key = auditing.fleet_key(settings.state_dir)
    keep = not args.verify or args.json
    options = auditing.AuditOptions(at_seq=at_seq, at_time=at_time, keep=keep, key=key)
    url = args.nats_url or nats_url(settings)
    nc = await connect(url, name="fleet-audit", reconnect=False)
    try:
        store = EventStore(nc)
        if args.all:
            audits = await auditing.audit_all(store, options)
        else:
            audits = [await auditing.audit_agent(store, subjects.token(args.agent), options)]
    finally:
        await nc.close()
    if not args.all and audits[0].count == 0:
        raise UnknownAgent(args.agent)
    for audit in audits:
        if args.json:
            style.print_json(audit_json(audit, with_state=args.at is not None or not args.verify))
        else:
            _print_audit(audit, args, at_seq, at_time)
    bad = [v for a in audits for v in a.violations]
    if args.verify and bad:
        for v in bad:
            print(f"fleet audit: {v.sentence()}", file=sys.stderr)
        return EXIT_VIOLATIONS
    return 0


def audit_json(audit: AgentAudit, *, with_state: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent": audit.agent_id,
        "events": audit.count,
        "last_seq": audit.last_seq,
        "ok": audit.ok,
        "mac_checked": audit.key is not None,
        "violations": [msgspec.to_builtins(v) for v in audit.violations],
    }
    if with_state:
        out["state"] = msgspec.to_builtins(audit.state_at)
    if audit.rows:
        out["timeline"] = [{"seq": seq, **msgspec.to_builtins(ev)} for seq, ev in audit.rows]
    return out


def _print_audit(
    audit: AgentAudit, args: argparse.Namespace, at_seq: int | None, at_time: datetime | None
) -> None:
    problems: dict[int, list[str]] = {}
    for v in audit.violations:
        problems.setdefault(v.seq, []).append(v.problem)
    if not args.verify:
        for seq, ev in audit.rows:
            if (at_seq is not None and seq > at_seq) or (at_time is not None and ev.at > at_time):
                break
            tag = type(ev).__struct_config__.tag
            when = ev.at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
            print(f"{seq:>6}  {when}  {ev.actor or '-':<14}  {tag:<17}  {summary(ev)}".rstrip())
            for problem in problems.get(seq, []):
                print(f"{'':>6}  !! {problem}")
    if args.at is not None:
        print(_state_line(audit.state_at, args.at))
    verdict = "ok" if audit.ok else f"{len(audit.violations)} violation(s)"
    macs = "" if audit.key is not None else "; MACs not checked (no fleet key in the state dir)"
    print(f"agent {audit.agent_id}: {audit.count} events, {verdict}{macs}")


def _state_line(s: AgentState, at: str) -> str:
    services = ", ".join(f"{n}={v.state}" for n, v in s.services.items()) or "none"
    return (
        f"as of {at}: {s.lifecycle.value}/{s.activity.value}, {s.events} events, "
        f"head {s.head[:10] or '-'}, {len(s.checkpoints)} checkpoint(s), services {services}"
    )
