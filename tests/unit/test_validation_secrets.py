"""Secret names, redaction of a template, and the sandbox's environment filter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra import sandbox, sandbox_argv
from infra.template_files import load
from schemas.secrets import REDACTED, is_secret, redact_template, scrub, secret_values


@pytest.mark.parametrize(
    "name", ["GITHUB_TOKEN", "API_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"]
)
def test_secret_looking_names(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "KEYBOARD", "MONKEY", "PORT_API_HTTP"])
def test_plain_names(name: str) -> None:
    assert not is_secret(name)


def test_a_declared_secret_is_secret() -> None:
    assert is_secret("DSN", ["DSN"]) and not is_secret("DSN")


def test_a_template_is_redacted_everywhere_it_holds_env() -> None:
    t, _ = load(
        "name: t\nenv: {API_TOKEN: a1b2c3, PLAIN: p}\nassistant: {env: {DSN: pg://u:pw@h}}\n"
        "services: {api: {command: x, env: {SVC_SECRET: s3cr3t, LEVEL: debug}}}\n"
        "permissions: {secrets: [DSN]}\n"
    )
    r = redact_template(t)
    assert r.env == {"API_TOKEN": REDACTED, "PLAIN": "p"}
    assert r.assistant.env == {"DSN": REDACTED}
    assert r.services["api"].env == {"SVC_SECRET": REDACTED, "LEVEL": "debug"}
    values = secret_values(t, {"X": "spawned"})
    assert scrub("a1b2c3 pg://u:pw@h s3cr3t spawned", values) == " ".join([REDACTED] * 4)


def test_the_sandbox_keeps_only_the_named_variables() -> None:
    argv = sandbox_argv.argv(["/bin/sh", "-c", "env"], keep=["GRANTED"])
    env = {"GRANTED": "yes", "FLEET_TEST_SECRET": "no", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    assert "GRANTED=yes" in out.splitlines()
    assert "FLEET_TEST_SECRET" not in out and "PATH=" not in out


@pytest.mark.skipif(sandbox.landlock_abi() <= 0, reason="the kernel has no Landlock")
def test_landlock_refuses_paths_not_granted(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    (base / "mine").mkdir()
    (base / "theirs").mkdir()
    (base / "theirs" / "f").write_text("x")
    read = ["/usr", "/bin", "/lib", "/lib64", "/etc", sys.base_prefix]
    script = f"echo ok > {base}/mine/f && cat {base}/theirs/f"
    argv = sandbox_argv.argv(["/bin/sh", "-c", script], ["PATH"], read, [str(base / "mine")], True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert (base / "mine" / "f").read_text() == "ok\n"
    assert done.returncode != 0 and "Permission denied" in done.stderr
