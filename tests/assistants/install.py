"""The real assistants, installed once into a cache folder that outlives the test run.

Claude Code, Codex and Gemini CLI from the npm registry, installed with `npm install` into a
folder (reached through its `node_modules/.bin`, as a tools folder is), and Gemini CLI again
with `npm install -g --prefix` (as a global npm lays it out); Aider from PyPI into a venv
(`python -m venv`, filled by uv, which installs it in seconds where pip took minutes) and again
with `uv tool install` (as uv tools and pipx lay it out). Versions are pinned; the folder is
keyed by them (`~/.cache/fleetd-test-assistants/<key>`, or `$FLEET_TEST_ASSISTANTS/<key>`), so
a new pin installs beside the old one. Each step leaves a marker with its seconds when it is
done, so an interrupted install resumes where it stopped.

Where npm or PyPI cannot be reached, the tests that need them are skipped with that reason,
and only then: an install that fails while the registry answers fails the test.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NPM = {
    "claude": ("@anthropic-ai/claude-code", "2.1.332"),
    "codex": ("@openai/codex", "0.171.0"),
    "gemini": ("@google/gemini-cli", "0.61.0"),
}
AIDER = ("aider-chat", "0.86.2")
UV = ("uv", "0.13.10")
STEP_TIMEOUT_S = 900  # one install step on a slow link; a registry that does not answer fails
VERSIONS = {name: version for name, (_, version) in NPM.items()} | {"aider": AIDER[1]}


@dataclass
class Installs:
    """Where each way of installing put its assistants' PATH folder."""

    root: Path
    npm_bin: Path  # npm in a folder: node_modules/.bin
    npm_global_bin: Path  # npm install -g --prefix: <prefix>/bin (gemini)
    venv_bin: Path  # a venv: bin (aider)
    uv_tool_bin: Path  # uv tool install: the bin folder of links (aider)
    seconds: dict[str, float] = field(default_factory=dict)  # each step, when it ran


def cache_root() -> Path:
    base = os.environ.get("FLEET_TEST_ASSISTANTS") or "~/.cache/fleetd-test-assistants"
    pins = json.dumps([NPM, AIDER, UV], sort_keys=True).encode()
    return Path(base).expanduser() / hashlib.sha256(pins).hexdigest()[:12]


def base_python() -> str:
    """The interpreter beneath the test's own venv: the one a user's `python -m venv` uses."""
    return str(getattr(sys, "_base_executable", sys.executable))


def install() -> Installs:
    """Every assistant, installed (or found installed) in the cache folder."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    found = Installs(
        root=root,
        npm_bin=root / "npm" / "node_modules" / ".bin",
        npm_global_bin=root / "npm-global" / "bin",
        venv_bin=root / "aider-venv" / "bin",
        uv_tool_bin=root / "uv-tools" / "bin",
    )
    with _locked(root / ".lock"):
        _npm_steps(found)
        _pypi_steps(found)
    (root / "timings.json").write_text(json.dumps(found.seconds, indent=1) + "\n")
    return found


def _npm_steps(found: Installs) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (Debian's npm), so the npm registry cannot be reached")
    quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
    specs = [f"{pkg}@{version}" for pkg, version in NPM.values()]
    folder = found.root / "npm"
    _step(found, "npm-folder", [npm, "install", "--prefix", str(folder), *quiet, *specs], "npm")
    gemini = "{}@{}".format(*NPM["gemini"])
    prefix = str(found.root / "npm-global")
    _step(found, "npm-global", [npm, "install", "-g", "--prefix", prefix, *quiet, gemini], "npm")


def _pypi_steps(found: Installs) -> None:
    root, python = found.root, base_python()
    tools = root / "uv"
    _step(found, "uv-venv", [python, "-m", "venv", str(tools)], "")
    uv_spec = "{}=={}".format(*UV)
    _step(found, "uv", [str(tools / "bin" / "pip"), "install", "-q", uv_spec], "pypi")
    uv = str(tools / "bin" / "uv")
    aider = "{}=={}".format(*AIDER)
    venv = root / "aider-venv"
    _step(found, "aider-venv", [python, "-m", "venv", str(venv)], "")
    into = ["--python", str(venv / "bin" / "python")]
    _step(found, "aider-venv-install", [uv, "pip", "install", "-q", *into, aider], "pypi")
    tool = ["tool", "install", "-q", "--python", python, aider]
    _step(found, "aider-uv-tool", [uv, *tool], "pypi", env=_uv_tool_env(root))


def _uv_tool_env(root: Path) -> dict[str, str]:
    return {
        "UV_TOOL_DIR": str(root / "uv-tools" / "tools"),
        "UV_TOOL_BIN_DIR": str(root / "uv-tools" / "bin"),
        "UV_PYTHON_DOWNLOADS": "never",  # no interpreter from outside the registries
    }


def _step(
    found: Installs,
    name: str,
    argv: list[str],
    registry: str,
    env: dict[str, str] | None = None,
) -> None:
    """Run one install step unless its marker says it is done; time it."""
    marker = found.root / f".{name}.done"
    if marker.exists():
        return
    started = time.monotonic()
    ran = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if ran.returncode != 0:
        why = (ran.stderr or ran.stdout).strip()[-1500:]
        unreachable = _unreachable(registry)
        if unreachable:
            pytest.skip(f"{unreachable}, so the real assistants cannot be installed")
        pytest.fail(f"installing the real assistants failed at {name} ({' '.join(argv)}): {why}")
    found.seconds[name] = round(time.monotonic() - started, 1)
    marker.write_text(f"{found.seconds[name]}\n")


def _unreachable(registry: str) -> str:
    """Why `registry` ("npm" or "pypi") cannot be reached from here; "" when it answers."""
    if registry == "npm":
        ping = subprocess.run(
            ["npm", "ping", "--loglevel=error"], capture_output=True, text=True, timeout=120
        )
        last = (ping.stderr or ping.stdout).strip().splitlines()[-1:] or [""]
        return "" if ping.returncode == 0 else f"the npm registry cannot be reached ({last[0]})"
    if registry == "pypi":
        with tempfile.TemporaryDirectory() as where:
            got = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", where,
                 "{}=={}".format(*UV)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        last = got.stderr.strip().splitlines()[-1:] or [""]
        return "" if got.returncode == 0 else f"PyPI cannot be reached ({last[0]})"
    return ""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time per cache folder (two test runs may start together)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
