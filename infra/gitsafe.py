"""The one way the control plane runs git: nothing an agent can write gets to run code in it.

Every git that fleetd runs (worktrees, checkpoints, rollback, orphan clean-up, the ports'
`.env`) goes through `run` or `start` here, which

- pass `-c` settings that switch off what git would otherwise run or trust on behalf of a
  repository's config: hooks (`core.hooksPath=/dev/null`), fsmonitor (a command or hook),
  the untracked cache (stat data an agent can forge), external diff and pager commands,
  ssh/proxy/askpass commands, and every transport but local files;
- ignore the system and global config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`)
  and system attributes: a template may grant an agent the user's home, so `~/.gitconfig` can
  be an agent's file; the user's identity is read apart, as plain strings (`identity`);
- drop every `GIT_*` variable fleetd itself was started with (a `GIT_DIR` or
  `GIT_CONFIG_PARAMETERS` there would redirect or reconfigure every call), except the author
  and committer ones; and never prompt (no stdin, `GIT_TERMINAL_PROMPT=0`);
- end a git that takes longer than `timeout_s` (a FIFO an agent planted where git reads a
  file blocks it): a GitFailed sentence instead of a hung actor.

The rest of the protection is where git runs: the control plane never runs git with an
agent's repository as its repository (whose `.git/config` the agent writes); it names the
user's repository with `--git-dir` and the agent's files with `--work-tree`, and borrows the
agent's objects read-only through `GIT_ALTERNATE_OBJECT_DIRECTORIES` (infra/worktree.py). An
explicit `--git-dir` also means git makes no `safe.directory` ownership check, so files owned
by an agent's own uid are no obstacle.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from schemas.errors import GitFailed

TIMEOUT_S = 120.0
SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.splitIndex=false",
    "core.sshCommand=false",
    "core.askPass=",
    "core.pager=cat",
    "core.editor=false",
    "core.attributesFile=/dev/null",
    "credential.helper=",
    "diff.external=",
    "gc.auto=0",
    "maintenance.auto=false",
    "protocol.allow=never",
    "protocol.file.allow=always",
    "sequence.editor=false",
)
_KEPT = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
_FIXED = {
    "LANGUAGE": "C",
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
}
FIXED = _FIXED  # what every call's environment holds (infra/gitjail.py sets it in its script)


def argv(args: Sequence[str]) -> list[str]:
    """`git` with the safe settings, then `args`."""
    out = ["git"]
    for setting in SAFE_CONFIG:
        out += ["-c", setting]
    return [*out, *args]


def environment(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """fleetd's environment without its own GIT_* variables, plus the fixed ones and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT}
    return {**env, **_FIXED, **extra}


def run(
    action: str,
    where: str | Path,
    args: Sequence[str],
    env: Mapping[str, str] = {},
    *,
    stdin: bytes | None = None,
    ok: Sequence[int] = (0,),
    timeout_s: float | None = None,
) -> str:
    """Run the safe git in `where`; its output without the last newline. An exit status not
    in `ok` becomes one GitFailed sentence: git's last line of stderr."""
    return run_status(action, where, args, env, stdin=stdin, ok=ok, timeout_s=timeout_s)[1]


def run_status(
    action: str,
    where: str | Path,
    args: Sequence[str],
    env: Mapping[str, str] = {},
    *,
    stdin: bytes | None = None,
    ok: Sequence[int] = (0,),
    timeout_s: float | None = None,
) -> tuple[int, str]:
    """`run`, answering the exit status (one of `ok`) with the output."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    try:
        done = subprocess.run(
            argv(args),
            cwd=where,
            env=environment(env),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            check=False,
            timeout=timeout_s,
        )
    except FileNotFoundError as e:  # no git, or no such directory to run it in
        raise GitFailed(action, str(where), f"cannot run git there ({e.strerror})") from e
    except subprocess.TimeoutExpired as e:
        raise GitFailed(action, str(where), f"git took longer than {timeout_s:g} s") from e
    if done.returncode not in ok:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(action, str(where), (lines or [f"exit {done.returncode}"])[-1].strip("' "))
    return done.returncode, done.stdout.decode(errors="surrogateescape").removesuffix("\n")


def pipe(
    action: str,
    where: str | Path,
    first: tuple[Sequence[str], Mapping[str, str]],
    second: tuple[Sequence[str], Mapping[str, str]],
    stdin: bytes,
    timeout_s: float | None = None,
) -> None:
    """`first | second`, both the safe git in `where` with their own environment; `stdin`
    feeds the first. Either failing becomes one GitFailed sentence."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    (args1, env1), (args2, env2) = first, second
    try:
        producer = subprocess.Popen(
            argv(args1), cwd=where, env=environment(env1),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError as e:
        raise GitFailed(action, str(where), f"cannot run git there ({e.strerror})") from e
    with producer:
        assert producer.stdin is not None and producer.stdout is not None
        producer.stdin.write(stdin)
        producer.stdin.close()
        try:
            consumer = subprocess.run(
                argv(args2), cwd=where, env=environment(env2), stdin=producer.stdout,
                capture_output=True, check=False, timeout=timeout_s,
            )  # fmt: skip
            producer.wait(timeout_s)
        except subprocess.TimeoutExpired as e:
            producer.kill()
            raise GitFailed(action, str(where), f"git took longer than {timeout_s:g} s") from e
        errors = producer.stderr.read() if producer.stderr is not None else b""
    for status, err in ((producer.returncode, errors), (consumer.returncode, consumer.stderr)):
        if status != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise GitFailed(action, str(where), (lines or [f"exit {status}"])[-1].strip("' "))


def ask_identity(repo: str | Path) -> subprocess.Popen[bytes] | None:
    """Start reading user.name and user.email as the user set them (the repository's config and
    the user's own global one: values only, nothing in them runs); `identity` reads the answer.
    None when git cannot even start there."""
    env = {k: v for k, v in environment().items() if k != "GIT_CONFIG_GLOBAL"}
    try:
        return subprocess.Popen(
            ["git", "config", "--get-regexp", r"^user\.(name|email)$"],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


IDENTITY = {  # used only when the user has none configured
    "GIT_AUTHOR_NAME": "fleetd",
    "GIT_AUTHOR_EMAIL": "fleetd@localhost",
    "GIT_COMMITTER_NAME": "fleetd",
    "GIT_COMMITTER_EMAIL": "fleetd@localhost",
}


def identity(asked: subprocess.Popen[bytes] | None) -> dict[str, str]:
    """Author/committer env for a commit: the user's configured name and email, else fleetd's
    (an env variable set for fleetd itself wins over both)."""
    out = asked.communicate()[0].decode(errors="replace") if asked is not None else ""
    if asked is not None and asked.returncode != 0:
        out = ""  # exit status 1 when neither is set
    found: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        found[key] = value  # listed global first, then the repository's: the last one wins
    env: dict[str, str] = {}
    for key, part in (("user.name", "NAME"), ("user.email", "EMAIL")):
        for var in (f"GIT_AUTHOR_{part}", f"GIT_COMMITTER_{part}"):
            if var not in os.environ:
                env[var] = found.get(key) or IDENTITY[var]
    return env
