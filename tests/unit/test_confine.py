"""What a sandboxed pane may read of the tools on PATH (actors/confine.py `tool_roots`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.confine import tool_roots


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
