"""An agent's tmux session: its name, its windows, its panes' environment and recordings.

`bring_up` (steps.py) and a recreated session (recovery.py) make it the same way, in one
thread hop: the environment and sandbox prefix of its panes (confine.py), an asciicast
recording per window, new for each incarnation of the session.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from actors.agent.confine import environment, wrap
from actors.agent.context import AgentContext
from actors.agent.creds import nats_env

WINDOWS = ("agent", "services", "monitor")


def session_name(agent_id: str) -> str:
    return f"fleet-{agent_id}"


def agent_env(ctx: AgentContext, worktree: Path) -> dict[str, str]:
    """The panes' whole environment (confine.py): granted env, FLEET_*, ports."""
    s = ctx.state
    env = {
        "FLEET_AGENT_ID": s.agent_id,
        "FLEET_AGENT_NAME": s.name,
        "FLEET_WORKTREE": str(worktree),
        "FLEET_TEMPLATE": s.template,
        **nats_env(ctx),  # FLEET_NATS_URL (no password in it), FLEET_NATS_CREDS
    }
    for name, port in s.ports.items():  # "api.http" -> PORT_API_HTTP
        env["PORT_" + "".join(ch if ch.isalnum() else "_" for ch in name.upper())] = str(port)
    return environment(ctx, env)


def session_args(ctx: AgentContext, worktree: Path) -> tuple[dict[str, str], list[str]]:
    """The environment of a new session and the sandbox prefix of its panes."""
    env = agent_env(ctx, worktree)
    return env, wrap(ctx, [], list(env), worktree)


def recording_paths(ctx: AgentContext) -> dict[str, Path]:
    """An asciicast file per window, new for each incarnation of the session."""
    folder = Path(ctx.config.state_dir) / "recordings" / ctx.state.agent_id
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return {window: folder / f"{stamp}-{window}.cast" for window in WINDOWS}


def create(ctx: AgentContext, session: str, worktree: Path, *, replace: bool) -> dict[str, Path]:
    """The session with its recordings (blocking: call it in a thread); with `replace`, a
    stale session of that name (from an older incarnation) is replaced. Its recording paths."""
    recordings = recording_paths(ctx)
    env, prefix = session_args(ctx, worktree)
    command = ctx.state.command or None
    ctx.tmux.create_session(
        session, worktree, env, WINDOWS, command, recordings, prefix, replace=replace
    )
    return recordings
