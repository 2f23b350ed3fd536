"""`fleet.ctl.creds`: the control plane asks `fleet up` to give an agent its NATS user or take it.

Only a bcrypt hash travels: the agent's actor makes the password, keeps it in the agent's
credentials file, and sends the hash. Agents cannot publish on `fleet.ctl.*` at all.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas import subjects


class CredsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`grant` (with `password_hash`) makes or replaces the agent's user; `revoke` removes it."""

    op: Literal["grant", "revoke"]
    agent_id: str
    password_hash: str = ""

    def __post_init__(self) -> None:
        subjects.token(self.agent_id)
        if self.op == "grant" and not self.password_hash.startswith("$2"):
            raise ValueError("a grant needs password_hash, a bcrypt hash ($2a$...)")
