"""Each agent's assistant has a config dir of its own, seeded from the user's, hooked by fleetd.

Two agents' homes are prepared from one user's login (actors/agent/assistantconfig.py); the real
assistant then runs in a private tmux server with agent A's home and the variables its panes
get, and its folder-trust dialog is answered. The answer lands in A's config dir only: the
user's files are byte-identical (every file, not only the ones that record a decision) and
agent B's dir is as it was prepared. The hooks fleetd installs are in the dir, the user's own
settings and hooks are kept beside them, and preparing again does not add them twice.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
from aiohttp import web
from nats.aio.msg import Msg

from actors.agent import assistantconfig
from infra.nats import connect
from infra.natsserver import NatsServer
from infra.tmux import Tmux
from schemas import hooks, subjects
from schemas.assistants import classify
from schemas.builtin_profiles import BUILTIN
from schemas.states import Activity
from tests.assistants.test_stop import GUARD_S, QUIET, _git_repo, _wait_screen
from tests.local_http import serving

if TYPE_CHECKING:
    from tests.assistants.install import Installs

A = Activity


def raw_files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, byte for byte (links as their targets' names)."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = b"-> " + str(path.readlink()).encode()
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found


def claude_user(home: Path, repo: Path) -> None:
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    (home / ".claude").mkdir()
    (home / ".claude" / ".credentials.json").write_text('{"claudeAiOauth": null}')
    mine = {"type": "command", "command": "/usr/local/bin/my-own-hook"}
    settings = {"theme": "dark", "hooks": {"Stop": [{"matcher": "", "hooks": [mine]}]}}
    (home / ".claude" / "settings.json").write_text(json.dumps(settings))
    (home / ".claude" / "projects" / "-home-me-secret").mkdir(parents=True)
    (home / ".claude" / "projects" / "-home-me-secret" / "s.jsonl").write_text("{}\n")


def codex_user(home: Path, repo: Path) -> None:
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text('{"OPENAI_API_KEY": "sk-test-not-a-key"}')
    config = 'model = "o3"\nnotify = ["my-own-notify"]\n\n[projects."/elsewhere"]\n'
    (home / ".codex" / "config.toml").write_text(config + 'trust_level = "trusted"\n')


def gemini_user(home: Path, repo: Path) -> None:
    (home / ".gemini").mkdir()
    (home / ".gemini" / "settings.json").write_text(json.dumps({"ui": {"theme": "Default"}}))


def claude_trusted(home: Path, repo: Path) -> bool:
    config = json.loads((home / ".claude" / ".claude.json").read_text() or "{}")
    return bool(config.get("projects", {}).get(str(repo), {}).get("hasTrustDialogAccepted"))


def codex_trusted(home: Path, repo: Path) -> bool:
    config = tomllib.loads((home / ".codex" / "config.toml").read_text())
    return config.get("projects", {}).get(str(repo), {}).get("trust_level") == "trusted"


def gemini_trusted(home: Path, repo: Path) -> bool:
    path = home / ".gemini" / "trustedFolders.json"
    return path.exists() and str(repo) in json.loads(path.read_text() or "{}")


@dataclass(frozen=True)
class Case:
    profile: str
    seed: Callable[[Path, Path], None]
    trusted: Callable[[Path, Path], bool]
    keys: tuple[str, ...] = ("Enter",)  # to the dialog's "trust this folder", and take it


CASES = {
    # Claude Code 2.1.332's cursor starts on "No, exit"; "Yes, I trust this folder" is below.
    "claude-code": Case("claude-code", claude_user, claude_trusted, ("Down", "Enter")),
    "codex": Case("codex", codex_user, codex_trusted),
    "gemini": Case("gemini", gemini_user, gemini_trusted),
}


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(f"fleet-cfg-{uuid.uuid4().hex[:8]}")
    yield server
    server.kill_server()


def hooked(case: str, home: Path) -> None:
    """fleetd's hooks are in the agent's dir, once each, beside the user's own."""
    ours = shlex.join(assistantconfig.hook_argv(case))
    if case == "codex":
        config = tomllib.loads((home / ".codex" / "config.toml").read_text())
        assert config["notify"] == assistantconfig.hook_argv("codex"), config
        assert config["model"] == "o3" and "/elsewhere" in config["projects"], config
        return
    where = home / (".claude" if case == "claude-code" else ".gemini") / "settings.json"
    settings = json.loads(where.read_text())
    events = (
        assistantconfig.CLAUDE_EVENTS if case == "claude-code" else assistantconfig.GEMINI_EVENTS
    )
    for event in events:
        commands = [h["command"] for g in settings["hooks"][event] for h in g["hooks"]]
        assert commands.count(ours) == 1, (event, commands)
    if case == "claude-code":
        stop = [h["command"] for g in settings["hooks"]["Stop"] for h in g["hooks"]]
        assert "/usr/local/bin/my-own-hook" in stop and settings["theme"] == "dark", settings
    else:
        assert settings["ui"] == {"theme": "Default"}, settings


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_trust_answer_stays_in_the_agents_own_config_dir(
    case: str, assistants: Installs, tmux: Tmux, tmp_path: Path
) -> None:
    c, profile = CASES[case], BUILTIN[CASES[case].profile]
    user, repo = tmp_path / "user", tmp_path / "repo"
    user.mkdir()
    _git_repo(repo)
    c.seed(user, repo)
    mine = raw_files(user)
    homes = {name: tmp_path / "homes" / name for name in ("a", "b")}
    for home in homes.values():
        home.mkdir(parents=True)
        assistantconfig.prepare(c.profile, home, user, {})
        assistantconfig.prepare(c.profile, home, user, {})  # a second start adds nothing
        hooked(case, home)
    if case == "claude-code":  # the login, not the user's sessions
        assert (homes["a"] / ".claude" / ".credentials.json").exists()
        assert not (homes["a"] / ".claude" / "projects").exists()
    b_before = raw_files(homes["b"])

    home = homes["a"]
    env = {"HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8", **QUIET}
    env |= assistantconfig.variables(c.profile, home)
    env["PATH"] = f"{assistants.npm_bin}:/usr/local/bin:/usr/bin:/bin"
    program, *flags = shlex.split(profile.command)
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    command = shlex.join([*clean, str(assistants.npm_bin / program), *flags])
    tmux.create_session("fleet-a", repo, env, command_for_agent=command)
    _wait_screen(
        tmux, "fleet-a", lambda s: classify(s, profile) is A.AWAITING_INPUT and "rust" in s,
        f"{case}'s folder-trust dialog",
    )  # fmt: skip
    for key in c.keys:
        time.sleep(1.0)  # a menu drawn is not yet a menu that takes keys
        tmux.send_keys("fleet-a", "agent", [key])
    _wait_screen(
        tmux, "fleet-a", lambda s: c.trusted(home, repo), f"{case} to record the trust in A's dir"
    )
    tmux.kill_server()

    assert raw_files(user) == mine, f"{case} changed the user's own files"
    assert raw_files(homes["b"]) == b_before, f"{case} changed agent b's files"
    assert not c.trusted(homes["b"], repo)
    hooked(case, home)  # its own settings rewritten by it keep fleetd's hooks


def test_a_link_the_agent_left_in_its_home_is_not_written_through(tmp_path: Path) -> None:
    """fleetd as root prepares a home the agent's user owns: a settings.json (or a folder)
    swapped for a link to a file of the control plane is replaced or left, never followed."""
    user, home = tmp_path / "user", tmp_path / "home"
    user.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "s3cret"}')
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").symlink_to(secret)
    assistantconfig.prepare("claude-code", home, user, {})
    assert secret.read_text() == '{"token": "s3cret"}'
    settings = home / ".claude" / "settings.json"
    assert not settings.is_symlink() and "s3cret" not in settings.read_text()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / ".gemini").symlink_to(elsewhere)
    assistantconfig.prepare("gemini", home, user, {})
    assert list(elsewhere.iterdir()) == []


def test_the_users_own_config_dir_variables_are_the_seed_not_the_agents_dir(
    tmp_path: Path,
) -> None:
    """With CLAUDE_CONFIG_DIR or CODEX_HOME set for the user, the agent's dir is seeded from
    there, and its panes are told the agent's own dir, never the user's."""
    theirs, home = tmp_path / "claude-work", tmp_path / "home"
    theirs.mkdir()
    (theirs / ".claude.json").write_text('{"hasCompletedOnboarding": true}')
    (theirs / ".credentials.json").write_text("{}")
    codex = tmp_path / "codex-home"
    codex.mkdir()
    (codex / "auth.json").write_text("{}")
    user_env = {"CLAUDE_CONFIG_DIR": str(theirs), "CODEX_HOME": str(codex)}
    home.mkdir()
    for profile in ("claude-code", "codex"):
        assistantconfig.prepare(profile, home, tmp_path / "nobody", user_env)
    assert (home / ".claude" / ".claude.json").read_text() == '{"hasCompletedOnboarding": true}'
    assert (home / ".codex" / "auth.json").exists()
    assert assistantconfig.variables("claude-code", home) == {
        "CLAUDE_CONFIG_DIR": str(home / ".claude")
    }
    assert assistantconfig.variables("codex", home) == {"CODEX_HOME": str(home / ".codex")}
    assert not (theirs / "settings.json").exists() and sorted(p.name for p in codex.iterdir()) == [
        "auth.json"
    ]


def test_real_gemini_cli_runs_fleetds_hooks_from_the_agents_dir(
    assistants: Installs, tmux: Tmux, tmp_path: Path
) -> None:
    """Gemini CLI, offline with a key that is not one, runs the hooks fleetd installed in an
    agent's config dir: SessionStart when it starts and BeforeAgent when a prompt is sent
    (before it tries the network), each through `fleet hook gemini`, which sends its call on
    the agent's subject (a stand-in for the actor answers it here; test_hooks_live.py has the
    actor)."""
    server = NatsServer.start(tmp_path / "nats")
    calls: list[hooks.HookCall] = []

    async def listen() -> None:
        nc = await connect(server.url)

        async def answer(msg: Msg) -> None:
            calls.append(msgspec.json.decode(msg.data, type=hooks.HookCall))
            await msg.respond(b'{"ok": true}')

        await nc.subscribe(subjects.hook("g1"), cb=answer)
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline and "BeforeAgent" not in events(calls):
            await asyncio.sleep(0.2)
        await nc.close()

    user, repo, home = tmp_path / "user", tmp_path / "repo", tmp_path / "home"
    user.mkdir()
    home.mkdir()
    _git_repo(repo)
    (user / ".gemini").mkdir()
    chosen = {"security": {"auth": {"selectedType": "gemini-api-key"}}}
    (user / ".gemini" / "settings.json").write_text(json.dumps(chosen))
    (user / ".gemini" / "trustedFolders.json").write_text(json.dumps({str(repo): "TRUST_FOLDER"}))
    assistantconfig.prepare("gemini", home, user, {})
    env = {"HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8", "GEMINI_API_KEY": "x"}
    env |= assistantconfig.variables("gemini", home)
    env |= {"FLEET_AGENT_ID": "g1", "FLEET_NATS_URL": server.url, "FLEET_STATE_DIR": str(tmp_path)}
    env["PATH"] = f"{assistants.npm_bin}:/usr/local/bin:/usr/bin:/bin"
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    try:
        with ThreadPoolExecutor(1) as pool:
            listening = pool.submit(asyncio.run, listen())
            command = shlex.join([*clean, str(assistants.npm_bin / "gemini")])
            tmux.create_session("fleet-g1", repo, env, command_for_agent=command)
            _wait_screen(tmux, "fleet-g1", lambda s: "Type your message" in s, "Gemini's prompt")
            tmux.send_text("fleet-g1", "agent", "hello", enter=False)
            time.sleep(1.0)  # Gemini drops an Enter right after a paste
            tmux.send_keys("fleet-g1", "agent", ["Enter"])
            listening.result(timeout=GUARD_S + 30)
    finally:
        server.stop()
    assert {"SessionStart", "BeforeAgent"} <= set(events(calls)), calls
    assert all(c.assistant == "gemini" and c.agent_id == "g1" for c in calls), calls
    assert "prompt" not in next(c for c in calls if events([c]) == ["BeforeAgent"]).payload


def events(calls: list[hooks.HookCall]) -> list[str]:
    return [c.payload.get("hook_event_name", "") for c in calls]


async def _fake_model(request: web.Request) -> web.StreamResponse:
    """An OpenAI-compatible chat endpoint that streams one short answer (the outside world)."""
    body = await request.json()
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
    for delta, end in (({"role": "assistant", "content": "Hello there."}, None), ({}, "stop")):
        chunk = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": end}]}
        await reply.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await reply.write(b"data: [DONE]\n\n")
    return reply


def test_real_aider_runs_fleet_hook_when_it_waits_for_you(
    assistants: Installs, tmux: Tmux, tmp_path: Path
) -> None:
    """Aider, given the variables an agent's panes get (its notifications on, the command
    `fleet hook aider`), runs the command once a model has answered and it waits for the next
    prompt; the model is a local stand-in (Aider rings only after a model's answer)."""
    server = NatsServer.start(tmp_path / "nats")
    calls: list[hooks.HookCall] = []
    repo, home = tmp_path / "repo", tmp_path / "home"
    home.mkdir()
    _git_repo(repo)

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _fake_model)
        nc = await connect(server.url)

        async def answer(msg: Msg) -> None:
            calls.append(msgspec.json.decode(msg.data, type=hooks.HookCall))
            await msg.respond(b'{"ok": true}')

        await nc.subscribe(subjects.hook("a1"), cb=answer)
        async with serving(app) as port:
            await asyncio.to_thread(start_aider, port)
            deadline = time.monotonic() + GUARD_S
            while time.monotonic() < deadline and not calls:
                await asyncio.sleep(0.2)
        await nc.close()

    def start_aider(port: int) -> None:
        env = {"HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8"}
        env |= assistantconfig.variables("aider", home)
        env |= {"FLEET_AGENT_ID": "a1", "FLEET_NATS_URL": server.url}
        env |= {"FLEET_STATE_DIR": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin"}
        flags = ["--model", "openai/fake", "--openai-api-base", f"http://127.0.0.1:{port}/v1"]
        flags += ["--openai-api-key", "x", "--no-show-model-warnings", "--no-check-update"]
        flags += ["--no-analytics", "--no-gitignore", "--yes-always"]
        clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
        command = shlex.join([*clean, str(assistants.venv_bin / "aider"), *flags])
        tmux.create_session("fleet-a1", repo, env, command_for_agent=command)
        _wait_screen(tmux, "fleet-a1", lambda s: s.rstrip().endswith(">"), "Aider's prompt")
        tmux.send_text("fleet-a1", "agent", "say hi")

    try:
        asyncio.run(run())
    finally:
        server.stop()
    assert [(c.assistant, c.agent_id, c.payload) for c in calls] == [("aider", "a1", {})], calls
    assert "Failed to run notifications command" not in tmux.capture("fleet-a1", "agent")


async def _fake_responses(request: web.Request) -> web.StreamResponse:
    """An OpenAI Responses endpoint that streams one short answer (the outside world)."""
    await request.read()
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    text = {"type": "output_text", "text": "Hello."}
    message = {"type": "message", "role": "assistant", "id": "m1", "content": [text]}
    usage = {"input_tokens": 1, "input_tokens_details": None, "output_tokens": 1,
             "output_tokens_details": None, "total_tokens": 2}  # fmt: skip
    for event in (
        {"type": "response.created", "response": {"id": "r1"}},
        {"type": "response.output_item.done", "item": message},
        {"type": "response.completed", "response": {"id": "r1", "usage": usage}},
    ):
        await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    return reply


def test_real_codex_runs_its_notify_from_the_agents_dir(
    assistants: Installs, tmp_path: Path
) -> None:
    """Codex (`codex exec`), its model a local stand-in named in the user's own config.toml
    (kept in the agent's copy), runs the `notify` fleetd put in the agent's config.toml at
    the end of its turn: `fleet hook codex` with the payload as its last argument."""
    server = NatsServer.start(tmp_path / "nats")
    calls: list[hooks.HookCall] = []
    user, repo, home = tmp_path / "user", tmp_path / "repo", tmp_path / "home"
    for folder in (user / ".codex", home):
        folder.mkdir(parents=True)
    _git_repo(repo)

    async def run() -> subprocess.CompletedProcess[str]:
        app = web.Application()
        app.router.add_post("/v1/responses", _fake_responses)
        nc = await connect(server.url)

        async def answer(msg: Msg) -> None:
            calls.append(msgspec.json.decode(msg.data, type=hooks.HookCall))
            await msg.respond(b'{"ok": true}')

        await nc.subscribe(subjects.hook("c1"), cb=answer)
        async with serving(app) as port:
            provider = '[model_providers.local]\nname = "local"\nwire_api = "responses"\n'
            provider += f'base_url = "http://127.0.0.1:{port}/v1"\n'
            config = f'model = "fake"\nmodel_provider = "local"\n\n{provider}'
            (user / ".codex" / "config.toml").write_text(config)
            assistantconfig.prepare("codex", home, user, {})
            env = {"HOME": str(home), "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin"}
            env |= assistantconfig.variables("codex", home)
            env |= {"FLEET_AGENT_ID": "c1", "FLEET_NATS_URL": server.url}
            env["FLEET_STATE_DIR"] = str(tmp_path)
            argv = [str(assistants.npm_bin / "codex"), "exec", "--skip-git-repo-check", "say hi"]
            done = await asyncio.to_thread(
                subprocess.run, argv, env=env, cwd=repo, capture_output=True, text=True,
                timeout=GUARD_S, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        # Codex starts its notify and does not wait for it: it may still be sending.
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline and not calls:
            await asyncio.sleep(0.2)
        await nc.close()
        return done

    try:
        done = asyncio.run(run())
    finally:
        server.stop()
    assert "Hello." in done.stdout, done
    assert [(c.assistant, c.agent_id, c.payload) for c in calls] == [
        ("codex", "c1", {"type": "agent-turn-complete"})
    ], (calls, done.stderr[-2000:])
    assert raw_files(user)[".codex/config.toml"].decode().startswith('model = "fake"')


async def _fake_messages(request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages endpoint streaming one short answer (the outside world)."""
    body = await request.json()
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    usage = {"input_tokens": 1, "output_tokens": 1}
    message = {"id": "m1", "type": "message", "role": "assistant", "model": body.get("model")}
    message |= {"content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
    text = {"type": "text_delta", "text": "Hello."}
    done = {"stop_reason": "end_turn", "stop_sequence": None}
    for event in (
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": text},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": done, "usage": {"output_tokens": 1}},
        {"type": "message_stop"},
    ):
        await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    return reply


async def _anything(request: web.Request) -> web.Response:
    return web.json_response({})


def test_real_claude_code_runs_its_hooks_from_the_agents_dir(
    assistants: Installs, tmp_path: Path
) -> None:
    """Claude Code (`claude -p`), its API a local stand-in, runs the hooks fleetd put in the
    agent's settings.json: SessionStart, UserPromptSubmit and, once answered, Stop, each
    through `fleet hook claude-code` (the prompt itself is not sent on)."""
    server = NatsServer.start(tmp_path / "nats")
    calls: list[hooks.HookCall] = []
    user, repo, home = tmp_path / "user", tmp_path / "repo", tmp_path / "home"
    for folder in (user, home):
        folder.mkdir()
    _git_repo(repo)
    assistantconfig.prepare("claude-code", home, user, {})

    async def run() -> subprocess.CompletedProcess[str]:
        app = web.Application()
        app.router.add_post("/v1/messages", _fake_messages)
        app.router.add_route("*", "/{tail:.*}", _anything)
        nc = await connect(server.url)

        async def answer(msg: Msg) -> None:
            calls.append(msgspec.json.decode(msg.data, type=hooks.HookCall))
            await msg.respond(b'{"ok": true}')

        await nc.subscribe(subjects.hook("k1"), cb=answer)
        async with serving(app) as port:
            env = {"HOME": str(home), "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin"}
            env |= assistantconfig.variables("claude-code", home) | QUIET
            env |= {
                "ANTHROPIC_API_KEY": "sk-ant-x",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
            }
            env |= {"FLEET_AGENT_ID": "k1", "FLEET_NATS_URL": server.url}
            env["FLEET_STATE_DIR"] = str(tmp_path)
            argv = [str(assistants.npm_bin / "claude"), "-p", "say hi"]
            done = await asyncio.to_thread(
                subprocess.run, argv, env=env, cwd=repo, capture_output=True, text=True,
                timeout=GUARD_S, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        await nc.close()
        return done

    try:
        done = asyncio.run(run())
    finally:
        server.stop()
    assert "Hello." in done.stdout, done
    assert events(calls) == ["SessionStart", "UserPromptSubmit", "Stop"], (calls, done.stderr)
    assert all(c.assistant == "claude-code" and "prompt" not in c.payload for c in calls), calls
