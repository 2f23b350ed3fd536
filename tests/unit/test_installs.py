"""Where an assistant is installed, and what its sandbox must grant (infra/installs.py), on
folders laid out as npm, a venv and a global prefix lay them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.installs import NotInstalled, find, grants, program, shebang


def script(path: Path, first_line: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{first_line}\nprint('hi')\n")
    path.chmod(0o755)
    return path


def link(at: Path, to: str) -> Path:
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(to)
    return at


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A node of its own (as nvm lays one out): versions/node/v22/bin/node."""
    return script(tmp_path / "nvm" / "versions" / "node" / "v22" / "bin" / "node", "")


def test_npm_in_a_folder_grants_its_node_modules_and_the_node_its_shebang_finds(
    tmp_path: Path, node: Path
) -> None:
    mods = tmp_path / "tools" / "node_modules"
    script(mods / "@google" / "gemini-cli" / "bundle" / "gemini.js", "#!/usr/bin/env node")
    dot_bin = link(mods / ".bin" / "gemini", "../@google/gemini-cli/bundle/gemini.js")
    path_var = f"{dot_bin.parent}:{node.parent}:/usr/bin"
    found = find("gemini --yolo", path_var)
    assert found == str(dot_bin)
    got = grants(found, path_var)
    assert str(dot_bin) in got and str(mods) in got  # the link, and its whole node_modules
    assert str(node.parents[1]) in got  # node's own install (versions/node/v22)
    assert str(tmp_path / "tools") not in got and str(tmp_path) not in got


def test_global_npm_grants_the_prefix_lib_node_modules(tmp_path: Path) -> None:
    prefix = tmp_path / "global"
    real = prefix / "lib" / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
    script(real, "#!/usr/bin/env node")
    bin_link = link(prefix / "bin" / "codex", "../lib/node_modules/@openai/codex/bin/codex.js")
    got = grants(find("codex", f"{bin_link.parent}:/usr/bin"), "/usr/bin")
    assert str(bin_link) in got and str(prefix / "lib" / "node_modules") in got


def test_a_venv_script_grants_the_venv_and_its_base_interpreter(tmp_path: Path) -> None:
    base = script(tmp_path / "uv" / "python" / "cpython-3.12" / "bin" / "python3.12", "")
    venv = tmp_path / "tools" / "aider-chat"
    (venv / "pyvenv.cfg").parent.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = x\n")
    link(venv / "bin" / "python", str(base))
    aider = script(venv / "bin" / "aider", f"#!{venv}/bin/python")
    shown = link(tmp_path / "local" / "bin" / "aider", str(aider))  # as pipx and uv link it
    got = grants(find("aider", str(shown.parent)), str(shown.parent))
    assert str(shown) in got and str(venv) in got
    assert str(base.parents[1]) in got  # the uv python's prefix, for its standard library


def test_nothing_in_or_above_a_closed_folder_and_never_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    tool = script(home / "bin" / "tool", "")  # above its bin is the home itself
    assert grants(str(tool), "") == [str(tool)]
    state = home / ".local" / "state" / "fleetd"
    state.mkdir(parents=True)
    local = script(home / ".local" / "bin" / "claude", "")  # ~/.local holds the state dir
    assert grants(str(local), "", closed=[state]) == [str(local)]
    inside = script(state / "bin" / "x", "")
    assert grants(str(inside), "", closed=[state]) == []


def test_the_program_of_a_shell_line_and_what_is_not_looked_up() -> None:
    assert program("FOO=1 exec claude --x 'a b'") == "claude"
    assert program("bash --noprofile --norc -i") == "bash"
    assert program("cd sub && make") is None and program("'unclosed") is None
    assert find("./run.sh", "") is None  # relative to a worktree not made yet


def test_an_assistant_that_is_not_installed_is_named_with_how_to_install_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(NotInstalled) as err:
        find("claude --dangerously-skip-permissions", str(tmp_path))
    assert str(err.value).startswith(
        "claude is not installed (not on PATH): npm install -g @anthropic-ai/claude-code"
    )
    assert err.value.code == "not_installed"
    with pytest.raises(NotInstalled, match=r"^aider is not installed .*pipx install aider-chat"):
        find("aider", "")
    with pytest.raises(
        NotInstalled, match=r"\(no such executable file\): install it, or name it by its full path"
    ):
        find(str(tmp_path / "nothing"), "")


def test_shebangs(tmp_path: Path) -> None:
    assert shebang(str(script(tmp_path / "a", "#!/usr/bin/env -S node --no-warnings"))) == "node"
    assert shebang(str(script(tmp_path / "b", "#! /opt/venv/bin/python3 -E"))) == (
        "/opt/venv/bin/python3"
    )
    assert shebang(str(script(tmp_path / "c", "print(1)"))) is None
    trampoline = '#!/bin/sh\n\'\'\'exec\' "/a long/venv/bin/python" "$0" "$@"'  # pip's, uv's
    assert shebang(str(script(tmp_path / "d", trampoline))) == "/a long/venv/bin/python"
    assert shebang(os.devnull) is None


def test_homebrew_grants_the_kegs_of_the_formula_and_of_its_node(tmp_path: Path) -> None:
    """Homebrew on Linux: bin/gemini links into the formula's keg, whose script names the node
    formula through the `opt` link (a link to a folder, not to the file)."""
    brew = tmp_path / "linuxbrew" / ".linuxbrew"
    node = script(brew / "Cellar" / "node" / "22.1.0" / "bin" / "node", "")
    link(brew / "opt" / "node", "../Cellar/node/22.1.0")
    keg = brew / "Cellar" / "gemini-cli" / "0.61.0"
    real = keg / "libexec" / "lib" / "node_modules" / "@google" / "gemini-cli" / "gemini.js"
    script(real, f"#!{brew}/opt/node/bin/node")
    shown = link(brew / "bin" / "gemini", "../Cellar/gemini-cli/0.61.0/libexec/lib/node_modules"
                 "/@google/gemini-cli/gemini.js")  # fmt: skip
    got = grants(find("gemini", str(shown.parent)), str(shown.parent))
    assert str(shown) in got and str(keg / "libexec" / "lib" / "node_modules") in got
    assert str(brew / "opt" / "node" / "bin" / "node") in got  # where the shebang looks
    assert str(node.parents[1]) in got  # the node keg itself
    assert str(brew) not in got and str(brew / "Cellar") not in got
