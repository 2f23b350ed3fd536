"""What an agent's processes may see: the environment and the paths its template grants.

Every pane (assistant, shells, services) starts through `infra/sandbox.py`, which keeps only
the variables named here (tmux would otherwise hand the pane its server's environment, the
control plane's) and, where the kernel has Landlock, only the paths named here:

- read and execute: the system (/usr, /bin, /lib*, /etc, /opt, /proc, /sys, /run), Python's
  prefixes and fleetd's own code;
- read and write: the worktree, its repository's git directory (commits), /dev, the agent's
  own home and temp dir under the state dir, its services' status files, and each of the
  template's `permissions.paths`.

The environment is the basics (PATH, LANG, LC_*, TZ, USER, LOGNAME, SHELL), HOME and TMPDIR
(the agent's own), the template's `permissions.env_passthrough` taken from the control plane,
the template's `env` and `assistant.env`, the env given at spawn, the FLEET_* variables and
the leased ports. Secret values come from infra/secretstore.py, never from the log.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from actors import creds
from infra import sandbox, secretstore
from infra.worktree import common_dir
from schemas.secrets import redact_template
from schemas.templates import Template, decode_spec, encode_spec

if TYPE_CHECKING:
    from actors.agent import AgentActor

BASICS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL")
SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
KERNEL_READ = ("/proc", "/sys", "/run")
FLEETD_ROOT = str(Path(__file__).resolve().parents[1])


def recorded_spec(spec: str) -> str:
    """The template as the log may hold it: every secret value redacted."""
    real = decode_spec(spec)
    return encode_spec(redact_template(real)) if real is not None else spec


async def remember(actor: AgentActor, spec: str, env: Mapping[str, str]) -> None:
    """Keep the agent's real template and spawn env apart from the log, and use them."""
    await secretstore.put(
        actor.nc, actor.state.agent_id, secretstore.AgentSecrets(template_spec=spec, env=dict(env))
    )
    actor.template = decode_spec(spec) or actor.template
    actor.extra_env = dict(env)
    actor.secrets_loaded = True


async def recall(actor: AgentActor) -> None:
    """After a restart of the actor: the real template and spawn env again (once)."""
    if actor.secrets_loaded or not actor.state.agent_id:
        return
    found = await secretstore.get(actor.nc, actor.state.agent_id)
    if found is not None:
        actor.template = decode_spec(found.template_spec) or actor.template
        actor.extra_env = dict(found.env)
    actor.secrets_loaded = True


def template(actor: AgentActor) -> Template | None:
    return actor.template or decode_spec(actor.state.template_spec)


def private_dir(actor: AgentActor, kind: str) -> Path:
    path = Path(actor.config.state_dir) / kind / actor.state.agent_id
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def environment(actor: AgentActor, fleet: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of the agent's panes; `fleet` is FLEET_* and the ports."""
    t = template(actor)
    env = {k: os.environ[k] for k in BASICS if k in os.environ}
    env["HOME"] = str(private_dir(actor, "homes"))
    env["TMPDIR"] = str(private_dir(actor, "tmp"))
    if t is not None:
        env |= {k: os.environ[k] for k in t.permissions.env_passthrough if k in os.environ}
        env |= t.env | t.assistant.env
    return env | actor.extra_env | dict(fleet)


TOOL_DIRS = ("bin", "sbin", "shims")


def tool_roots(path_var: str, state_dir: Path) -> list[str]:
    """What the tools on PATH need to run: each PATH directory, and the install above a
    `bin`/`shims` directory (~/.pyenv, ~/.cargo, ~/.nvm/versions/node/vN), read-only. Never
    the home directory itself, nor a folder holding the state dir (other agents' credentials)."""
    home, state = Path.home().resolve(), state_dir.resolve()
    roots: list[str] = []
    for entry in filter(None, path_var.split(":")):
        where = Path(entry)
        if not where.is_absolute() or not where.is_dir():
            continue
        roots.append(str(where))
        above = where.resolve().parent
        if where.name in TOOL_DIRS and above != home and not state.is_relative_to(above):
            roots.append(str(above))
    return list(dict.fromkeys(roots))


def wrap(
    actor: AgentActor, command: Sequence[str], keep: Sequence[str], worktree: Path
) -> list[str]:
    """`command` started through the sandbox with this agent's grants."""
    t = template(actor)
    read = [*SYSTEM_READ, *KERNEL_READ, sys.prefix, sys.base_prefix, FLEETD_ROOT]
    read += tool_roots(os.environ.get("PATH", ""), Path(actor.config.state_dir))
    read += [creds.creds_path(actor)] if actor.config.nats_auth else []  # FLEET_NATS_CREDS
    write = [str(worktree), "/dev", str(private_dir(actor, "homes"))]
    write.append(str(private_dir(actor, "tmp")))
    write.append(str(Path(actor.config.state_dir) / "services" / actor.state.agent_id))
    git_dir = common_dir(worktree)
    write += [git_dir] if git_dir else []
    write += [os.path.expanduser(p) for p in t.permissions.paths] if t is not None else []
    landlock = actor.config.confine_paths and sandbox.landlock_abi() > 0
    return sandbox.argv(command, keep, read, write, landlock)
