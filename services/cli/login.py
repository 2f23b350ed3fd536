"""`fleet login TEMPLATE`: log in to a template's assistant once, where later agents read it.

An agent's home is its own, seeded from the user's login files (actors/agent/confine.py copies
the template's `permissions.home`, ~/.codex, ~/.claude, ...), so the login has to land in the
user's own config: this pane runs outside any sandbox, as the user, with the user's HOME and
environment (CODEX_HOME, CLAUDE_CONFIG_DIR as set), and with the template's command and env as
an agent's pane gets them. It runs in a tmux server of its own (a private socket, not the
fleet's: nothing of the fleet is reachable from it, and no agent sees it), in a throwaway
folder (so a trust answer is not given for a repository of the user's), with the terminal
attached; when the assistant exits or the user detaches, the server and the folder go, and so
does whatever the assistant left running (Codex's background app server): `fleet login` adopts
its orphans (a child subreaper, infra/reaper.py) and ends them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from infra import installs, reaper
from infra import template_files as templates
from infra.tmux import Tmux
from schemas.builtin_profiles import BUILTIN
from schemas.errors import BadRequest
from schemas.templates import Template
from services.cli.doctor_assistants import assistant_templates

SESSION = "login"
WINDOW = "agent"


def login_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("template", help="the template whose assistant to log in to (e.g. codex)")


def cmd_login(args: argparse.Namespace) -> int:
    """Attach to a one-off pane of a template's assistant, to log in once for every agent."""
    t = templates.builtin(args.template)  # UnknownTemplate: a sentence naming the known ones
    command, env = prepared(t)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadRequest(
            "fleet login needs a terminal: it attaches you to the assistant's pane; "
            "run it in one (not through a pipe or a script)",
            code="no_terminal",
        )
    tmux = Tmux(f"fleet-login-{os.getpid()}")
    folder = tempfile.mkdtemp(prefix=f"fleet-login-{t.name}-")
    reaper.adopt_orphans()  # the tmux server, and what its pane leaves behind, stay below us
    try:
        tmux.start_one_off(SESSION, folder, env, command)
        print(f"fleet: {t.name}: log in, then quit the assistant (or detach: C-b d)", flush=True)
        subprocess.run(tmux.attach_argv(SESSION), check=False)
    finally:
        tmux.kill_server()
        reaper.end_descendants()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"fleet: {t.name}: done; `fleet doctor --assistants` says whether the login holds")
    return 0


def prepared(t: Template) -> tuple[str, dict[str, str]]:
    """The template's assistant command, checked installed as a spawn checks it, and the env
    its pane gets on top of the user's (the template's and its profile's)."""
    a = t.assistant
    if a.profile == "shell" or installs.program(a.command) in ("bash", "sh", "zsh", None):
        raise BadRequest(
            f"template {t.name} runs no assistant (its assistant.command is {a.command!r}): "
            "there is nothing to log in to; use one of " + ", ".join(assistant_templates()),
            code="no_assistant",
        )
    env = BUILTIN[a.profile].env | t.env | a.env
    path = env.get("PATH") or os.environ.get("PATH", "")
    installs.find(a.command, path)  # NotInstalled: says how to install it
    return a.command, env
