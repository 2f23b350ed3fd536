"""Template loading: sentences that name the file, the field path and what was expected;
extends; the checks types cannot express; the built-ins."""

from __future__ import annotations

import pytest

from infra import template_files as templates
from schemas.builtin_profiles import CLAUDE_CODE
from schemas.errors import InvalidTemplate
from schemas.ports import template_leases
from schemas.profiles import profile_of
from schemas.templates import Template, decode_spec, encode_spec

BAD = [
    (
        "services:\n  api:\n    command: x\n    readiness:\n      http:\n        port: [1]\n",
        "web.yaml: services.api.readiness.http.port: expected int or str, got array",
    ),
    (
        "services:\n  db: {command: y}\n  api: {command: x, bogus: 1}\n",
        "web.yaml: services.api.bogus: unknown field",
    ),
    ("services:\n  api: {}\n", "web.yaml: services.api.command: required field is missing"),
    (
        "services:\n  api: {command: x, restart: {policy: sometimes}}\n",
        "web.yaml: services.api.restart.policy: expected one of no, on-failure, always, "
        "got 'sometimes'",
    ),
    ("env: {A: '1', B: 2}\n", "web.yaml: env.B: expected str, got int"),
    (
        "services:\n  a: {command: x}\n  b: {command: x, depends_on: {a: soon}}\n",
        "web.yaml: services.b.depends_on.a: expected one of started, healthy, completed, "
        "got 'soon'",
    ),
    ("assistant: {patterns: {WORKING: [1]}}\n", "web.yaml: assistant.patterns.WORKING[0]"),
    ("services: [1]\n", "web.yaml: services: expected object, got array"),
    ("resources: {memory_mb: lots}\n", "web.yaml: resources.memory_mb: expected int"),
]


@pytest.mark.parametrize(("body", "sentence"), BAD)
def test_a_bad_field_is_named_by_file_and_path(body: str, sentence: str) -> None:
    with pytest.raises(InvalidTemplate) as err:
        templates.load("name: web\n" + body, "web.yaml")
    assert str(err.value).startswith(sentence)
    assert err.value.code == "invalid_template"


CHECKS = [
    ("name: web.1\n", "name: invalid template name 'web.1'"),
    ("name: web\nextends: nope\n", "extends: there is no template 'nope'"),
    ("name: web\nextends: web\n", "extends: templates extend each other in a cycle: web -> web"),
    (
        "name: web\nservices:\n  a: {command: x, depends_on: {b: healthy}}\n"
        "  b: {command: x, depends_on: {a: started}}\n",
        "services.a.depends_on: services depend on each other in a cycle: a -> b -> a",
    ),
    (
        "name: web\nservices:\n  a: {command: x, depends_on: {c: healthy}}\n",
        "services.a.depends_on: unknown service 'c'",
    ),
    ("name: web\nservices:\n  a: {command: x, ports: [p, p]}\n", "port 'p' is named twice"),
    (
        "name: web\nservices:\n  a-b: {command: x, ports: [c]}\n  a: {command: x, ports: [b_c]}\n",
        "would both be PORT_A_B_C",
    ),
    ("name: web\nservices:\n  'a b': {command: x}\n", "services.a b: invalid service name"),
    (
        "name: web\nservices:\n  a: {command: x, ports: [p], readiness: {tcp: {port: q}}}\n",
        "services.a.readiness.tcp.port: port 'q' is not one of the service's ports (p)",
    ),
    (
        "name: web\nservices:\n  a: {command: x, readiness: {period_s: 1}}\n",
        "services.a.readiness: expected exactly one of http, tcp, exec, log; got none",
    ),
    ("name: web\nassistant: {profile: vim}\n", "assistant.profile: expected one of aider"),
    ("name: web\nassistant: {patterns: {READY: ['(']}}\n", "assistant.patterns: screen pattern"),
    ("name: web\n  x: : y\n", "web.yaml: line 2, column 4: not valid YAML"),
    ("- a\n", "web.yaml: expected a mapping of template fields, got array"),
]


@pytest.mark.parametrize(("text", "fragment"), CHECKS)
def test_checks_beyond_types_are_sentences(text: str, fragment: str) -> None:
    with pytest.raises(InvalidTemplate) as err:
        templates.load(text, "web.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("web.yaml: ")


def test_extends_overrides_the_parent_and_merges_mappings_per_key() -> None:
    parents = {
        "base": {
            "name": "base",
            "env": {"A": "1", "B": "2"},
            "capabilities": ["x", "y"],
            "services": {
                "api": {"command": "old", "ports": ["http"], "readiness": {"tcp": {"port": "http"}}}
            },
        },
        "mid": {"name": "mid", "extends": "base", "env": {"B": "mid"}},
    }
    child = "name: leaf\nextends: mid\nenv: {C: '3'}\ncapabilities: [z]\n"
    child += "services:\n  api: {command: new}\n"
    template, chain = templates.load(child, "leaf.yaml", parents.get)
    assert chain == ["mid", "base"]
    assert template.name == "leaf" and template.extends == "mid"
    assert template.env == {"A": "1", "B": "mid", "C": "3"}
    assert template.capabilities == ("z",)  # lists are replaced, not merged
    api = template.services["api"]
    assert api.command == "new" and api.ports == ("http",)
    assert api.readiness is not None and api.readiness.tcp is not None


def test_extends_cycles_through_parents_are_refused() -> None:
    parents = {"a": {"name": "a", "extends": "b"}, "b": {"name": "b", "extends": "a"}}
    with pytest.raises(InvalidTemplate, match=r"cycle: c -> a -> b -> a"):
        templates.load("name: c\nextends: a\n", "c.yaml", parents.get)


def test_every_builtin_loads() -> None:
    names = templates.builtin_names()
    assert {"shell", "claude-code", "codex", "aider", "gemini", "web-demo"} <= set(names)
    for name in names:
        template = templates.builtin(name)
        assert template.name == name
        assert template.assistant.profile in {"shell", "claude-code", "codex", "aider", "gemini"}
    assert templates.builtin("claude-code").assistant.command == "claude"


def test_web_demo_has_an_http_api_and_a_worker_that_waits_for_it() -> None:
    demo = templates.builtin("web-demo")
    assert demo.extends == "shell"
    api, worker = demo.services["api"], demo.services["worker"]
    assert api.ports == ("http",)
    assert api.readiness is not None and api.readiness.http is not None
    assert api.readiness.http.port == "http"
    assert worker.depends_on == {"api": "healthy"}
    assert template_leases(demo) == ["api.http"]


def test_the_recorded_spec_round_trips_and_gives_the_profile() -> None:
    text = "name: cc\nextends: claude-code\nassistant: {patterns: {READY: ['^ready$']}}\n"
    template, _ = templates.load(text, "cc.yaml")
    decoded = decode_spec(encode_spec(template))
    assert decoded == template
    profile = profile_of(decoded, "cc", "claude --model x")
    assert profile.command == "claude --model x"
    assert profile.patterns["READY"] == ("^ready$",)
    assert profile.patterns["WORKING"] == CLAUDE_CODE.patterns["WORKING"]
    assert profile.quit_text == CLAUDE_CODE.quit_text
    assert profile_of(None, "aider").name == "aider"
    assert decode_spec("") is None


def test_a_minimal_template_is_just_a_name() -> None:
    assert templates.load("name: t\n")[0] == Template(name="t")
