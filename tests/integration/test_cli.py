"""The `fleet` CLI as a user runs it: a real subprocess, against a real nats-server.

Three groups:
- error paths that need no actor (fleetd not up, an agent nobody answers for, bad arguments);
- the wire contract, against a small responder on NATS standing in for an actor: what the
  CLI sends (`by`, fields) and how it shows a reply (an error sentence, `--json` exactly);
- the whole fleet (Ray, the supervisor, agent actors, tmux, git), with the `fleet` fixture.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import json
import os
import pty
import re
import select
import selectors
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.config import FleetState, Settings, write_state
from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from infra.tmux import Tmux
from schemas import commands as c
from schemas import subjects
from schemas.agent import decide, initial
from schemas.chain import Position
from schemas.control import AgentView
from services.cli.agents import new_lines, table
from tests.fleetcli import GUARD_S, REPO, fleet_cli
from tests.integration.conftest import wait_until


def run(env: dict[str, str], *args: str) -> Result:
    proc = fleet_cli(env, *args)
    return Result(proc.returncode, proc.stdout, proc.stderr)


async def arun(env: dict[str, str], *args: str) -> Result:
    """The CLI in a subprocess while this event loop keeps serving NATS responders."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args,
        cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), GUARD_S)
    return Result(proc.returncode or 0, out.decode(), err.decode())


class Result(msgspec.Struct):
    status: int
    out: str
    err: str

    def sentence(self) -> str:
        """The one-line error the CLI printed (and check that it is one line)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("fleet: ")
        return lines[0].removeprefix("fleet: ")


def user() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", getpass.getuser())


@pytest.fixture
def env(state_dir: Path) -> dict[str, str]:
    return {**os.environ, "FLEET_STATE_DIR": str(state_dir)}


@pytest.fixture
def up(env: dict[str, str], state_dir: Path, nats_server: NatsServer) -> dict[str, str]:
    """A state file that says fleetd is up, over a real nats-server with the streams, no actors."""
    state = FleetState(
        pid=os.getpid(),
        state_dir=str(state_dir),
        nats_url=nats_server.url,
        started_at=datetime.now(UTC),
    )
    write_state(Settings.from_env(env).state_file, state)

    async def streams() -> None:
        nc = await connect(nats_server.url, reconnect=False)
        await ensure_streams(nc.jetstream())
        await nc.close()

    asyncio.run(streams())
    return env


# -- errors that need no actor --------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["ls"], ["show", "a1"], ["stop", "a1"], ["events", "a1"], ["logs", "a1"], ["doctor"]],
)
def test_without_fleetd_every_command_says_to_run_fleet_up(
    env: dict[str, str], args: list[str]
) -> None:
    result = run(env, *args)
    assert result.status == 2 and result.out == ""
    assert "start it with `fleet up`" in result.sentence()


def test_an_agent_nobody_answers_for_is_one_sentence(up: dict[str, str]) -> None:
    for args in (["show", "ghost"], ["stop", "ghost"], ["send", "ghost", "hi"]):
        result = run(up, *args)
        assert result.status == 2
        assert result.sentence() == "there is no running agent 'ghost' (fleet ls lists agents)"


def test_without_a_supervisor_ls_and_spawn_say_so(up: dict[str, str], tmp_path: Path) -> None:
    for args in (["ls"], ["spawn", "--repo", str(tmp_path), "--name", "a1"]):
        result = run(up, *args)
        assert result.status == 2
        assert result.sentence().startswith("no supervisor answers on ")


def test_events_of_an_unknown_agent(up: dict[str, str]) -> None:
    result = run(up, "events", "ghost")
    assert result.status == 2 and result.sentence() == "there is no agent 'ghost'"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["show", "a.b"], "invalid agent id 'a.b'"),
        (["send", "a1"], "nothing to send: give TEXT, --keys, or both"),
        (["logs", "a1", "-n", "0"], "-n must be at least 1, not 0"),
        (["spawn", "--repo", "/no/such/repo", "--name", "a1"], "is not a directory"),
        (["spawn", "--repo", ".", "--name", "a1", "--name", "a1"], "given more than once"),
        (["spawn", "--repo", ".", "--count", "0"], "--count must be at least 1"),
        (["spawn", "--repo", ".", "--name", "a b"], "invalid agent name 'a b'"),
        (["spawn", "--repo", ".", "--option", "novalue"], "is not KEY=VALUE"),
        (["attach", "a1"], "needs a terminal (stdin is not a TTY); use --print"),
    ],
)
def test_bad_arguments_are_one_sentence(env: dict[str, str], args: list[str], says: str) -> None:
    result = run(env, *args)
    assert result.status == 2 and result.out == ""
    assert says in result.sentence()


def test_argparse_refusals_exit_2(env: dict[str, str]) -> None:
    result = run(env, "spawn", "--repo", ".", "--name", "a", "--count", "2")
    assert result.status == 2 and "not allowed with argument" in result.err
    assert run(env, "show").status == 2


# -- the wire contract, against a stand-in responder ----------------------------------------


Responder = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, reconnect=False)
    try:
        yield client
    finally:
        await client.close()


async def answer(nc: Client, subject: str, respond: Responder, seen: list[dict[str, Any]]) -> None:
    async def on_msg(msg: Msg) -> None:
        request = json.loads(msg.data)
        if "type" in request:  # an agent command
            # Each command carries its own id, so a copy sent again is done once.
            command_id = request.pop("id")
            assert re.fullmatch(r"[0-9a-f]{32}", command_id), command_id
        seen.append(request)
        await msg.respond(msgspec.json.encode(respond(request)))

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()


AGENT = json.loads(
    msgspec.json.encode(
        AgentView(id="r1", name="r1", template="shell", lifecycle="RUNNING", activity="READY")
    )
)


async def test_a_command_carries_who_sends_it_and_json_is_the_view(
    up: dict[str, str], nc: Client
) -> None:
    seen: list[dict[str, Any]] = []
    await answer(nc, subjects.command("r1"), lambda r: {"ok": True, "agent": AGENT}, seen)
    result = await arun(up, "show", "r1", "--json")
    assert result.status == 0, result.err
    assert json.loads(result.out) == AGENT
    result = await arun(up, "stop", "r1", "--remove-worktree")
    assert result.status == 0 and result.out.split() == ["r1", "RUNNING"]
    result = await arun(up, "send", "r1", "echo", "hi;", "--keys", "C-c", "Enter", "--no-enter")
    assert result.status == 0, result.err
    assert seen == [
        {"type": "show", "by": f"user:{user()}"},
        {"type": "stop", "by": f"user:{user()}", "remove_worktree": True, "force": False},
        {
            "type": "send",
            "by": f"user:{user()}",
            "text": "echo hi;",
            "keys": ["C-c", "Enter"],
            "enter": False,
        },
    ]
    for request in seen:  # what the CLI sends, the actor decodes
        msgspec.json.decode(msgspec.json.encode(request), type=c.AgentCommand)


async def test_an_error_reply_is_its_sentence_and_an_internal_one_is_exit_1(
    up: dict[str, str], nc: Client
) -> None:
    refusal = "cannot resume agent r1: it is RUNNING, not PAUSED"
    replies = {
        "resume": {"ok": False, "error": {"code": "invalid_transition", "message": refusal}},
        "pause": {
            "ok": False,
            "error": {"code": "internal", "message": "unexpected error (id abc; see the log)"},
        },
    }
    await answer(nc, subjects.command("r1"), lambda r: replies[r["type"]], [])
    result = await arun(up, "resume", "r1")
    assert result.status == 2 and result.sentence() == refusal
    result = await arun(up, "pause", "r1")
    assert result.status == 1 and "unexpected error (id abc" in result.sentence()


async def test_ls_and_attach_print(up: dict[str, str], nc: Client) -> None:
    seen: list[dict[str, Any]] = []
    await answer(nc, subjects.control("list"), lambda r: {"ok": True, "agents": [AGENT]}, seen)
    argv = ["env", "-u", "TMUX", "tmux", "-L", "s", "attach-session", "-t", "=fleet-r1+u"]

    def attach(request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "session": "fleet-r1+u", "argv": argv, "agent": AGENT}

    await answer(nc, subjects.command("r1"), attach, seen)
    result = await arun(up, "ls", "--all")
    assert result.status == 0, result.err
    assert result.out.split("\n")[0].split() == [
        "ID", "LIFECYCLE", "ACTIVITY", "TEMPLATE", "BRANCH", "WORKTREE"
    ]  # fmt: skip
    assert result.out.split("\n")[1].split() == ["r1", "RUNNING", "READY", "shell"]
    assert json.loads((await arun(up, "ls", "--json")).out) == [AGENT]
    result = await arun(up, "attach", "r1", "--print", "--readonly")
    assert result.status == 0 and result.out.strip() == " ".join(argv)
    assert seen[0] == {"removed": True, "by": f"user:{user()}", "id": ""}
    assert seen[2] == {"type": "attach", "by": f"user:{user()}", "user": user(), "readonly": True}


async def test_events_read_the_log_without_an_actor(up: dict[str, str], nc: Client) -> None:
    store = EventStore(nc)
    state, position = initial("e1"), Position()
    for cmd in (c.Create(name="e1", repo="/r", by="user:t"), c.MarkRunning(), c.Pause()):
        events = decide(state, cmd, now=datetime.now(UTC), new_id=lambda: uuid.uuid4().hex)
        state, position = await store.record(state, events, position)
    result = await arun(up, "events", "e1")
    assert result.status == 0, result.err
    lines = [line.split() for line in result.out.splitlines()]
    assert [(w[0], w[3]) for w in lines] == [
        ("1", "agent.created"),
        ("2", "lifecycle.changed"),
        ("3", "lifecycle.changed"),
        ("4", "lifecycle.changed"),
    ]
    assert lines[3][-3:] == ["RUNNING", "->", "PAUSED"]
    result = await arun(up, "events", "e1", "--json")
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["type"] == "agent.created" and rows[0]["repo"] == "/r"


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "now", "new"),
    [
        ([], ["a", "b"], ["a", "b"]),
        (["a", "b"], ["a", "b"], []),
        (["a", "b"], ["a", "b", "c"], ["c"]),
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),
        (["a", "b"], ["x", "y"], ["x", "y"]),
        (["$", "x", "$"], ["$", "x", "$", "y", "$"], ["y", "$"]),
    ],
)
def test_new_lines_finds_what_scrolled_in(
    before: list[str], now: list[str], new: list[str]
) -> None:
    assert new_lines(before, now) == new


def test_table_aligns_columns() -> None:
    assert table(["A", "BB"], [["xxx", "y"], ["z", ""]]).splitlines() == [
        "A    BB",
        "xxx  y",
        "z",
    ]


# -- the whole fleet ------------------------------------------------------------------------


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The `fleet` fixture (nats + Ray + supervisor), skipped until the actors exist."""
    pytest.importorskip("actors.supervisor")
    pytest.importorskip("ray")
    try:
        yield request.getfixturevalue("fleet")
    except pytest.FixtureLookupError:
        pytest.skip("no `fleet` fixture yet")


@pytest.fixture
def repo(git_repo: Path) -> Path:
    return git_repo


def wait_for_line(proc: subprocess.Popen[bytes], pattern: str, timeout: float = 30.0) -> str:
    """Read the child's stdout until a line matches `pattern`; fail with what was read.

    Reads the pipe with os.read: a buffered readline would pull several lines into Python's
    buffer, where select can no longer see them.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = _pending.setdefault(id(proc), bytearray())
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in pending:
                raw, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                line = raw.decode(errors="replace")
                seen.append(line)
                if re.search(pattern, line):
                    return line
            left = deadline - time.monotonic()
            chunk = os.read(fd, 65536) if left > 0 and sel.select(left) else b""
            if not chunk:
                break
            pending += chunk
    pytest.fail(f"no line matched {pattern!r}; read:\n" + "\n".join(seen))


_pending: dict[int, bytearray] = {}  # bytes read past the last matched line, per id(proc)


@pytest.fixture
def follow() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=GUARD_S)
        _pending.pop(id(proc), None)


def test_spawn_operate_and_stop_one_agent(
    live: Any, repo: Path, follow: Callable[..., subprocess.Popen[bytes]]
) -> None:
    env = live.env
    result = run(env, "spawn", "--repo", str(repo), "--name", "c1")
    assert result.status == 0, result.err
    out = result.out.splitlines()
    assert any(re.match(r"c1\s+workspace\.ready\s+\S+c1 \(fleet/c1 at ", ln) for ln in out), out
    assert any(re.match(r"c1\s+session\.started\s+tmux -L ", line) for line in out), result.out
    assert any(line.split() == ["c1", "RUNNING"] for line in out), result.out

    shown = json.loads(run(env, "show", "c1", "--json").out)
    for key in ("id", "name", "lifecycle", "activity", "worktree", "branch", "services", "ports"):
        assert key in shown
    assert shown["lifecycle"] == "RUNNING" and shown["branch"] == "fleet/c1"
    assert shown["tmux"] == {"socket": live.tmux_socket, "session": "fleet-c1"}
    assert shown["actor"]["pid"] > 0
    assert [a["id"] for a in json.loads(run(env, "ls", "--json").out)] == ["c1"]

    events = follow(env, "events", "c1", "-f")
    wait_for_line(events, r"lifecycle\.changed\s+SPAWNING -> RUNNING")
    logs = follow(env, "logs", "c1", "-f")
    assert run(env, "send", "c1", "echo", "cli-$((6*7))").status == 0
    wait_for_line(logs, r"^cli-42$")
    assert run(env, "pause", "c1").out.split() == ["c1", "PAUSED"]
    wait_for_line(events, r"RUNNING -> PAUSED")
    refused = run(env, "pause", "c1")
    assert refused.status == 2 and "cannot pause agent c1: it is PAUSED" in refused.sentence()
    assert run(env, "resume", "c1").out.split() == ["c1", "RUNNING"]
    assert "cli-42" in run(env, "logs", "c1", "-n", "20").out

    stopped = run(env, "stop", "c1", "--json")
    assert stopped.status == 0, stopped.err
    assert json.loads(stopped.out)["lifecycle"] == "STOPPED"
    wait_for_line(events, r"STOPPING -> STOPPED")
    assert Path(shown["worktree"]).is_dir()  # stop keeps the worktree


def attach_in_a_terminal(env: dict[str, str], socket: str, agent: str) -> None:
    """`fleet attach` with a pty as its terminal; detached from outside, as a person would."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    grouped = f"fleet-{agent}+{user()}"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "attach", agent],
            cwd=REPO, env={**env, "TERM": "xterm-256color"},
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)

        def clients() -> list[str]:
            out = subprocess.run(
                ["tmux", "-L", socket, "list-clients", "-t", f"={grouped}", "-F", "#{client_tty}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            while select.select([master], [], [], 0)[0]:  # drain, so tmux never blocks writing
                try:
                    if not os.read(master, 65536):
                        break
                except OSError:  # EIO: the terminal's other side has closed
                    break
            return out.stdout.split()

        wait_until(clients, f"a tmux client on {grouped}", timeout=30)
        subprocess.run(["tmux", "-L", socket, "detach-client", "-s", f"={grouped}"], check=True)
        deadline = time.monotonic() + GUARD_S
        while proc.poll() is None and time.monotonic() < deadline:
            clients()
            time.sleep(0.05)
        assert proc.wait(timeout=1) == 0
    finally:
        os.close(master)
    has = subprocess.run(
        ["tmux", "-L", socket, "has-session", "-t", f"={grouped}"], capture_output=True, check=False
    )
    assert has.returncode != 0, "the user's grouped session outlived the detach"


def test_attach_puts_a_terminal_in_the_session_and_detach_follows(
    live: Any, repo: Path, follow: Callable[..., subprocess.Popen[bytes]]
) -> None:
    env = live.env
    assert run(env, "spawn", "--repo", str(repo), "--name", "t1").status == 0
    events = follow(env, "events", "t1", "-f")
    printed = run(env, "attach", "t1", "--print", "--json")
    assert printed.status == 0, printed.err
    assert json.loads(printed.out)["session"] == f"fleet-t1+{user()}"
    wait_for_line(events, rf"user\.attached\s+{user()}$")
    attach_in_a_terminal(env, live.tmux_socket, "t1")
    wait_for_line(events, rf"user\.attached\s+{user()}$")
    wait_for_line(events, rf"user\.detached\s+{user()}$")
    assert not Tmux(live.tmux_socket).pane_dead("fleet-t1", "agent")  # detach kept it alive
    shown = json.loads(run(env, "show", "t1", "--json").out)
    assert shown["lifecycle"] == "RUNNING" and shown["users"] == []


def test_spawn_several_at_once_with_generated_names(live: Any, repo: Path) -> None:
    result = run(live.env, "spawn", "--repo", str(repo), "--count", "3", "--json")
    assert result.status == 0, result.err
    agents = [json.loads(line) for line in result.out.splitlines()]
    assert len(agents) == 3
    assert all(re.fullmatch(r"shell-[0-9a-f]{4}", a["id"]) for a in agents)
    assert {a["lifecycle"] for a in agents} == {"RUNNING"}
    listed = json.loads(run(live.env, "ls", "--json").out)
    assert sorted(a["id"] for a in listed) == sorted(a["id"] for a in agents)


def test_spawn_refusals_and_unknown_agents_with_a_fleet(live: Any, repo: Path) -> None:
    assert run(live.env, "spawn", "--repo", str(repo), "--name", "d1").status == 0
    again = run(live.env, "spawn", "--repo", str(repo), "--name", "d1")
    assert again.status == 2 and "already exists" in again.sentence()
    nobody = run(live.env, "show", "nobody")
    assert nobody.status == 2
    assert nobody.sentence() == "there is no agent 'nobody'"
    result = run(live.env, "spawn", "--repo", str(repo), "--name", "d2", "--name", "d1")
    assert result.status == 2
    assert re.search(r"^d2\s+RUNNING", result.out, re.M), result.out
    assert re.search(r"^d1\s+FAILED\s+an agent named 'd1' already exists", result.out, re.M)
    assert "fleet: 1 of 2 spawns failed" in result.err


def test_spawn_env_reaches_the_panes_and_never_the_log(live: Any, repo: Path) -> None:
    env = dict(live.env, FLEET_CLI_PASSED="from-your-shell")
    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    spawned = run(
        env, "spawn", "--repo", str(repo), "--name", "e1",
        "--env", f"DEPLOY_TOKEN={secret}", "--env", "FLEET_CLI_PASSED",
    )  # fmt: skip
    assert spawned.status == 0, spawned.err
    assert run(env, "send", "e1", 'echo "got:$DEPLOY_TOKEN:$FLEET_CLI_PASSED"').status == 0
    seen = f"got:{secret}:from-your-shell"
    wait_until(lambda: seen in run(env, "logs", "e1", "-n", "40").out, f"{seen!r} on screen")
    assert secret not in run(env, "show", "e1", "--json").out
    assert secret not in run(env, "events", "e1", "--json").out
    unset = run(env, "spawn", "--repo", str(repo), "--name", "e2", "--env", "FLEET_NOT_SET_X")
    assert unset.status == 2 and "--env 'FLEET_NOT_SET_X' has no value" in unset.sentence()
