"""Run an attacker's script inside a real agent's pane and read what it printed.

The script is typed into the agent's shell (`send`), exactly as an assistant with its
permission prompts off would run it. Its output and exit status land in a file of the agent's
worktree (the one place a pane may write), which the test reads once the script's last line
is there: a wait for a condition, never for a time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from tests.fleet.helpers import command, until

GUARD_S = 60.0  # a loaded 2-core machine; the guard says what it waited for


@dataclass(frozen=True)
class Ran:
    status: int
    output: str


async def in_pane(
    nc: Client, agent_id: str, worktree: str | Path, script: str, timeout: float = GUARD_S
) -> Ran:
    """Type `script` (sh) into `agent_id`'s agent window; its status and combined output."""
    mark = secrets.token_hex(6)
    out = Path(worktree) / f".probe-{mark}.out"
    # The script runs in a subshell so that an `exit` in it ends only the subshell.
    line = f'( {script}\n) > {out.name} 2>&1; echo "END-{mark} $?" >> {out.name}'
    reply = await command(nc, agent_id, "send", text=line)
    assert reply.get("ok"), reply

    async def finished() -> bool:
        return out.exists() and f"END-{mark} " in out.read_text(errors="replace")

    await until(finished, f"the script typed into {agent_id}'s pane to finish", timeout)
    text = out.read_text(errors="replace")
    out.unlink(missing_ok=True)
    body, _, tail = text.rpartition(f"END-{mark} ")
    return Ran(status=int(tail.split()[0]), output=body)
