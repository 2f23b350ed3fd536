"""Input validation: every kind of bad input is refused with one sentence naming the field.

The requests and commands are decoded as they come off NATS or the gateway
(`replies.decode_request`), so these are the refusals those callers get.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra import template_files as templates
from schemas import commands as c
from schemas import replies, validation
from schemas.control import SpawnRequest
from schemas.errors import FleetError, InvalidName, InvalidTemplate, PayloadTooLarge


def spawn(**fields: Any) -> SpawnRequest:
    body = {"repo": "/srv/repo", **fields}
    req: SpawnRequest = replies.decode_request(json.dumps(body).encode(), SpawnRequest, "spawn")
    return req


def command(**fields: Any) -> c.AgentCommand:
    cmd: c.AgentCommand = replies.decode_request(
        json.dumps(fields).encode(), c.AgentCommand, "command"
    )
    return cmd


def refused(fn: Any, **fields: Any) -> str:
    with pytest.raises(FleetError) as err:
        fn(**fields)
    assert isinstance(err.value, InvalidName | PayloadTooLarge), err.value
    return str(err.value)


def test_a_good_spawn_request_passes() -> None:
    req = spawn(name="a-1", template="shell", base_ref="origin/main", env={"API_TOKEN": "x"})
    assert req.name == "a-1" and req.env == {"API_TOKEN": "x"}


# -- NATS subject wildcards, dots and spaces in ids ------------------------------------------


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "a b", "", "x" * 65])
def test_agent_names_that_would_break_a_subject_are_refused(bad: str) -> None:
    msg = refused(spawn, name=bad or "a b")
    assert msg.startswith("invalid agent name") and "letters, digits" in msg


@pytest.mark.parametrize("field", ["template", "capabilities"])
def test_template_and_capabilities_are_tokens(field: str) -> None:
    value: Any = "web.*" if field == "template" else ["ok", "bad cap"]
    assert "invalid" in refused(spawn, **{field: value})


@pytest.mark.parametrize(
    ("fields", "starts"),
    [
        ({"type": "attach", "user": "bob>"}, "invalid user 'bob>'"),
        ({"type": "detach", "user": "a.b"}, "invalid user 'a.b'"),
        ({"type": "restart_service", "service": "api.*"}, "invalid service name 'api.*'"),
        ({"type": "report_health", "service": "a b", "healthy": True}, "invalid service name"),
        ({"type": "output", "window": "agent;kill"}, "invalid window name 'agent;kill'"),
        ({"type": "escalate", "rung": "x.y"}, "invalid recovery rung"),
    ],
)
def test_command_names_are_refused_with_the_field(fields: dict[str, Any], starts: str) -> None:
    assert refused(command, **fields).startswith(starts)


# -- shell metacharacters where a name reaches a shell or a tmux target ------------------------


@pytest.mark.parametrize("bad", ["a;rm -rf /", "$(id)", "`id`", "a\nb", "a|b", "a&b"])
def test_shell_metacharacters_in_names_are_refused(bad: str) -> None:
    assert refused(spawn, name=bad).startswith("invalid agent name")
    assert refused(command, type="attach", user=bad).startswith("invalid user")


@pytest.mark.parametrize("bad", ["C-c;ls", "$(id)", "Enter Enter", ""])
def test_key_names_are_refused(bad: str) -> None:
    assert refused(command, type="send", keys=[bad]).startswith("invalid key name")


@pytest.mark.parametrize("bad", ["line\nnext", "tab\there", "nul\x00", "bell\x07"])
def test_checkpoint_labels_are_one_line(bad: str) -> None:
    msg = refused(command, type="checkpoint", label=bad)
    assert msg.startswith("invalid checkpoint label") and "one line" in msg


@pytest.mark.parametrize("bad", ["-c", "--upload-pack=x", "a..b", "a b", "a~1", "x@{0}", "a:b"])
def test_base_refs_git_would_misread_are_refused(bad: str) -> None:
    assert refused(spawn, base_ref=bad).startswith("invalid base ref")


def test_sender_and_request_id_are_one_short_line() -> None:
    assert refused(command, type="show", by="a\nb").startswith("invalid sender (by)")
    assert refused(command, type="pause", id="x" * 200).startswith("invalid request id")


# -- path traversal ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["relative/repo", "../repo", "/srv/../etc", "~/repo", ""])
def test_repo_paths_must_be_absolute_without_dotdot(bad: str) -> None:
    assert refused(spawn, repo=bad).startswith("invalid repo path")


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "~/.ssh/id_rsa", ""])
def test_relative_paths_stay_inside(bad: str) -> None:
    with pytest.raises(InvalidName):
        validation.relative_path(bad, "file to copy")


@pytest.mark.parametrize("good", [".env", "config/local.yaml", "a..b/c"])
def test_relative_paths_inside_pass(good: str) -> None:
    assert validation.relative_path(good, "file to copy") == good


# -- environment --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["1X", "A-B", "A B", "A=B", "$(id)", ""])
def test_env_names_are_refused(bad: str) -> None:
    assert refused(spawn, env={bad: "v"}).startswith("invalid spawn env variable name")


def test_env_values_have_no_nul_and_a_size_limit() -> None:
    assert "NUL" in refused(spawn, env={"A": "x\x00y"})
    big = "x" * (validation.MAX_ENV_VALUE + 1)
    assert "at most" in refused(spawn, env={"A": big})
    many = {f"V{i}": "1" for i in range(validation.MAX_ENV_VARS + 1)}
    assert f"at most {validation.MAX_ENV_VARS}" in refused(spawn, env=many)


# -- oversized input ----------------------------------------------------------------------------


def test_an_oversized_request_is_refused_before_decoding() -> None:
    msg = refused(spawn, command="x" * (replies.MAX_REQUEST_BYTES + 1))
    assert "more than the limit" in msg


def test_oversized_fields_are_refused_with_their_limit() -> None:
    assert "at most 200 characters" in refused(command, type="checkpoint", label="x" * 201)
    assert "at most 16384" in refused(spawn, command="x" * (16 * 1024 + 1))


def test_a_refusal_reaches_the_wire_as_one_sentence() -> None:
    with pytest.raises(FleetError) as err:
        spawn(name="a.b")
    reply = json.loads(replies.error(err.value))
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_name"
    assert reply["error"]["message"].count(":") == 1 and "\n" not in reply["error"]["message"]


# -- templates ---------------------------------------------------------------------------------


def load(yaml_text: str) -> str:
    with pytest.raises(InvalidTemplate) as err:
        templates.load(yaml_text, "t.yaml")
    return str(err.value)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("workspace: {copy: ['../secrets.env']}", "workspace.copy[0]"),
        ("workspace: {copy: ['/etc/shadow']}", "workspace.copy[0]"),
        ("workspace: {base_ref: '--exec=x'}", "workspace.base_ref"),
        ("services: {api: {command: x, cwd: '../..'}}", "services.api.cwd"),
        ("services: {api: {command: x, env: {'A B': '1'}}}", "services.api.env"),
        ("services: {api: {command: x, shutdown: {signal: 'KILLME'}}}", "services.api.shutdown"),
        ("env: {'X;id': '1'}", "env"),
        ("assistant: {env: {'1A': '1'}}", "assistant.env"),
        ("permissions: {paths: ['relative/dir']}", "permissions.paths[0]"),
        ("permissions: {paths: ['/srv/../etc']}", "permissions.paths[0]"),
        ("permissions: {paths: ['~root/.ssh']}", "permissions.paths[0]"),
        ("permissions: {paths: ['~/../etc']}", "permissions.paths[0]"),
        ("permissions: {env_passthrough: ['HOME;id']}", "permissions.env_passthrough[0]"),
        ("permissions: {secrets: ['A-B']}", "permissions.secrets[0]"),
        ("capabilities: ['a.b']", "capabilities"),
        ("services: {'a.b': {command: x}}", "services.a.b"),
    ],
)
def test_template_fields_are_checked_with_their_path(body: str, path: str) -> None:
    msg = load(f"name: t\n{body}\n")
    assert msg.startswith(f"t.yaml: {path}"), msg


def test_an_oversized_template_is_refused() -> None:
    text = "name: t\ndescription: " + "x" * templates.MAX_TEMPLATE_BYTES + "\n"
    assert "more than the limit" in load(text)


def test_every_builtin_template_passes_the_checks() -> None:
    for name in templates.builtin_names():
        templates.check_fields(templates.builtin(name), f"{name}.yaml")


def test_a_granted_path_may_start_at_your_home() -> None:
    t, _ = templates.load("name: t\npermissions: {paths: ['~', '~/.cache/tool', '/srv']}\n")
    templates.check_fields(t, "t.yaml")
    assert t.permissions.paths == ("~", "~/.cache/tool", "/srv")


@pytest.mark.parametrize("name", ["claude-code", "codex", "aider", "gemini"])
def test_builtin_assistants_take_only_their_login_from_your_home(name: str) -> None:
    """Their logins live under your home: the agent's own home starts with copies of those
    files alone, and your HOME (with the rest of it) is never handed through."""
    granted = templates.builtin(name).permissions
    assert granted.home and all(not p.startswith(("/", "~")) for p in granted.home)
    assert "HOME" not in granted.env_passthrough and "~" not in granted.paths


def test_a_home_file_must_be_relative_to_your_home() -> None:
    for bad in ("/etc/passwd", "~/.ssh", "../x", ".a/../../b"):
        with pytest.raises(InvalidTemplate, match=r"permissions\.home\[0\]: invalid file of your"):
            t, _ = templates.load(f"name: t\npermissions: {{home: ['{bad}']}}\n")
            templates.check_fields(t, "t.yaml")
