"""`fleet doctor --assistants` against the real installs: what a spawn would find, the pinned
versions, and the login read from each assistant's own files in a home made for the test
(empty: "no"; with each one's login file: "yes" naming it; a file it cannot judge: "unknown").
It runs without fleetd, and as a subprocess with only the environment given here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.assistants.install import VERSIONS, Installs
from tests.fleetcli import fleet_cli

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
PROGRAMS = {"claude-code": "claude", "codex": "codex", "gemini": "gemini", "aider": "aider"}


def doctor(home: Path, path: str, **env: str) -> dict[str, dict[str, Any]]:
    """The report by template, from `fleet doctor --assistants --json --path PATH`."""
    base = {"HOME": str(home), "PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env}
    done = fleet_cli(base, "doctor", "--assistants", "--json", "--path", path)
    assert done.returncode == 0, done
    return {r["template"]: r for r in json.loads(done.stdout)["assistants"]}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_the_real_installs_with_their_versions_and_no_login(
    assistants: Installs, home: Path
) -> None:
    path = f"{assistants.npm_bin}:{assistants.venv_bin}:{SYSTEM_PATH}"
    found = doctor(home, path)
    assert sorted(found) == sorted(PROGRAMS)
    for template, program in PROGRAMS.items():
        r = found[template]
        folder = assistants.venv_bin if program == "aider" else assistants.npm_bin
        assert r["installed"] and r["executable"] == str(folder / program), r
        assert r["version"] == VERSIONS[program], r
        assert r["logged_in"] == "no", r


def test_other_layouts_are_found_as_a_spawn_finds_them(assistants: Installs, home: Path) -> None:
    """A global npm prefix (gemini) and a uv tool (aider): their versions from there too."""
    found = doctor(home, f"{assistants.npm_global_bin}:{assistants.uv_tool_bin}:{SYSTEM_PATH}")
    assert found["gemini"]["executable"] == str(assistants.npm_global_bin / "gemini")
    assert found["gemini"]["version"] == VERSIONS["gemini"]
    assert found["aider"]["executable"] == str(assistants.uv_tool_bin / "aider")
    assert found["aider"]["version"] == VERSIONS["aider"]


def test_not_installed_says_how_to_install_it(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    found = doctor(home, str(empty))
    assert not any(r["installed"] for r in found.values()), found
    assert found["codex"]["install"] == "not on PATH: npm install -g @openai/codex"
    assert "pipx install aider-chat" in found["aider"]["install"]
    text = fleet_cli({"HOME": str(home), "PATH": os.environ["PATH"]}, "doctor", "--assistants",
                     "--path", str(empty))  # fmt: skip
    assert text.returncode == 0, text
    assert "0 of 4 assistant(s) installed" in text.stdout, text.stdout
    assert "npm install -g @anthropic-ai/claude-code" in text.stdout, text.stdout


def logins(home: Path) -> None:
    """Each assistant's login as it writes it (the shapes of their own files)."""
    (home / ".claude").mkdir()
    creds = {"claudeAiOauth": {"accessToken": "sk-ant-oat-test", "refreshToken": "r"}}
    (home / ".claude" / ".credentials.json").write_text(json.dumps(creds))
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": "sk-test"}))
    (home / ".gemini").mkdir()
    (home / ".gemini" / "oauth_creds.json").write_text(json.dumps({"access_token": "ya29.t"}))
    (home / ".aider.conf.yml").write_text("model: gpt-4o\nopenai-api-key: sk-test\n")


def test_a_home_with_each_login_file_is_logged_in(assistants: Installs, home: Path) -> None:
    logins(home)
    found = doctor(home, f"{assistants.npm_bin}:{assistants.venv_bin}:{SYSTEM_PATH}")
    assert {t: r["logged_in"] for t, r in found.items()} == dict.fromkeys(PROGRAMS, "yes")
    assert str(home / ".claude" / ".credentials.json") in found["claude-code"]["login"]
    assert str(home / ".codex" / "auth.json") in found["codex"]["login"]
    assert str(home / ".gemini" / "oauth_creds.json") in found["gemini"]["login"]
    assert str(home / ".aider.conf.yml") in found["aider"]["login"]


def test_keys_in_the_environment_and_files_it_cannot_judge(
    assistants: Installs, home: Path, tmp_path: Path
) -> None:
    """An API key in the environment counts where the assistant reads one; a Codex auth.json
    with neither key nor tokens, and Claude's account named without its token, are unknown;
    CODEX_HOME and CLAUDE_CONFIG_DIR are where those two look then."""
    codex_home, claude_dir = tmp_path / "codex-home", tmp_path / "claude-dir"
    codex_home.mkdir()
    claude_dir.mkdir()
    (codex_home / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": None}))
    (claude_dir / ".claude.json").write_text(json.dumps({"oauthAccount": {"emailAddress": "x"}}))
    path = f"{assistants.npm_bin}:{assistants.venv_bin}:{SYSTEM_PATH}"
    found = doctor(home, path, GEMINI_API_KEY="k", ANTHROPIC_API_KEY="k2",
                   CODEX_HOME=str(codex_home), CLAUDE_CONFIG_DIR=str(claude_dir))  # fmt: skip
    assert found["gemini"]["logged_in"] == "yes" and "GEMINI_API_KEY" in found["gemini"]["login"]
    assert found["aider"]["logged_in"] == "yes"  # aider takes ANTHROPIC_API_KEY too
    assert found["codex"]["logged_in"] == "unknown", found["codex"]
    assert str(codex_home / "auth.json") in found["codex"]["login"]
    assert found["claude-code"]["logged_in"] == "yes"  # its key from the environment
    found = doctor(home, path, CLAUDE_CONFIG_DIR=str(claude_dir))
    assert found["claude-code"]["logged_in"] == "unknown", found["claude-code"]
    assert str(claude_dir) in found["claude-code"]["login"]
