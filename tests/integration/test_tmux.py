"""Tmux on a private socket per test: sessions, env, input, output, recording, cleanup."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra import procs
from infra.tmux import Tmux
from infra.tmux_socket import SEND_KEYS_MAX
from schemas.errors import InvalidName, SessionMissing, TmuxFailed
from tests.integration.conftest import wait_until

S = "fleet-a1"


def _screen_has(tmux: Tmux, window: str, text: str, session: str = S) -> bool:
    return text in tmux.capture(session, window)


def test_session_has_three_windows_and_fleet_env(tmux: Tmux, tmp_path: Path) -> None:
    agent = "sh -c 'echo agent-sees-$FLEET_AGENT_ID; exec sleep 1000'"
    tmux.create_session(S, tmp_path, {"FLEET_AGENT_ID": "a1"}, command_for_agent=agent)
    assert tmux.has_session(S)
    assert [w.window_name for w in tmux.session(S).windows] == ["agent", "services", "monitor"]
    wait_until(lambda: _screen_has(tmux, "agent", "agent-sees-a1"), "env in the agent command")
    tmux.send_text(S, "services", 'echo "services-see-$FLEET_AGENT_ID in $PWD"')
    wait_until(lambda: _screen_has(tmux, "services", f"services-see-a1 in {tmp_path}"), "env")
    assert tmux.list_sessions("fleet-") == [S]
    assert tmux.list_sessions("other-") == []


def test_literal_text_arrives_unexpanded(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="cat")
    text = "$HOME; echo 'x' Enter C-c -n \\;"
    tmux.send_text(S, "agent", text)
    # the tty echoes the line and cat prints it again: two copies, nothing interpreted
    wait_until(lambda: tmux.capture(S, "agent").count(text) == 2, "the literal text twice")
    assert str(Path.home()) not in tmux.capture(S, "agent")


def test_long_text_goes_through_a_paste_buffer(tmux: Tmux, tmp_path: Path) -> None:
    text = "\n".join(f"{i:04d}" + "x" * 95 for i in range(101))
    out = tmp_path / "out.txt"
    tmux.create_session(S, tmp_path, {}, command_for_agent=f"head -c {len(text) + 1} > {out}")
    tmux.send_text(S, "agent", text)
    wait_until(lambda: out.exists() and out.stat().st_size == len(text) + 1, "the whole text")
    assert out.read_text() == text + "\n"


def test_capture_gets_scrollback_and_last_lines(tmux: Tmux, tmp_path: Path) -> None:
    agent = "sh -c 'seq -f line-%g 1 300; exec sleep 1000'"
    tmux.create_session(S, tmp_path, {}, command_for_agent=agent)
    wait_until(lambda: tmux.capture(S, "agent").endswith("line-300"), "seq to finish")
    everything = tmux.capture(S, "agent").splitlines()
    assert everything == [f"line-{i}" for i in range(1, 301)]
    assert "line-1" not in tmux.capture(S, "agent", with_history=False).splitlines()
    assert tmux.capture(S, "agent", lines=3).splitlines() == everything[-3:]
    assert len(tmux.capture(S, "agent", lines=3).splitlines()) == 3


def test_dead_agent_keeps_its_screen_and_can_respawn(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="sh -c 'echo bye; exit 3'")
    wait_until(lambda: tmux.pane_dead_status(S, "agent") == 3, "the agent to exit with 3")
    assert "bye" in tmux.capture(S, "agent")
    assert not tmux.pane_dead(S, "services")
    tmux.respawn(S, "agent", "sh -c 'echo again; exec sleep 1000'")
    wait_until(lambda: _screen_has(tmux, "agent", "again"), "the respawned agent")
    assert tmux.pane_dead_status(S, "agent") is None


def test_pane_pids_are_the_live_pane_processes(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    pids = tmux.pane_pids(S)
    assert len(pids) == 3
    assert all(psutil.pid_exists(pid) for pid in pids)
    children = psutil.Process(pids[0]).children
    wait_until(lambda: [p.name() for p in children()] == ["sleep"], "the agent under its pane")


def _stopped(proc: psutil.Process) -> bool:
    try:
        return proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _last_tick(tmux: Tmux, window: str, word: str) -> int:
    lines = [ln for ln in tmux.capture(S, window, lines=5).splitlines() if ln.startswith(word)]
    return int(lines[-1].split()[1]) if lines else 0


@pytest.mark.parametrize("window", ["agent", "services"])
def test_sigstop_pauses_and_sigcont_resumes(tmux: Tmux, tmp_path: Path, window: str) -> None:
    """In a command (agent) and as a job of an interactive shell (services). The loop also
    writes its count to a file: once every process is stopped the file cannot change, while
    the screen may still be catching up with output tmux had not yet read (a loaded run)."""
    count = tmp_path / f"count-{window}"

    def counted() -> int:
        text = count.read_text().strip() if count.exists() else ""
        return int(text) if text.isdigit() else 0

    def loop(name: str) -> str:
        into = tmp_path / f"count-{name}"
        return f"i=0; while :; do i=$((i+1)); echo tick $i; echo $i > {into}; sleep 0.02; done"

    tmux.create_session(S, tmp_path, {}, command_for_agent=f"sh -c '{loop('agent')}'")
    if window == "services":
        tmux.send_text(S, window, loop("services"))
    wait_until(lambda: _last_tick(tmux, window, "tick") > 3, "the loop to count")
    pids = tmux.pane_pids(S)
    tmux.signal_panes(S, signal.SIGSTOP)
    under_panes = [p for p in procs.tree(pids) if p.pid not in pids]
    wait_until(lambda: all(_stopped(p) for p in under_panes), "every process to stop")
    paused = counted()
    # (stopped between its echo and its write, the screen is one ahead of the file)
    wait_until(lambda: _last_tick(tmux, window, "tick") >= paused, "the screen to catch up")
    assert counted() == paused and all(_stopped(p) for p in under_panes)
    assert _last_tick(tmux, window, "tick") in (paused, paused + 1)
    tmux.signal_panes(S, signal.SIGCONT)
    wait_until(lambda: _last_tick(tmux, window, "tick") > paused + 3, "the loop to count on")
    assert "Stopped" not in tmux.capture(S, window)


def test_terminate_tree_ends_a_pane_that_ignores_sigterm(tmux: Tmux, tmp_path: Path) -> None:
    agent = "sh -c \"trap '' TERM HUP; sleep 1000 & sleep 1000; wait\""
    tmux.create_session(S, tmp_path, {}, command_for_agent=agent)
    pid = tmux.pane_pids(S)[0]
    wait_until(lambda: len(procs.tree([pid])) == 4, "the pane, the shell and two sleeps")
    tree = procs.tree([pid])
    report = procs.terminate_tree([pid], polite_timeout=0.2, term_timeout=5)
    assert report.terminated == [pid]  # the waiting pane shell; what is under it ignores TERM
    assert sorted(report.killed) == sorted(p.pid for p in tree if p.pid != pid)
    assert not any(_alive(p) for p in tree)
    wait_until(lambda: tmux.pane_dead(S, "agent"), "the pane to be dead")


def test_grouped_session_shares_windows(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    name = tmux.grouped_session(S, "alice")
    assert name == f"{S}+alice" and tmux.has_session(name)
    assert tmux.grouped_session(S, "alice") == name
    ids = [w.window_id for w in tmux.session(S).windows]
    assert [w.window_id for w in tmux.session(name).windows] == ids
    assert tmux.attach_argv(name)[-5:] == [
        "-L",
        tmux.socket_name,
        "attach-session",
        "-t",
        "=" + name,
    ]
    tmux.kill_session(S)
    assert tmux.list_sessions() == []


def test_replace_kills_a_stale_session_and_makes_it_anew(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="sh -c 'echo old; exec sleep 1000'")
    stale = procs.tree(tmux.pane_pids(S))
    agent = "sh -c 'echo $FLEET_X; exec sleep 1000'"
    tmux.create_session(S, tmp_path, {"FLEET_X": "new"}, command_for_agent=agent, replace=True)
    assert not any(_alive(p) for p in stale)
    wait_until(lambda: _screen_has(tmux, "agent", "new"), "the new session's agent")
    assert [w.window_name for w in tmux.session(S).windows] == ["agent", "services", "monitor"]


def test_live_panes_name_their_windows(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="sh -c 'exit 0'")
    wait_until(lambda: tmux.pane_dead(S, "agent"), "the agent to exit")
    panes = tmux.live_panes(S)
    assert [window for window, _ in panes] == ["services", "monitor"]
    assert [pid for _, pid in panes] == tmux.pane_pids(S)


def test_live_panes_can_type_into_a_window_in_the_same_call(tmux: Tmux, tmp_path: Path) -> None:
    tmux.create_session(S, tmp_path, {}, command_for_agent="cat")
    panes = tmux.live_panes(S, ("agent", "typed-once;"))
    assert [window for window, _ in panes] == ["agent", "services", "monitor"]
    wait_until(lambda: tmux.capture(S, "agent").count("typed-once;") == 2, "the line, echoed")
    long = "y" * (SEND_KEYS_MAX + 10)  # too long for one send-keys: typed through a paste
    assert tmux.live_panes(S, ("agent", long)) == panes
    wait_until(lambda: long in tmux.capture(S, "agent").replace("\n", ""), "the long line")


def test_end_session_ends_every_process_then_the_sessions(tmux: Tmux, tmp_path: Path) -> None:
    agent = "sh -c \"trap '' HUP TERM; sleep 1000 & sleep 1000; wait\""
    tmux.create_session(S, tmp_path, {}, command_for_agent=agent)
    user = tmux.grouped_session(S, "bob")
    pids = tmux.pane_pids(S)
    wait_until(lambda: len(procs.tree(pids)) == 8, "three panes, 3 shells and two sleeps")
    tree = procs.tree(pids)
    tmux.end_session(S, polite_timeout=0.2, term_timeout=5)  # what ignores TERM gets KILL
    assert not tmux.has_session(S) and not tmux.has_session(user)
    assert not [p.pid for p in tree if _alive(p)]


def test_kill_session_leaves_no_process(tmux: Tmux, tmp_path: Path) -> None:
    agent = "sh -c \"trap '' HUP TERM; sleep 1000 & sleep 1000; wait\""
    tmux.create_session(S, tmp_path, {}, command_for_agent=agent)
    pids = tmux.pane_pids(S)
    wait_until(lambda: len(procs.tree(pids)) == 8, "three panes, 3 shells and two sleeps")
    tree = procs.tree(pids)
    tmux.kill_session(S)
    assert not tmux.has_session(S)
    assert not [p.pid for p in tree if _alive(p)]


def test_recording_writes_asciicast_v2(tmux: Tmux, tmp_path: Path) -> None:
    cast = tmp_path / "services.cast"
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    tmux.start_recording(S, "services", cast)
    tmux.start_recording(S, "services", cast)  # already recording: a no-op
    tmux.send_text(S, "services", "printf 'h\\303\\251llo %s\\n' recorded")
    wait_until(lambda: cast.exists() and "héllo recorded" in _cast_text(cast), "the recording")
    tmux.stop_recording(S, "services")
    header = json.loads(cast.read_text().splitlines()[0])
    assert header["version"] == 2 and (header["width"], header["height"]) == (200, 50)
    assert isinstance(header["timestamp"], int)
    with pytest.raises(TmuxFailed, match="already exists"):
        tmux.start_recording(S, "services", cast)


def _cast_text(cast: Path) -> str:
    events = [json.loads(line) for line in cast.read_text().splitlines()[1:]]
    assert all(isinstance(t, float | int) and kind == "o" for t, kind, _ in events)
    return "".join(data for _, _, data in events)


def test_recorder_never_splits_a_multibyte_character(tmp_path: Path) -> None:
    cast = tmp_path / "split.cast"
    argv = [sys.executable, "-m", "infra.asciicast", str(cast), "80", "24"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE) as rec:
        assert rec.stdin is not None
        rec.stdin.write(b"caf\xc3")
        rec.stdin.flush()
        wait_until(lambda: cast.exists() and _cast_text(cast) == "caf", "the first event")
        rec.stdin.write(b"\xa9 \xff!")
        rec.stdin.close()
        assert rec.wait(timeout=10) == 0
    assert _cast_text(cast) == "café \ufffd!"


def test_missing_session_raises_one_sentence(tmux: Tmux, tmp_path: Path) -> None:
    assert tmux.list_sessions() == []  # no server yet
    assert not tmux.has_session(S)
    with pytest.raises(SessionMissing, match=f"no tmux session '{S}'"):
        tmux.capture(S, "agent")
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    for call in (
        lambda: tmux.pane_pids("fleet-a"),  # a prefix of S: never matched
        lambda: tmux.send_text("fleet-b1", "agent", "x"),
        lambda: tmux.kill_session("fleet-b1"),
    ):
        with pytest.raises(SessionMissing):
            call()
    with pytest.raises(TmuxFailed, match="duplicate session"):
        tmux.create_session(S, tmp_path, {})
    with pytest.raises(TmuxFailed, match="window"):
        tmux.capture(S, "nosuchwindow")


@pytest.mark.parametrize("name", ["a.b", "a:b", "", "a b", "x+y", "-t", "a;b", "é"])
def test_hostile_names_are_refused(tmux: Tmux, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        tmux.create_session(name, tmp_path, {})
    with pytest.raises(InvalidName):
        tmux.create_session(S, tmp_path, {}, windows=["agent", name])
    with pytest.raises(InvalidName):
        tmux.send_keys(S, "agent", ["Enter", name or " "])
    with pytest.raises(InvalidName):
        tmux.create_session(S, tmp_path, {name or " ": "v"})
    assert tmux.list_sessions() == []


def test_pane_pids_of_every_session_come_from_one_call(tmux: Tmux, tmp_path: Path) -> None:
    assert tmux.pane_pids_by_session() == {}  # no server yet: nothing, no error
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    tmux.create_session("other", tmp_path, {}, command_for_agent="sleep 1000")
    found = tmux.pane_pids_by_session()
    assert found == {S: tmux.pane_pids(S), "other": tmux.pane_pids("other")}
    assert len(found[S]) == 3


def test_the_server_outlives_its_last_session(tmux: Tmux, tmp_path: Path) -> None:
    """A server exiting after its last session ends would fail a session made at that moment
    ("server exited unexpectedly"): a restart right after a stop."""
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    tmux.kill_session(S)
    assert tmux._cmd("list-sessions").returncode == 0  # still serving, with no session
    tmux.create_session(S, tmp_path, {}, command_for_agent="sleep 1000")
    assert tmux.has_session(S)
