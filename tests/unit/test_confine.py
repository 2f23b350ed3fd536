"""What a sandboxed pane may read of the tools on PATH (actors/agent/confine.py `tool_roots`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from actors.agent.confine import tool_roots
from infra import sandbox_argv


def test_tools_on_path_run_but_home_and_the_state_dir_stay_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    dirs = {
        name: home / name
        for name in (
            ".pyenv/shims",
            ".cargo/bin",
            ".local/bin",
            "bin",
            "tools/current",
            "ai/node_modules/.bin",
        )
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    state = home / ".local" / "state" / "fleetd"
    path_var = ":".join([*(str(d) for d in dirs.values()), "relative/bin", str(home / "gone")])
    roots = tool_roots(path_var, state)
    assert str(home / ".pyenv") in roots and str(home / ".cargo") in roots  # installs above
    assert str(home / ".local" / "bin") in roots and str(home / ".local") not in roots
    assert str(home / "bin") in roots and str(home) not in roots  # never the whole home
    assert str(home / "tools") not in roots  # only above bin/sbin/shims
    # npm in a project folder: .bin holds links into node_modules/@scope/..., read there
    assert str(home / "ai" / "node_modules") in roots and str(home / "ai") not in roots
    assert not any("relative" in r or r.endswith("gone") for r in roots)


def test_the_launcher_gives_the_pane_the_path_it_is_told() -> None:
    """tmux hands a new session's panes its client's PATH, whatever the session's own says; the
    launcher sets the agent's (`--path`), so a PATH given at spawn is the one the pane has."""
    argv = sandbox_argv.argv(
        ["/bin/sh", "-c", 'echo "$PATH"'], ["PATH"], path="/agent/bin:/usr/bin"
    )
    env = {"PATH": "/usr/bin:/bin", "OTHER": "x"}  # what tmux would hand the pane
    ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.strip() == "/agent/bin:/usr/bin"
