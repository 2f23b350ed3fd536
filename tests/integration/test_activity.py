"""Activity read from a real tmux pane running the fake assistant, through the debouncer.

Each test drives the fake through its phases by typing into the pane, as a person would,
and polls the screen the way the agent's monitor does: capture, classify, debounce. Every
wait is "until this shows, or fail after a generous deadline"; nothing asserts a duration.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from infra.tmux import Tmux
from schemas.assistants import AssistantProfile, Debouncer, classify, detail
from schemas.builtin_profiles import BUILTIN
from schemas.states import Activity
from tests import fake_assistant
from tests.integration.conftest import wait_until

A = Activity
S = "fleet-a1"
FAKE = Path(__file__).resolve().parents[1] / "fake_assistant.py"
ASSISTANTS = fake_assistant.PROFILES


class Watcher:
    """Captures the agent pane, classifies it and feeds the debouncer, as the monitor does."""

    def __init__(self, tmux: Tmux, profile: AssistantProfile) -> None:
        self.tmux, self.profile = tmux, profile
        self.debouncer = Debouncer(settle_s=0.2, min_interval_s=0.4)  # the defaults, quicker
        self.reported: list[A] = []

    def look(self) -> A | None:
        """One capture through the debouncer: the change it reports, or None."""
        screen = self.screen()
        activity = classify(screen, self.profile)
        said = detail(screen, self.profile, activity)
        self.debouncer, change = self.debouncer.observe(activity, said, time.monotonic())
        if change is not None:
            self.reported.append(change)
        return change

    def until(self, activity: A) -> str:
        """Poll until `activity` is reported (any other report fails); returns its detail."""

        def probe() -> bool:
            change = self.look()
            if change is not None and change is not activity:
                pytest.fail(f"expected {activity}, the screen read as {change}:\n{self.screen()}")
            return change is activity

        wait_until(probe, f"{self.profile.name} to show {activity}", interval=0.05)
        return self.debouncer.reported_detail

    def screen(self) -> str:
        return self.tmux.capture(S, "agent", None, False)


def start(tmux: Tmux, cwd: Path, who: str, script: str) -> Watcher:
    command = shlex.join([sys.executable, str(FAKE), "--as", who, "--script", script])
    tmux.create_session(S, cwd, {}, command_for_agent=command)
    return Watcher(tmux, BUILTIN[ASSISTANTS[who]])


def exits_cleanly(tmux: Tmux, goodbye: str = "Goodbye!") -> None:
    """The assistant said goodbye and its pane is dead, with status 0 when tmux knows it.

    tmux 3.3 now and then leaves the pane's shell a zombie it never reaps; the pane is dead
    but has no status (-1), whatever the assistant did.
    """
    wait_until(lambda: tmux.pane_dead(S, "agent"), "the assistant to exit")
    assert goodbye in tmux.capture(S, "agent")
    assert tmux.pane_dead_status(S, "agent") in (0, -1)


@pytest.mark.parametrize("who", sorted(ASSISTANTS))
def test_work_question_answer_work_ready(who: str, tmux: Tmux, tmp_path: Path) -> None:
    watcher = start(tmux, tmp_path, who, "work,ask,work,ready")
    watcher.until(A.WORKING)
    tmux.send_text(S, "agent", "")  # the first piece of work ends; the question comes
    question = "\n".join(fake_assistant.LOOKS[who].question)
    assert watcher.until(A.AWAITING_INPUT) == detail(question, watcher.profile, A.AWAITING_INPUT)
    tmux.send_text(S, "agent", "y")  # approved: back to work
    watcher.until(A.WORKING)
    tmux.send_text(S, "agent", "")
    watcher.until(A.READY)
    assert watcher.reported == [A.WORKING, A.AWAITING_INPUT, A.WORKING, A.READY]
    tmux.send_text(S, "agent", watcher.profile.quit_text)
    exits_cleanly(tmux)


@pytest.mark.parametrize("who", sorted(ASSISTANTS))
def test_login_then_ready(who: str, tmux: Tmux, tmp_path: Path) -> None:
    watcher = start(tmux, tmp_path, who, "login,ready")
    assert watcher.until(A.LOGIN_REQUIRED)
    tmux.send_text(S, "agent", "1")
    watcher.until(A.READY)
    assert watcher.reported == [A.LOGIN_REQUIRED, A.READY]


def test_declined_question_goes_back_to_the_prompt(tmux: Tmux, tmp_path: Path) -> None:
    watcher = start(tmux, tmp_path, "codex", "ask,work,ready")
    watcher.until(A.AWAITING_INPUT)
    tmux.send_text(S, "agent", "n")
    watcher.until(A.READY)
    assert "Declined." in watcher.screen()


def test_driven_from_the_prompt(tmux: Tmux, tmp_path: Path) -> None:
    """At the prompt a step name runs that step and other text is a prompt to work on."""
    watcher = start(tmux, tmp_path, "gemini", "")
    watcher.until(A.READY)
    tmux.send_text(S, "agent", "ask")
    watcher.until(A.AWAITING_INPUT)
    tmux.send_text(S, "agent", "y")
    watcher.until(A.READY)
    tmux.send_text(S, "agent", "work")
    watcher.until(A.WORKING)
    tmux.send_text(S, "agent", "")
    watcher.until(A.READY)


@pytest.mark.parametrize("who", ["claude", "aider"])
def test_quit_keys_end_it(who: str, tmux: Tmux, tmp_path: Path) -> None:
    watcher = start(tmux, tmp_path, who, "ready")
    watcher.until(A.READY)
    tmux.send_keys(S, "agent", list(watcher.profile.quit_keys))  # Ctrl-C twice
    exits_cleanly(tmux)


def test_quit_keys_end_a_shell(tmux: Tmux, tmp_path: Path) -> None:
    watcher = Watcher(tmux, BUILTIN["shell"])
    tmux.create_session(S, tmp_path, {}, command_for_agent=BUILTIN["shell"].command)
    watcher.until(A.READY)
    tmux.send_keys(S, "agent", list(BUILTIN["shell"].quit_keys))
    exits_cleanly(tmux, goodbye="exit")


def test_a_shell_prompt_and_a_running_command(tmux: Tmux, tmp_path: Path) -> None:
    watcher = Watcher(tmux, BUILTIN["shell"])
    tmux.create_session(S, tmp_path, {}, command_for_agent=BUILTIN["shell"].command)
    watcher.until(A.READY)
    tmux.send_text(S, "agent", "sleep 30")
    watcher.until(A.WORKING)
    tmux.send_keys(S, "agent", ["C-c"])
    watcher.until(A.READY)
    tmux.send_text(S, "agent", "read -rp 'Password: ' secret")
    assert watcher.until(A.AWAITING_INPUT) == "Password:"
    tmux.send_text(S, "agent", "hunter2")
    watcher.until(A.READY)
    tmux.send_text(S, "agent", BUILTIN["shell"].quit_text)
    exits_cleanly(tmux, goodbye="exit")
