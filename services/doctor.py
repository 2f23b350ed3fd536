"""`fleet doctor` lists what no live agent owns; `fleet gc` removes it without losing work.

Both work from the log, tmux and git directly, so they help most when the actors are down.
An orphan is:
- a `fleet-*` tmux session on the fleet's socket whose agent the log does not know, has
  removed, or does not hold live (SPAWNING, RUNNING, PAUSED or STOPPING);
- a fleet worktree, or a `fleet/*` branch, in a repository some agent was created in, whose
  agent the log does not know or has removed;
- the other way round, a live agent (per the log) whose tmux session is gone ("lost").
gc kills orphan sessions (and every process in them), removes orphan worktrees after saving
uncommitted or unmerged work to a ref under refs/fleet/saved/, deletes orphan branches only
with --branches (unmerged commits saved to a ref first), and leaves lost agents to their actor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import msgspec

from infra import fleetkey
from infra.config import Settings
from infra.eventstore import EventStore
from infra.nats import connect
from infra.tmux import USER_SEPARATOR, Tmux
from infra.worktree import Worktrees
from schemas.agent import AgentState
from schemas.errors import FleetError, SessionMissing
from schemas.states import LIVE
from services.cli.agents import table
from services.cli.client import nats_url

log = logging.getLogger(__name__)

SESSION_PREFIX = "fleet-"  # the agent actor names its session fleet-<agent id>
BRANCH_PREFIX = "fleet/"
SAVED_PREFIX = "refs/fleet/saved/"
KINDS = ("session", "worktree", "branch", "lost")  # also the order gc works in


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    target: str  # a session name, a worktree path or a branch name
    agent: str  # the agent id it belongs to ("" when none can be told)
    why: str
    repo: str = ""
    action: str = ""  # gc: removed | would remove | kept | failed
    detail: str = ""  # gc: the saved ref, or why it was kept or failed


async def load_agents(settings: Settings) -> dict[str, AgentState]:
    """Every agent the log knows, folded (snapshot plus tail)."""
    nc = await connect(nats_url(settings), name="fleet-doctor", reconnect=False)
    try:
        store = EventStore(nc, mac_key=fleetkey.load_if_present(settings.state_dir))  # verified
        ids = await store.agents()
        loaded = await asyncio.gather(*(store.load(a) for a in ids))
        return {a: one.state for a, one in zip(ids, loaded, strict=True)}
    finally:
        await nc.close()


def _whose(agent_id: str, agents: dict[str, AgentState]) -> str | None:
    """Why the agent owns nothing any more, or None when it is kept (not removed)."""
    state = agents.get(agent_id)
    if state is None:
        return f"no agent {agent_id!r} in the log"
    if state.removed:
        return f"agent {agent_id} was removed"
    return None


def find_sessions(settings: Settings, agents: dict[str, AgentState]) -> list[Finding]:
    sessions = Tmux(settings.tmux_socket).list_sessions(prefix=SESSION_PREFIX)
    owner = {s.tmux_session: a for a, s in agents.items() if s.tmux_session}
    found: list[Finding] = []
    for name in sessions:
        base = name.split(USER_SEPARATOR)[0]
        agent_id = owner.get(base) or base.removeprefix(SESSION_PREFIX)
        state = agents.get(agent_id)
        why = _whose(agent_id, agents)
        if why is None and state is not None and state.lifecycle not in LIVE:
            why = f"agent {agent_id} is {state.lifecycle.value}"
        if why is not None:
            found.append(Finding("session", name, agent_id, why))
    orphan_bases = {f.target for f in found}  # a per-user session goes with its base session
    found = [f for f in found if f.target.split(USER_SEPARATOR)[0] == f.target
             or f.target.split(USER_SEPARATOR)[0] not in orphan_bases]  # fmt: skip
    for agent_id, state in sorted(agents.items()):
        if state.removed or state.lifecycle not in LIVE or not state.tmux_session:
            continue
        if state.tmux_session not in sessions:
            why = f"the log says {state.lifecycle.value} but its tmux session is gone"
            found.append(Finding("lost", state.tmux_session, agent_id, why))
    return found


def find_git(settings: Settings, agents: dict[str, AgentState]) -> list[Finding]:
    found: list[Finding] = []
    by_path = {str(Path(s.worktree)): a for a, s in agents.items() if s.worktree}
    for repo in sorted({s.repo for s in agents.values() if s.repo}):
        try:
            wt = Worktrees(repo, settings.worktrees)
            worktrees, branches = wt.list_fleet_worktrees(), wt.list_fleet_branches()
        except FleetError as e:
            log.warning("repository %s skipped: %s", repo, e)
            continue
        for info in worktrees:
            if info.path == wt.main:
                continue  # a fleet branch checked out by a person in the repo itself
            branch_agent = (info.branch or "").removeprefix(BRANCH_PREFIX)
            agent_id = by_path.get(str(info.path)) or info.agent_id or branch_agent
            why = _whose(agent_id, agents)
            if why is not None:
                found.append(Finding("worktree", str(info.path), agent_id, why, repo))
        for branch in branches:
            agent_id = branch.removeprefix(BRANCH_PREFIX)
            why = _whose(agent_id, agents)
            if why is None and agents[agent_id].repo != repo:
                why = f"agent {agent_id} works in {agents[agent_id].repo}, not here"
            if why is not None:
                found.append(Finding("branch", branch, agent_id, why, repo))
    return found


def diagnose(settings: Settings) -> tuple[list[Finding], int]:
    """The orphans, and how many agents the log knows."""
    agents = asyncio.run(load_agents(settings))
    return find_sessions(settings, agents) + find_git(settings, agents), len(agents)


# -- gc -------------------------------------------------------------------------------------


def clean(settings: Settings, found: list[Finding], dry_run: bool, branches: bool) -> list[Finding]:
    """Remove what `found` lists, in KINDS order; each finding comes back with its outcome."""
    done = []
    for f in sorted(found, key=lambda f: KINDS.index(f.kind)):
        if f.kind == "lost":
            detail = f"left to its actor: `fleet kill {f.agent}` or `fleet restart {f.agent}`"
            done.append(replace(f, action="kept", detail=detail))
        elif f.kind == "branch" and not branches:
            done.append(replace(f, action="kept", detail="--branches deletes it"))
        elif dry_run:
            done.append(replace(f, action="would remove"))
        else:
            try:
                saved = _remove(settings, f)
            except FleetError as e:
                done.append(replace(f, action="failed", detail=str(e)))
                continue
            detail = f"work saved to {saved}" if saved else ""
            done.append(replace(f, action="removed", detail=detail))
    return done


def _remove(settings: Settings, f: Finding) -> str | None:
    if f.kind == "session":
        with contextlib.suppress(SessionMissing):  # gone already (with its base session)
            Tmux(settings.tmux_socket).kill_session(f.target)
        return None
    if f.kind == "worktree":
        path = Path(f.target)
        return Worktrees(f.repo, path.parent).remove(path.name, force=True)
    return Worktrees(f.repo, settings.worktrees).delete_branch(f.target, f.agent)


# -- the subcommands ------------------------------------------------------------------------


def _rows(found: list[Finding], with_action: bool) -> list[list[str]]:
    rows = []
    for f in found:
        note = f.detail or f.why
        where = f"  (in {f.repo})" if f.repo and f.kind == "branch" else ""
        row = [f.kind, f.agent or "-", f.target, note + where]
        rows.append([f.action, *row] if with_action else row)
    return rows


def cmd_doctor(args: argparse.Namespace) -> int:
    """List orphans: tmux sessions, worktrees and branches with no live agent."""
    settings = Settings.from_env()
    found, agents = diagnose(settings)
    if args.json:
        orphans = [{k: v for k, v in asdict(f).items() if k not in ("action", "detail")}
                   for f in found]  # fmt: skip
        print(msgspec.json.encode({"orphans": orphans, "agents": agents}).decode())
    elif not found:
        print(f"no orphans ({agents} agent(s) in the log)")
    else:
        print(table(["KIND", "AGENT", "TARGET", "WHY"], _rows(found, False)))
        print(f"\n{len(found)} finding(s); `fleet gc` removes them (work is saved to refs first)")
    return 0


def gc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--branches", action="store_true", help="delete orphan fleet/* branches too")


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove what `fleet doctor` lists, saving any work to a ref first."""
    settings = Settings.from_env()
    found, _ = diagnose(settings)
    done = clean(settings, found, args.dry_run, args.branches)
    if args.json:
        actions = [asdict(f) for f in done]
        print(msgspec.json.encode({"dry_run": args.dry_run, "actions": actions}).decode())
    elif not done:
        print("nothing to collect")
    else:
        print(table(["ACTION", "KIND", "AGENT", "TARGET", "NOTE"], _rows(done, True)))
    failed = [f for f in done if f.action == "failed"]
    if failed:
        raise FleetError(f"{len(failed)} of {len(done)} could not be removed (see above)")
    return 0
