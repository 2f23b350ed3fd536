"""What an agent's processes may see: the environment and the paths its template grants.

Every pane (assistant, shells, services) starts through `infra/sandbox.py`, inside bubblewrap
where it works (its own mount, pid and IPC namespaces; nothing but the paths below exists in
it, /tmp is the agent's own), as the agent's own unprivileged user when fleetd runs as root
(infra/uids.py; its folders are handed over to that user), keeping only the variables named
here (tmux would otherwise hand the pane its server's environment, the control plane's) and,
where the kernel has Landlock, only the paths and TCP ports named here:

- read and execute: the system (/usr, /bin, /lib*, /etc, /opt, /proc, /sys, /run), Python's
  prefixes and fleetd's own code;
- read only, too: the user's git objects that the agent's own repository borrows;
- read and write: the worktree (its own repository is inside), /dev, the agent's
  own home and temp dir under the state dir, its services' status files, and each of the
  template's `permissions.paths`;
- TCP (Landlock ABI 4+): binding only its own leased ports (and port 0), connecting only to
  NATS, its own ports and the template's `permissions.connect_ports` (ssh, http, https by
  default): Ray's ports, the gateway and other agents' services are out of reach.

The environment is the basics (PATH, LANG, LC_*, TZ, USER, LOGNAME, SHELL), HOME and TMPDIR
(the agent's own), the template's `permissions.env_passthrough` taken from the control plane,
the template's `env` and `assistant.env`, the env given at spawn, the FLEET_* variables and
the leased ports. Secret values come from infra/secretstore.py, never from the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from actors.agent.assistantconfig import OWN_VARIABLES, prepare, variables
from actors.agent.context import AgentContext
from actors.agent.creds import creds_path
from infra import installs, sandbox, sandbox_argv, secretstore, uids
from infra.agentfiles import paths_for_pane
from schemas.errors import FleetError
from schemas.secrets import redact_template
from schemas.templates import Template, decode_spec, encode_spec

BASICS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL")
SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
KERNEL_READ = ("/proc", "/sys", "/run")
FLEETD_ROOT = str(Path(__file__).resolve().parents[2])


def recorded_spec(spec: str) -> str:
    """The template as the log may hold it: every secret value redacted."""
    real = decode_spec(spec)
    return encode_spec(redact_template(real)) if real is not None else spec


async def remember(ctx: AgentContext, spec: str, env: Mapping[str, str]) -> None:
    """Keep the agent's real template and spawn env apart from the log, and use them."""
    await secretstore.put(
        ctx.nc, ctx.state.agent_id, secretstore.AgentSecrets(template_spec=spec, env=dict(env))
    )
    ctx.template = decode_spec(spec) or ctx.template
    ctx.extra_env = dict(env)
    ctx.secrets_loaded = True


async def recall(ctx: AgentContext) -> None:
    """After a restart of the actor: the real template and spawn env again (once)."""
    if ctx.secrets_loaded or not ctx.state.agent_id:
        return
    found = await secretstore.get(ctx.nc, ctx.state.agent_id)
    if found is not None:
        ctx.template = decode_spec(found.template_spec) or ctx.template
        ctx.extra_env = dict(found.env)
    ctx.secrets_loaded = True


def private_dir(ctx: AgentContext, kind: str) -> Path:
    path = Path(ctx.config.state_dir) / kind / ctx.state.agent_id
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def namespaces(ctx: AgentContext) -> bool:
    """Whether the agent's panes get namespaces of their own (bubblewrap works here)."""
    return ctx.config.confine_namespaces and sandbox_argv.namespaces_work()


async def assign_user(ctx: AgentContext, worktree: Path, hand_over: bool = True) -> None:
    """fleetd as root: lease the agent's own uid and hand it the agent's folders (the worktree,
    home, temp dir, services' status files and its NATS credentials). Without namespaces the
    state dir above them could not be passed through, so the panes stay as they were."""
    if os.geteuid() != 0 or not ctx.config.confine_user or not namespaces(ctx):
        ctx.sandbox_uid = None
        await asyncio.to_thread(seed_home, ctx)
        return
    await asyncio.to_thread(seed_home, ctx)
    uid = await uids.lease(ctx.nc, ctx.state.agent_id)
    if not hand_over:  # an actor's restart: its panes live on, as that user already
        ctx.sandbox_uid = uid
        return
    mine = [worktree, *(private_dir(ctx, k) for k in ("homes", "tmp"))]
    mine.append(services_dir(ctx))
    mine += [Path(creds_path(ctx))] if ctx.config.nats_auth else []
    await asyncio.to_thread(uids.hand_over, uid, mine)
    ctx.sandbox_uid = uid


def seed_home(ctx: AgentContext) -> None:
    """The agent's own home starts with copies of the files of yours its template names
    (`permissions.home`: an assistant's login); one it has already is left as the agent made it.
    Its assistant's config dir is its own too, seeded and hooked (assistantconfig.py)."""
    t = ctx.resolved_template()
    if t is None:
        return
    home, mine = Path.home(), private_dir(ctx, "homes")
    prepare(t.assistant.profile, mine, home, os.environ)
    for name in t.permissions.home:
        src, dst = home / name, mine / name
        if not (src.exists() or src.is_symlink()) or dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)


async def release_user(ctx: AgentContext) -> None:
    """The agent is removed: its uid goes back to the range (held only when fleetd is root)."""
    if os.geteuid() == 0:
        await uids.release(ctx.nc, ctx.state.agent_id)
    ctx.sandbox_uid = None


def services_dir(ctx: AgentContext) -> Path:
    path = Path(ctx.config.state_dir) / "services" / ctx.state.agent_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def pane_path(t: Template | None, extra_env: Mapping[str, str]) -> str:
    """The PATH of an agent's panes: given at spawn, else the template's, else fleetd's own."""
    env = {"PATH": os.environ.get("PATH", "")}
    if t is not None:
        env |= t.env | t.assistant.env
    return (env | dict(extra_env)).get("PATH", "")


def check_installed(spec: str, command: str, extra_env: Mapping[str, str]) -> None:
    """Before a spawn records anything: the template's assistant is where its panes will look
    for it (NotInstalled says how to install it, otherwise)."""
    installs.find(command, pane_path(decode_spec(spec), extra_env))


def assistant_reads(ctx: AgentContext, granted: Sequence[str]) -> list[str]:
    """What the agent's assistant needs to run, read-only (infra/installs.py): its links, its
    install, its interpreter's; only what `granted` does not hold already."""
    path_var = pane_path(ctx.resolved_template(), ctx.extra_env)
    try:
        found = installs.find(ctx.state.command, path_var)
    except installs.NotInstalled:
        return []  # refused at spawn; gone since: its pane says what the shell found
    if found is None:
        return []
    # Never into (or above) the state dir or the agents' worktrees: other agents' folders.
    closed = [Path(ctx.config.state_dir), Path(ctx.config.worktree_root)]
    held = [os.path.abspath(g) for g in granted]
    out: list[str] = []
    # Folders first: a link or file inside a granted folder is there already (and a bind
    # inside a read-only bind could not be made).
    for path in sorted(installs.grants(found, path_var, closed=closed), key=len):
        if not any(path == h or path.startswith(h.rstrip("/") + "/") for h in [*held, *out]):
            out.append(path)
    return out


def environment(ctx: AgentContext, fleet: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of the agent's panes; `fleet` is FLEET_* and the ports."""
    t = ctx.resolved_template()
    env = {k: os.environ[k] for k in BASICS if k in os.environ}
    env["HOME"] = str(private_dir(ctx, "homes"))
    env["TMPDIR"] = "/tmp" if namespaces(ctx) else str(private_dir(ctx, "tmp"))
    if t is not None:
        passed = set(t.permissions.env_passthrough) - set(OWN_VARIABLES)
        env |= {k: os.environ[k] for k in passed if k in os.environ}
        env |= t.env | t.assistant.env
        # Its assistant's own config dir, never the user's (whatever the control plane has).
        env |= variables(t.assistant.profile, Path(env["HOME"]))
    return env | ctx.extra_env | dict(fleet)


TOOL_DIRS = ("bin", "sbin", "shims", ".bin")  # .bin: npm's node_modules/.bin


def tool_roots(path_var: str, state_dir: Path) -> list[str]:
    """What the tools on PATH need to run: each PATH directory, and the install above a
    `bin`/`shims` directory (~/.pyenv, ~/.cargo, ~/.nvm/versions/node/vN) or an npm project's
    `node_modules/.bin` (its links point into node_modules/@scope/...), read-only. Never
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
    ctx: AgentContext,
    command: Sequence[str],
    keep: Sequence[str],
    worktree: Path,
    path: str | None = None,
) -> list[str]:
    """`command` started through the sandbox with this agent's grants; with PATH `path` (a
    service's own), else the agent's."""
    t = ctx.resolved_template()
    read = [*SYSTEM_READ, *KERNEL_READ, sys.prefix, sys.base_prefix, FLEETD_ROOT]
    read += tool_roots(os.environ.get("PATH", ""), Path(ctx.config.state_dir))
    read += [creds_path(ctx)] if ctx.config.nats_auth else []  # FLEET_NATS_CREDS
    # Git: its own repository (in the worktree) and, read-only, the objects it borrows from
    # the user's; never the user's refs, config or hooks (infra/agentfiles.py).
    git_read, git_write = paths_for_pane(ctx.state.repo, worktree)
    read += git_read
    write = [*git_write, str(private_dir(ctx, "homes")), str(services_dir(ctx))]
    write += [os.path.expanduser(p) for p in t.permissions.paths] if t is not None else []
    read += assistant_reads(ctx, [*read, *write])  # wherever it is installed
    landlock = ctx.config.confine_paths and sandbox.landlock_abi() > 0
    tmp = str(private_dir(ctx, "tmp"))
    own = sorted(ctx.state.ports.values())
    connect = [*nats_ports(ctx.config.nats_url), *own]
    connect += t.permissions.connect_ports if t is not None else DEFAULT_CONNECT
    bind = [0, *own]
    spill = str(private_dir(ctx, "sandbox"))  # long option lists, out of the agent's reach
    path = path or pane_path(t, ctx.extra_env)  # tmux would give the pane its client's PATH
    if not namespaces(ctx):
        write = [*write, "/dev", tmp]
        return sandbox_argv.argv(
            command, keep, read, write, landlock, connect=connect, bind=bind, spill=spill,
            path=path,
        )  # fmt: skip
    opts = sandbox_argv.options(
        keep, [*read, "/proc"], [*write, "/dev", "/tmp"], landlock,
        uid=ctx.sandbox_uid, connect=connect, bind=bind, path=path,
    )  # fmt: skip
    inner = sandbox_argv.launcher(spill, opts)  # [python, -S, sandbox.py, --options, FILE]
    prefix = sandbox_argv.namespace_argv(
        [r for r in read if r not in KERNEL_READ], write, tmp, str(worktree),
        os.geteuid() == 0, spill, also_read=[inner[-1]],
    )  # fmt: skip
    return [*prefix, *inner, "--", *command]


DEFAULT_CONNECT = (22, 80, 443)
PROBE = str(Path(sandbox.__file__).with_name("sandboxprobe.py"))


async def probe(ctx: AgentContext) -> list[dict[str, object]]:
    """Each way out of the agent's sandbox, tried from inside it (infra/sandboxprobe.py, run
    through the same sandbox as its panes): what holds on this machine, and what does not."""
    s = ctx.state
    if not s.worktree or not Path(s.worktree).is_dir():
        raise FleetError(f"agent {s.agent_id} has no worktree: there is no sandbox to probe")
    import ray  # the actor runs in Ray: its address names the port to try

    gcs = ray.get_runtime_context().gcs_address.rpartition(":")[2]
    known = {
        "pids": [os.getpid(), os.getppid()],  # this actor and its raylet: the control plane
        "tmux_socket": ctx.tmux.socket_path(),
        "state_dir": ctx.config.state_dir,
        "ports": {"Ray": int(gcs)} if gcs.isdigit() else {},
    }
    argv = wrap(ctx, [sys.executable, "-S", PROBE, json.dumps(known)], [], Path(s.worktree))
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, cwd=s.worktree
    )
    try:
        found: list[dict[str, object]] = json.loads(done.stdout)
    except json.JSONDecodeError:
        why = (done.stderr or done.stdout).strip()[-500:]
        raise FleetError(f"the sandbox probe of agent {s.agent_id} did not run: {why}") from None
    found.insert(
        0,
        {
            "probe": "namespaces (bubblewrap)",
            "held": namespaces(ctx),
            "detail": sandbox_argv.bwrap() or "bwrap is not installed",
        },
    )
    found.insert(
        1,
        {
            "probe": "Landlock",
            "held": sandbox.landlock_abi() > 0,
            "detail": f"ABI {sandbox.landlock_abi()}",
        },
    )
    return found


def nats_ports(url: str) -> list[int]:
    """The TCP ports of the NATS server(s) in a nats URL list (the agent talks to them)."""
    ports = []
    for one in url.split(","):
        try:
            ports.append(urlsplit(one.strip()).port or 4222)
        except ValueError:
            continue
    return ports
