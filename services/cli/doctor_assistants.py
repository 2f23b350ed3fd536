"""`fleet doctor --assistants`: which assistants are installed, their versions, who is logged in.

Each built-in template's assistant is looked up as a spawn looks it up (infra/installs.py: its
command's program on the template's PATH, else this shell's, or `--path`), so "installed" here
means a spawn would find it. Its version comes from its install (the npm package.json its real
file belongs to, the venv's dist-info), and only when neither says, from `--version`. Whether
it is logged in is read from the files the assistant keeps its login in (the ones an agent's
private home is seeded from), without network and without running it: "yes" with where, "no"
when none of them is there, "unknown" when something is there that cannot be judged offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra import installs
from infra import template_files as templates
from services.cli.agents import table

VERSION_TIMEOUT_S = 30.0  # `--version` of a node CLI on a loaded machine
_VERSION = re.compile(r"\b\d+\.\d+\.\d+(?:[-+.][0-9A-Za-z.]+)?\b")
DISTS = {"aider": "aider_chat"}  # Python assistants: executable -> distribution folder name


@dataclass(frozen=True)
class Report:
    template: str
    program: str
    installed: bool
    executable: str = ""
    version: str = ""
    logged_in: str = "unknown"  # yes | no | unknown
    login: str = ""  # where the login was found, or what is missing
    install: str = ""  # how to install it, when it is not


def assistant_templates() -> list[str]:
    """The built-in templates that run an assistant (not a plain shell)."""
    return [
        n for n in templates.builtin_names() if templates.builtin(n).assistant.profile != "shell"
    ]


def report(name: str, path_var: str | None, home: Path, env: dict[str, str]) -> Report:
    t = templates.builtin(name)
    command = t.assistant.command
    program = installs.program(command) or command
    where = (
        path_var
        if path_var is not None
        else (t.env | t.assistant.env).get("PATH") or env.get("PATH", "")
    )
    try:
        found = installs.find(command, where)
    except installs.NotInstalled as e:
        how = installs.INSTALL.get(os.path.basename(program)) or str(e)
        return Report(name, program, False, install=f"{e.why}: {how}")
    exe = found or program
    said, how = logged_in(os.path.basename(program), home, env)
    return Report(name, program, True, exe, version_of(exe), said, how)


def version_of(executable: str) -> str:
    """The version of the install `executable` belongs to; `--version` only if it cannot tell."""
    real = Path(os.path.realpath(executable))
    for folder in real.parents:  # node_modules/<pkg> or node_modules/@scope/<pkg>
        up = folder.parent
        if up.name == "node_modules" or (
            up.name.startswith("@") and up.parent.name == "node_modules"
        ):
            manifest = _json(folder / "package.json")
            if manifest and manifest.get("version"):
                return str(manifest["version"])
            break
    dist = DISTS.get(os.path.basename(executable))
    interpreter = installs.shebang(str(real))
    if dist and interpreter:
        venv = Path(interpreter).parent.parent
        for info in sorted(venv.glob(f"lib/python*/site-packages/{dist}-*.dist-info")):
            return info.name.removeprefix(f"{dist}-").removesuffix(".dist-info")
    return _asked(executable)


def _asked(executable: str) -> str:
    try:
        out = subprocess.run(
            [executable, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = _VERSION.search(out.stdout + out.stderr)
    return found.group() if found else ""


def logged_in(program: str, home: Path, env: dict[str, str]) -> tuple[str, str]:
    """("yes" | "no" | "unknown", where or what is missing) for the assistant `program`."""
    check = {"claude": _claude, "codex": _codex, "gemini": _gemini, "aider": _aider}.get(program)
    if check is None:
        return "unknown", "fleetd does not know where this assistant keeps its login"
    return check(home, env)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _claude(home: Path, env: dict[str, str]) -> tuple[str, str]:
    config = Path(env["CLAUDE_CONFIG_DIR"]) if env.get("CLAUDE_CONFIG_DIR") else home / ".claude"
    creds = _json(config / ".credentials.json") or {}
    if (creds.get("claudeAiOauth") or {}).get("accessToken"):
        return "yes", f"{config / '.credentials.json'} (Claude account)"
    state_file = config / ".claude.json" if env.get("CLAUDE_CONFIG_DIR") else home / ".claude.json"
    state = _json(state_file) or {}
    if state.get("primaryApiKey"):
        return "yes", f"{state_file} (API key)"
    if env.get("ANTHROPIC_API_KEY"):
        return "yes", "ANTHROPIC_API_KEY in the environment"
    if state.get("oauthAccount"):
        return "unknown", f"{state_file} names an account, but no token is in {config}"
    return "no", f"no login in {config / '.credentials.json'} or {state_file}"


def _codex(home: Path, env: dict[str, str]) -> tuple[str, str]:
    where = Path(env["CODEX_HOME"]) if env.get("CODEX_HOME") else home / ".codex"
    auth = _json(where / "auth.json")
    if auth is not None:
        if auth.get("OPENAI_API_KEY"):
            return "yes", f"{where / 'auth.json'} (API key)"
        if (auth.get("tokens") or {}).get("access_token") or auth.get("tokens"):
            return "yes", f"{where / 'auth.json'} (ChatGPT account)"
        return "unknown", f"{where / 'auth.json'} holds neither an API key nor tokens"
    if env.get("OPENAI_API_KEY"):
        return "unknown", f"OPENAI_API_KEY is set, but Codex signs in to {where / 'auth.json'}"
    return "no", f"no {where / 'auth.json'}"


def _gemini(home: Path, env: dict[str, str]) -> tuple[str, str]:
    where = home / ".gemini"
    if (where / "oauth_creds.json").is_file():
        return "yes", f"{where / 'oauth_creds.json'} (Google account)"
    settings = _json(where / "settings.json") or {}
    chosen = ((settings.get("security") or {}).get("auth") or {}).get(
        "selectedType"
    ) or settings.get("selectedAuthType")
    if env.get("GEMINI_API_KEY"):
        return "yes", "GEMINI_API_KEY in the environment"
    if chosen == "vertex-ai" and (env.get("GOOGLE_API_KEY") or env.get("GOOGLE_CLOUD_PROJECT")):
        return "yes", "Vertex AI settings in the environment"
    if chosen:
        return "unknown", f"{where / 'settings.json'} chose {chosen}, and its key is not here"
    return "no", f"no {where / 'oauth_creds.json'} and no GEMINI_API_KEY"


_AIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY",
               "DEEPSEEK_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY", "AZURE_API_KEY")  # fmt: skip


def _aider(home: Path, env: dict[str, str]) -> tuple[str, str]:
    for key in _AIDER_KEYS:
        if env.get(key):
            return "yes", f"{key} in the environment"
    for path in (home / ".aider" / "oauth-keys.env", home / ".env"):
        try:
            text = path.read_text()
        except OSError:
            continue
        for key in _AIDER_KEYS:
            if re.search(rf"(?m)^\s*(export\s+)?{key}\s*=\s*\S", text):
                return "yes", f"{path} ({key})"
    conf = home / ".aider.conf.yml"
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    if re.search(r"(?m)^\s*(api-key|[a-z]+-api-key)\s*:", text):
        return "yes", f"{conf} (api-key)"
    return (
        "no",
        "no API key in the environment, ~/.aider/oauth-keys.env, ~/.env or ~/.aider.conf.yml",
    )


def render(found: list[Report]) -> str:
    rows = [
        [r.template, r.program, r.version or "?", r.logged_in, r.login, r.executable]
        if r.installed
        else [r.template, r.program, "-", "-", r.install, "not installed"]
        for r in found
    ]
    head = ["TEMPLATE", "PROGRAM", "VERSION", "LOGGED IN", "WHERE", "EXECUTABLE"]
    installed = sum(r.installed for r in found)
    return table(head, rows) + f"\n\n{installed} of {len(found)} assistant(s) installed"


def as_json(found: list[Report]) -> list[dict[str, Any]]:
    return [asdict(r) for r in found]
