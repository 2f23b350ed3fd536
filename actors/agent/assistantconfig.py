"""Each agent's assistant gets a config dir of its own, with fleetd's hooks installed in it.

An assistant keeps its trust answers, sessions and settings in one config dir, which it is
told by an environment variable; each agent's is inside its private home (the state dir's
`homes/<agent>`), never the user's nor another agent's:

- Claude Code: `CLAUDE_CONFIG_DIR=<home>/.claude`; it then reads `<dir>/.claude.json` (the
  onboarding and trust answers) and `<dir>/settings.json` (hooks: SessionStart,
  UserPromptSubmit, Stop, Notification; the JSON on stdin).
- Codex: `CODEX_HOME=<home>/.codex`; `notify = [...]` in its config.toml is run with the
  JSON payload as its last argument.
- Gemini CLI: `GEMINI_CLI_HOME=<home>`, so `<home>/.gemini/settings.json` (hooks:
  SessionStart, BeforeAgent, AfterAgent, Notification; the JSON on stdin; hooks run only in
  a folder it trusts).
- Aider: `AIDER_NOTIFICATIONS=true` and `AIDER_NOTIFICATIONS_COMMAND` (run, with nothing on
  stdin, whenever it waits for the person).

The dir starts as a copy of the user's own (the user's `CLAUDE_CONFIG_DIR`/`CODEX_HOME` when
set, else the default place: ~/.claude and ~/.claude.json, ~/.codex, ~/.gemini), made once;
nothing is ever written back. The hooks are fleetd's and written at every start of the
session, so a hook an agent removed is back, and the user's own hooks (copied with the
settings) are left as they were. Every hook runs `fleet hook <assistant>`
(services/cli/hook.py), which tells the agent's actor with the agent's own NATS user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

CLAUDE_EVENTS = ("SessionStart", "UserPromptSubmit", "Stop", "Notification")
GEMINI_EVENTS = ("SessionStart", "BeforeAgent", "AfterAgent", "Notification")
CLAUDE_SEEDED = (".credentials.json", "settings.json")
HOOK_TIMEOUT_S = 5  # what the assistants wait for a hook at most; `fleet hook` ends sooner
PROFILES = ("claude-code", "codex", "gemini", "aider")
# Variables the pane must not take from the control plane: each would name the user's own dir.
OWN_VARIABLES = ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME")


def hook_argv(assistant: str) -> list[str]:
    """The command an assistant's hook runs: this Python's `fleet hook <assistant>`, by its
    lighter entry (services/cli/hook.py; the `fleet` script may not be on the pane's PATH,
    the interpreter and fleetd are readable there)."""
    return [sys.executable, "-m", "services.cli.hook", assistant]


def variables(profile: str, home: Path) -> dict[str, str]:
    """The variables an agent's panes get so its assistant uses the dir in `home`."""
    match profile:
        case "claude-code":
            return {"CLAUDE_CONFIG_DIR": str(home / ".claude")}
        case "codex":
            return {"CODEX_HOME": str(home / ".codex")}
        case "gemini":
            return {"GEMINI_CLI_HOME": str(home)}
        case "aider":
            return {
                "AIDER_NOTIFICATIONS": "true",
                "AIDER_NOTIFICATIONS_COMMAND": shlex.join(hook_argv("aider")),
            }
    return {}


def prepare(profile: str, home: Path, user_home: Path, user_env: Mapping[str, str]) -> None:
    """Seed (once) and hook (every time) the config dir of an agent whose home is `home`.

    fleetd may run as root and the home belongs to the agent's user then: no link in it is
    followed (a link the agent left is not written through, nor read)."""
    match profile:
        case "claude-code":
            _claude(home, user_home, user_env)
        case "codex":
            _codex(home, user_home, user_env)
        case "gemini":
            _gemini(home, user_home, user_env)


def _claude(home: Path, user_home: Path, user_env: Mapping[str, str]) -> None:
    own = home / ".claude"
    theirs = Path(user_env["CLAUDE_CONFIG_DIR"]) if user_env.get("CLAUDE_CONFIG_DIR") else None
    if not (own.exists() or own.is_symlink()):
        # The login and settings only: the user's sessions and history stay the user's.
        own.mkdir(parents=True, mode=0o700)
        for name in CLAUDE_SEEDED:
            _seed_file(own / name, (theirs or user_home / ".claude") / name)
        # Without CLAUDE_CONFIG_DIR the user's .claude.json sits beside the dir, in the home.
        _seed_file(own / ".claude.json", (theirs or user_home) / ".claude.json")
    command = shlex.join(hook_argv("claude-code"))
    _hook_settings(home, own / "settings.json", CLAUDE_EVENTS, command)


def _codex(home: Path, user_home: Path, user_env: Mapping[str, str]) -> None:
    own = home / ".codex"
    theirs = Path(user_env["CODEX_HOME"]) if user_env.get("CODEX_HOME") else None
    _seed_dir(own, theirs or user_home / ".codex")
    config = own / "config.toml"
    _write(home, config, codex_config(_read(home, config), hook_argv("codex")))


def _gemini(home: Path, user_home: Path, user_env: Mapping[str, str]) -> None:
    theirs = Path(user_env["GEMINI_CLI_HOME"]) if user_env.get("GEMINI_CLI_HOME") else user_home
    _seed_dir(home / ".gemini", theirs / ".gemini")
    command = shlex.join(hook_argv("gemini"))
    settings = home / ".gemini" / "settings.json"
    _hook_settings(home, settings, GEMINI_EVENTS, command, milliseconds=True)


def _seed_dir(dst: Path, src: Path) -> None:
    """A copy of `src` (links kept as links) where `dst` does not exist yet, else nothing."""
    if dst.exists() or dst.is_symlink() or dst.parent.is_symlink():
        return
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
    dst.mkdir(parents=True, exist_ok=True, mode=0o700)


def _seed_file(dst: Path, src: Path) -> None:
    if dst.exists() or dst.is_symlink() or not src.is_file() or src.is_symlink():
        return
    if dst.parent.is_symlink():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _hook_settings(
    home: Path, path: Path, events: Sequence[str], command: str, *, milliseconds: bool = False
) -> None:
    """settings.json with fleetd's hook on each of `events`, the rest of it kept; a file that
    is not a JSON object is replaced (the assistant would refuse it anyway)."""
    try:
        settings = json.loads(_read(home, path) or "{}")
    except ValueError:
        settings = {}
    if not isinstance(settings, dict):
        settings = {}
    hooks = settings.get("hooks")
    hooks = hooks if isinstance(hooks, dict) else {}
    timeout = HOOK_TIMEOUT_S * 1000 if milliseconds else HOOK_TIMEOUT_S
    ours = {"type": "command", "command": command, "timeout": timeout}
    if milliseconds:
        ours["name"] = "fleetd"
    for event in events:
        groups = hooks.get(event)
        groups = [g for g in groups if not _is_ours(g)] if isinstance(groups, list) else []
        hooks[event] = [*groups, {"matcher": "", "hooks": [ours]}]
    settings["hooks"] = hooks
    _write(home, path, json.dumps(settings, indent=2) + "\n")


def _is_ours(group: object) -> bool:
    if not isinstance(group, dict):
        return False
    inner = group.get("hooks")
    return isinstance(inner, list) and any(
        isinstance(h, dict) and any(m in str(h.get("command", "")) for m in _MARKS) for h in inner
    )


_MARKS = ("-m services.cli.hook ", "-m services.cli_hook ", "-m services.cli hook ")  # now, before


def _inside(home: Path, path: Path) -> bool:
    """Whether every folder from `home` down to `path`'s is a real folder (no link)."""
    try:
        rel = path.parent.relative_to(home)
    except ValueError:
        return False
    here = home
    for part in rel.parts:
        here = here / part
        if here.is_symlink() or not here.is_dir():
            return False
    return not home.is_symlink()


def _read(home: Path, path: Path) -> str:
    """The text of a file of the agent's dir, "" if it is missing, a link or not text."""
    if not _inside(home, path):
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 20).decode(errors="replace")


def _write(home: Path, path: Path, text: str) -> None:
    """`text` as `path`, by a new file renamed over it (a link there is replaced, not
    followed); nothing where a folder above it is a link."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _inside(home, path):
        return
    spare = path.with_name(f".{path.name}.fleetd-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(spare)
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(spare, path)
    owner = path.parent.stat()
    if os.geteuid() == 0:  # the agent's user owns its dir: and so this file
        os.chown(path, owner.st_uid, owner.st_gid)


_TABLE = re.compile(r"^\s*\[")
_NOTIFY = re.compile(r"^\s*notify\s*=")


def codex_config(old: str, argv: Sequence[str]) -> str:
    """Codex's config.toml with `notify` set to `argv` (a top-level key: before any table),
    the rest kept; a `notify` the copy had (one line) is replaced."""
    lines = old.splitlines()
    first_table = next((i for i, line in enumerate(lines) if _TABLE.match(line)), len(lines))
    top = [line for line in lines[:first_table] if not _NOTIFY.match(line)]
    notify = "notify = [" + ", ".join(json.dumps(a) for a in argv) + "]"
    out = [notify, *top, *lines[first_table:]]
    return "\n".join(out) + "\n"
