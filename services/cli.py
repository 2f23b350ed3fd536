"""The `fleet` command: one function per subcommand, listed in one table.

A later issue adds a subcommand by writing `def cmd_x(args) -> int` and one `Subcommand` row.
Every subcommand takes `--json`. A `FleetError` is the person's fault or the world's: its
sentence goes to stderr and the exit status is 2. Anything else is our bug: a short message
with an error id goes to stderr, the traceback to a log file under that id, exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import msgspec

from infra import errorlog
from infra.config import FleetState, Settings, pid_alive, read_state
from schemas import replies
from schemas.errors import BadRequest, FleetError, RemoteError
from services import cli_agents as agents
from services import cli_complete as completion
from services import cli_health as health
from services import cli_history as history
from services import cli_hook as hook
from services import cli_login as login
from services import cli_mail as mail
from services import cli_nats as nats_keys
from services import cli_sandbox, doctor
from services import cli_spawn as spawn
from services import cli_templates as templates
from services import cli_tokens as tokens
from services import cli_top as top

log = logging.getLogger("fleet.cli")

EXIT_OK, EXIT_BUG, EXIT_FLEET_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def cmd_up(args: argparse.Namespace) -> int:
    """Start fleetd in the foreground (or in the background with --detach)."""
    from services import up  # imported here so `fleet status` stays quick

    settings = Settings.from_env()
    if args.detach:
        up.detach(settings, sys.stdout, args.json)
    else:
        up.run(settings, sys.stdout, args.json)
    return EXIT_OK


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detach", action="store_true", help="run in the background; return once it is ready"
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Say where the running fleetd listens, or that it is not up (exit status 2)."""
    from services.up import format_state

    state = read_state(Settings.from_env())
    nats_alive = pid_alive(state.nats_pid) if state.nats_pid else None
    if args.json:
        print(msgspec.json.encode({**_as_dict(state), "nats_alive": nats_alive}).decode())
    else:
        print(format_state(state, as_json=False))
        if nats_alive is False:
            print(f"  warning: nats-server pid {state.nats_pid} is not running (restarting?)")
    return EXIT_OK


def _as_dict(state: FleetState) -> dict[str, object]:
    return msgspec.to_builtins(state)


@dataclass(frozen=True)
class Subcommand:
    name: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    aliases: tuple[str, ...] = ()
    hidden: bool = False  # left out of --help and of completion (for scripts, not people)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("up", cmd_up, _up_arguments),
    Subcommand("status", cmd_status),
    Subcommand("spawn", spawn.cmd_spawn, spawn.spawn_arguments),
    Subcommand("ls", agents.cmd_ls, agents.ls_arguments, aliases=("list",)),
    Subcommand("top", top.cmd_top, top.top_arguments),
    Subcommand("show", agents.cmd_show, agents.id_argument),
    Subcommand("events", agents.cmd_events, agents.events_arguments),
    Subcommand("stop", agents.cmd_stop, agents.stop_arguments),
    Subcommand("pause", agents.cmd_pause, agents.id_argument),
    Subcommand("resume", agents.cmd_resume, agents.id_argument),
    Subcommand("restart", agents.cmd_restart, agents.id_argument),
    Subcommand("kill", agents.cmd_kill, agents.id_argument),
    Subcommand("send", agents.cmd_send, agents.send_arguments),
    Subcommand("logs", agents.cmd_logs, agents.logs_arguments),
    Subcommand("attach", agents.cmd_attach, agents.attach_arguments),
    Subcommand("doctor", cli_sandbox.cmd_doctor, cli_sandbox.doctor_arguments),
    Subcommand("gc", doctor.cmd_gc, doctor.gc_arguments),
    Subcommand("login", login.cmd_login, login.login_arguments),
    Subcommand("token", tokens.cmd_token, tokens.token_arguments),
    Subcommand("checkpoint", history.cmd_checkpoint, history.checkpoint_arguments),
    Subcommand("checkpoints", history.cmd_checkpoints, agents.id_argument),
    Subcommand("rollback", history.cmd_rollback, history.rollback_arguments),
    Subcommand("audit", history.cmd_audit, history.audit_arguments),
    Subcommand("health", health.cmd_health, health.health_arguments),
    Subcommand("template", templates.cmd_template, templates.template_arguments),
    Subcommand("inbox", mail.cmd_inbox, mail.inbox_arguments),
    Subcommand("mail", mail.cmd_mail, mail.mail_arguments),
    Subcommand("topic", mail.cmd_topic, mail.topic_arguments),
    Subcommand("schema", mail.cmd_schema, mail.schema_arguments),
    Subcommand("callout-key", nats_keys.cmd_callout_key, nats_keys.callout_key_arguments),
    Subcommand("completion", completion.cmd_completion, completion.completion_arguments),
    Subcommand(completion.HIDDEN, completion.cmd_complete_agents, hidden=True),
    Subcommand("hook", hook.cmd_hook, hook.hook_arguments, hidden=True),  # run by hooks
)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error of a command given `--json` is JSON on stdout."""

    json_wanted = False  # set by `main` from the raw arguments, before they are parsed

    def error(self, message: str) -> NoReturn:
        if _Parser.json_wanted:
            sentence = f"{self.prog}: {message}"
            _print_error_json(BadRequest(sentence, "usage"))
            self.exit(EXIT_FLEET_ERROR)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleet", description="Run many AI coding agents side by side.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for sub in SUBCOMMANDS:
        summary = (sub.run.__doc__ or "").strip().splitlines()[0]
        aliases = list(sub.aliases)
        if sub.hidden:  # argparse lists only the subcommands given a help
            p = subs.add_parser(sub.name, aliases=aliases, description=summary)
        else:
            p = subs.add_parser(sub.name, aliases=aliases, help=summary, description=summary)
        p.add_argument("--json", action="store_true", help="print JSON for programs")
        p.add_argument("--no-color", action="store_true",
                       help="no colour (also NO_COLOR=1 or FLEET_COLOR=never)")  # fmt: skip
        if sub.arguments is not None:
            sub.arguments(p)
        p.set_defaults(run=sub.run)
    return parser


def _state_dir() -> Path:
    """Where the error log goes: the state dir if the environment names a usable one, else /tmp."""
    try:
        return Settings.from_env().state_dir
    except FleetError:
        return Path("/tmp")


def _print_error_json(err: FleetError, error_id: str = "") -> None:
    """A failure as JSON on stdout, the shape of every NATS and REST error reply."""
    body = replies.ErrorBody(err.code, err.message, error_id)
    print(msgspec.json.encode(replies.ErrorReply(body)).decode(), flush=True)


def _report_bug(exc: BaseException, as_json: bool) -> str:
    """Log the traceback under a fresh id and return the id, so a report can quote it."""
    state_dir = _state_dir()
    try:
        error_id = errorlog.write(state_dir, exc, "fleet " + " ".join(sys.argv[1:2]))
        where = str(errorlog.path_in(state_dir))
    except OSError:
        error_id = errorlog.new_error_id()
        log.error("error %s", error_id, exc_info=exc)
        where = "stderr above"
    sentence = f"internal error {error_id} ({type(exc).__name__}); details in {where}"
    print(f"fleet: {sentence}", file=sys.stderr)
    if as_json:
        _print_error_json(RemoteError("internal", sentence), error_id)
    return error_id


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fleet` console script; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="fleet: %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(OSError):  # an unwritable state dir: `_report_bug` says so
        errorlog.install(_state_dir())  # also `fleet up`'s, with every service it runs
    raw = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_wanted = "--json" in raw
    parser = build_parser()
    completion.autocomplete(parser)  # answers and exits when a shell asks for completions
    args = parser.parse_args(raw)
    run: Callable[[argparse.Namespace], int] = args.run
    as_json = bool(getattr(args, "json", False))
    try:
        return run(args)
    except FleetError as e:
        print(f"fleet: {e}", file=sys.stderr)
        if as_json:
            _print_error_json(e, getattr(e, "error_id", ""))
        # An unexpected error in a responder is a bug there (its log has the id), not the user's.
        return EXIT_BUG if e.code == "internal" else EXIT_FLEET_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`fleet ls | head`): nothing left to say
        sys.stderr.close()  # and no "Exception ignored" when Python flushes stdout at exit
        return EXIT_OK
    except Exception as e:
        _report_bug(e, as_json)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
