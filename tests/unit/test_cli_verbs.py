"""The `fleet` verb table: each row names a function that exists, says what its docstring says,
and a verb's run imports its own module, not every verb's."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from services import cli

REPO = cli.__file__.rsplit("/services/", 1)[0]


@pytest.mark.parametrize("verb", cli.VERBS, ids=[v.name for v in cli.VERBS])
def test_each_verb_names_its_function_and_its_docstring(verb: cli.Verb) -> None:
    run, arguments = verb.load()
    assert callable(run) and (arguments is None) == (verb.arguments is None)
    assert verb.summary == (run.__doc__ or "").strip().splitlines()[0]


def test_every_verb_has_one_summary() -> None:
    assert set(cli.SUMMARIES) == {v.name for v in cli.VERBS}
    assert len({v.name for v in cli.VERBS}) == len(cli.VERBS)


def test_listing_the_verbs_imports_none_of_them() -> None:
    code = (
        "import sys; from services import cli; cli.build_parser(lambda verb: False);"
        "print(sorted(m for m in sys.modules if m.startswith('services.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['services.cli']", out.stdout


def test_a_verb_loads_its_own_module_only() -> None:
    code = (
        "import sys; from services import cli; cli.build_parser(cli._named(['ls']));"
        "print(' '.join(m for m in sys.modules if m.startswith('services.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    verbs = {f"services.cli.{v.module}" for v in cli.VERBS if "." not in v.module}
    assert verbs & set(out.stdout.split()) == {"services.cli.agents"}, out.stdout


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "services.cli", "--help"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and "Run many AI coding agents" in out.stdout, out.stderr
    assert importlib.import_module("services.cli.hook").main is not None


@pytest.mark.parametrize(
    ("line", "loaded"),
    [
        ("fleet top --sort ", {"top"}),
        ("fleet --json list -", {"ls"}),
        ("fleet pa", set()),  # the verb itself is being completed: names only
        ("fleet send 'open", {v.name for v in cli.VERBS}),  # cannot be split: every verb
    ],
)
def test_a_completion_loads_the_verb_of_its_line(
    monkeypatch: pytest.MonkeyPatch, line: str, loaded: set[str]
) -> None:
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line)))
    picked = cli._named([])
    assert {v.name for v in cli.VERBS if picked(v)} == loaded
