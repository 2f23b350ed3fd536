"""Where an agent's assistant is installed: its real executable, its interpreter, and the
folders those need, so the sandbox grants exactly them (read-only).

The ways assistants are installed, and what each needs in the sandbox:

- npm in a folder: `node_modules/.bin/claude` is a link into `node_modules/@scope/pkg/...`,
  whose dependencies sit beside it in the same `node_modules`;
- global npm, nvm, fnm, volta, Homebrew: `<prefix>/bin/gemini` links to
  `<prefix>/lib/node_modules/@scope/pkg/...` (its dependencies inside it);
- a venv, pipx, `uv tool`: `bin/aider` (or a link to it from `~/.local/bin`) is a script whose
  shebang names the venv's python, itself a link to a base interpreter with its own prefix;
- a script whose shebang is `#!/usr/bin/env node` runs the `node` found on the pane's PATH.

So: every link on the way (it must exist where the shell looks), the install the real file
belongs to (the outermost `node_modules`, the venv, or the prefix above a `bin` folder), and
the same again for the interpreter its shebang names. Never the home folder itself, nor a
folder that holds the state dir (other agents' credentials are there).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterable
from pathlib import Path

from schemas.errors import FleetError

# How to install the assistants of the builtin templates, by executable name.
INSTALL = {
    "claude": "npm install -g @anthropic-ai/claude-code",
    "codex": "npm install -g @openai/codex",
    "gemini": "npm install -g @google/gemini-cli",
    "aider": "pipx install aider-chat (or: uv tool install aider-chat)",
}
# Words a pane's shell runs itself: nothing to find on PATH.
SHELL_WORDS = frozenset(
    "! . : [ { ( alias break case cd command continue eval exec exit export for if read "
    "return set shift source test trap true false type ulimit umask unset wait while".split()
)
_TRAMPOLINE = b"'''exec' "
_MAX_HOPS = 40  # links followed before giving up (the kernel's own limit is 40)


class NotInstalled(FleetError):
    """The template's assistant is not where the agent's panes would look for it."""

    code = "not_installed"

    def __init__(self, program: str, why: str) -> None:
        self.program, self.why = program, why
        how = INSTALL.get(os.path.basename(program))
        fix = how or "install it, or name it by its full path in the template's assistant.command"
        where = (
            ""
            if "/" in program
            else ("; fleetd looks on the PATH it was started with, or the PATH given at spawn")
        )
        super().__init__(f"{program} is not installed ({why}): {fix}{where}")


def program(command: str) -> str | None:
    """The program a pane's shell line starts (`FOO=1 exec claude --x` -> `claude`), or None
    when the line starts with something the shell does itself or cannot be split."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and ("=" in words[0].split("/")[0] or words[0] == "exec"):
        words.pop(0)  # an assignment (NAME=value) or exec
    if not words or words[0] in SHELL_WORDS:
        return None
    return words[0]


def find(command: str, path_var: str) -> str | None:
    """The executable a pane's shell line starts, looked up on `path_var` as the shell would;
    None when there is nothing to look up. Raises NotInstalled when it is not there."""
    name = program(command)
    if name is None:
        return None
    if "/" in name:
        if not os.path.isabs(name):
            return None  # relative to the worktree, which does not exist yet
        if not os.access(name, os.X_OK) or os.path.isdir(name):
            raise NotInstalled(name, "no such executable file")
        return name
    found = shutil.which(name, path=path_var)
    if found is None:
        raise NotInstalled(name, "not on PATH")
    return os.path.abspath(found)


def grants(
    executable: str, path_var: str, closed: Iterable[Path] = (), depth: int = 0
) -> list[str]:
    """What `executable` needs to run, read-only: each link on its way, the install its real
    file belongs to, and the same for the interpreter its shebang names (looked up on
    `path_var` for `#!/usr/bin/env NAME`). Nothing in or above a folder of `closed`."""
    closed = [Path(c).resolve() for c in closed]
    out: list[str] = []
    hop = os.path.abspath(executable)
    for _ in range(_MAX_HOPS):
        out.append(hop)  # the link itself: the shell looks there, then follows it
        if not os.path.islink(hop):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    real = os.path.realpath(executable)
    out.append(install_root(real, closed))
    interpreter = shebang(real)
    if interpreter is not None and depth < 3:
        where = interpreter if "/" in interpreter else shutil.which(interpreter, path=path_var)
        if where is not None and os.path.exists(where):
            out += grants(where, path_var, closed, depth + 1)
    return [p for p in dict.fromkeys(out) if _allowed(Path(p), closed)]


def install_root(real: str, closed: Iterable[Path] = ()) -> str:
    """The install a real file belongs to: its outermost `node_modules`, the venv it is in, the
    prefix above its `bin` folder (~/.nvm/versions/node/v22, a uv python), else itself."""
    path = Path(real)
    candidates = [p for p in path.parents if p.name == "node_modules"][-1:]
    candidates += [p for p in list(path.parents)[:3] if (p / "pyvenv.cfg").is_file()][:1]
    if path.parent.name in ("bin", "sbin"):
        candidates.append(path.parent.parent)
    for folder in candidates:
        if _allowed(folder, closed, whole=True):
            return str(folder)
    return real


def shebang(path: str) -> str | None:
    """The interpreter a script's first line names (`#!/usr/bin/env -S node --x` -> `node`,
    `#!/venv/bin/python` -> that path); None for a binary or a script without one."""
    try:
        with open(path, "rb") as f:
            first, second = f.readline(512), f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    # pip's and uv's scripts whose python has a long path: `#!/bin/sh`, then a line
    # `'''exec' "/venv/bin/python" "$0" "$@"`: that python is the interpreter that matters.
    if second.startswith(_TRAMPOLINE) and os.path.basename(words[0]) == "sh":
        named = shlex.split(second[len(_TRAMPOLINE) :].decode(errors="replace"))[:1]
        return named[0] if named else words[0]
    if os.path.basename(words[0]) == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return rest[0] if rest else None
    return words[0]


def _allowed(path: Path, closed: Iterable[Path], whole: bool = False) -> bool:
    """Never a path inside a closed folder; with `whole` (a folder granted with all below it),
    never the home folder, the root, or a folder holding a closed one either."""
    resolved = path.resolve()
    for c in closed:
        if resolved.is_relative_to(c) or (whole and c.is_relative_to(resolved)):
            return False
    return not whole or resolved not in (Path.home().resolve(), Path("/"))
