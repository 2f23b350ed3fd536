"""Checks for every value that comes in from outside: names, paths, refs, labels, environment.

Each check returns the value when it is safe and otherwise raises `InvalidName` with one
sentence naming the field and what is allowed. Requests and commands call these from their
`__post_init__` (msgspec runs it while decoding, and lets a `FleetError` through unchanged), so
the same refusal reaches NATS, the gateway and the CLI before anything is created or logged.

What is refused, and why:
- names and ids become NATS subject tokens, tmux targets, branch names and file names: the
  token rule of `schemas.subjects` (no dots, wildcards, spaces or shell metacharacters);
- paths meant to stay inside a worktree: absolute paths, `..` and `~` (path traversal);
- paths that must be absolute (a repository, a granted path): relative ones and `..`;
- git refs: what `git check-ref-format` refuses, and a leading `-` (read as an option);
- labels and other one-line text: newlines and control characters (they reach logs, commit
  messages and terminals), and anything past its size limit;
- text typed into a terminal (`send`): control characters other than tab, newline and
  carriage return (NUL, ESC...: the terminal would read them as keys or escape sequences);
- environment: names outside `[A-Za-z_][A-Za-z0-9_]*`, NUL in values, oversized values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from schemas.errors import InvalidName
from schemas.subjects import token

MAX_LABEL = 200
MAX_TEXT_LINE = 1024
MAX_PATH = 4096
MAX_COMMAND = 16 * 1024
MAX_ENV_VALUE = 32 * 1024
MAX_ENV_VARS = 256
MAX_LIST = 64

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")


def _fail(what: str, value: object, why: str) -> InvalidName:
    return InvalidName(what, value if isinstance(value, str) else repr(value), why)


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(what, value, f"expected a string, got {type(value).__name__}")
    return value


def name(value: str, what: str) -> str:
    """An id or name that may become a subject token, a tmux target or a file name."""
    return token(value, what)


def names(values: Iterable[str], what: str) -> tuple[str, ...]:
    found = tuple(values)
    if len(found) > MAX_LIST:
        raise _fail(what, ",".join(found), f"at most {MAX_LIST} are allowed, got {len(found)}")
    return tuple(token(v, what) for v in found)


def line(value: str, what: str, limit: int = MAX_LABEL) -> str:
    """One line of text: no newline or control character, at most `limit` characters."""
    _string(value, what)
    if len(value) > limit:
        raise _fail(what, value, f"at most {limit} characters are allowed, got {len(value)}")
    if _CONTROL.search(value):
        raise _fail(what, value, "use one line without control characters (no newline, tab, NUL)")
    return value


# What typed text may hold besides printable characters: tab, newline, carriage return. Every
# other C0 or C1 control (NUL, ESC, BEL, backspace, DEL, CSI...) would be read by the terminal
# as a key or an escape sequence, not text; named keys (`Escape`, `C-c`) go in `keys`.
_NOT_TYPED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def typed(value: str, what: str) -> str:
    """Text to type into a terminal: printable characters, tab, newline and carriage return."""
    _string(value, what)
    bad = _NOT_TYPED.search(value)
    if bad is not None:
        char = f"U+{ord(bad.group()):04X}"
        raise _fail(
            what,
            value,
            f"it holds the control character {char} at position {bad.start()}; text may hold "
            "printable characters, tab and newline (send keys such as Escape or C-c as keys)",
        )
    return value


def text(value: str, what: str, limit: int) -> str:
    """Free text (newlines allowed): no NUL, at most `limit` characters."""
    _string(value, what)
    if len(value) > limit:
        raise _fail(what, value, f"at most {limit} characters are allowed, got {len(value)}")
    if "\x00" in value:
        raise _fail(what, value, "a NUL character is not allowed")
    return value


def relative_path(value: str, what: str) -> str:
    """A path inside the worktree: relative, without `..` or a leading `~`."""
    line(value, what, MAX_PATH)
    if not value:
        raise _fail(what, value, "expected a path relative to the worktree, got nothing")
    if value.startswith(("/", "~")) or re.match(r"[A-Za-z]:[\\/]", value):
        raise _fail(what, value, "use a path relative to the worktree, not an absolute one")
    if ".." in re.split(r"[\\/]", value):
        raise _fail(what, value, "'..' is not allowed: the path must stay inside the worktree")
    return value


def home_path(value: str, what: str) -> str:
    """A file or folder of the home of whoever runs fleetd, named relative to it."""
    line(value, what, MAX_PATH)
    if not value or value.startswith(("/", "~")):
        raise _fail(what, value, "name it relative to your home, e.g. '.claude.json'")
    if ".." in value.split("/"):
        raise _fail(what, value, "'..' is not allowed: the path must stay inside your home")
    return value


def absolute_path(value: str, what: str) -> str:
    """A path on the host: absolute, normalised enough to have no `..` component."""
    line(value, what, MAX_PATH)
    if not value.startswith("/"):
        raise _fail(what, value, "use an absolute path (starting with '/')")
    if ".." in value.split("/"):
        raise _fail(what, value, "'..' is not allowed; give the resolved path")
    return value


def granted_path(value: str, what: str) -> str:
    """A path a template grants: absolute, or `~` / `~/...` for the home of whoever runs fleetd."""
    line(value, what, MAX_PATH)
    if not value.startswith(("/", "~/")) and value != "~":
        raise _fail(what, value, "use an absolute path, or one starting with '~/' for your home")
    if ".." in value.split("/"):
        raise _fail(what, value, "'..' is not allowed; give the resolved path")
    return value


def git_ref(value: str, what: str = "base ref") -> str:
    """A branch, tag, `HEAD` or commit: what `git check-ref-format` accepts, no leading `-`."""
    line(value, what, MAX_LABEL)
    if not value or value.startswith(("-", "/", ".")) or value.endswith(("/", ".")):
        raise _fail(what, value, "expected a git branch, tag or commit (not starting with '-')")
    if _REF_BAD.search(value):
        why = "a git ref has no spaces, '..', '~', '^', ':', '?', '*', '[', '\\' or '@{'"
        raise _fail(what, value, why)
    return value


def env_name(value: str, what: str = "environment variable name") -> str:
    _string(value, what)
    if not _ENV_NAME.fullmatch(value):
        raise _fail(what, value, "use letters, digits and '_', not a digit first (at most 128)")
    return value


def env(values: Mapping[str, str], what: str = "env") -> Mapping[str, str]:
    """Environment for an agent's processes: valid names, values without NUL, bounded."""
    if len(values) > MAX_ENV_VARS:
        raise _fail(what, f"{len(values)} variables", f"at most {MAX_ENV_VARS} are allowed")
    for key, value in values.items():
        env_name(key, f"{what} variable name")
        text(value, f"{what} value of {key}", MAX_ENV_VALUE)
    return values


def key_name(value: str, what: str = "key name") -> str:
    """A tmux key name such as `C-c`, `Enter` or `Escape`."""
    _string(value, what)
    if not _KEY.fullmatch(value):
        raise _fail(what, value, "expected a tmux key name such as C-c, Enter or Escape")
    return value


def keys(values: Iterable[str]) -> tuple[str, ...]:
    found = tuple(values)
    if len(found) > MAX_LIST:
        raise _fail("keys", " ".join(found), f"at most {MAX_LIST} keys per send")
    return tuple(key_name(k) for k in found)


def options(values: Mapping[str, str], what: str = "options") -> Mapping[str, str]:
    if len(values) > MAX_LIST:
        raise _fail(what, f"{len(values)} options", f"at most {MAX_LIST} are allowed")
    for key, value in values.items():
        token(key, f"{what} key")
        line(value, f"{what} value of {key}", MAX_TEXT_LINE)
    return values


def sender(by: str, request_id: str) -> None:
    """The `by` and `id` every request may carry: one short line each."""
    line(by, "sender (by)", 128)
    line(request_id, "request id", 128)
