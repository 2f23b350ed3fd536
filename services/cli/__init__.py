"""The `fleet` command: a table of verbs, each naming the module and function that runs it.

A verb's module is imported only when that verb runs (as pip loads its commands), so `fleet ls`
or `fleet --help` does not import every verb's dependencies; shell completion, which needs every
verb's options, loads them all. A later issue adds a verb by writing `def cmd_x(args) -> int`
(its docstring's first line is the summary of `--help`) and one `Verb` row. Every verb takes
`--json`. A `FleetError` is the person's fault or the world's: its sentence goes to stderr and
the exit status is 2. Anything else is our bug: a short message with an error id goes to
stderr, the traceback to a log file under that id, exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import msgspec

from infra import errorlog
from infra.config import Settings
from schemas import replies
from schemas.errors import BadRequest, FleetError, RemoteError

__all__ = ["EXIT_BUG", "EXIT_FLEET_ERROR", "EXIT_OK", "VERBS", "Verb", "build_parser", "main"]

log = logging.getLogger("fleet.cli")

EXIT_OK, EXIT_BUG, EXIT_FLEET_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
HIDDEN_COMPLETE = "__complete-agents"  # services/cli/complete.py HIDDEN


@dataclass(frozen=True)
class Verb:
    """One `fleet` verb: `run` and `arguments` are functions of `module` (under services.cli
    unless it names a package); its `--help` line is in `SUMMARIES`."""

    name: str
    module: str
    run: str
    arguments: str | None = None
    aliases: tuple[str, ...] = ()
    hidden: bool = False  # left out of --help and of completion (for scripts, not people)

    @property
    def summary(self) -> str:
        return SUMMARIES.get(self.name, "")

    def load(self) -> tuple[Callable[[argparse.Namespace], int], _Arguments | None]:
        """Import the verb's module: its run function and its arguments' function."""
        name = self.module if "." in self.module else f"services.cli.{self.module}"
        module = importlib.import_module(name)
        run: Callable[[argparse.Namespace], int] = getattr(module, self.run)
        arguments: _Arguments | None = getattr(module, self.arguments) if self.arguments else None
        return run, arguments


_Arguments = Callable[[argparse.ArgumentParser], None]

_AGENT = "id_argument"  # `fleet VERB AGENT`, nothing more
VERBS: tuple[Verb, ...] = (
    Verb("up", "fleetup", "cmd_up", "up_arguments"),
    Verb("status", "status", "cmd_status"),
    Verb("spawn", "spawn", "cmd_spawn", "spawn_arguments"),
    Verb("ls", "agents", "cmd_ls", "ls_arguments", aliases=("list",)),
    Verb("top", "top", "cmd_top", "top_arguments"),
    Verb("show", "agents", "cmd_show", _AGENT),
    Verb("events", "agents", "cmd_events", "events_arguments"),
    Verb("stop", "agents", "cmd_stop", "stop_arguments"),
    Verb("pause", "agents", "cmd_pause", _AGENT),
    Verb("resume", "agents", "cmd_resume", _AGENT),
    Verb("restart", "agents", "cmd_restart", _AGENT),
    Verb("kill", "agents", "cmd_kill", _AGENT),
    Verb("send", "agents", "cmd_send", "send_arguments"),
    Verb("logs", "agents", "cmd_logs", "logs_arguments"),
    Verb("attach", "agents", "cmd_attach", "attach_arguments"),
    Verb("doctor", "sandbox", "cmd_doctor", "doctor_arguments"),
    Verb("gc", "services.doctor", "cmd_gc", "gc_arguments"),
    Verb("login", "login", "cmd_login", "login_arguments"),
    Verb("token", "tokenverbs", "cmd_token", "token_arguments"),
    Verb("checkpoint", "history", "cmd_checkpoint", "checkpoint_arguments"),
    Verb("checkpoints", "history", "cmd_checkpoints", _AGENT),
    Verb("rollback", "history", "cmd_rollback", "rollback_arguments"),
    Verb("audit", "history", "cmd_audit", "audit_arguments"),
    Verb("health", "healthview", "cmd_health", "health_arguments"),
    Verb("template", "templateverbs", "cmd_template", "template_arguments"),
    Verb("inbox", "inbox", "cmd_inbox", "inbox_arguments"),
    Verb("mail", "inbox", "cmd_mail", "mail_arguments"),
    Verb("topic", "inbox", "cmd_topic", "topic_arguments"),
    Verb("schema", "inbox", "cmd_schema", "schema_arguments"),
    Verb("callout-key", "calloutkey", "cmd_callout_key", "callout_key_arguments"),
    Verb("completion", "complete", "cmd_completion", "completion_arguments"),
    Verb(HIDDEN_COMPLETE, "complete", "cmd_complete_agents", hidden=True),
    Verb("hook", "hook", "cmd_hook", "hook_arguments", hidden=True),  # run by hooks
)

# What `fleet --help` says of each verb: its run function's first docstring line (a test
# checks they agree), written here so that listing the verbs imports none of them.
SUMMARIES: dict[str, str] = {
    "up": "Start fleetd in the foreground (or in the background with --detach).",
    "status": "Say where the running fleetd listens, or that it is not up (exit status 2).",
    "spawn": "Spawn one or more agents and show their progress.",
    "ls": "List the fleet's agents.",
    "top": "Live CPU, memory, threads, restarts and health of every agent.",
    "show": "Show one agent.",
    "events": "Print an agent's event log (from the log itself; no actor needed).",
    "stop": "Stop an agent: polite quit, then SIGTERM, then SIGKILL.",
    "pause": "Pause an agent (SIGSTOP to its processes).",
    "resume": "Resume a paused agent (SIGCONT).",
    "restart": "Restart an agent: stop it, then spawn it again in its worktree.",
    "kill": "Kill an agent at once (SIGTERM, then SIGKILL; no polite quit).",
    "send": "Type text (and/or press keys) into an agent's window.",
    "logs": "Print what an agent's window shows (its scrollback).",
    "attach": "Put your terminal into an agent's tmux session (your own grouped session).",
    "doctor": "List orphans, probe an agent's sandbox (--sandbox) or report assistants.",
    "gc": "Remove what `fleet doctor` lists, saving any work to a ref first.",
    "login": "Attach to a one-off pane of a template's assistant, to log in once for every agent.",
    "token": "Create, list or revoke gateway tokens (roles: viewer, operator, admin).",
    "checkpoint": "Save an agent's worktree and scrollback as a checkpoint in its log.",
    "checkpoints": "List an agent's checkpoints (read from its log; no actor needed).",
    "rollback": "Roll an agent back to a checkpoint (the current work is checkpointed first).",
    "audit": "Replay and check an agent's log (or all): transitions, hash chain, MACs, sequences.",
    "health": (
        "Show an agent's health: its services' verdicts, the recovery ladder, recent samples."
    ),
    "template": "Apply, list, show and diff templates (versioned by the templates service).",
    "inbox": "Read an agent's mail, highest priority first.",
    "mail": "Send mail to an agent, or broadcast it.",
    "topic": "Publish on a topic, or follow topics with wildcards.",
    "schema": "Print (or write) the JSON Schema of every command, reply, event and message.",
    "callout-key": "Make (or show) the issuer key of a NATS auth callout for agents' users.",
    "completion": "Print a shell completion script (e.g. `source <(fleet completion bash)`).",
    HIDDEN_COMPLETE: (
        "List agent ids, one a line, for completion scripts (nothing if fleetd is down)."
    ),
    "hook": "Tell this agent's actor what its assistant's hook says (run by the hooks themselves).",
}


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error of a command given `--json` is JSON on stdout."""

    json_wanted = False  # set by `main` from the raw arguments, before they are parsed

    def error(self, message: str) -> NoReturn:
        if _Parser.json_wanted:
            sentence = f"{self.prog}: {message}"
            _print_error_json(BadRequest(sentence, "usage"))
            self.exit(EXIT_FLEET_ERROR)
        super().error(message)


def build_parser(loaded: Callable[[Verb], bool] = lambda verb: True) -> argparse.ArgumentParser:
    """The parser of every verb; the modules of the verbs `loaded` picks are imported, and
    only those get their own arguments (and can run)."""
    parser = _Parser(prog="fleet", description="Run many AI coding agents side by side.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in VERBS:
        aliases = list(verb.aliases)
        if verb.hidden:  # argparse lists only the subcommands given a help
            p = subs.add_parser(verb.name, aliases=aliases, description=verb.summary)
        else:
            p = subs.add_parser(verb.name, aliases=aliases, help=verb.summary,
                                description=verb.summary)  # fmt: skip
        p.add_argument("--json", action="store_true", help="print JSON for programs")
        p.add_argument("--no-color", action="store_true",
                       help="no colour (also NO_COLOR=1 or FLEET_COLOR=never)")  # fmt: skip
        if loaded(verb):
            run, arguments = verb.load()
            if arguments is not None:
                arguments(p)
            p.set_defaults(run=run)
    return parser


def _named(raw: Sequence[str]) -> Callable[[Verb], bool]:
    """The verb the command line names: its first word that is not an option. When a shell
    asks for completions (argcomplete sets `_ARGCOMPLETE`), the line is `COMP_LINE` up to the
    cursor; without one, or one that cannot be split, every verb is loaded."""
    words = list(raw)
    if "_ARGCOMPLETE" in os.environ:
        line = os.environ.get("COMP_LINE")
        if line is None:
            return lambda verb: True
        try:
            words = shlex.split(line[: int(os.environ.get("COMP_POINT", len(line)))])[1:]
        except ValueError:  # an open quote, or a COMP_POINT that is not a number
            return lambda verb: True
    word = next((w for w in words if not w.startswith("-")), None)
    return lambda verb: word == verb.name or word in verb.aliases


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
        log.error("error %s", error_id, exc_info=exc)  # exc's, not the OSError's
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
    parser = build_parser(_named(raw))
    if "_ARGCOMPLETE" in os.environ:  # answer and exit: a shell asks for completions
        importlib.import_module("services.cli.complete").autocomplete(parser)
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
    except Exception as e:  # noqa: BLE001 (the CLI's boundary: any other error is our bug)
        _report_bug(e, as_json)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
