"""Agents as Ray actors against real Ray, nats-server, tmux and git: spawn, operate, recover."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import msgspec
import psutil
import ray
from nats.aio.client import Client

from infra.eventstore import EventStore
from infra.tmux import Tmux
from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn, until


async def types(nc: Client, agent_id: str) -> list[str]:
    stored = await EventStore(nc).read(agent_id)
    return [type(s.event).__struct_config__.tag for s in stored if s.event]  # type: ignore[attr-defined]


async def answered_anew(nc: Client, agent_id: str, old_pid: int, what: str) -> dict:
    """The agent's `show`, once an actor process other than `old_pid` answers it."""

    async def back() -> dict | None:
        try:
            shown = await command(nc, agent_id, "show", timeout=1)
        except Exception:
            return None
        return shown if shown["agent"]["actor"]["pid"] != old_pid else None

    found: dict = await until(back, what, timeout=90)  # a Ray worker restart, loaded
    return found


async def test_spawn_gives_a_running_agent_with_worktree_and_session(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    reply = await spawn(nc, str(repo), "a1")
    assert reply["ok"], reply
    agent = reply["agent"]
    assert agent["lifecycle"] == "RUNNING"
    assert agent["branch"] == "fleet/a1"
    assert Path(agent["worktree"], "README.md").read_text() == "hello\n"
    assert agent["tmux"] == {"socket": fleet.tmux_socket, "session": "fleet-a1"}
    assert agent["actor"]["pid"] > 0
    tmux = Tmux(fleet.tmux_socket)
    windows = tmux.server.cmd("list-windows", "-t", "=fleet-a1", "-F", "#{window_name}").stdout
    assert windows == ["agent", "services", "monitor"]
    assert await types(nc, "a1") == [
        "agent.created",
        "lifecycle.changed",
        "workspace.ready",
        "session.started",
        "lifecycle.changed",
    ]
    await command(nc, "a1", "send", text="echo id=$FLEET_AGENT_ID")

    async def echoed() -> bool:
        out = await command(nc, "a1", "output", lines=50)
        return "id=a1" in out["output"]

    await until(echoed, "the agent's environment in its pane")


async def test_pause_stops_the_processes_and_resume_continues(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "p1")
    await command(nc, "p1", "send", text="sleep 1000")
    tmux = Tmux(fleet.tmux_socket)

    def children() -> list[psutil.Process]:
        return [
            c
            for p in tmux.pane_pids("fleet-p1")
            for c in psutil.Process(p).children(recursive=True)
        ]

    await until(lambda: asyncio.to_thread(lambda: len(children()) >= 2), "the loop to run")
    assert (await command(nc, "p1", "pause"))["agent"]["lifecycle"] == "PAUSED"
    seen = await asyncio.to_thread(lambda: {(c.pid, c.name(), c.status()) for c in children()})
    stopped = {status for _, _, status in seen}
    assert stopped <= {psutil.STATUS_STOPPED}, [x for x in seen if x[2] != psutil.STATUS_STOPPED]
    refused = await command(nc, "p1", "send", text="x")
    assert refused == {
        "ok": False,
        "error": {
            "code": "invalid_transition",
            "message": "cannot send input to agent p1: it is PAUSED, not RUNNING",
            "error_id": "",
        },
    }
    assert (await command(nc, "p1", "resume"))["agent"]["lifecycle"] == "RUNNING"
    running = await asyncio.to_thread(lambda: {c.status() for c in children()})
    assert psutil.STATUS_STOPPED not in running


async def test_stop_ends_every_process_and_keeps_the_worktree(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    agent = (await spawn(nc, str(repo), "s1"))["agent"]
    await command(nc, "s1", "send", text="trap '' TERM HUP; sleep 1000")
    tmux = Tmux(fleet.tmux_socket)
    tree = await asyncio.to_thread(
        lambda: [
            c.pid
            for p in tmux.pane_pids("fleet-s1")
            for c in [psutil.Process(p), *psutil.Process(p).children(recursive=True)]
        ]
    )
    stopped = await command(nc, "s1", "stop")
    assert stopped["agent"]["lifecycle"] == "STOPPED", stopped
    assert not tmux.has_session("fleet-s1")
    assert not [
        p
        for p in tree
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert Path(agent["worktree"]).is_dir()
    assert (await command(nc, "s1", "stop"))["ok"]  # stopping again changes nothing


async def test_removing_a_worktree_with_work_needs_force_and_saves_it(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    agent = (await spawn(nc, str(repo), "w1"))["agent"]
    Path(agent["worktree"], "notes.txt").write_text("unsaved work\n")
    refused = await command(nc, "w1", "stop", remove_worktree=True)
    assert refused["error"]["code"] == "worktree_has_work"
    assert (await command(nc, "w1", "show"))["agent"]["lifecycle"] == "RUNNING"
    forced = await command(nc, "w1", "stop", remove_worktree=True, force=True)
    assert forced["agent"]["lifecycle"] == "STOPPED"
    assert not Path(agent["worktree"]).exists()
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/fleet/saved/w1/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(refs) == 1
    saved = subprocess.run(
        ["git", "show", f"{refs[0]}:notes.txt"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert saved.stdout == "unsaved work\n"


async def test_a_spawn_refused_for_its_repo_leaves_nothing(
    fleet: Fleet, nc: Client, tmp_path: Path
) -> None:
    """Refused before anything is recorded: no agent, not even one in ERROR (issue 14)."""
    reply = await spawn(nc, str(tmp_path), "bad1")
    assert not reply["ok"]
    assert "not a git repository" in reply["error"]["message"]
    shown = await command(nc, "bad1", "show")
    assert shown["error"]["code"] == "unknown_agent", shown
    assert not Tmux(fleet.tmux_socket).has_session("fleet-bad1")


async def test_a_spawn_refused_for_its_base_ref_leaves_nothing(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    reply = await spawn(nc, str(repo), "bad2", base_ref="no-such-branch")
    assert reply["error"]["code"] == "unknown_ref", reply
    assert "no-such-branch" in reply["error"]["message"], reply
    shown = await command(nc, "bad2", "show")
    assert shown["error"]["code"] == "unknown_agent", shown
    assert not Tmux(fleet.tmux_socket).has_session("fleet-bad2")
    assert (await spawn(nc, str(repo), "bad2"))["ok"]  # the name is free for a good spawn


async def test_the_actor_survives_kill_9_of_its_worker(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    agent = (await spawn(nc, str(repo), "k1"))["agent"]
    old_pid = agent["actor"]["pid"]
    os.kill(old_pid, signal.SIGKILL)

    shown = await answered_anew(nc, "k1", old_pid, "the restarted actor to answer")
    assert shown["agent"]["lifecycle"] == "RUNNING"
    assert Tmux(fleet.tmux_socket).has_session("fleet-k1")
    assert (await command(nc, "k1", "send", text="echo still-here"))["ok"]


async def test_bad_commands_get_a_sentence_and_change_nothing(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "b1")
    before = await types(nc, "b1")
    cases = {
        b"{not json": "invalid_json",
        b"[1, 2]": "not_an_object",
        b'{"type": "explode"}': "unknown_type",
        b'{"type": "send", "text": 5}': "invalid_field",
        b'{"type": "resume"}': "invalid_transition",
    }
    for payload, code in cases.items():
        reply = await request(nc, subjects.command("b1"), payload)
        assert reply["ok"] is False and reply["error"]["code"] == code, (payload, reply)
        assert reply["error"]["message"]
    assert await types(nc, "b1") == before


async def test_restart_after_stop_brings_it_back_in_the_same_worktree(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    agent = (await spawn(nc, str(repo), "r1"))["agent"]
    await command(nc, "r1", "stop")
    again = await command(nc, "r1", "restart")
    assert again["ok"], again
    assert again["agent"]["lifecycle"] == "RUNNING"
    assert again["agent"]["worktree"] == agent["worktree"]
    assert Tmux(fleet.tmux_socket).has_session("fleet-r1")


async def test_attach_gives_each_user_a_grouped_session(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "t1")
    ada = await command(nc, "t1", "attach", user="ada")
    bob = await command(nc, "t1", "attach", user="bob", readonly=True)
    assert ada["session"] == "fleet-t1+ada" and bob["argv"][-1] == "-r"
    assert ada["agent"]["users"] == ["ada"] and bob["agent"]["users"] == ["ada", "bob"]
    left = await command(nc, "t1", "detach", user="ada")
    assert left["agent"]["users"] == ["bob"]
    assert not Tmux(fleet.tmux_socket).has_session("fleet-t1+ada")


async def test_the_supervisor_refinds_agents_after_its_restart(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "f1")
    ray.kill(fleet.supervisor, no_restart=False)

    async def listed() -> list[str] | None:
        try:
            reply = await request(nc, subjects.control("list"), {}, timeout=2)
        except Exception:
            return None
        return [a["id"] for a in reply["agents"]] or None

    assert await until(listed, "the supervisor to list agents again", timeout=30) == ["f1"]


async def test_names_are_unique_and_checked(fleet: Fleet, nc: Client, repo: Path) -> None:
    await spawn(nc, str(repo), "u1")
    again = await spawn(nc, str(repo), "u1")
    assert again["error"]["code"] == "agent_exists"
    hostile = await spawn(nc, str(repo), "../etc")
    assert hostile["error"]["code"] == "invalid_name"
    assert "letters, digits" in hostile["error"]["message"]


async def test_a_pool_actor_keeps_its_agent_across_a_worker_crash(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await until(fleet.supervisor.pool_size.remote, "the warm pool to fill", timeout=30)
    reply = await spawn(nc, str(repo), "pool1")
    assert reply["pooled"] is True  # the fixture keeps one warm actor
    old_pid = reply["agent"]["actor"]["pid"]
    os.kill(old_pid, signal.SIGKILL)

    shown = await answered_anew(nc, "pool1", old_pid, "the pool-born actor to come back bound")
    assert shown["agent"]["lifecycle"] == "RUNNING"
    assert shown["agent"]["tmux"]["session"] == "fleet-pool1"


async def test_every_window_is_recorded_as_asciicast(fleet: Fleet, nc: Client, repo: Path) -> None:
    await spawn(nc, str(repo), "rec1")
    await command(nc, "rec1", "send", text="echo recorded-line")
    folder = fleet.state_dir / "recordings" / "rec1"

    def recorded() -> bool:
        casts = list(folder.glob("*-agent.cast"))
        every = len(list(folder.glob("*.cast"))) == 3  # each recorder makes its file as it starts
        return every and bool(casts) and "recorded-line" in casts[0].read_text()

    await until(lambda: asyncio.to_thread(recorded), "a recording of each window")
    casts = sorted(p.name.split("-", 1)[1] for p in folder.glob("*.cast"))
    assert casts == ["agent.cast", "monitor.cast", "services.cast"]
    agent_cast = next(folder.glob("*-agent.cast")).read_text().splitlines()
    header = msgspec.json.decode(agent_cast[0])
    assert header["version"] == 2 and header["width"] > 0
    assert all(msgspec.json.decode(line)[1] == "o" for line in agent_cast[1:])


async def _new_supervisor(fleet: Fleet) -> None:
    """What a fresh `fleet up` does: every actor gone, a new supervisor re-finds the agents."""
    from ray.util import list_named_actors

    for found in list_named_actors(all_namespaces=True):
        if found.get("namespace") == fleet.namespace:
            ray.kill(ray.get_actor(found["name"], namespace=fleet.namespace), no_restart=True)
    await asyncio.sleep(0.5)
    from actors import supervisor

    fleet.supervisor = supervisor.start(fleet.config())
    await fleet.supervisor.known.remote()


async def test_a_new_control_plane_readopts_live_sessions(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "ad1")
    await command(nc, "ad1", "send", text="export MARK=kept-$((6*7))")
    await _new_supervisor(fleet)
    shown = await command(nc, "ad1", "show")
    assert shown["agent"]["lifecycle"] == "RUNNING"
    await command(nc, "ad1", "send", text="echo $MARK")

    async def same_shell() -> bool:
        return "kept-42" in (await command(nc, "ad1", "output"))["output"]

    await until(same_shell, "the same shell (its variable) after re-adoption")


async def test_an_agent_whose_session_vanished_is_put_in_error(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    await spawn(nc, str(repo), "gone1")
    subprocess.run(["tmux", "-L", fleet.tmux_socket, "kill-server"], check=True)
    await _new_supervisor(fleet)
    shown = await command(nc, "gone1", "show")
    assert shown["agent"]["lifecycle"] == "ERROR"
    assert "tmux session is gone" in shown["agent"]["reason"]
    again = await command(nc, "gone1", "restart")
    assert again["agent"]["lifecycle"] == "RUNNING", again


async def test_past_the_limit_a_spawn_is_refused_with_a_sentence(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    limited = fleet.config()
    object.__setattr__(limited, "max_agents", 1)
    await asyncio.to_thread(ray.kill, fleet.supervisor, no_restart=True)
    from actors import supervisor

    fleet.supervisor = supervisor.start(limited)
    await fleet.supervisor.known.remote()
    assert (await spawn(nc, str(repo), "one"))["ok"]
    refused = await spawn(nc, str(repo), "two")
    assert refused["error"]["code"] == "too_many_agents"
    assert "maximum of 1 agents" in refused["error"]["message"]
