"""`fleet completion bash|zsh|fish`: the scripts, and bash completing for real through them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No fleetd (an empty state dir), and a `fleet` on PATH that runs this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "fleet"
    wrapper.write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m services.cli "$@"\n')
    wrapper.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    state = tmp_path / "state"
    return {**os.environ, "PATH": path, "FLEET_STATE_DIR": str(state), "FLEET_NATS_URL": ""}


@pytest.mark.parametrize(
    ("shell", "marker", "check"),
    [
        ("bash", "complete -o nospace -o default -o bashdefault", ["bash", "-n"]),
        ("zsh", "#compdef fleet", ["zsh", "-n"]),
        ("fish", "complete --command fleet", ["fish", "--no-execute"]),
    ],
)
def test_a_script_for_each_shell(
    env: dict[str, str], tmp_path: Path, shell: str, marker: str, check: list[str]
) -> None:
    done = fleet(env, "completion", shell)
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout and "fleet" in done.stdout
    if shutil.which(check[0]) is None:
        return  # the shell is not installed here: its syntax is not checked (bash always is)
    path = tmp_path / f"fleet.{shell}"
    path.write_text(done.stdout)
    checked = subprocess.run([*check, str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_an_unknown_shell_is_refused(env: dict[str, str]) -> None:
    done = fleet(env, "completion", "tcsh-ish")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def complete(env: dict[str, str], script: Path, line: str) -> list[str]:
    """What bash offers for `line` through the script (as if Tab were pressed at its end)."""
    words = line.split(" ")
    program = f"""
source {script}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}
_python_argcomplete fleet
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", program],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [w.strip() for w in done.stdout.splitlines() if w.strip()]


def test_bash_completes_subcommands_and_options_and_hides_the_helper(
    env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "fleet.bash"
    script.write_text(fleet(env, "completion", "bash").stdout)
    assert complete(env, script, "fleet pa") == ["pause"]
    assert set(complete(env, script, "fleet to")) == {"top", "topic", "token"}
    assert complete(env, script, "fleet ls --wa") == ["--watch"]
    assert "cpu" in complete(env, script, "fleet top --sort ")
    assert complete(env, script, "fleet __") == []  # __complete-agents is for scripts
    assert complete(env, script, "fleet pause ") == []  # fleetd down: no ids, no error


def test_complete_agents_prints_nothing_when_fleetd_is_down(env: dict[str, str]) -> None:
    done = fleet(env, "__complete-agents")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert "__complete-agents" not in fleet(env, "--help").stdout
