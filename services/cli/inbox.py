"""`fleet inbox`, `fleet mail send|broadcast`, `fleet topic pub|sub` and `fleet schema`.

With the control plane's credential, mail goes straight to JetStream
(`fleet.mail.<agent>.<priority>`) through infra/mailbox.py. With an agent's own credential
(`FLEET_NATS_CREDS`), mail and topic messages go by the relay (`fleet.ctl.mail.<agent>`,
actors/supervisor/mailrelay.py), which checks them when they are sent and answers a refusal with a
sentence: the recipient must exist, the message be within its limits. Inside an agent's session
`FLEET_AGENT_ID` names the agent, and every message `fleet inbox` takes is also appended to
`$FLEET_WORKTREE/.fleet/inbox.jsonl`: the mailbox file an assistant can read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra import natsauth
from infra.config import Settings
from infra.mailbox import Mailbox
from schemas import subjects
from schemas.errors import FleetError
from schemas.mail import InboxItem, MailMessage
from schemas.wire import json_schemas
from services.cli import style
from services.cli.client import open_client, user_name

MAILBOX_FILE = Path(".fleet") / "inbox.jsonl"


def _me() -> str:
    return os.environ.get("FLEET_AGENT_ID") or user_name()


def _line(item: InboxItem) -> str:
    about = f" [{item.subject}]" if item.subject else ""
    return f"{item.priority:<8} {item.from_}{about}: {item.body}"


def _keep(items: list[InboxItem]) -> None:
    """Inside the agent's own session, append what it read to its worktree's mailbox file."""
    worktree, agent = os.environ.get("FLEET_WORKTREE"), os.environ.get("FLEET_AGENT_ID")
    if not items or not worktree or not agent or items[0].to != agent:
        return
    path = Path(worktree) / MAILBOX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        for item in items:
            f.write(msgspec.json.encode(item) + b"\n")


# -- fleet inbox -------------------------------------------------------------------------------


def inbox_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("agent", nargs="?", help="whose mail (default: $FLEET_AGENT_ID)")
    p.add_argument("--next", action="store_true", help="take the next message only")
    p.add_argument(
        "--ack",
        action="store_true",
        help="take messages and acknowledge them (without it --next leaves the message to "
        "come back after a backoff, and a list only looks)",
    )
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")


def cmd_inbox(args: argparse.Namespace) -> int:
    """Read an agent's mail, highest priority first."""
    agent = args.agent or os.environ.get("FLEET_AGENT_ID")
    if not agent:
        raise FleetError("name the agent, or run this inside an agent (FLEET_AGENT_ID is unset)")
    subjects.token(agent)
    _refuse_what_the_agent_credential_cannot(agent, args.next or args.ack)
    items = asyncio.run(_inbox(agent, args.next, args.ack, 1 if args.next else args.limit))
    _keep(items if (args.next or args.ack) else [])
    if args.next:
        if args.json:
            style.print_json(items[0] if items else None)
        elif items:
            print(_line(items[0]))
        return 0
    if args.json:
        style.print_json(items)
    else:
        print("\n".join(_line(i) for i in items) if items else f"no mail for {agent}")
    return 0


def _agent_of_credential() -> str:
    """The agent whose own NATS credential this process holds, or "" (the control plane's)."""
    path = Settings.from_env().nats_creds
    if path is None:
        return ""
    user = natsauth.read_credential(path).user
    if not user.startswith(natsauth.AGENT_USER_PREFIX):
        return ""
    return user.removeprefix(natsauth.AGENT_USER_PREFIX)


def _sending_box(nc: Client) -> Mailbox:
    """A mailbox that sends as the control plane, or, with an agent's credential, by the relay."""
    return Mailbox(nc, relay_as=_agent_of_credential())


def _refuse_what_the_agent_credential_cannot(agent: str, take: bool) -> None:
    """Inside an agent (`FLEET_NATS_CREDS`), NATS lets it read only its own mail, and only
    through its consumers: say so at once rather than wait for a dropped request."""
    path = Settings.from_env().nats_creds
    if path is None:
        return
    user = natsauth.read_credential(path).user
    if user != natsauth.agent_user(agent):
        raise FleetError(f"the NATS credential {path} ({user}) may read only its own mail")
    if not take:
        raise FleetError(
            f"listing mail without taking it needs the control plane's NATS credential; "
            f"as {user}, take it with `fleet inbox --next` or `fleet inbox --ack`"
        )


async def _inbox(agent: str, take: bool, ack: bool, limit: int) -> list[InboxItem]:
    async with open_client() as client:
        box = Mailbox(client.nc)
        if not take and not ack:
            return await box.peek(agent, limit)
        got = await box.read(agent, limit)
        if ack:
            for delivery in got:
                await delivery.ack()
        await client.nc.flush()
        return [d.item for d in got]


# -- fleet mail send|broadcast -----------------------------------------------------------------


def mail_arguments(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="mail_command", metavar="send|broadcast", required=True)
    send = subs.add_parser("send", help="mail one agent")
    send.add_argument("to", help="the recipient agent")
    send.add_argument("body")
    send.add_argument("--wait", type=float, default=0.0, help="wait this long for a reply")
    cast = subs.add_parser("broadcast", help="mail every live agent (with --cap: those with it)")
    cast.add_argument("body")
    cast.add_argument("--cap", action="append", default=[], help="a capability (repeatable)")
    for sub in (send, cast):
        sub.add_argument("--priority", default="normal", choices=subjects.PRIORITIES)
        sub.add_argument("--subject", default="")
        sub.add_argument("--ttl", type=float, default=0.0, help="seconds until it expires")
        sub.add_argument("--from", dest="sender", default="", help="default: this agent or user")
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def cmd_mail(args: argparse.Namespace) -> int:
    """Send mail to an agent, or broadcast it."""
    message = MailMessage(
        from_=args.sender or _me(), body=args.body, subject=args.subject, ttl_s=args.ttl
    )
    result = asyncio.run(_mail(args, message))
    if args.json:
        style.print_json(result)
    elif "reply" in result:
        print(_line(result["reply"]))
    elif "to" in result:
        print(f"sent to {', '.join(result['to']) or 'nobody (no live agent matches)'}")
    else:
        print(f"sent ({args.priority}, seq {result['seq']})")
    return 0


async def _mail(args: argparse.Namespace, message: MailMessage) -> dict[str, Any]:
    async with open_client() as client:
        box = _sending_box(client.nc)
        if args.mail_command == "broadcast":
            return {"to": await box.broadcast(message, args.cap, args.priority)}
        if args.wait > 0:
            return {"reply": await box.request(args.to, message, args.wait, args.priority)}
        return {"seq": await box.send(args.to, message, args.priority)}


# -- fleet topic pub|sub -----------------------------------------------------------------------


def topic_arguments(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="topic_command", metavar="pub|sub", required=True)
    pub = subs.add_parser("pub", help="publish DATA on the topic NAME")
    pub.add_argument("name")
    pub.add_argument("data")
    sub = subs.add_parser("sub", help="print what arrives on topics matching PATTERN (* and >)")
    sub.add_argument("pattern")
    sub.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    sub.add_argument("--timeout", type=float, default=0.0, help="stop after this long")
    for one in (pub, sub):
        one.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def cmd_topic(args: argparse.Namespace) -> int:
    """Publish on a topic, or follow topics with wildcards."""
    return asyncio.run(_topic(args))


async def _topic(args: argparse.Namespace) -> int:
    prefix = len(subjects.topic("x")) - 1
    async with open_client() as client:
        box = _sending_box(client.nc)
        if args.topic_command == "pub":
            await box.publish_topic(args.name, args.data.encode())
            await client.nc.flush()
            return 0
        seen = 0
        done = asyncio.Event()

        async def show(msg: Msg) -> None:
            nonlocal seen
            name, data = msg.subject[prefix:], msg.data.decode(errors="replace")
            if args.json:
                style.print_json({"topic": name, "data": data})
            else:
                print(f"{name}: {data}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                done.set()

        await box.subscribe_topic(args.pattern, show)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.timeout or None)
        return 0


# -- fleet schema ------------------------------------------------------------------------------


def schema_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="write <name>.json files into this directory")


def cmd_schema(args: argparse.Namespace) -> int:
    """Print (or write) the JSON Schema of every command, reply, event and message."""
    schemas = json_schemas()
    if args.out is None:
        style.print_json(schemas)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (args.out / f"{name}.json").write_bytes(msgspec.json.format(msgspec.json.encode(schema)))
    print(f"wrote {len(schemas)} schemas to {args.out}", file=sys.stderr)
    return 0
