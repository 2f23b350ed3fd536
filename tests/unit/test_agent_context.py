"""The agent's helpers share one `AgentContext` and never reach into the actor (CONTRIBUTING.md).

Read from the source with `ast`: no module of actors/agent/ but actor.py (and the package's
`__init__`) imports the actor, and none touches a private member of the context or of the
actor (`ctx._x`, `actor._x`); the resource watchdog is the context's, not a module's.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "actors" / "agent"
OWNERS = {"actor.py", "__init__.py"}  # the actor itself, and the package's public face


def helpers() -> list[Path]:
    found = sorted(p for p in AGENT.glob("*.py") if p.name not in OWNERS)
    assert len(found) > 10, f"actors/agent/ has {len(found)} helper modules; is ROOT right?"
    return found


def private_reach_ins(source: str) -> list[str]:
    """`ctx._x` / `actor._x` / `self.ctx._x` in `source`, with their lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if name in ("ctx", "actor", "context"):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_helper_imports_the_actor() -> None:
    bad = []
    for path in helpers():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "actors.agent.actor":
                bad.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "actors.agent":
                names = [a.name for a in node.names]
                if "AgentActor" in names:
                    bad.append(f"{path.name}:{node.lineno}")
    assert bad == [], f"helpers take an AgentContext, never the actor: {bad}"


def test_no_helper_touches_a_private_member_of_the_context_or_the_actor() -> None:
    bad = {p.name: private_reach_ins(p.read_text()) for p in helpers()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_reach_in_check_sees_one() -> None:
    source = "async def f(ctx, actor):\n    ctx._stop()\n    await actor._fail('x')\n"
    assert private_reach_ins(source) == ["2: ctx._stop", "3: actor._fail"]


def empty_containers_at_import(source: str) -> list[int]:
    """Lines of module-level names bound to an empty dict, set or list: state, not a table."""
    found = []
    for node in ast.parse(source).body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        literal = isinstance(value, ast.Dict | ast.Set | ast.List) and not any(
            getattr(value, field, None) for field in ("keys", "elts")
        )
        call = isinstance(value, ast.Call) and not value.args
        if literal or (call and getattr(value.func, "id", "") in ("dict", "set", "list")):
            found.append(node.lineno)
    return found


def test_no_module_of_the_agent_keeps_state_in_a_module_container() -> None:
    """A module-level dict (the old `recovery._watchdogs`) is shared by every agent actor of
    one worker; what an agent owns lives on its context (`AgentContext.watchdog`)."""
    bad = {p.name: empty_containers_at_import(p.read_text()) for p in sorted(AGENT.glob("*.py"))}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_state_check_sees_one() -> None:
    source = "_watchdogs: dict[str, int] = {}\nTABLE = {'a': 1}\nseen = set()\n"
    assert empty_containers_at_import(source) == [1, 3]
