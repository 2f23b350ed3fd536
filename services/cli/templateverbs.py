"""`fleet template apply FILE | ls | show NAME [--version N] | diff NAME [V1 V2]`, over NATS.

Each talks to the templates service on `fleet.ctl.templates`; an invalid template comes back as
the service's sentence (file, field path, what was expected) and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import msgspec

from schemas import subjects
from schemas.errors import FleetError
from schemas.templates import (
    ApplyTemplate,
    DiffTemplate,
    ListTemplates,
    ShowTemplate,
    TemplateOp,
)
from schemas.wire import Fields
from services.cli.agents import table
from services.cli.client import COMMAND_TIMEOUT_S, open_client, with_by

NOBODY = "no templates service answers; is `fleet up` running?"


def template_arguments(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    apply = subs.add_parser("apply", help="validate a YAML template and store it as a new version")
    apply.add_argument("file", help="the template's YAML file")
    subs.add_parser("ls", help="every template with its latest version")
    show = subs.add_parser("show", help="a template as stored (the latest version by default)")
    show.add_argument("name")
    show.add_argument("--version", type=int, default=0, help="a stored version")
    diff = subs.add_parser("diff", help="what changed between two versions (default: the last)")
    diff.add_argument("name")
    diff.add_argument("versions", nargs="*", type=int, metavar="V", help="V1 V2")
    for sub in subs.choices.values():
        # SUPPRESS: `fleet template --json ls` keeps the outer flag instead of this default
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
        )


def cmd_template(args: argparse.Namespace) -> int:
    """Apply, list, show and diff templates (versioned by the templates service)."""
    payload = _payload(args)
    reply = asyncio.run(_request(payload))
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        print(_text(args.action, reply))
    return 0


def _payload(args: argparse.Namespace) -> TemplateOp:
    match args.action:
        case "apply":
            path = Path(args.file)
            try:
                source = path.read_text()
            except OSError as e:
                raise FleetError(f"cannot read template {path}: {e.strerror or e}") from e
            return ApplyTemplate(source=source, file=path.name)
        case "ls":
            return ListTemplates()
        case "show":
            return ShowTemplate(name=args.name, version=args.version)
        case _:
            if len(args.versions) not in (0, 2):
                raise FleetError("diff takes no versions (the last change) or two: V1 V2")
            v1, v2 = args.versions or (0, 0)
            return DiffTemplate(name=args.name, v1=v1, v2=v2)


async def _request(op: TemplateOp) -> Fields:
    async with open_client() as client:
        subject = subjects.control("templates")
        sent = with_by(op)
        return await client.request(subject, sent, Fields, COMMAND_TIMEOUT_S, nobody=NOBODY)


def _text(action: str, reply: Fields) -> str:
    match action:
        case "apply":
            what = "stored as" if reply["changed"] else "unchanged, still"
            return f"template {reply['name']} {what} version {reply['version']}"
        case "ls":
            rows = [
                [
                    t["name"],
                    str(t["version"]),
                    ",".join(t["services"]) or "-",
                    t["description"],
                ]
                for t in reply["templates"]
            ]
            return table(["NAME", "VERSION", "SERVICES", "DESCRIPTION"], rows)
        case "show":
            head = f"# {reply['name']} version {reply['version']}"
            if reply.get("file"):
                head += f" (from {reply['file']})"
            return f"{head}\n{reply['source'].rstrip()}"
        case _:
            if not reply["diff"]:
                return f"template {reply['name']}: no changes between the versions"
            return str(reply["diff"]).rstrip()
